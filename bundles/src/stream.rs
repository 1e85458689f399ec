//! The readers under the tar parser: the payload bytes of the file (hashed as they
//! are read), the zstd frame check, and the cap on decompressed output.
//!
//! When one of them fails it records why in a shared [`FaultCell`], so the
//! pipeline can tell a truncated file, a compression bomb, a broken zstd stream
//! and a malformed tar header apart even though they all surface as `io::Error`.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::mpsc;

use ring::digest;

use crate::format::ZSTD_MAGIC;

/// Why a reader below the tar parser failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The file ended before the payload size the manifest states.
    Truncated,
    /// More decompressed bytes than the manifest allows.
    Cap,
    /// The zstd decoder refused the stream.
    Decoder,
}

pub(crate) type FaultCell = Rc<Cell<Option<Fault>>>;

fn fail(cell: &FaultCell, fault: Fault, message: &'static str) -> io::Error {
    if cell.get().is_none() {
        cell.set(Some(fault));
    }
    io::Error::other(message)
}

/// Reads the payload, `len` bytes from `inner`, handing a copy of every byte
/// to `hash` (a thread hashing the payload, so that this work stays off the
/// decompressing thread). `inner` ending early is a truncated bundle.
pub(crate) struct PayloadSource<R> {
    inner: R,
    remaining: u64,
    hash: HashFeed,
    fault: FaultCell,
}

