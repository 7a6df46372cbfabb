//! Writing a received file's content: large files bypass the page cache.
//!
//! A DR copy is written once and rarely read, and the agent makes every batch durable before it
//! acknowledges it. Copying content into the page cache first only to write it back at `syncfs` is
//! the agent's largest cost for big files (measured in docs/benchmarks.md), so files of at least
//! [`DIRECT_MIN`] bytes are opened with `O_DIRECT` and written from an aligned staging buffer in
//! [`STAGE`]-byte blocks; the last partial block is written through the page cache.
//!
//! Invariant: the bytes that reach the file are exactly the bytes given to `write`, in order, in
//! both modes. A filesystem or device that refuses `O_DIRECT` (tmpfs on old kernels, some FUSE and
//! network filesystems, a sector size above [`ALIGN`]) silently gets buffered writes instead.

use rustix::fs::{self as rfs, OFlags};
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::AsFd;

/// Files at least this large bypass the page cache.
pub const DIRECT_MIN: u64 = 4 << 20;
/// Alignment of the buffer address, file offset and length of every direct write.
const ALIGN: usize = 4096;
/// Size of one direct write.
const STAGE: usize = 4 << 20;

/// An aligned staging area, kept by the applier across files (allocated on first use).
#[derive(Default)]
pub struct Stage {
    buf: Vec<u8>,
    /// Offset of the first aligned byte in `buf`.
    start: usize,
}

impl Stage {
    fn area(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0; STAGE + ALIGN];
            self.start = self.buf.as_ptr().align_offset(ALIGN);
        }
        &mut self.buf[self.start..self.start + STAGE]
    }
}

/// The content sink of one file being received.
pub struct ContentWriter {
    file: File,
    /// Whether the fd is in `O_DIRECT` mode; bytes are then staged until a block is full.
    direct: bool,
    staged: usize,
}

impl ContentWriter {
    /// Wraps a freshly created, empty file; `size` is the declared length of its content.
    pub fn new(file: File, size: u64) -> Self {
        let mut direct = false;
        if size >= DIRECT_MIN {
            if let Ok(flags) = rfs::fcntl_getfl(file.as_fd()) {
                direct = rfs::fcntl_setfl(file.as_fd(), flags | OFlags::DIRECT).is_ok();
            }
        }
        ContentWriter {
            file,
            direct,
            staged: 0,
        }
    }

    /// Appends `data`.
    pub fn write(&mut self, stage: &mut Stage, mut data: &[u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.write_all(data);
        }
        while !data.is_empty() {
            let area = stage.area();
            let n = data.len().min(STAGE - self.staged);
            area[self.staged..self.staged + n].copy_from_slice(&data[..n]);
            self.staged += n;
            data = &data[n..];
            if self.staged == STAGE {
                self.flush_blocks(stage)?;
            }
        }
        Ok(())
    }

    /// Writes the whole aligned blocks staged so far directly; keeps the remainder staged.
    fn flush_blocks(&mut self, stage: &mut Stage) -> io::Result<()> {
        let whole = self.staged / ALIGN * ALIGN;
        let mut done = 0;
        while done < whole {
            match self.file.write(&stage.area()[done..whole]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    // A short direct write leaves an unaligned offset: go on buffered.
                    if n % ALIGN != 0 {
                        return self.fall_back(stage, done);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The filesystem accepted the flag but not the write (alignment, no support).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return self.fall_back(stage, done)
                }
                Err(e) => return Err(e),
            }
        }
        stage.area().copy_within(whole..self.staged, 0);
        self.staged -= whole;
        Ok(())
    }

    /// Leaves `O_DIRECT` for the rest of the file: the staged bytes from `from` on are written
    /// through the page cache now, and later content goes there directly.
    fn fall_back(&mut self, stage: &mut Stage, from: usize) -> io::Result<()> {
        let flags = rfs::fcntl_getfl(self.file.as_fd())?;
        rfs::fcntl_setfl(self.file.as_fd(), flags - OFlags::DIRECT)?;
        self.direct = false;
        let staged = std::mem::take(&mut self.staged);
        self.file.write_all(&stage.area()[from..staged])
    }

    /// Leaves `len` bytes unwritten (a hole of a sparse file): they read as zeros and take no
    /// space. What follows goes through the page cache (a hole rarely ends on a block boundary
    /// of the staging buffer).
    pub fn skip(&mut self, stage: &mut Stage, len: u64) -> io::Result<()> {
        if self.direct {
            self.fall_back(stage, 0)?;
        }
        let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.file.seek(io::SeekFrom::Current(len))?;
        Ok(())
    }

    /// Writes what is still staged and gives the file back.
    pub fn finish(mut self, stage: &mut Stage) -> io::Result<File> {
        if self.direct && self.staged > 0 {
            self.flush_blocks(stage)?;
            if self.staged > 0 {
                // The last partial block cannot be written directly.
                self.fall_back(stage, 0)?;
            }
        }
        // A hole at the end: the file is as long as its content says.
        let end = self.file.stream_position()?;
        if end > self.file.metadata()?.len() {
            self.file.set_len(end)?;
        }
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(size: usize, pieces: &[usize]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8).collect();
        let file = File::create(&path).unwrap();
        let mut stage = Stage::default();
        let mut w = ContentWriter::new(file, size as u64);
        let mut rest = &content[..];
        let mut k = 0;
        while !rest.is_empty() {
            let n = pieces[k % pieces.len()].min(rest.len());
            w.write(&mut stage, &rest[..n]).unwrap();
            rest = &rest[n..];
            k += 1;
        }
        drop(w.finish(&mut stage).unwrap());
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), content.len());
        assert!(back == content, "content differs for size {size}");
    }

    #[test]
    fn falling_back_mid_file_keeps_every_byte() {
        // What a refused or short direct write does: whatever is staged, including bytes that
        // are not a whole block yet, goes out buffered, then the rest of the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let size = DIRECT_MIN as usize + 12_345;
        let content: Vec<u8> = (0..size).map(|i| (i * 31 + i / 4093) as u8).collect();
        let mut stage = Stage::default();
        let mut w = ContentWriter::new(File::create(&path).unwrap(), size as u64);
        let cut = STAGE + 5000;
        w.write(&mut stage, &content[..cut]).unwrap();
        assert!(w.staged > 0, "test needs staged bytes at the fall-back");
        w.fall_back(&mut stage, 0).unwrap();
        w.write(&mut stage, &content[cut..]).unwrap();
        drop(w.finish(&mut stage).unwrap());
        assert!(std::fs::read(&path).unwrap() == content);
    }

    #[test]
    fn direct_and_buffered_writes_keep_every_byte() {
        // Below the threshold, exactly blocks, a tail, odd pieces crossing block boundaries.
        roundtrip(1000, &[333]);
        roundtrip(DIRECT_MIN as usize, &[1 << 20]);
        roundtrip(DIRECT_MIN as usize * 2 + 4097, &[1 << 20, 12_345, 4096]);
        roundtrip(STAGE + 1, &[STAGE + 1]);
        roundtrip(DIRECT_MIN as usize + 100, &[7, 1 << 20, 65_537]);
    }
}
