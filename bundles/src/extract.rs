//! The streaming reader: payload → zstd → tar, walked in lockstep with the signed
//! manifest, every file hashed as it is written, into a staging directory that is
//! renamed into place only when everything verified.
//!
//! Two threads share the work: the caller's thread reads, decompresses and parses
//! the archive; a writer thread hashes and writes the file data it is handed. Any
//! failure on either side stops both, and the staging directory is removed.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::{fmt, thread};

use ring::digest;

use crate::BundleError;
use crate::bundle::Bundle;
use crate::limits::Limits;
use crate::limits::MAX_EXTENSION_BYTES;
use crate::manifest::Manifest;
use crate::manifest::{Entry, check_entry_path};
use crate::stream::{
    Capped, FRAME_HEADER_MAX, Fault, FaultCell, FileRange, FrameProblem, HashFeed, PayloadSource,
    check_frame_header, hash_all,
};
use crate::tempname::hidden_name;

/// Size of the buffers handed from the reader to the writer thread.
const CHUNK: usize = 512 << 10;
/// Buffers in flight between the two threads.
const DEPTH: usize = 8;

/// What the operator allows, and where to report progress.
#[derive(Default)]
pub struct ExtractOptions<'a> {
    /// The version installed now; an older bundle is refused unless `allow_downgrade`.
    pub installed_version: Option<semver::Version>,
    pub allow_downgrade: bool,
    /// Accept a bundle past its expiry. Unsafe: an expired bundle may carry
    /// known-vulnerable software that a newer bundle replaced.
    pub danger_allow_expired: bool,
    /// Refuse a bundle built for another platform (`Some(host_platform())`).
    pub platform: Option<String>,
    /// Called with the file bytes processed so far and the total, from the
    /// calling thread, as extraction proceeds.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
    /// Set (by a signal handler, say) to stop: the work ends within one buffer
    /// with [`BundleError::Interrupted`], the staging directory removed.
    pub interrupt: Option<&'a AtomicBool>,
}

impl fmt::Debug for ExtractOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtractOptions")
            .field("installed_version", &self.installed_version)
            .field("allow_downgrade", &self.allow_downgrade)
            .field("danger_allow_expired", &self.danger_allow_expired)
            .field("platform", &self.platform)
            .field("progress", &self.progress.is_some())
            .field("interrupt", &self.interrupt)
            .finish()
    }
}

/// Progress of a verification or extraction, in file bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// What a verification or extraction went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    /// File bytes written (or, for a verification, checked).
    pub bytes: u64,
}

impl Bundle {
    /// Reads the whole payload and checks it against the manifest, writing nothing.
    pub fn verify(&self, mut options: ExtractOptions<'_>) -> Result<Summary, BundleError> {
        self.check_policy(&options)?;
        let (summary, _) = self.stream(NullSink, options.progress.take(), options.interrupt)?;
        Ok(summary)
    }

    /// Verifies the whole payload like [`Bundle::verify`] and keeps the content
    /// of the file entry `wanted` (at most `max` bytes, checked against the
    /// manifest before anything is read): a release's own description, read
    /// from a bundle whose every byte was checked, before anything is written.
    /// `None` when the bundle has no such file.
    pub fn verify_reading(
        &self,
        mut options: ExtractOptions<'_>,
        wanted: &str,
        max: u64,
    ) -> Result<(Summary, Option<Vec<u8>>), BundleError> {
        self.check_policy(&options)?;
        let found = self
            .manifest
            .entries
            .iter()
            .find(|e| e.path() == wanted && !e.is_dir());
        if let Some(entry) = found
            && entry.size() > max
        {
            return Err(BundleError::FileTooLarge {
                path: self.path.clone(),
                entry: wanted.to_owned(),
                size: entry.size(),
                max,
            });
        }
        let sink = CaptureSink {
            wanted: wanted.to_owned(),
            capturing: false,
            content: found.map(|_| Vec::new()),
        };
        let (summary, sink) = self.stream(sink, options.progress.take(), options.interrupt)?;
        Ok((summary, sink.content))
    }

