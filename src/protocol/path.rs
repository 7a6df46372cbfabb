//! `RelPath`: a path relative to a brick or slave root, validated on construction.
//!
//! Invariant: a `RelPath` never contains NUL, never starts with `/`, has no empty, `.` or `..`
//! component and never names georep's own state directory (`.georep` at the root). The empty
//! path is the root itself. Hostile input therefore cannot even be represented, let alone applied.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Longest path accepted, in bytes (Linux PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest single component accepted, in bytes (NAME_MAX).
pub const MAX_NAME: usize = 255;
/// The root-level directory that holds georep's own state on every brick and slave root.
pub const STATE_DIR: &[u8] = b".georep";

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} has an empty, '.' or '..' component")]
    BadComponent(String),
    #[error("path {0:?} is longer than {MAX_PATH} bytes or has a component over {MAX_NAME} bytes")]
    TooLong(String),
    #[error("path {0:?} is inside georep's state directory .georep")]
    StateDir(String),
}

impl RelPath {
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        validate(&bytes)?;
        Ok(RelPath(bytes))
    }

    /// A path that may lie inside `.georep` (georep's own bookkeeping, never sent as an op
    /// target by the crawl); every other rule still applies.
    pub fn internal(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        match validate(&bytes) {
            Ok(()) | Err(PathError::StateDir(_)) => {
                let mut probe = bytes.clone();
                if probe.starts_with(STATE_DIR) {
                    probe[0] = b'_';
                }
                validate(&probe)?;
                Ok(RelPath(bytes))
            }
            Err(e) => Err(e),
        }
    }

    /// The byte range of the paths strictly beneath this one, for range queries on stored
    /// paths: `p/` up to (not including) `p0` (`0` follows `/`).
    pub fn beneath_range(&self) -> (Vec<u8>, Vec<u8>) {
        let mut lo = self.0.clone();
        lo.push(b'/');
        let mut hi = self.0.clone();
        hi.push(b'/' + 1);
        (lo, hi)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// `self/name`; `name` must be a single valid component.
    pub fn join(&self, name: &[u8]) -> Result<Self, PathError> {
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        RelPath::new(v)
    }

    /// Parent path and final component; `None` for the root.
    pub fn split(&self) -> Option<(&[u8], &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some((&self.0[..i], &self.0[i + 1..])),
            None => Some((&[][..], &self.0[..])),
        }
    }

    pub fn parent(&self) -> Option<RelPath> {
        self.split().map(|(p, _)| RelPath(p.to_vec()))
    }

    /// `self`, its parent, and so on up to the root (included).
    pub fn self_and_ancestors(&self) -> impl Iterator<Item = RelPath> {
        std::iter::successors(Some(self.clone()), RelPath::parent)
    }

    pub fn name(&self) -> &[u8] {
        self.split().map(|(_, n)| n).unwrap_or(&[])
    }

    /// True when `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        if other.0.is_empty() {
            return true;
        }
        self.0.starts_with(&other.0)
            && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/')
    }

    /// Replaces the leading `from` (which `self` must start with) by `to`.
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> RelPath {
        debug_assert!(self.starts_with(from));
        let rest = &self.0[from.0.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        if rest.is_empty() {
            return to.clone();
        }
        let mut v = to.0.clone();
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(rest);
        RelPath(v)
    }

    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            1 + self.0.iter().filter(|&&b| b == b'/').count()
        }
    }

    pub fn display(&self) -> String {
        if self.0.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(&self.0).into_owned()
        }
    }
}

fn validate(b: &[u8]) -> Result<(), PathError> {
    let show = || String::from_utf8_lossy(b).into_owned();
    if b.contains(&0) {
        return Err(PathError::Nul(show()));
    }
    if b.is_empty() {
        return Ok(());
    }
    if b[0] == b'/' {
        return Err(PathError::Absolute(show()));
    }
    if b.len() > MAX_PATH {
        return Err(PathError::TooLong(show()));
    }
    for (i, comp) in b.split(|&c| c == b'/').enumerate() {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(PathError::BadComponent(show()));
        }
        if comp.len() > MAX_NAME {
            return Err(PathError::TooLong(show()));
        }
        if i == 0 && comp == STATE_DIR {
            return Err(PathError::StateDir(show()));
        }
    }
    Ok(())
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

thread_local! {
    static DECODE_ERROR: std::cell::RefCell<Option<PathError>> = const { std::cell::RefCell::new(None) };
}

/// The path error behind the last failed decode on this thread, if a path caused it.
pub fn take_decode_error() -> Option<PathError> {
    DECODE_ERROR.with(|c| c.borrow_mut().take())
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RelPath;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a relative path as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RelPath, E> {
                RelPath::new(v.to_vec()).map_err(|e| {
                    let msg = e.to_string();
                    // postcard drops custom messages; the codec picks this up instead.
                    DECODE_ERROR.with(|c| *c.borrow_mut() = Some(e));
                    E::custom(msg)
                })
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<RelPath, E> {
                self.visit_bytes(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_hostile_paths() {
        for bad in [
            &b"../x"[..],
            b"a/../b",
            b"/etc/passwd",
            b"a//b",
            b"a/",
            b"./a",
            b"a\0b",
            b".georep/agent.db",
        ] {
            assert!(RelPath::new(bad.to_vec()).is_err(), "{bad:?} accepted");
        }
        assert!(RelPath::new(b"a/.georep/x".to_vec()).is_ok());
        assert!(RelPath::new(b"dir with space/\xffname\n".to_vec()).is_ok());
    }

    #[test]
    fn split_join_rebase() {
        let p = RelPath::new(b"a/b/c".to_vec()).unwrap();
        assert_eq!(p.split(), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(p.depth(), 3);
        let a = RelPath::new(b"a".to_vec()).unwrap();
        let z = RelPath::new(b"z/y".to_vec()).unwrap();
        assert!(p.starts_with(&a));
        assert!(!RelPath::new(b"ab".to_vec()).unwrap().starts_with(&a));
        assert_eq!(p.rebase(&a, &z).as_bytes(), b"z/y/b/c");
        assert_eq!(a.join(b"q").unwrap().as_bytes(), b"a/q");
        assert_eq!(RelPath::root().join(b"q").unwrap().as_bytes(), b"q");
    }
}
