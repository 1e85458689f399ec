//! Verification of an upload while it arrives: a thread reads the upload's
//! file as it grows, through the bundles crate's streaming reader, so that a
//! bundle with a bad signature or a wrong hash is refused at the chunk that
//! shows it, not after the last byte. The thread hashes every byte it reads:
//! the staged bundle's SHA-256 comes from the same pass.
//!
//! The thread reads the file from its first byte: after a server restart, a
//! resumed upload is verified again from what is on disk, then as it grows.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hangar_bundle::{BundleError, ExtractOptions, Incoming, Kind, Limits, TrustStore};

/// How long the thread waits for more bytes before it ends; a later chunk
/// starts a new one from the first byte.
const IDLE: Duration = Duration::from_secs(15 * 60);

/// What an accepted upload is.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) platform: String,
    pub(crate) sha256: String,
    pub(crate) signers: Vec<String>,
    pub(crate) files: u64,
}

/// Why an upload is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(
        "{name}: {declared} bytes were declared for the upload, but the signed manifest makes the bundle {actual} bytes"
    )]
    Length {
        name: String,
        declared: u64,
        actual: u64,
    },
}

impl Refusal {
    /// A short machine-readable word for the reason.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refusal::Bundle(e) => e.code(),
            Refusal::Length { .. } => "length_mismatch",
        }
    }
}

/// How the thread ended short of a verdict.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(Result<Verified, Refusal>),
    /// No bytes came for [`IDLE`], or the upload was cancelled.
    Stopped,
}

#[derive(Debug, Default)]
struct Progress {
    /// Bytes of the file the writer has written and flushed.
    available: u64,
    /// The upload is gone: the thread stops at once.
    cancelled: bool,
    /// The thread's early refusal, for the writer to see between chunks.
    refused: Option<String>,
}

/// The writer's side of a verification thread.
#[derive(Debug)]
pub(crate) struct Verifier {
    shared: Arc<(Mutex<Progress>, Condvar)>,
    thread: Option<std::thread::JoinHandle<Outcome>>,
}

impl Verifier {
    /// Starts verifying `part` (whose first `available` bytes are written),
    /// a bundle of `size` bytes that `name` stands for in messages.
    pub(crate) fn start(
        part: PathBuf,
        name: String,
        size: u64,
        available: u64,
        trust: Arc<TrustStore>,
    ) -> Verifier {
        let shared = Arc::new((
            Mutex::new(Progress {
                available,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bundle-verify".into())
            .spawn(move || run(&part, &name, size, &trust, &theirs))
            .expect("spawn a thread");
        Verifier {
            shared,
            thread: Some(thread),
        }
    }

    /// More bytes are on disk.
    pub(crate) fn advance(&self, available: u64) {
        let (lock, cond) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).available = available;
        cond.notify_all();
    }

    /// The thread's refusal, if it refused already.
    pub(crate) fn refused(&self) -> Option<String> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused
            .clone()
    }

    /// Whether the thread stopped (idle, or refused); a stopped idle thread
    /// is replaced by a new one.
    pub(crate) fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the thread's verdict.
    pub(crate) fn join(mut self) -> Outcome {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(outcome)) => outcome,
            _ => Outcome::Stopped,
        }
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        let (lock, cond) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).cancelled = true;
        cond.notify_all();
    }
}

fn run(
    part: &Path,
    name: &str,
    size: u64,
    trust: &TrustStore,
    shared: &Arc<(Mutex<Progress>, Condvar)>,
) -> Outcome {
    let file = match File::open(part) {
        Ok(f) => f,
        Err(source) => {
            tracing::warn!(path = %part.display(), error = %source, "cannot read an upload to verify it");
            return Outcome::Stopped;
        }
    };
    let mut reader = Growing {
        file,
        pos: 0,
        size,
        shared: shared.clone(),
        hash: ring::digest::Context::new(&ring::digest::SHA256),
        stopped: false,
    };
    let result = verify(&mut reader, name, size, trust);
    if reader.stopped {
        return Outcome::Stopped;
    }
    if let Err(e) = &result {
        shared.0.lock().unwrap_or_else(|e| e.into_inner()).refused = Some(e.to_string());
    }
    Outcome::Done(result.map(|mut v| {
        v.sha256 = hex::encode(reader.hash.finish().as_ref());
        v
    }))
}

fn verify(
    reader: &mut Growing,
    name: &str,
    size: u64,
    trust: &TrustStore,
) -> Result<Verified, Refusal> {
    let incoming = Incoming::begin(&mut *reader, Path::new(name), trust, &Limits::default())?;
    if incoming.total_size() != size {
        return Err(Refusal::Length {
            name: name.to_string(),
            declared: size,
            actual: incoming.total_size(),
        });
    }
    let options = || ExtractOptions {
        platform: Some(hangar_bundle::host_platform()),
        ..Default::default()
    };
    incoming.check_policy(&options())?;
    let m = incoming.manifest().clone();
    let signers = incoming
        .trusted_signers()
        .iter()
        .map(|k| k.to_string())
        .collect();
    let summary = incoming.finish(options())?;
    Ok(Verified {
        kind: m.kind,
        name: name.to_string(),
        version: m.version.to_string(),
        platform: m.platform,
        sha256: String::new(),
        signers,
        files: summary.files,
    })
}

/// The upload's file as the writer fills it: a read past what is written
/// waits for more, and the file ends at the declared size.
struct Growing {
    file: File,
    pos: u64,
    size: u64,
    shared: Arc<(Mutex<Progress>, Condvar)>,
    hash: ring::digest::Context,
    stopped: bool,
}

impl Read for Growing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let available = {
            let (lock, cond) = &*self.shared;
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if p.cancelled {
                    self.stopped = true;
                    return Err(io::Error::other("the upload was cancelled"));
                }
                if p.available > self.pos {
                    break p.available;
                }
                let (next, timeout) = cond
                    .wait_timeout(p, IDLE)
                    .unwrap_or_else(|e| e.into_inner());
                p = next;
                if timeout.timed_out() && p.available <= self.pos {
                    self.stopped = true;
                    return Err(io::Error::other("no bytes arrived for a while"));
                }
            }
        };
        let want = usize::try_from(available.min(self.size) - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::other(
                "the upload's file is shorter than what was written",
            ));
        }
        self.hash.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}