    /// Extracts the bundle into `dest`, which must not exist but whose parent must.
    ///
    /// The files go to a staging directory next to `dest` (so the final rename
    /// stays on one filesystem), each hashed as it is written; only when every
    /// entry and the whole payload verified are the modes applied, the data
    /// synced to disk, and the staging directory renamed to `dest`. On any error
    /// the staging directory is removed and nothing else was touched.
    pub fn extract(
        &self,
        dest: &Path,
        mut options: ExtractOptions<'_>,
    ) -> Result<Summary, BundleError> {
        self.check_policy(&options)?;
        if dest.symlink_metadata().is_ok() {
            return Err(BundleError::DestinationExists {
                dest: dest.to_path_buf(),
            });
        }
        let (parent, name) = match (dest.parent(), dest.file_name()) {
            (Some(p), Some(n)) => (
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                },
                n,
            ),
            _ => {
                return Err(BundleError::NoParent {
                    dest: dest.to_path_buf(),
                });
            }
        };
        if !parent.is_dir() {
            return Err(BundleError::NoParent {
                dest: dest.to_path_buf(),
            });
        }
        let staging = Staging::create(parent, name, &self.path)?;
        let sink = FsSink::new(staging.path.clone(), &self.path, parent);
        let (summary, sink) = self.stream(sink, options.progress.take(), options.interrupt)?;
        sink.finish()?;
        self.check_interrupt(options.interrupt)?;
        staging.commit(parent, name.as_ref(), dest)?;
        Ok(summary)
    }

    /// Runs the pipeline into `sink`; returns the sink for the caller to finish.
    fn stream<S: Sink + Send>(
        &self,
        sink: S,
        progress: Option<&mut dyn FnMut(Progress)>,
        interrupt: Option<&AtomicBool>,
    ) -> Result<(Summary, S), BundleError> {
        let source = FileRange::new(&self.file, self.payload_offset, self.manifest.payload.size);
        self.pipeline().run(source, sink, progress, interrupt)
    }

    fn pipeline(&self) -> Pipeline<'_> {
        Pipeline {
            path: self.path.clone(),
            manifest: &self.manifest,
            limits: &self.limits,
        }
    }

    fn check_interrupt(&self, interrupt: Option<&AtomicBool>) -> Result<(), BundleError> {
        self.pipeline().check_interrupt(interrupt)
    }
}

/// The reader's work on one payload, wherever its bytes come from: a file
/// read with positional reads, or a stream as it arrives.
pub(crate) struct Pipeline<'a> {
    pub(crate) path: PathBuf,
    pub(crate) manifest: &'a Manifest,
    pub(crate) limits: &'a Limits,
}

