//! A file's content as it streams: whole (`FileBegin`), appended (`FileAppend`), or rebuilt from
//! the slave's copy (`FileDelta`), written under a temp name and renamed into place, durable
//! before it counts.

use super::*;

pub(super) struct OpenFile {
    pub(super) path: RelPath,
    pub(super) meta: Meta,
    pub(super) size: u64,
    pub(super) written: u64,
    pub(super) hasher: blake3::Hasher,
    /// `None` when creating the temp file failed: the content is read and dropped.
    pub(super) fd: Option<ContentWriter>,
    /// The temp file's name in the temp directory; `None` while it has none (`O_TMPFILE`).
    pub(super) tmpname: Option<String>,
    /// A `FileAppend` or a `FileDelta`: some of its bytes come from the slave's own copy, so
    /// a whole that does not check means that copy is not the one the master built on.
    pub(super) append: bool,
    /// A `FileDelta`'s base: the slave's copy (`None` when it is not the declared one: the
    /// file has failed), and the declared block size and size.
    pub(super) base: Option<(Option<std::fs::File>, u32, u64)>,
}

impl Applier {
    /// The path of the file being received, if any.
    pub fn file_path(&self) -> Option<&RelPath> {
        self.file.as_ref().map(|f| &f.path)
    }

    pub fn file_open(&self) -> bool {
        self.file.is_some()
    }