/// `[offset, offset + len)` of a file, read with positional reads.
pub(crate) struct FileRange<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl<'f> FileRange<'f> {
    pub(crate) fn new(file: &'f File, offset: u64, len: u64) -> Self {
        FileRange {
            file,
            pos: offset,
            end: offset.saturating_add(len),
        }
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        loop {
            match self.file.read_at(&mut buf[..want], self.pos) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Batches bytes for the hashing thread.
pub(crate) struct HashFeed {
    tx: mpsc::SyncSender<Vec<u8>>,
    pending: Vec<u8>,
}

const HASH_BATCH: usize = 1 << 20;

impl HashFeed {
    pub(crate) fn new(tx: mpsc::SyncSender<Vec<u8>>) -> HashFeed {
        HashFeed {
            tx,
            pending: Vec::with_capacity(HASH_BATCH),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= HASH_BATCH {
            let full = std::mem::replace(&mut self.pending, Vec::with_capacity(HASH_BATCH));
            // A hasher that is gone only matters at the end, where its digest is missing.
            let _ = self.tx.send(full);
        }
    }
}

impl Drop for HashFeed {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.tx.send(std::mem::take(&mut self.pending));
        }
    }
}

/// Hashes what a [`HashFeed`] sends until it is dropped.
pub(crate) fn hash_all(rx: mpsc::Receiver<Vec<u8>>) -> [u8; 32] {
    let mut sha = digest::Context::new(&digest::SHA256);
    for chunk in rx {
        sha.update(&chunk);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(sha.finish().as_ref());
    out
}

impl<R: Read> PayloadSource<R> {
    pub(crate) fn new(inner: R, len: u64, hash: HashFeed, fault: FaultCell) -> Self {
        PayloadSource {
            inner,
            remaining: len,
            hash,
            fault,
        }
    }
}

impl<R: Read> Read for PayloadSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(fail(
                &self.fault,
                Fault::Truncated,
                "bundle file is truncated",
            ));
        }
        self.hash.push(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Lets at most `limit` bytes through; one byte more is an error, not an end.
pub(crate) struct Capped<R> {
    inner: R,
    remaining: u64,
    fault: FaultCell,
}

impl<R: Read> Capped<R> {
    pub(crate) fn new(inner: R, limit: u64, fault: FaultCell) -> Self {
        Capped {
            inner,
            remaining: limit,
            fault,
        }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    fn inner_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.fault.get().is_none() {
                        self.fault.set(Some(Fault::Decoder));
                    }
                    return Err(e);
                }
                Ok(n) => return Ok(n),
            }
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.inner_read(&mut probe)? {
                0 => Ok(0),
                _ => Err(fail(
                    &self.fault,
                    Fault::Cap,
                    "decompressed output exceeds the manifest",
                )),
            };
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner_read(&mut buf[..want])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// What is wrong with the start of a zstd payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameProblem {
    Short,
    NotZstd,
    Reserved,
    Dictionary,
    NoChecksum,
    Window(u32),
}

/// Enough bytes for any zstd frame header (magic included).
pub(crate) const FRAME_HEADER_MAX: usize = 18;

/// Checks the header of the payload's zstd frame before any decoding: a plain
/// frame (no skippable frame, no dictionary), with a content checksum, whose
/// window is at most `2^max_window_log` bytes.
pub(crate) fn check_frame_header(head: &[u8], max_window_log: u32) -> Result<(), FrameProblem> {
    if head.len() < 6 {
        return Err(FrameProblem::Short);
    }
    if head[..4] != ZSTD_MAGIC {
        return Err(FrameProblem::NotZstd);
    }
    let descriptor = head[4];
    let fcs_flag = descriptor >> 6;
    let single_segment = descriptor & 0x20 != 0;
    if descriptor & 0x08 != 0 {
        return Err(FrameProblem::Reserved);
    }
    if descriptor & 0x03 != 0 {
        return Err(FrameProblem::Dictionary);
    }
    if descriptor & 0x04 == 0 {
        return Err(FrameProblem::NoChecksum);
    }
    let window: u64 = if single_segment {
        // The whole content is one segment: the window is the content size.
        let at = 5;
        let field = match fcs_flag {
            0 => 1,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let bytes = head.get(at..at + field).ok_or(FrameProblem::Short)?;
        let mut value = 0u64;
        for (i, b) in bytes.iter().enumerate() {
            value |= u64::from(*b) << (8 * i);
        }
        if field == 2 {
            value += 256;
        }
        value
    } else {
        let wd = head[5];
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64 << log;
        base + (base / 8) * u64::from(wd & 0x07)
    };
    // The smallest power of two holding the window.
    let log = 64 - window.saturating_sub(1).leading_zeros();
    if log > max_window_log {
        return Err(FrameProblem::Window(log));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers() {
        // Window descriptor: exponent 13 (log 23), mantissa 0.
        let ok = [0x28, 0xb5, 0x2f, 0xfd, 0x04, 13 << 3];
        assert_eq!(check_frame_header(&ok, 24), Ok(()));
        let big = [0x28, 0xb5, 0x2f, 0xfd, 0x04, 21 << 3];
        assert_eq!(check_frame_header(&big, 24), Err(FrameProblem::Window(31)));
        // Mantissa pushes a 2^24 window just past 2^24.
        let over = [0x28, 0xb5, 0x2f, 0xfd, 0x04, (14 << 3) | 1];
        assert_eq!(check_frame_header(&over, 24), Err(FrameProblem::Window(25)));
        let no_sum = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 13 << 3];
        assert_eq!(
            check_frame_header(&no_sum, 24),
            Err(FrameProblem::NoChecksum)
        );
        let dict = [0x28, 0xb5, 0x2f, 0xfd, 0x05, 13 << 3];
        assert_eq!(check_frame_header(&dict, 24), Err(FrameProblem::Dictionary));
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 0, 0];
        assert_eq!(
            check_frame_header(&skippable, 24),
            Err(FrameProblem::NotZstd)
        );
        // Single segment with an 8-byte content size of 4 GiB.
        let mut single = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe4];
        single.extend_from_slice(&(4u64 << 30).to_le_bytes());
        assert_eq!(
            check_frame_header(&single, 24),
            Err(FrameProblem::Window(32))
        );
    }

    #[test]
    fn real_frames_pass() {
        for level in [1, 3, 9, 19] {
            let data = vec![7u8; 3 << 20];
            let frame = {
                let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
                enc.include_checksum(true).unwrap();
                std::io::Write::write_all(&mut enc, &data).unwrap();
                enc.finish().unwrap()
            };
            assert_eq!(check_frame_header(&frame, 24), Ok(()), "level {level}");
        }
    }
}