impl Pipeline<'_> {
    /// Runs the pipeline over the payload `source` (exactly the payload's
    /// bytes) into `sink`; returns the sink for the caller to finish.
    pub(crate) fn run<R: Read, S: Sink + Send>(
        &self,
        source: R,
        sink: S,
        mut progress: Option<&mut dyn FnMut(Progress)>,
        interrupt: Option<&AtomicBool>,
    ) -> Result<(Summary, S), BundleError> {
        let manifest = &self.manifest;
        let total = manifest.total_size();
        if let Some(p) = progress.as_deref_mut() {
            p(Progress { done: 0, total });
        }
        let (tx, rx) = mpsc::sync_channel::<Msg>(DEPTH);
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
        let (hash_tx, hash_rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH);
        thread::scope(|scope| {
            let writer = scope
                .spawn(move || write_loop(rx, recycle_tx, &manifest.entries, sink, &self.path));
            let hasher = scope.spawn(move || hash_all(hash_rx));
            let read_result = self.read_loop(
                source,
                &tx,
                &recycle_rx,
                HashFeed::new(hash_tx),
                &mut progress,
                total,
                interrupt,
            );
            drop(tx);
            let write_result = writer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let digest = hasher
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            // An interruption first: the writer only saw its input end early.
            let read_result = match read_result {
                Err(e @ BundleError::Interrupted { .. }) => return Err(e),
                other => other,
            };
            // A writer error is the more precise one (the reader only saw a closed channel).
            let (summary, sink) = write_result?;
            let end = read_result?;
            // A payload that is not the signed one is reported as such first.
            if digest != manifest.payload.sha256.0 {
                return Err(BundleError::PayloadHashMismatch {
                    path: self.path.clone(),
                });
            }
            if end.leftover {
                return Err(BundleError::BadCompression {
                    path: self.path.clone(),
                    reason: "data follows the zstd frame",
                });
            }
            Ok((summary, sink))
        })
    }

    /// Reads the payload, feeding the writer with entries and the hasher with
    /// every payload byte, until the end of the payload.
    #[allow(clippy::too_many_arguments)]
    fn read_loop<R: Read>(
        &self,
        source: R,
        tx: &mpsc::SyncSender<Msg>,
        recycle: &mpsc::Receiver<Vec<u8>>,
        hash: HashFeed,
        progress: &mut Option<&mut dyn FnMut(Progress)>,
        total: u64,
        interrupt: Option<&AtomicBool>,
    ) -> Result<ReadEnd, BundleError> {
        let path = &self.path;
        let manifest = &self.manifest;
        let size = manifest.payload.size;

        // The frame's header is checked before anything is decoded; its bytes
        // are hashed like the rest and handed to the decoder after the check.
        let fault: FaultCell = Default::default();
        let mut source = PayloadSource::new(source, size, hash, fault.clone());
        let mut head = [0u8; FRAME_HEADER_MAX];
        let head_len = (FRAME_HEADER_MAX as u64).min(size) as usize;
        let got = read_full(&mut source, &mut head[..head_len])
            .map_err(|e| classify(path, &fault, 0, &Position::Start, e))?;
        if got < head_len {
            return Err(BundleError::Truncated { path: path.clone() });
        }
        check_frame_header(&head[..head_len], self.limits.max_window_log)
            .map_err(|problem| frame_error(path, problem, self.limits.max_window_log))?;
        let source = io::Cursor::new(head[..head_len].to_vec()).chain(source);
        let decoder_error = |source| BundleError::Decompress {
            path: path.clone(),
            position: Position::Start.describe(),
            source,
        };
        let mut decoder =
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(CHUNK, source))
                .map_err(decoder_error)?
                .single_frame();
        decoder
            .window_log_max(self.limits.max_window_log)
            .map_err(decoder_error)?;
        let bound = manifest.decompressed_bound();
        let mut archive = tar::Archive::new(Capped::new(decoder, bound, fault.clone()));
        let failure = |position: &Position, source: io::Error| {
            classify(path, &fault, bound, position, source)
        };

        let index: HashMap<&str, usize> = manifest
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.path(), i))
            .collect();
        let mut next = 0usize;
        let mut done = 0u64;
        let mut position = Position::Start;
        let mut pending = Pending::default();
        let entries = archive
            .entries()
            .map_err(|e| failure(&position, e))?
            .raw(true);
        for raw in entries {
            self.check_interrupt(interrupt)?;
            let mut member = raw.map_err(|e| failure(&position, e))?;
            let Some(resolved) = self.resolve(&mut member, &mut pending, &position, &failure)?
            else {
                continue;
            };
            let expected = self.expect(resolved, &index, next)?;
            position = Position::In(expected.path().to_owned());
            let gone = || BundleError::Write {
                path: path.clone(),
                source: io::Error::other("the writer stopped"),
            };
            match expected {
                Entry::Dir { .. } => tx.send(Msg::Dir(next)).map_err(|_| gone())?,
                Entry::File { size, .. } => {
                    tx.send(Msg::FileStart(next)).map_err(|_| gone())?;
                    let mut remaining = *size;
                    while remaining > 0 {
                        self.check_interrupt(interrupt)?;
                        let mut buf = recycle
                            .try_recv()
                            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
                        let want = (CHUNK as u64).min(remaining) as usize;
                        buf.resize(want, 0);
                        let got =
                            read_full(&mut member, &mut buf).map_err(|e| failure(&position, e))?;
                        if got < want {
                            return Err(BundleError::TruncatedEntry {
                                path: path.clone(),
                                entry: position.describe(),
                            });
                        }
                        remaining -= got as u64;
                        done += got as u64;
                        tx.send(Msg::Data(buf)).map_err(|_| gone())?;
                        if let Some(p) = progress.as_deref_mut() {
                            p(Progress { done, total });
                        }
                    }
                    tx.send(Msg::FileEnd).map_err(|_| gone())?;
                }
            }
            position = Position::After(position.into_name());
            next += 1;
        }
        if pending.long_name.is_some() || pending.pax.is_some() {
            return Err(BundleError::BadExtendedHeader {
                path: path.clone(),
                entry: position.describe(),
                reason: "an extended header is the last member of the archive".into(),
            });
        }
        if let Some(missing) = manifest.entries.get(next) {
            return Err(BundleError::MissingEntry {
                path: path.clone(),
                entry: missing.path().to_owned(),
            });
        }

        // After the end-of-archive block only zeros may follow, within the cap.
        let end = Position::End;
        let mut capped = archive.into_inner();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = capped.read(&mut buf).map_err(|e| failure(&end, e))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|b| *b != 0) {
                return Err(BundleError::TrailingData { path: path.clone() });
            }
        }
        // The zstd frame ended. Whatever of the payload remains is still read, so
        // that it is hashed: the caller checks the hash before this leftover.
        let mut rest = capped.into_inner().finish();
        let mut leftover = false;
        loop {
            let n = rest.read(&mut buf).map_err(|e| failure(&end, e))?;
            if n == 0 {
                break;
            }
            leftover = true;
        }
        Ok(ReadEnd { leftover })
    }
}

