//! The agent's durable state in `<root>/.georep/agent.db`: volume id, epoch, role, and the last
//! batch made durable per master brick.
//!
//! Invariant: `last_batch` for a brick is written only after the batch's data was synced, so a
//! master that resumes from it never skips a change.

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// What a slave volume is: it applies what a master sends, or it was promoted by failover
/// (writable, and it refuses replication into it). Stored as `slave`/`primary` in agent.db.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Slave,
    Primary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Slave => "slave",
            Role::Primary => "primary",
        }
    }
}

/// Version of the agent.db layout; an unknown version is refused rather than guessed at.
const FORMAT_VERSION: &str = "1";

pub struct AgentState {
    db: Connection,
    path: PathBuf,
    pub volume_id: String,
    pub epoch: u64,
}

/// SQLite's files of agent.db (a rollback journal only while a new file turns to WAL); the
/// first three are made through the state directory's descriptor before SQLite opens them.
const DB_FILES: [&str; 4] = [
    "agent.db",
    "agent.db-wal",
    "agent.db-shm",
    "agent.db-journal",
];

impl AgentState {
    /// Opens agent.db in the state directory checked by `check_state_dir`. SQLite reaches
    /// its files by path, not through the directory's descriptor: they are made through the
    /// descriptor first, SQLite is told to create nothing and to follow no symlink, and the
    /// files it then holds open must be those in the checked directory. So a `.georep`
    /// swapped meanwhile makes the connection fail; the agent never uses state elsewhere.
    pub fn open_in(sd: &StateDir) -> Result<Self> {
        use rustix::fs::{self as rfs, Mode, OFlags};
        // Made only when missing: closing a descriptor of a file this process holds open would
        // drop every POSIX lock SQLite holds on it here (another process could then checkpoint
        // and delete the WAL this agent still writes to). Not in another user's directory
        // (failover run by root): SQLite makes them there, owned like agent.db.
        for &name in DB_FILES[..3].iter().filter(|_| sd.ours) {
            match rfs::openat(
                &sd.fd,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(_) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .with_context(|| format!("making {}/{name}", sd.shown.display()))
                }
            }
        }
        let real = std::fs::read_link(sd.path())
            .with_context(|| format!("resolving {}", sd.shown.display()))?;
        let s = Self::open_path(&real.join("agent.db"))?;
        // Read now that this connection holds its locks: no other process deletes the WAL
        // under it any more. Every agent.db file this process holds (it holds one volume's
        // state) must be one of these, whatever path it was reached by.
        let mut ids = Vec::new();
        for name in DB_FILES {
            if let Ok(st) = rfs::statat(&sd.fd, name, rfs::AtFlags::SYMLINK_NOFOLLOW) {
                ids.push((st.st_dev, st.st_ino));
            }
        }
        for (fd, target) in open_files() {
            let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !DB_FILES.contains(&name) {
                continue;
            }
            let id = std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino())
                })
                .ok();
            if id.is_none_or(|id| !ids.contains(&id)) {
                bail!(
                    "{} was swapped while the agent opened its state ({} is open instead): \
                     refused. Something renames entries in the slave root, which only its owner \
                     should be able to do: `chmod +t` the slave root, or close it to other users",
                    sd.shown.display(),
                    target.display()
                );
            }
        }
        Ok(s)
    }

    /// The connection itself, for state kept beside agent.db's own (`dirtimes`).
    pub fn into_connection(self) -> Connection {
        self.db
    }

    fn open_path(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let db = crate::db::open_existing_nofollow(
            &path,
            crate::db::Sync::Full,
            FORMAT_VERSION,
            "agent state",
            &[],
        )?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS bricks(
                brick TEXT PRIMARY KEY, session TEXT NOT NULL,
                last_batch INTEGER NOT NULL, updated_ns INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS dir_times(
                path BLOB NOT NULL, brick TEXT NOT NULL, mtime_ns INTEGER NOT NULL,
                PRIMARY KEY(path, brick)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS owners(
                path BLOB PRIMARY KEY, owner TEXT NOT NULL) WITHOUT ROWID;",
        )?;
        let get = |k: &str| -> Result<Option<String>> {
            Ok(db
                .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .optional()?)
        };
        if get("volume_id")?.is_none() {
            // Another agent may initialise the volume at the same time: first writer wins.
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('volume_id', ?1), ('epoch', '0'), ('role', 'slave')",
                params![new_volume_id()?],
            )?;
        }
        let volume_id = get("volume_id")?.context("agent.db has no volume_id")?;
        let epoch = get("epoch")?
            .context("agent.db has no epoch")?
            .parse()
            .context("agent.db epoch is not a number")?;
        Ok(AgentState {
            db,
            path,
            volume_id,
            epoch,
        })
    }

    fn meta(&self, k: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, k: &str, v: &str) -> Result<()> {
        self.db
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![k, v],
            )
            .with_context(|| format!("writing {k} in {}", self.path.display()))?;
        Ok(())
    }

    /// The volume's role (`slave` unless a failover promoted it).
    pub fn role(&self) -> Result<Role> {
        match self.meta("role")?.as_deref() {
            None | Some("slave") => Ok(Role::Slave),
            Some("primary") => Ok(Role::Primary),
            Some(r) => anyhow::bail!(
                "unknown role {r:?} in {}: written by a newer georep? install the same version on both sites",
                self.path.display()
            ),
        }
    }

    /// When the volume was last promoted (ns since the epoch), if it was.
    pub fn failover_ns(&self) -> Result<Option<i64>> {
        Ok(self.meta("failover_ns")?.and_then(|v| v.parse().ok()))
    }

    /// Bumps the epoch (fencing every master at the old one) and sets the role.
    pub fn set_role(&mut self, role: Role) -> Result<u64> {
        let tx = self.db.unchecked_transaction()?;
        let epoch = self
            .meta("epoch")?
            .and_then(|e| e.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        self.set_meta("epoch", &epoch.to_string())?;
        self.set_meta("role", role.as_str())?;
        if role == Role::Primary {
            self.set_meta("failover_ns", &crate::journal::record::now_ns().to_string())?;
        }
        tx.commit()?;
        self.epoch = epoch;
        Ok(epoch)
    }

    /// The DR-side journal started by failover: (journal.db path, sequence of its starting GAP).
    pub fn dr_journal(&self) -> Result<Option<(PathBuf, u64)>> {
        let Some(p) = self.meta("dr_journal")?.filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let seq = self
            .meta("dr_journal_seq")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Some((PathBuf::from(p), seq)))
    }

    pub fn set_dr_journal(&self, j: Option<(&Path, u64)>) -> Result<()> {
        match j {
            Some((p, seq)) => {
                self.set_meta("dr_journal", &p.display().to_string())?;
                self.set_meta("dr_journal_seq", &seq.to_string())
            }
            None => self.set_meta("dr_journal", ""),
        }
    }

    /// (master brick, stime) of every brick that ever replicated here.
    pub fn stimes(&self) -> Result<Vec<(String, i64)>> {
        let mut st = self
            .db
            .prepare("SELECT key, value FROM meta WHERE key LIKE 'stime:%' ORDER BY key")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (k, v) = r?;
            out.push((k["stime:".len()..].to_string(), v.parse().unwrap_or(0)));
        }
        Ok(out)
    }

    /// Master bricks that made batches durable here (at most `limit`).
    pub fn replicated_from(&self, limit: usize) -> Result<Vec<String>> {
        let mut st = self
            .db
            .prepare("SELECT brick FROM bricks WHERE last_batch > 0 ORDER BY brick LIMIT ?1")?;
        let rows = st.query_map([limit as i64], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn last_batch(&self, brick: &str) -> Result<u64> {
        Ok(self
            .db
            .query_row(
                "SELECT last_batch FROM bricks WHERE brick = ?1",
                [brick],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// Records that batches of `brick` up to `batch` are durable, and the master brick's stime as
    /// of them (every change before it is here; 0: none told), in one transaction. Call only after
    /// the data was synced.
    pub fn record_durable(
        &self,
        brick: &str,
        session: &str,
        batch: u64,
        stime_ns: i64,
    ) -> Result<()> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let tx = self.db.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO bricks(brick, session, last_batch, updated_ns) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(brick) DO UPDATE SET session = ?2, last_batch = MAX(last_batch, ?3), updated_ns = ?4",
            params![brick, session, batch as i64, now],
        )?;
        if stime_ns > 0 {
            // Values are text: compare as numbers, never move stime back.
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = ?2 WHERE CAST(value AS INTEGER) < ?3",
                params![format!("stime:{brick}"), stime_ns.to_string(), stime_ns],
            )?;
        }
        tx.commit()
            .with_context(|| format!("recording batch {batch} in {}", self.path.display()))?;
        Ok(())
    }
}

fn new_volume_id() -> Result<String> {
    let mut b = [0u8; 16];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .context("reading random bytes for the volume id")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The files this process holds open: (fd, what it is open on).
fn open_files() -> Vec<(i32, PathBuf)> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).ok()?))
        })
        .collect()
}

