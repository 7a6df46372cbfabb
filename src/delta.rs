//! Delta transfer, rsync's algorithm: the agent sums the blocks of its copy (a rolling weak
//! sum and a strong hash each), the master finds those blocks in the new content at any
//! offset and sends references to them plus the bytes between (literals).
//!
//! Written here rather than taken from a crate: `fast_rsync` (librsync's format) and
//! `librsync` want the whole file in memory (or a C library), while both sides here stream
//! files of any size in bounded memory, and the master hashes the new content (blake3, checked
//! by the agent) in the same read. The weak sum is rsync's (`s1`, `s2` mod 2^16); the strong
//! hash is xxh3's 64 bits (rsync 3.2's choice too; blake3 per block cost a third of the time),
//! which the whole-file blake3 backs: a false match is a failed file sent whole on the next
//! pass, never a wrong copy.

use std::collections::HashMap;
use std::io::{self, Read};

/// Files below this size are sent whole by default: a delta saves little and costs a read of
/// both copies.
pub const MIN_SIZE: u64 = 1 << 20;
/// Block sizes: about the square root of the size (rsync's rule), in these bounds.
pub const MIN_BLOCK: u32 = 2 << 10;
pub const MAX_BLOCK: u32 = 4 << 20;
/// Block sums per `Signature` message.
pub const SUMS_PER_MESSAGE: usize = 16 << 10;
/// Literal bytes per piece at most.
pub const LITERAL_MAX: usize = 1 << 20;
/// When nothing matched in this many bytes, the rest is sent as it is: a file rewritten
/// through does not pay for a byte-by-byte search.
pub const GIVE_UP_AFTER: u64 = 32 << 20;

/// The block size for a copy of `size` bytes.
pub fn block_size(size: u64) -> u32 {
    let root = (size as f64).sqrt() as u64;
    let rounded = root.div_ceil(1024) * 1024;
    rounded.clamp(MIN_BLOCK as u64, MAX_BLOCK as u64) as u32
}

/// The block size for a copy of `size` bytes summed in at most `max_sums` blocks; `None`
/// when even the largest blocks are too many.
pub fn block_size_within(size: u64, max_sums: u32) -> Option<u32> {
    let fit = size.div_ceil(max_sums.max(1) as u64).div_ceil(1024) * 1024;
    let block = (block_size(size) as u64).max(fit);
    (block <= MAX_BLOCK as u64).then_some(block as u32)
}

/// One block's sums: rsync's weak rolling sum and its xxh3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSum {
    pub weak: u32,
    pub strong: u64,
}

/// Bytes of one packed sum on the wire.
pub const SUM_LEN: usize = 12;

/// Sums packed for the wire: `SUM_LEN` bytes each, little-endian (random numbers, so no
/// variable-length encoding would shrink them).
pub fn pack(sums: &[BlockSum]) -> Vec<u8> {
    let mut v = Vec::with_capacity(sums.len() * SUM_LEN);
    for s in sums {
        v.extend_from_slice(&s.weak.to_le_bytes());
        v.extend_from_slice(&s.strong.to_le_bytes());
    }
    v
}

/// `pack` undone; `None` when the length is not a whole number of sums.
pub fn unpack(b: &[u8]) -> Option<Vec<BlockSum>> {
    (b.len() % SUM_LEN == 0).then(|| {
        b.chunks_exact(SUM_LEN)
            .map(|c| BlockSum {
                weak: u32::from_le_bytes(c[..4].try_into().expect("4 bytes")),
                strong: u64::from_le_bytes(c[4..].try_into().expect("8 bytes")),
            })
            .collect()
    })
}

/// rsync's weak sum of `data`: `s1` = the bytes' sum, `s2` = the sum of the running `s1`s.
pub fn weak(data: &[u8]) -> u32 {
    // `s2` is the sum of the running `s1`s: each byte weighted by how many of them it is in.
    // Taken 16 bytes at a time with constant weights in 16-bit lanes (16 x 16 x 255 fits),
    // the inner sums vectorize on any x86-64: 8 GB/s here, twice the byte-by-byte loop.
    const L: usize = 16;
    let (mut s1, mut s2) = (0u32, 0u32);
    let chunks = data.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        let (mut sum, mut weighted) = (0u16, 0u16);
        for (j, &b) in c.iter().enumerate() {
            sum = sum.wrapping_add(b as u16);
            weighted = weighted.wrapping_add(((L - j) as u16).wrapping_mul(b as u16));
        }
        s2 = s2
            .wrapping_add((L as u32).wrapping_mul(s1))
            .wrapping_add(weighted as u32);
        s1 = s1.wrapping_add(sum as u32);
    }
    for &b in tail {
        s1 = s1.wrapping_add(b as u32);
        s2 = s2.wrapping_add(s1);
    }
    (s1 & 0xffff) | (s2 << 16)
}