impl Pipeline<'_> {
    fn check_interrupt(&self, interrupt: Option<&AtomicBool>) -> Result<(), BundleError> {
        if interrupt.is_some_and(|i| i.load(Ordering::SeqCst)) {
            return Err(BundleError::Interrupted {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Reads one tar member's header. Extension headers (GNU long name, PAX) are
    /// kept in `pending` for the member they describe, and `None` returned; for
    /// any other member, its name (checked), type (file or directory only) and
    /// size (PAX and ustar agreeing).
    fn resolve<R: Read>(
        &self,
        member: &mut tar::Entry<'_, R>,
        pending: &mut Pending,
        position: &Position,
        failure: &dyn Fn(&Position, io::Error) -> BundleError,
    ) -> Result<Option<Member>, BundleError> {
        let path = &self.path;
        let kind = member.header().entry_type();
        let size = member
            .header()
            .entry_size()
            .map_err(|e| failure(position, e))?;

        if kind.is_gnu_longname() || kind.is_pax_local_extensions() {
            let (what, slot) = if kind.is_gnu_longname() {
                ("GNU long name", &mut pending.long_name)
            } else {
                ("PAX", &mut pending.pax)
            };
            let bad = |reason: String| BundleError::BadExtendedHeader {
                path: path.clone(),
                entry: position.describe(),
                reason,
            };
            if slot.is_some() {
                return Err(bad(format!("two {what} headers for one entry")));
            }
            if size > MAX_EXTENSION_BYTES {
                return Err(bad(format!("{what} header of {size} bytes")));
            }
            let mut data = Vec::with_capacity(size as usize);
            member
                .read_to_end(&mut data)
                .map_err(|e| failure(position, e))?;
            if (data.len() as u64) < size {
                return Err(BundleError::TruncatedEntry {
                    path: path.clone(),
                    entry: position.describe(),
                });
            }
            *slot = Some(data);
            return Ok(None);
        }

        // The name: GNU long name, else PAX path, else the header's own.
        let header_name = member.path_bytes().into_owned();
        let pax = match pending.pax.take() {
            Some(data) => parse_pax(&data).map_err(|reason| BundleError::BadExtendedHeader {
                path: path.clone(),
                entry: String::from_utf8_lossy(&header_name).into_owned(),
                reason,
            })?,
            None => PaxRecords::default(),
        };
        let raw_name = match pending.long_name.take() {
            Some(mut name) => {
                while name.last() == Some(&0) {
                    name.pop();
                }
                name
            }
            None => pax.path.unwrap_or(header_name),
        };
        let mut name = String::from_utf8(raw_name).map_err(|e| BundleError::UnsafePath {
            path: path.clone(),
            entry: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            reason: "not UTF-8",
        })?;
        if kind.is_dir() && name.len() > 1 && name.ends_with('/') {
            name.pop();
        }
        check_entry_path(&name).map_err(|reason| BundleError::UnsafePath {
            path: path.clone(),
            entry: name.clone(),
            reason,
        })?;
        let kind = if kind.is_file() {
            "regular file"
        } else if kind.is_dir() {
            "directory"
        } else {
            return Err(BundleError::NotRegularFile {
                path: path.clone(),
                entry: name,
                kind: type_name(kind),
            });
        };
        if let Some(pax_size) = pax.size
            && pax_size.parse::<u64>().ok() != Some(size)
        {
            return Err(BundleError::PaxSizeMismatch {
                path: path.clone(),
                entry: name,
                pax: pax_size,
                ustar: size,
            });
        }
        Ok(Some(Member { name, kind, size }))
    }

    /// Checks that `member` is the manifest entry expected next, of its type and size.
    fn expect(
        &self,
        member: Member,
        index: &HashMap<&str, usize>,
        next: usize,
    ) -> Result<&Entry, BundleError> {
        let path = self.path.clone();
        let entries = &self.manifest.entries;
        match index.get(member.name.as_str()) {
            None => {
                return Err(BundleError::NotInManifest {
                    path,
                    entry: member.name,
                });
            }
            Some(&i) if i < next => {
                return Err(BundleError::DuplicateEntry {
                    path,
                    entry: member.name,
                });
            }
            Some(&i) if i > next => {
                return Err(BundleError::MissingEntry {
                    path,
                    entry: entries[next].path().to_owned(),
                });
            }
            Some(_) => {}
        }
        let expected = &entries[next];
        if expected.type_name() != member.kind {
            return Err(BundleError::TypeMismatch {
                path,
                entry: member.name,
                manifest: expected.type_name(),
                archive: member.kind,
            });
        }
        if member.size != expected.size() {
            return Err(BundleError::SizeMismatch {
                path,
                entry: member.name,
                manifest: expected.size(),
                archive: member.size,
            });
        }
        Ok(expected)
    }
}

/// A tar member that is not an extension header.
struct Member {
    name: String,
    /// "regular file" or "directory", as [`Entry::type_name`] says.
    kind: &'static str,
    size: u64,
}

/// Extension headers read, waiting for the member they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

fn frame_error(path: &Path, problem: FrameProblem, max: u32) -> BundleError {
    let reason = match problem {
        FrameProblem::Window(window_log) => {
            return BundleError::ZstdWindow {
                path: path.to_path_buf(),
                window_log,
                max,
            };
        }
        FrameProblem::Short => "the payload is too short for a zstd frame",
        FrameProblem::NotZstd => "the payload does not start with a zstd frame",
        FrameProblem::Reserved => "the zstd frame header sets a reserved bit",
        FrameProblem::Dictionary => "the zstd frame needs a dictionary",
        FrameProblem::NoChecksum => "the zstd frame carries no content checksum",
    };
    BundleError::BadCompression {
        path: path.to_path_buf(),
        reason,
    }
}

/// How the payload ended.
struct ReadEnd {
    /// Bytes followed the zstd frame.
    leftover: bool,
}

/// Where in the archive the reader is, for error messages.
enum Position {
    Start,
    In(String),
    After(String),
    End,
}

impl Position {
    fn describe(&self) -> String {
        match self {
            Position::Start => "the start of the archive".into(),
            Position::In(name) => name.clone(),
            Position::After(name) => format!("the member after {name:?}"),
            Position::End => "the end of the archive".into(),
        }
    }

    fn into_name(self) -> String {
        match self {
            Position::In(name) | Position::After(name) => name,
            Position::Start | Position::End => String::new(),
        }
    }
}

/// Turns an I/O error from the tar/zstd stack into the precise bundle error.
fn classify(
    path: &Path,
    fault: &FaultCell,
    limit: u64,
    position: &Position,
    source: io::Error,
) -> BundleError {
    let path = path.to_path_buf();
    match fault.get() {
        Some(Fault::Truncated) => BundleError::Truncated { path },
        Some(Fault::Cap) => BundleError::DecompressedTooLarge { path, limit },
        Some(Fault::Decoder) => BundleError::Decompress {
            path,
            position: position.describe(),
            source,
        },
        None => BundleError::BadArchive {
            path,
            position: position.describe(),
            source,
        },
    }
}

#[derive(Default)]
struct PaxRecords {
    path: Option<Vec<u8>>,
    size: Option<String>,
}

/// Parses PAX records, accepting only keys that cannot change what is extracted
/// beyond the name and size (which are then checked like any other).
fn parse_pax(data: &[u8]) -> Result<PaxRecords, String> {
    let mut out = PaxRecords::default();
    for record in tar::PaxExtensions::new(data) {
        let record = record.map_err(|_| "malformed PAX record".to_string())?;
        let key = record
            .key()
            .map_err(|_| "PAX key is not UTF-8".to_string())?;
        match key {
            "path" => out.path = Some(record.value_bytes().to_vec()),
            "size" => {
                out.size = Some(String::from_utf8_lossy(record.value_bytes()).into_owned());
            }
            "mtime" | "atime" | "ctime" | "uid" | "gid" | "uname" | "gname" => {}
            "linkpath" => return Err("PAX linkpath (links are not extracted)".into()),
            other => return Err(format!("PAX key {other:?} is not supported")),
        }
    }
    Ok(out)
}

fn type_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        tar::EntryType::Continuous => "contiguous file",
        tar::EntryType::GNULongLink => "GNU long link name",
        tar::EntryType::GNUSparse => "sparse file",
        tar::EntryType::XGlobalHeader => "PAX global header",
        _ => "tar member of an unknown type",
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// From the reader to the writer thread.
enum Msg {
    Dir(usize),
    FileStart(usize),
    Data(Vec<u8>),
    FileEnd,
}

/// Where verified entries go.
pub(crate) trait Sink {
    fn dir(&mut self, entry: &Entry) -> Result<(), BundleError>;
    fn file_begin(&mut self, entry: &Entry) -> Result<(), BundleError>;
    fn file_data(&mut self, data: &[u8]) -> Result<(), BundleError>;
    fn file_end(&mut self, entry: &Entry) -> Result<(), BundleError>;
}

fn write_loop<S: Sink>(
    rx: mpsc::Receiver<Msg>,
    recycle: mpsc::Sender<Vec<u8>>,
    entries: &[Entry],
    mut sink: S,
    bundle: &Path,
) -> Result<(Summary, S), BundleError> {
    let mut summary = Summary {
        files: 0,
        dirs: 0,
        bytes: 0,
    };
    let mut current: Option<(usize, digest::Context)> = None;
    for msg in rx {
        match msg {
            Msg::Dir(i) => {
                sink.dir(&entries[i])?;
                summary.dirs += 1;
            }
            Msg::FileStart(i) => {
                sink.file_begin(&entries[i])?;
                current = Some((i, digest::Context::new(&digest::SHA256)));
            }
            Msg::Data(buf) => {
                if let Some((_, sha)) = current.as_mut() {
                    sha.update(&buf);
                }
                sink.file_data(&buf)?;
                summary.bytes += buf.len() as u64;
                let _ = recycle.send(buf);
            }
            Msg::FileEnd => {
                let (i, sha) = current.take().expect("FileEnd follows FileStart");
                let entry = &entries[i];
                if let Entry::File { sha256, .. } = entry
                    && sha.finish().as_ref() != sha256.0
                {
                    return Err(BundleError::HashMismatch {
                        path: bundle.to_path_buf(),
                        entry: entry.path().to_owned(),
                    });
                }
                sink.file_end(entry)?;
                summary.files += 1;
            }
        }
    }
    Ok((summary, sink))
}

/// Checks without writing.
pub(crate) struct NullSink;

impl Sink for NullSink {
    fn dir(&mut self, _: &Entry) -> Result<(), BundleError> {
        Ok(())
    }
    fn file_begin(&mut self, _: &Entry) -> Result<(), BundleError> {
        Ok(())
    }
    fn file_data(&mut self, _: &[u8]) -> Result<(), BundleError> {
        Ok(())
    }
    fn file_end(&mut self, _: &Entry) -> Result<(), BundleError> {
        Ok(())
    }
}

/// Checks without writing, keeping one file's content.
struct CaptureSink {
    wanted: String,
    capturing: bool,
    content: Option<Vec<u8>>,
}

impl Sink for CaptureSink {
    fn dir(&mut self, _: &Entry) -> Result<(), BundleError> {
        Ok(())
    }
    fn file_begin(&mut self, entry: &Entry) -> Result<(), BundleError> {
        self.capturing = entry.path() == self.wanted;
        Ok(())
    }
    fn file_data(&mut self, data: &[u8]) -> Result<(), BundleError> {
        if self.capturing
            && let Some(content) = self.content.as_mut()
        {
            content.extend_from_slice(data);
        }
        Ok(())
    }
    fn file_end(&mut self, _: &Entry) -> Result<(), BundleError> {
        self.capturing = false;
        Ok(())
    }
}

/// Writes into the staging directory. Only ever creates what the manifest lists,
/// as new regular files and directories (never following a link), private until
/// the end; the manifest's modes are applied to files when complete and to
/// directories in [`FsSink::finish`].
struct FsSink {
    root: PathBuf,
    /// The bundle and the directory the staging directory is in, for errors:
    /// the staging directory itself is gone by the time one is reported.
    bundle: PathBuf,
    parent: PathBuf,
    /// The file being written and its manifest path.
    file: Option<(File, String)>,
    dirs: Vec<(PathBuf, String, u32)>,
}

impl FsSink {
    fn new(root: PathBuf, bundle: &Path, parent: &Path) -> FsSink {
        FsSink {
            root,
            bundle: bundle.to_path_buf(),
            parent: parent.to_path_buf(),
            file: None,
            dirs: Vec::new(),
        }
    }

    fn write_err(&self, entry: Option<&str>) -> impl FnOnce(io::Error) -> BundleError + use<> {
        let (path, dir, entry) = (
            self.bundle.clone(),
            self.parent.clone(),
            entry.map(str::to_owned),
        );
        move |source| BundleError::ExtractWrite {
            path,
            dir,
            entry,
            source,
        }
    }

    /// Applies directory modes (deepest first) and flushes everything to disk.
    fn finish(self) -> Result<(), BundleError> {
        for (path, name, mode) in self.dirs.iter().rev() {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                .map_err(self.write_err(Some(name)))?;
        }
        let root = File::open(&self.root).map_err(self.write_err(None))?;
        nix::unistd::syncfs(root.as_fd()).map_err(|e| self.write_err(None)(io::Error::from(e)))?;
        Ok(())
    }
}

impl Sink for FsSink {
    fn dir(&mut self, entry: &Entry) -> Result<(), BundleError> {
        let path = self.root.join(entry.path());
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(self.write_err(Some(entry.path())))?;
        self.dirs
            .push((path, entry.path().to_owned(), entry.mode().0));
        Ok(())
    }

    fn file_begin(&mut self, entry: &Entry) -> Result<(), BundleError> {
        let path = self.root.join(entry.path());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(self.write_err(Some(entry.path())))?;
        self.file = Some((file, entry.path().to_owned()));
        Ok(())
    }

    fn file_data(&mut self, data: &[u8]) -> Result<(), BundleError> {
        let (file, name) = self.file.as_mut().expect("data follows file_begin");
        if let Err(e) = file.write_all(data) {
            let name = name.clone();
            return Err(self.write_err(Some(&name))(e));
        }
        Ok(())
    }

    fn file_end(&mut self, entry: &Entry) -> Result<(), BundleError> {
        let (file, _) = self.file.take().expect("file_end follows file_begin");
        file.set_permissions(fs::Permissions::from_mode(entry.mode().0))
            .map_err(self.write_err(Some(entry.path())))
    }
}

/// A staging directory next to the destination, removed unless committed.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(
        parent: &Path,
        name: &std::ffi::OsStr,
        bundle: &Path,
    ) -> Result<Staging, BundleError> {
        let path = parent.join(hidden_name(name, "staging"));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| BundleError::ExtractWrite {
                path: bundle.to_path_buf(),
                dir: parent.to_path_buf(),
                entry: None,
                source,
            })?;
        Ok(Staging {
            path,
            committed: false,
        })
    }

    /// Renames the staging directory to `dest`, never replacing anything there.
    fn commit(
        mut self,
        parent: &Path,
        name: &std::ffi::OsStr,
        dest: &Path,
    ) -> Result<(), BundleError> {
        let commit_err = |source: io::Error| BundleError::Commit {
            staging: self.path.clone(),
            dest: dest.to_path_buf(),
            source,
        };
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o755)).map_err(commit_err)?;
        let dir = File::open(parent).map_err(commit_err)?;
        let staging_name = self
            .path
            .file_name()
            .expect("staging has a name")
            .to_owned();
        match nix::fcntl::renameat2(
            dir.as_fd(),
            staging_name.as_os_str(),
            dir.as_fd(),
            name,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => {
                return Err(BundleError::DestinationExists {
                    dest: dest.to_path_buf(),
                });
            }
            // Filesystems without RENAME_NOREPLACE: check, then a plain rename.
            Err(nix::errno::Errno::EINVAL) => {
                if dest.symlink_metadata().is_ok() {
                    return Err(BundleError::DestinationExists {
                        dest: dest.to_path_buf(),
                    });
                }
                fs::rename(&self.path, dest).map_err(commit_err)?;
            }
            Err(e) => return Err(commit_err(io::Error::from(e))),
        }
        self.committed = true;
        dir.sync_all().map_err(|source| BundleError::Commit {
            staging: self.path.clone(),
            dest: dest.to_path_buf(),
            source,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the staging directory");
        }
    }
}