/// The agent's state directory, `.georep` in the slave root, opened once and checked on its
/// descriptor. Everything beneath it (agent.db, locks, temp files, trash) is reached through
/// that descriptor (`/proc/self/fd/N/…`), so a `.georep` renamed or swapped after the check (by
/// a local user who can rename entries in the slave root) cannot redirect the agent's writes.
pub struct StateDir {
    fd: rustix::fd::OwnedFd,
    shown: PathBuf,
    /// Owned by this process's user (else: root acting on another user's volume).
    ours: bool,
}

impl StateDir {
    /// The path to reach the state through (valid while `self` lives, in this process).
    pub fn path(&self) -> PathBuf {
        use rustix::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Where it is, for messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }
}

/// Makes `.georep` (0700) in `root` or checks the one there: a real directory, not a symlink,
/// owned by this user and closed to others. A `.georep` planted by someone else (a symlink to
/// elsewhere, a directory others can write) is refused, naming the fix.
pub(crate) fn check_state_dir(root: &Path, host: &str) -> Result<StateDir> {
    state_dir_of(root, host, false)
}

/// For `failover`, which an operator may run as root on a volume whose agent runs as another
/// user: as [`check_state_dir`], but root also accepts the existing directory of the slave
/// root's owner, and changes nothing in it.
pub(crate) fn state_dir_for_operator(root: &Path, host: &str) -> Result<StateDir> {
    state_dir_of(root, host, true)
}