    /// Starts receiving a file. An error is reported once; its content is still consumed.
    pub fn begin_file(&mut self, fb: &FileBegin) -> ApplyResult {
        let checked = self.xattrs(&fb.path, &fb.meta).map(drop);
        let created = checked.and_then(|()| {
            self.create_temp(fb.meta.mode & 0o777)
                .map_err(|e| ApplyError::new(&fb.path, "creating file", e))
        });
        let (fd, tmpname, err) = match created {
            Ok((fd, name)) => (
                Some(ContentWriter::new(std::fs::File::from(fd), fb.size)),
                name,
                None,
            ),
            Err(e) => (None, None, Some(e)),
        };
        self.file = Some(OpenFile {
            path: fb.path.clone(),
            meta: fb.meta.clone(),
            size: fb.size,
            written: 0,
            hasher: blake3::Hasher::new(),
            fd,
            tmpname,
            append: false,
            base: None,
        });
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts a file made of the slave's current copy at the path (exactly `base` bytes)
    /// and the `size - base` bytes that follow in `Chunk`s, into a temp file as `begin_file`
    /// does: the copy at the path is untouched until the whole is checked and renamed in. An
    /// error is reported once; the tail is still consumed.
    pub fn begin_append(&mut self, fa: &FileAppend) -> ApplyResult {
        let r = self.begin_file(&FileBegin {
            path: fa.path.clone(),
            meta: fa.meta.clone(),
            size: fa.size,
        });
        let copied = r.and_then(|()| self.copy_base(&fa.path, fa.base));
        let f = self.file.as_mut().expect("begun above");
        f.append = true;
        if copied.is_err() {
            // The base counts as received: the tail that follows is consumed and dropped.
            f.written = fa.base;
            if let Some(w) = f.fd.take() {
                drop(w);
                let t = f.tmpname.take();
                self.discard(&t);
            }
        }
        copied
    }

    /// Starts a file rebuilt from blocks of the slave's copy at the path (which must be
    /// exactly `base` bytes) and literal chunks, into a temp file as `begin_file` does. An
    /// error is reported once; the content is still consumed.
    pub fn begin_delta(&mut self, fd: &crate::protocol::FileDelta) -> ApplyResult {
        let r = self.begin_file(&FileBegin {
            path: fd.path.clone(),
            meta: fd.meta.clone(),
            size: fd.size,
        });
        let base = r.and_then(|()| self.open_base(&fd.path, fd.base));
        let f = self.file.as_mut().expect("begun above");
        f.append = true;
        match base {
            Ok(file) => {
                f.base = Some((Some(file), fd.block, fd.base));
                Ok(())
            }
            Err(e) => {
                f.base = Some((None, fd.block, fd.base));
                if let Some(w) = f.fd.take() {
                    drop(w);
                    let t = f.tmpname.take();
                    self.discard(&t);
                }
                Err(e)
            }
        }
    }

    /// The slave's copy at `path`, which must be a regular file of `base` bytes.
    pub(super) fn open_base(&self, path: &RelPath, base: u64) -> ApplyResult<std::fs::File> {
        let fd = fsutil::open_regular_beneath(
            self.parents.root.as_fd(),
            path.as_bytes(),
            OFlags::empty(),
        )
        .map_err(|e| ApplyError::new(path, "reading the copy to build on", e))?
        .ok_or_else(|| stale(path, "not a regular file".into()))?;
        let have = rfs::fstat(&fd)
            .map_err(|e| ApplyError::new(path, "reading the copy to build on", e.into()))?
            .st_size as u64;
        if have != base {
            return Err(stale(path, format!("{have} bytes, not {base}")));
        }
        Ok(std::fs::File::from(fd))
    }

    /// `count` blocks of the open `FileDelta`'s base from block `first` on, as content. Same
    /// error convention as `chunk`; a reference outside the base is a protocol violation.
    pub fn copy_blocks(&mut self, first: u32, count: u32) -> ContentResult {
        use std::os::unix::fs::FileExt;
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| ContentError::Broken("a block reference outside a file".to_string()))?;
        let Some((_, block, size)) = f.base.as_ref() else {
            return Err(ContentError::Broken(format!(
                "a block reference in {}, which is not a delta",
                f.path
            )));
        };
        let (block, size) = (*block as u64, *size);
        let start = first as u64 * block;
        let end = (first as u64 + count as u64) * block;
        if count == 0 || start >= size || end - block >= size {
            return Err(ContentError::Broken(format!(
                "blocks {first}..{} of {} are outside its {size}-byte base",
                first as u64 + count as u64,
                f.path
            )));
        }
        let end = end.min(size);
        let path = f.path.clone();
        let mut buf = vec![0u8; (end - start).min(1 << 20) as usize];
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            let f = self.file.as_mut().expect("open");
            match f.base.as_ref().and_then(|b| b.0.as_ref()) {
                Some(base) => {
                    if let Err(e) = base.read_exact_at(&mut buf[..n], at) {
                        // The file fails; what is left of it is consumed, never written, so
                        // the stream stays in step.
                        if let Some(b) = f.base.as_mut() {
                            b.0 = None;
                        }
                        if let Some(w) = f.fd.take() {
                            drop(w);
                            let t = f.tmpname.take();
                            self.discard(&t);
                        }
                        self.take_content(end - at, None)?;
                        return Err(ContentError::Failed(stale(
                            &path,
                            format!("reading it: {e}"),
                        )));
                    }
                    self.take_content(n as u64, Some(&buf[..n]))?;
                }
                // Failed at its start: consumed, never written.
                None => self.take_content(n as u64, None)?,
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Feeds the slave's copy of `path`, which must be `base` bytes long, into the open file.
    pub(super) fn copy_base(&mut self, path: &RelPath, base: u64) -> ApplyResult {
        use std::io::Read;
        let stale = |why: String| stale(path, why);
        let fd = fsutil::open_regular_beneath(
            self.parents.root.as_fd(),
            path.as_bytes(),
            OFlags::empty(),
        )
        .map_err(|e| ApplyError::new(path, "reading the copy to append to", e))?
        .ok_or_else(|| stale("not a regular file".into()))?;
        let have = rfs::fstat(&fd)
            .map_err(|e| ApplyError::new(path, "reading the copy to append to", e.into()))?
            .st_size as u64;
        if have != base {
            return Err(stale(format!("{have} bytes, not {base}")));
        }
        let mut src = std::fs::File::from(fd).take(base);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(|e| ApplyError::new(path, "reading the copy to append to", e))?;
            if n == 0 {
                break;
            }
            match self.chunk(&buf[..n]) {
                Ok(()) => {}
                Err(ContentError::Failed(e)) => return Err(e),
                Err(ContentError::Broken(msg)) => return Err(stale(msg)),
            }
        }
        match self.file.as_ref() {
            Some(f) if f.written == base => Ok(()),
            _ => Err(stale("it shrank while read".into())),
        }
    }

    /// Removes a named temp file that will not be placed (an unnamed one goes with its fd).
    pub(super) fn discard(&self, tmpname: &Option<String>) {
        if let Some(t) = tmpname {
            let _ = rfs::unlinkat(self.tmp.as_fd(), t.as_str(), AtFlags::empty());
        }
    }

    /// Appends `len` zero bytes as a hole, left unallocated. Same error convention as `chunk`.
    pub fn hole(&mut self, len: u64) -> ContentResult {
        self.take_content(len, None)
    }

    /// Appends content. `Err(ContentError::Failed(e))` is a per-file failure (reported, stream continues);
    /// `Err(ContentError::Broken(msg))` a protocol violation.
    pub fn chunk(&mut self, data: &[u8]) -> ContentResult {
        self.take_content(data.len() as u64, Some(data))
    }

    /// `len` more bytes of the open file: `data`, or a hole when `None`.
    pub(super) fn take_content(&mut self, len: u64, data: Option<&[u8]>) -> ContentResult {
        let f = self.file.as_mut().ok_or_else(|| {
            ContentError::Broken(match data {
                Some(_) => "file content outside a file".to_string(),
                None => "a hole outside a file".to_string(),
            })
        })?;
        f.written = f.written.saturating_add(len);
        if f.written > f.size {
            return Err(ContentError::Broken(format!(
                "file {} sends more than its declared {} bytes",
                f.path, f.size
            )));
        }
        match data {
            Some(d) => {
                f.hasher.update(d);
            }
            None => crate::sparse::hash_zeros(&mut f.hasher, len),
        }
        if let Some(fd) = f.fd.as_mut() {
            let r = match data {
                Some(d) => fd.write(&mut self.stage, d),
                None => fd.skip(&mut self.stage, len),
            };
            if let Err(e) = r {
                let err = ApplyError::new(&f.path, "writing file", e);
                f.fd = None;
                let t = f.tmpname.take();
                self.discard(&t);
                return Err(ContentError::Failed(err));
            }
        }
        Ok(())
    }

    /// Finishes a file: verifies size and hash, sets metadata, renames into place.
    /// Same error convention as `chunk`; `Ok(false)` means the file was already reported failed.
    pub fn end_file(&mut self, hash: &[u8; 32], commit: bool) -> ContentResult<bool> {
        let f = self
            .file
            .take()
            .ok_or_else(|| ContentError::Broken("FileEnd outside a file".to_string()))?;
        if f.written != f.size {
            return Err(ContentError::Broken(format!(
                "file {} ended after {} of its declared {} bytes",
                f.path, f.written, f.size
            )));
        }
        if f.append && f.fd.is_none() {
            // Reported failed at its start: the hash covers a base never read here.
            return Ok(false);
        }
        if f.hasher.finalize().as_bytes() != hash {
            if f.append {
                // The frames are checked: what differs is the base, the slave's own copy.
                self.discard(&f.tmpname);
                return Err(ContentError::Failed(ApplyError {
                    errno: libc::ESTALE,
                    message: format!(
                        "the DR copy of {} is not the version this change builds on (its content differs): it is sent whole on the next pass",
                        f.path
                    ),
                    path: f.path,
                }));
            }
            return Err(ContentError::Broken(format!(
                "content hash of {} does not match what the master sent: the stream is corrupt",
                f.path
            )));
        }
        let Some(w) = f.fd else { return Ok(false) };
        if !commit {
            drop(w);
            self.discard(&f.tmpname);
            return Ok(false);
        }
        let fd = match w.finish(&mut self.stage) {
            Ok(fd) => fd,
            Err(e) => {
                self.discard(&f.tmpname);
                return Err(ContentError::Failed(ApplyError::new(
                    &f.path,
                    "writing file",
                    e,
                )));
            }
        };
        let xattrs = f.meta.xattrs.as_deref().filter(|_| self.xattr_scope != 0);
        let r = self
            .fix_owner_mode_fd(fd.as_fd(), &f.meta)
            .and_then(|()| match xattrs {
                // After the mode (an access ACL's mask is the group bits), before the file
                // is visible: it appears with its attributes or not at all.
                Some(list) => {
                    crate::xattr::apply(crate::xattr::At::Fd(fd.as_fd()), list, self.xattr_scope)
                        .map(drop)
                }
                None => Ok(()),
            })
            .and_then(|()| rfs::futimens(&fd, &times(&f.meta)).map_err(Into::into));
        if let Err(e) = r {
            self.discard(&f.tmpname);
            return Err(ContentError::Failed(ApplyError::new(
                &f.path,
                "setting attributes of",
                e,
            )));
        }
        if let Some(fs) = self.fuse.as_mut() {
            // Before it gets its name, so a file is never visible (nor acked) before its
            // content reached the FUSE daemon's storage; no descriptor is held until the ack.
            if let Err(e) = rfs::fsync(&fd) {
                self.discard(&f.tmpname);
                return Err(ContentError::Failed(ApplyError::new(
                    &f.path,
                    "syncing file",
                    e.into(),
                )));
            }
            fs.entry(&f.path);
        }
        // The version being replaced goes to the trash in `replace_into` (a hard link).
        match &f.tmpname {
            Some(t) => {
                drop(fd);
                self.replace_into(&f.path, t, "renaming into place")
            }
            None => self.link_into(&f.path, fd.as_fd()),
        }
        .map_err(ContentError::Failed)?;
        Ok(true)
    }

    /// Makes everything applied so far durable.
    pub fn sync(&self) -> io::Result<()> {
        rfs::syncfs(&self.parents.root)?;
        Ok(())
    }
}
