//! Sparse files: where the holes are (`SEEK_DATA`/`SEEK_HOLE`), so that they travel as `Hole`
//! messages and stay unallocated on the DR side, and the hash of the zeros they read as (both
//! sides hash the whole content, holes included).

use rustix::fs::{self as rfs, SeekFrom};
use std::fs::File;
use std::io;

/// Holes shorter than this travel as zeros: a message each would cost more than it saves.
pub const HOLE_MIN: u64 = 64 << 10;

/// Whether `file` (`size` bytes long) has fewer blocks allocated than its size needs, the only
/// case worth looking for holes in.
pub fn is_sparse(file: &File, size: u64) -> bool {
    size >= HOLE_MIN
        && rfs::fstat(file).is_ok_and(|st| (st.st_blocks as u64).saturating_mul(512) < size)
}

/// What comes next in a file from some offset: a hole of this many bytes, or this many bytes
/// of data (holes shorter than `HOLE_MIN` included, as zeros).
#[derive(Debug, PartialEq)]
pub enum Run {
    Hole(u64),
    Data(u64),
}

/// The next `HOLE_MIN`-wide hole at or after `at` (`size` if there is none).
fn hole_from(file: &File, at: u64, size: u64) -> io::Result<u64> {
    let mut from = at;
    loop {
        let h = match rfs::seek(file, SeekFrom::Hole(from)) {
            Ok(h) => h.min(size),
            Err(rustix::io::Errno::NXIO) => return Ok(size),
            Err(e) => return Err(e.into()),
        };
        if h >= size {
            return Ok(size);
        }
        let d = match rfs::seek(file, SeekFrom::Data(h)) {
            Ok(d) => d.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        // Wide enough, or the end (a short hole at the end goes as zeros).
        if d >= size {
            return Ok(if size - h >= HOLE_MIN { h } else { size });
        }
        if d - h >= HOLE_MIN {
            return Ok(h);
        }
        if d <= from {
            return Ok(size); // a filesystem that answers oddly: the rest is data
        }
        from = d;
    }
}

/// What comes next in `file` from `pos` (< `size`). Moves the file offset: seek back to `pos`
/// before reading. A filesystem that knows no holes (`EINVAL`) gives data to the end.
pub fn next(file: &File, pos: u64, size: u64) -> io::Result<Run> {
    let data = match rfs::seek(file, SeekFrom::Data(pos)) {
        Ok(d) => d.min(size),
        Err(rustix::io::Errno::NXIO) => size,
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
            return Ok(Run::Data(size - pos))
        }
        Err(e) => return Err(e.into()),
    };
    if data - pos >= HOLE_MIN || (data == size && data > pos) {
        return Ok(Run::Hole(data - pos));
    }
    Ok(Run::Data(hole_from(file, data, size)? - pos))
}

/// Feeds `len` zero bytes to `h`.
pub fn hash_zeros(h: &mut blake3::Hasher, len: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        left -= n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    /// A file with data at 0..4 KiB and 1 MiB..1 MiB+4 KiB, 2 MiB long, walked run by run, gives
    /// back exactly its layout; the runs add up to the size and hash as the file reads.
    #[test]
    fn runs_cover_the_file_and_hash_as_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let mut f = File::create(&p).unwrap();
        f.set_len(2 << 20).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        f.seek(io::SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[2u8; 4096]).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&p).unwrap();
        let size = 2 << 20;
        if !is_sparse(&f, size) {
            eprintln!("this filesystem allocated the holes: nothing to check");
            return;
        }
        let (mut pos, mut runs) = (0, Vec::new());
        let mut h = blake3::Hasher::new();
        while pos < size {
            let r = next(&f, pos, size).unwrap();
            let len = match r {
                Run::Hole(n) => {
                    hash_zeros(&mut h, n);
                    n
                }
                Run::Data(n) => {
                    use std::io::Read;
                    let mut buf = vec![0; n as usize];
                    (&f).seek(io::SeekFrom::Start(pos)).unwrap();
                    (&f).read_exact(&mut buf).unwrap();
                    h.update(&buf);
                    n
                }
            };
            runs.push(r);
            pos += len;
        }
        assert_eq!(
            runs,
            vec![
                Run::Data(4096),
                Run::Hole((1 << 20) - 4096),
                Run::Data(4096),
                Run::Hole((1 << 20) - 4096)
            ]
        );
        assert_eq!(h.finalize(), blake3::hash(&std::fs::read(&p).unwrap()));
    }
}