fn state_dir_of(root: &Path, host: &str, operator: bool) -> Result<StateDir> {
    use rustix::fs::{self as rfs, Mode, OFlags};
    let shown = root.join(".georep");
    let root_fd = crate::fsutil::open_root(root)
        .with_context(|| format!("opening slave root {} on {host}", root.display()))?;
    match rfs::mkdirat(&root_fd, ".georep", Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("creating {} on {host}", shown.display()))
        }
    }
    let uid = rustix::process::geteuid().as_raw();
    let root_st = rfs::fstat(&root_fd)?;
    if root_st.st_mode & 0o002 != 0 && root_st.st_mode & libc::S_ISVTX == 0 {
        // Anyone may rename `.georep` then. Everything georep opens beneath it goes through
        // the descriptor checked below; SQLite names agent.db's side files by path, so a swap
        // at the wrong moment can leave one of them (never used) where the swap pointed.
        tracing::warn!(
            "slave root {} on {host} is writable by every user and has no sticky bit: anyone can rename georep's state directory in it; `chmod +t {}` closes that",
            root.display(),
            root.display()
        );
    }
    let fd = match rfs::openat(
        &root_fd,
        ".georep",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => bail!(
            "{} on {host} is not a directory owned by this user (uid {uid}) but a symlink or another file: georep keeps its state there and never follows one; remove it and run again",
            shown.display()
        ),
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("opening {} on {host}", shown.display()))
        }
    };
    let st = rfs::fstat(&fd).with_context(|| format!("reading {} on {host}", shown.display()))?;
    let ours = st.st_uid == uid;
    let roots_owner =
        operator && uid == 0 && st.st_uid == root_st.st_uid && st.st_mode & 0o022 == 0;
    if !ours && !roots_owner {
        bail!(
            "{} on {host} is not a directory owned by this user (uid {uid}; it is owned by uid {}): georep does not keep its state in another user's directory. If it is this volume's own state from an agent run as that user, `chown -R {uid} {}` keeps it (its agent.db holds the volume's role and epoch: do not remove it)",
            shown.display(),
            st.st_uid,
            shown.display()
        );
    }
    if ours && st.st_mode & 0o022 != 0 {
        // Made by an older georep with the umask's mode: close it.
        rfs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .with_context(|| format!("closing {} on {host} to other users", shown.display()))?;
    }
    Ok(StateDir { fd, shown, ours })
}
