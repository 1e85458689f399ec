//! One phase's log: masks what the tool prints, cuts it into chunks (every few
//! hundred milliseconds or 64 KiB, whichever comes first) and hands each chunk
//! to the hooks with the phase's next sequence number. Keeps the last lines of
//! the current command for failure notes.

use std::time::Duration;

use hangar_types::worker::Phase;
use tokio::time::Instant;

use super::RunHooks;
use super::mask::Masker;

/// How output is cut into chunks.
#[derive(Debug, Clone, Copy)]
pub struct ChunkPolicy {
    /// The longest a byte waits before it is sent.
    pub interval: Duration,
    /// The largest chunk.
    pub max_bytes: usize,
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        ChunkPolicy {
            interval: Duration::from_millis(300),
            max_bytes: 64 * 1024,
        }
    }
}

/// Bytes of recent output kept for failure notes.
const TAIL_BYTES: usize = 8 * 1024;

pub(crate) struct LogStream<'h, H: RunHooks> {
    hooks: &'h H,
    phase: Phase,
    seq: u64,
    masker: Masker,
    policy: ChunkPolicy,
    buf: Vec<u8>,
    since: Option<Instant>,
    tail: Vec<u8>,
}

impl<'h, H: RunHooks> LogStream<'h, H> {
    pub(crate) fn new(hooks: &'h H, phase: Phase, masker: Masker, policy: ChunkPolicy) -> Self {
        LogStream {
            hooks,
            phase,
            seq: 0,
            masker,
            policy,
            buf: Vec::new(),
            since: None,
            tail: Vec::new(),
        }
    }

    /// Tool output, as it arrives.
    pub(crate) async fn write(&mut self, data: &[u8]) {
        let masked = self.masker.push(data);
        self.append(masked).await;
    }

    /// A line of the worker's own.
    pub(crate) async fn line(&mut self, text: &str) {
        self.write(format!("{text}\n").as_bytes()).await;
    }

    /// Forgets the recent output: a new command starts.
    pub(crate) fn mark(&mut self) {
        self.tail.clear();
    }

    /// When the buffered bytes are due, if any are buffered.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + self.policy.interval)
    }

    /// Sends what is buffered (keeping back a possible secret's start).
    pub(crate) async fn flush(&mut self) {
        if self.buf.is_empty() {
            self.since = None;
            return;
        }
        let chunk = std::mem::take(&mut self.buf);
        self.since = None;
        self.send(chunk).await;
    }

    /// Ends the phase: everything held back goes out.
    pub(crate) async fn finish(&mut self) {
        let rest = self.masker.finish();
        self.append(rest).await;
        self.flush().await;
    }

    /// The last `lines` non-empty lines of the current command's output, masked.
    pub(crate) fn tail_lines(&self, lines: usize) -> String {
        let text = String::from_utf8_lossy(&self.tail);
        let kept: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        kept[kept.len().saturating_sub(lines)..].join("\n")
    }

    async fn append(&mut self, masked: Vec<u8>) {
        if masked.is_empty() {
            return;
        }
        self.tail.extend_from_slice(&masked);
        if self.tail.len() > TAIL_BYTES {
            let cut = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..cut);
        }
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.buf.extend_from_slice(&masked);
        while self.buf.len() >= self.policy.max_bytes {
            let rest = self.buf.split_off(self.policy.max_bytes);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.send(chunk).await;
            self.since = if self.buf.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
        }
    }

    async fn send(&mut self, chunk: Vec<u8>) {
        let seq = self.seq;
        self.seq += 1;
        self.hooks.log_chunk(self.phase, seq, chunk).await;
    }
}