pub fn strong(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// Sums the blocks of `r` (`size` bytes, blocks of `block`), handing them to `out` in groups
/// as they are read; the last block may be short. Returns the bytes read (less than `size`
/// when the file shrank meanwhile: the sums stop there).
pub fn signature(
    r: &mut impl Read,
    block: u32,
    mut out: impl FnMut(Vec<BlockSum>) -> io::Result<()>,
) -> io::Result<u64> {
    let block = block as usize;
    let mut buf = vec![0u8; block];
    let mut group = Vec::with_capacity(SUMS_PER_MESSAGE);
    let mut total = 0u64;
    loop {
        let mut n = 0;
        while n < block {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        total += n as u64;
        group.push(BlockSum {
            weak: weak(&buf[..n]),
            strong: strong(&buf[..n]),
        });
        if group.len() == SUMS_PER_MESSAGE {
            out(std::mem::replace(
                &mut group,
                Vec::with_capacity(SUMS_PER_MESSAGE),
            ))?;
        }
        if n < block {
            break;
        }
    }
    if !group.is_empty() {
        out(group)?;
    }
    Ok(total)
}

/// What the new content is made of, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// `count` blocks of the slave's copy from block `first` on.
    Copy {
        first: u32,
        count: u32,
    },
    Literal(Vec<u8>),
}

/// The slave copy's sums, indexed for the search.
pub struct Index {
    block: usize,
    /// The copy's last block's length (the only short one).
    last_len: usize,
    sums: Vec<BlockSum>,
    by_weak: HashMap<u32, Vec<u32>>,
    /// A bit per weak-sum bucket: most positions are ruled out without a hash-map lookup.
    tags: Vec<u64>,
}

const TAG_BITS: u32 = 24;

fn tag(weak: u32) -> usize {
    (weak.wrapping_mul(0x9E37_79B1) >> (32 - TAG_BITS)) as usize
}

impl Index {
    pub fn new(block: u32, base: u64, sums: Vec<BlockSum>) -> Index {
        let mut by_weak: HashMap<u32, Vec<u32>> = HashMap::with_capacity(sums.len());
        let mut tags = vec![0u64; 1 << (TAG_BITS - 6)];
        for (i, s) in sums.iter().enumerate() {
            // A few blocks of one weak sum are plenty (zeros, repeated records); more would
            // let a hostile DR side make every position of the search scan them all.
            let c = by_weak.entry(s.weak).or_default();
            if c.len() >= 64 {
                continue;
            }
            c.push(i as u32);
            let t = tag(s.weak);
            tags[t >> 6] |= 1 << (t & 63);
        }
        let block = block as usize;
        let last_len = match base % block as u64 {
            0 if base > 0 => block,
            r => r as usize,
        };
        Index {
            block,
            last_len,
            sums,
            by_weak,
            tags,
        }
    }

    pub fn blocks(&self) -> u32 {
        self.sums.len() as u32
    }

    /// The block whose sums `data` has (its length must fit the block: a full block, or the
    /// copy's last one).
    fn find(&self, weak: u32, data: &[u8]) -> Option<u32> {
        let t = tag(weak);
        if self.tags[t >> 6] & (1 << (t & 63)) == 0 {
            return None;
        }
        let cands = self.by_weak.get(&weak)?;
        let mut strong_of = None;
        for &i in cands {
            let len = if i as usize == self.sums.len() - 1 {
                self.last_len
            } else {
                self.block
            };
            if len != data.len() {
                continue;
            }
            let s = *strong_of.get_or_insert_with(|| strong(data));
            if s == self.sums[i as usize].strong {
                return Some(i);
            }
        }
        None
    }
}

/// Reads the new content from `r` (`size` bytes) and describes it as pieces of the slave's
/// copy (`idx`) and literals, handed to `out` in order; every byte read also goes to `seen`
/// (the whole-file hash). Memory: a buffer of a few MiB, whatever the size. Returns the bytes
/// read and the literal bytes among them.
pub fn diff(
    r: &mut impl Read,
    size: u64,
    idx: &Index,
    mut seen: impl FnMut(&[u8]),
    mut out: impl FnMut(Piece) -> io::Result<()>,
) -> io::Result<(u64, u64)> {
    let block = idx.block;
    let read_size = (4 << 20).max(block * 2);
    // buf holds the file from offset `start`; `pos` and `lit` are indices into it.
    let mut buf: Vec<u8> = Vec::with_capacity(read_size + block + LITERAL_MAX);
    let mut eof = false;
    let mut total = 0u64;
    let mut literal = 0u64;
    let (mut pos, mut lit) = (0usize, 0usize);
    let mut pending: Option<(u32, u32)> = None;
    let mut rolling: Option<(u32, u32)> = None; // (s1, s2) of buf[pos..pos+block]
    let mut since_match = 0u64;
    let mut searching = !idx.sums.is_empty();
    // A run of blocks found one after the other goes as one `Copy`.
    fn copy(
        pending: &mut Option<(u32, u32)>,
        out: &mut impl FnMut(Piece) -> io::Result<()>,
    ) -> io::Result<()> {
        match pending.take() {
            Some((first, count)) => out(Piece::Copy { first, count }),
            None => Ok(()),
        }
    }
    loop {
        // Keep more than a block ahead of `pos` in the buffer, unless the file ended.
        if !eof && buf.len() - pos <= block {
            // Drop what is done: everything before the literal run.
            if lit > 0 {
                buf.drain(..lit);
                pos -= lit;
                lit = 0;
            }
            let have = buf.len();
            buf.resize(have + read_size, 0);
            let mut n = 0;
            while n < read_size && total < size {
                let want = (read_size - n).min((size - total) as usize);
                match r.read(&mut buf[have + n..have + n + want]) {
                    Ok(0) => break,
                    Ok(k) => {
                        n += k;
                        total += k as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(have + n);
            seen(&buf[have..]);
            if n < read_size || total >= size {
                eof = true;
            }
            continue;
        }
        if pos - lit >= LITERAL_MAX {
            copy(&mut pending, &mut out)?;
            literal += (pos - lit) as u64;
            out(Piece::Literal(buf[lit..pos].to_vec()))?;
            lit = pos;
        }
        let left = buf.len() - pos;
        if left == 0 {
            break;
        }
        if !searching {
            pos = buf.len().min(lit + LITERAL_MAX);
            continue;
        }
        let mut len = block;
        if left < block {
            // The file ended (else the buffer was filled): only the copy's short last
            // block can match, and only as the very end of the new content.
            if idx.last_len >= block || left < idx.last_len {
                pos = buf.len();
                continue;
            }
            pos = buf.len() - idx.last_len;
            len = idx.last_len;
            rolling = None;
        }
        let (s1, s2) = match rolling {
            Some(s) => s,
            None => {
                let w = weak(&buf[pos..pos + len]);
                (w & 0xffff, w >> 16)
            }
        };
        let w = (s1 & 0xffff) | (s2 << 16);
        if let Some(i) = idx.find(w, &buf[pos..pos + len]) {
            if pos > lit {
                copy(&mut pending, &mut out)?;
                literal += (pos - lit) as u64;
                out(Piece::Literal(buf[lit..pos].to_vec()))?;
            }
            match &mut pending {
                Some((first, count)) if *first + *count == i => *count += 1,
                _ => {
                    copy(&mut pending, &mut out)?;
                    pending = Some((i, 1));
                }
            }
            pos += len;
            lit = pos;
            rolling = None;
            since_match = 0;
            continue;
        }
        if len < block {
            // The short tail did not match: it is literal.
            pos = buf.len();
            continue;
        }
        since_match += 1;
        if since_match > GIVE_UP_AFTER {
            searching = false;
            continue;
        }
        // Roll one byte on; the next window's sum follows from this one's.
        rolling = (pos + block < buf.len()).then(|| {
            let (o, i) = (buf[pos] as u32, buf[pos + block] as u32);
            let ns1 = s1.wrapping_sub(o).wrapping_add(i);
            let ns2 = s2
                .wrapping_sub((block as u32).wrapping_mul(o))
                .wrapping_add(ns1);
            (ns1, ns2)
        });
        pos += 1;
    }
    if pos > lit {
        copy(&mut pending, &mut out)?;
        literal += (pos - lit) as u64;
        out(Piece::Literal(buf[lit..pos].to_vec()))?;
    }
    copy(&mut pending, &mut out)?;
    Ok((total, literal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Rebuilds the new content from `base` and the pieces, as the agent does.
    fn rebuild(base: &[u8], block: usize, pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Copy { first, count } => {
                    let a = *first as usize * block;
                    let b = ((*first + *count) as usize * block).min(base.len());
                    out.extend_from_slice(&base[a..b]);
                }
                Piece::Literal(d) => out.extend_from_slice(d),
            }
        }
        out
    }

    fn roundtrip(base: &[u8], new: &[u8], block: u32) -> (Vec<Piece>, u64) {
        let mut sums = Vec::new();
        signature(&mut &base[..], block, |g| {
            sums.extend(g);
            Ok(())
        })
        .unwrap();
        let idx = Index::new(block, base.len() as u64, sums);
        let mut pieces = Vec::new();
        let mut hashed = Vec::new();
        let (read, literal) = diff(
            &mut &new[..],
            new.len() as u64,
            &idx,
            |d| hashed.extend_from_slice(d),
            |p| {
                pieces.push(p);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(read, new.len() as u64);
        assert_eq!(hashed, new, "every byte is seen once, in order");
        assert_eq!(rebuild(base, block as usize, &pieces), new);
        (pieces, literal)
    }

    #[test]
    fn a_change_in_the_middle_costs_about_a_block() {
        let base = data(1 << 20, 1);
        let mut new = base.clone();
        new[500_000..504_096].copy_from_slice(&data(4096, 2));
        let (pieces, literal) = roundtrip(&base, &new, 4096);
        assert!(literal <= 2 * 4096 + 4096, "{literal}");
        assert!(pieces.len() <= 5, "{pieces:?}");
    }

    #[test]
    fn inserted_and_removed_bytes_shift_the_rest_without_resending_it() {
        let base = data(300_000, 3);
        let mut new = base.clone();
        new.splice(1000..1000, b"inserted".iter().copied());
        new.drain(200_000..200_100);
        let (_, literal) = roundtrip(&base, &new, 2048);
        assert!(literal < 3 * 2048 + 200, "{literal}");
    }

    #[test]
    fn any_content_is_rebuilt_exactly() {
        for (b, n, block) in [
            (0usize, 10usize, 2048u32),
            (10, 0, 2048),
            (5000, 5000, 2048),
            (4096, 4096, 2048),
            (9000, 12345, 2048),
            (100_000, 50_000, 4096),
        ] {
            let base = data(b, 7);
            let mut new = data(n, 7);
            if n > 100 {
                new[n / 2] ^= 1;
            }
            roundtrip(&base, &new, block);
            // The same content: all references.
            let (_, literal) = roundtrip(&base, &base, block);
            assert_eq!(literal, 0, "{b}");
        }
    }

    #[test]
    fn random_edits_are_rebuilt_exactly() {
        let mut x = 99u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        for round in 0..200 {
            let base = data(next(40_000) as usize, round);
            let mut new = base.clone();
            for _ in 0..next(6) {
                let at = next(new.len() as u64 + 1) as usize;
                let (end, with) = match next(3) {
                    0 => (at, data(next(3000) as usize, round + 7)),
                    1 => ((at + next(3000) as usize).min(new.len()), Vec::new()),
                    _ => {
                        let end = (at + next(100) as usize).min(new.len());
                        (end, data(end - at, round + 9))
                    }
                };
                new.splice(at..end, with);
            }
            roundtrip(&base, &new, [2048, 4096, 1000][round as usize % 3]);
        }
    }

    #[test]
    fn the_weak_sum_is_rsyncs_running_sum() {
        let d = data(70_000, 5);
        let (mut s1, mut s2) = (0u32, 0u32);
        for &b in &d {
            s1 = s1.wrapping_add(b as u32);
            s2 = s2.wrapping_add(s1);
        }
        assert_eq!(weak(&d), (s1 & 0xffff) | (s2 << 16));
    }

    #[test]
    fn block_sizes_follow_the_square_root_within_bounds() {
        assert_eq!(block_size(0), MIN_BLOCK);
        assert_eq!(block_size(1 << 30), 32 << 10);
        assert_eq!(block_size(1 << 50), MAX_BLOCK);
    }
}
