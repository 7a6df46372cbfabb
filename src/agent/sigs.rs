//! Block sums of the slave's copies, for delta transfer (`Signatures` → `Signature`s).

use crate::delta;
use crate::fsutil;
use crate::protocol::{Message, SigAsk, Signature};
use crate::transport::conn::FrameWriter;
use anyhow::Result;
use rustix::fd::{AsFd, OwnedFd};

/// Sums the regular file `a.path` beneath `root` (confined, no symlink followed, a FIFO or
/// device never opened) and sends its sums; a path that is not a readable regular file gets
/// an empty answer (`done: Some(None)`) and the master sends that file whole.
pub fn send(root: &OwnedFd, a: &SigAsk, w: &mut FrameWriter) -> Result<()> {
    let none = |w: &mut FrameWriter, block: u32| {
        w.send(&Message::Signature(Signature {
            token: a.token,
            block,
            sums: Vec::new(),
            done: Some(None),
        }))
    };
    let fd = match fsutil::open_regular_beneath(
        root.as_fd(),
        a.path.as_bytes(),
        rustix::fs::OFlags::NOATIME,
    )
    .or_else(|_| {
        fsutil::open_regular_beneath(root.as_fd(), a.path.as_bytes(), rustix::fs::OFlags::empty())
    }) {
        Ok(Some(fd)) => fd,
        _ => return Ok(none(w, delta::MIN_BLOCK)?),
    };
    let size = match rustix::fs::fstat(&fd) {
        Ok(st) => st.st_size as u64,
        Err(_) => return Ok(none(w, delta::MIN_BLOCK)?),
    };
    let Some(block) = delta::block_size_within(size, a.max_sums) else {
        return Ok(none(w, delta::MIN_BLOCK)?);
    };
    // The size summed is the one the block size was chosen for, whatever the file does now.
    use std::io::Read;
    let mut f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::from(fd)).take(size);
    let read = delta::signature(&mut f, block, |sums| {
        w.send(&Message::Signature(Signature {
            token: a.token,
            block,
            sums: delta::pack(&sums),
            done: None,
        }))
    });
    match read {
        Ok(n) => w.send(&Message::Signature(Signature {
            token: a.token,
            block,
            sums: Vec::new(),
            done: Some(Some(n)),
        }))?,
        Err(e) => {
            tracing::warn!("summing the blocks of {} for a delta: {e}", a.path);
            none(w, block)?
        }
    }
    Ok(())
}
