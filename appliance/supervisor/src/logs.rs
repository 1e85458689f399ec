//! Each service's output in `<log dir>/<service>.log`.
//!
//! Children write into a pipe the supervisor reads, never into the file itself,
//! so the supervisor can rotate without the child's help: when the file would
//! grow past `log_max_bytes` it is renamed to `.1` (older ones shift up to
//! `.<log_keep>`, the oldest is dropped) and a new file is started; on SIGHUP
//! every file is reopened, for an external logrotate that moved them away.
//! The supervisor's own notes about the child (started, exited) go in the same
//! file, marked `[supervisor]`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::unistd::Gid;
use tokio::io::AsyncReadExt;

struct Open {
    file: File,
    size: u64,
}

/// One service's log file.
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// Group that may read the file (the service user's), so the operator account
    /// in that group can read logs without root.
    group: Option<Gid>,
    open: Mutex<Option<Open>>,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl LogFile {
    pub fn new(dir: &Path, service: &str, max_bytes: u64, keep: u32, group: Option<Gid>) -> LogFile {
        LogFile {
            path: dir.join(format!("{service}.log")),
            max_bytes,
            keep,
            group,
            open: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes`, rotating first when the file would outgrow its limit.
    /// Errors are logged, never returned: a full disk must not stop a service.
    pub fn write(&self, bytes: &[u8]) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Pieces no larger than a whole file, so no file outgrows the limit.
        for piece in bytes.chunks(self.max_bytes.clamp(1, usize::MAX as u64) as usize) {
            if let Err(e) = self.write_locked(&mut open, piece) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write service log");
                *open = None;
                return;
            }
        }
    }

    fn write_locked(&self, open: &mut Option<Open>, bytes: &[u8]) -> io::Result<()> {
        if open.is_none() {
            *open = Some(self.open_file()?);
        }
        let needs_rotation = open
            .as_ref()
            .is_some_and(|o| o.size > 0 && o.size + bytes.len() as u64 > self.max_bytes);
        if needs_rotation {
            *open = None;
            self.rotate()?;
            *open = Some(self.open_file()?);
        }
        let o = open.as_mut().expect("opened above");
        o.file.write_all(bytes)?;
        o.size += bytes.len() as u64;
        Ok(())
    }

    /// A line from the supervisor about this service.
    pub fn note(&self, message: &str) {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        self.write(format!("{now} [supervisor] {message}\n").as_bytes());
    }

    /// Closes the file; the next write opens `<service>.log` afresh.
    pub fn reopen(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn open_file(&self) -> io::Result<Open> {
        let file = OpenOptions::new().create(true).append(true).mode(0o640).open(&self.path)?;
        let meta = file.metadata()?;
        if let Some(gid) = self.group
            && nix::unistd::Uid::effective().is_root()
            && meta.gid() != gid.as_raw()
        {
            let _ = nix::unistd::fchown(&file, None, Some(gid));
        }
        Ok(Open { size: meta.len(), file })
    }

    fn rotate(&self) -> io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            match fs::rename(numbered(n), numbered(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fs::rename(&self.path, numbered(1))
    }
}

/// Copies what the child writes into its pipe to its log file, until every
/// process holding the pipe's write end (the child and anything it forked) is gone.
pub async fn pump(read_end: OwnedFd, log: std::sync::Arc<LogFile>) {
    let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(path = %log.path().display(), error = %e, "cannot read a child's output");
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => log.write(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

/// The last `lines` lines of `path` (at most the last 1 MiB), and the offset they end at.
pub fn tail(path: &Path, lines: usize) -> io::Result<(Vec<u8>, u64)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(1024 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    Read::by_ref(&mut f).take(len - start).read_to_end(&mut buf)?;
    let mut cut = buf.len();
    let mut seen = 0;
    // A final newline ends the last line rather than starting an empty one.
    let search_end = if buf.ends_with(b"\n") { buf.len() - 1 } else { buf.len() };
    for i in (0..search_end).rev() {
        if buf[i] == b'\n' {
            seen += 1;
            if seen == lines {
                cut = i + 1;
                break;
            }
        }
    }
    if seen < lines {
        cut = 0;
    }
    if lines == 0 {
        cut = buf.len();
    }
    Ok((buf[cut..].to_vec(), start + buf.len() as u64))
}

/// What was appended to `path` since `offset`, at most `max` bytes. A file that
/// shrank or was replaced (rotation) is read from its start.
pub fn read_from(path: &Path, offset: u64, inode: &mut Option<u64>, max: usize) -> io::Result<(Vec<u8>, u64)> {
    let mut f = File::open(path)?;
    let meta = f.metadata()?;
    let mut offset = offset;
    if inode.is_some_and(|i| i != meta.ino()) || meta.len() < offset {
        offset = 0;
    }
    *inode = Some(meta.ino());
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf)?;
    let end = offset + buf.len() as u64;
    Ok((buf, end))
}
