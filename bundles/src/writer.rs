//! Writing bundles: a [`Layout`] (what goes where) streamed into a tar archive,
//! compressed, hashed entry by entry, described by a manifest, signed.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ring::digest;

use crate::format::{SignatureRecord, write_bundle};
use crate::keys::SigningKey;
use crate::limits::Limits;
use crate::manifest::{
    Compression, Entry, FORMAT_VERSION, Kind, Manifest, Mode, Payload, Sha256, check_entry_path,
};
use crate::tempname::hidden_name;
use crate::{BuildError, Progress};

/// One entry of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutEntry {
    Dir { mode: u32 },
    File { source: PathBuf, mode: u32 },
}

/// The tree a bundle will hold, mapping bundle paths to sources. Parent
/// directories are implied; two sources for one path are an error.
#[derive(Debug, Default, Clone)]
pub struct Layout {
    entries: BTreeMap<String, LayoutEntry>,
}

impl Layout {
    pub fn new() -> Layout {
        Layout::default()
    }

    /// Adds an (empty unless filled later) directory at `dest`.
    pub fn add_dir(&mut self, dest: &str, mode: u32) -> Result<(), BuildError> {
        if dest.is_empty() {
            return Ok(());
        }
        check_mode(dest, mode)?;
        self.add_parents(dest)?;
        match self.entries.get(dest) {
            Some(LayoutEntry::Dir { .. }) => Ok(()),
            Some(LayoutEntry::File { .. }) => Err(conflict(dest, "is both a file and a directory")),
            None => {
                self.entries
                    .insert(dest.to_owned(), LayoutEntry::Dir { mode });
                Ok(())
            }
        }
    }

    /// Adds the file `source` at `dest`. Without a mode, it is 0755 when the source
    /// is executable by anyone and 0644 otherwise.
    pub fn add_file(
        &mut self,
        dest: &str,
        source: &Path,
        mode: Option<u32>,
    ) -> Result<(), BuildError> {
        let meta = fs::metadata(source).map_err(|e| source_error(source, e))?;
        if !meta.is_file() {
            return Err(BuildError::UnsupportedSource {
                path: source.to_path_buf(),
                kind: if meta.is_dir() {
                    "directory"
                } else {
                    "special file"
                },
            });
        }
        let mode = mode.unwrap_or_else(|| normal_mode(meta.permissions().mode()));
        check_mode(dest, mode)?;
        self.add_parents(dest)?;
        if self.entries.contains_key(dest) {
            return Err(conflict(dest, "is listed twice"));
        }
        self.entries.insert(
            dest.to_owned(),
            LayoutEntry::File {
                source: source.to_path_buf(),
                mode,
            },
        );
        Ok(())
    }

    /// Adds the directory tree `source` at `dest` (`""` for the bundle root).
    /// Symbolic links to files are followed (their content is bundled); links to
    /// directories, dangling links and special files are errors.
    pub fn add_tree(&mut self, dest: &str, source: &Path) -> Result<(), BuildError> {
        let meta = fs::metadata(source).map_err(|e| source_error(source, e))?;
        if !meta.is_dir() {
            return Err(BuildError::UnsupportedSource {
                path: source.to_path_buf(),
                kind: "file where a directory was expected",
            });
        }
        self.add_dir(dest, 0o755)?;
        let mut children: Vec<_> = fs::read_dir(source)
            .map_err(|e| source_error(source, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| source_error(source, e))?;
        children.sort();
        for child in children {
            let name = child
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| BuildError::UnsupportedSource {
                    path: child.clone(),
                    kind: "file with a non-UTF-8 name",
                })?
                .to_owned();
            let child_dest = if dest.is_empty() {
                name
            } else {
                format!("{dest}/{name}")
            };
            let link = fs::symlink_metadata(&child).map_err(|e| source_error(&child, e))?;
            let target = fs::metadata(&child).map_err(|e| source_error(&child, e))?;
            if link.file_type().is_symlink() && target.is_dir() {
                return Err(BuildError::UnsupportedSource {
                    path: child,
                    kind: "symbolic link to a directory",
                });
            }
            if target.is_dir() {
                self.add_tree(&child_dest, &child)?;
            } else {
                self.add_file(&child_dest, &child, None)?;
            }
        }
        Ok(())
    }

    fn add_parents(&mut self, dest: &str) -> Result<(), BuildError> {
        check_entry_path(dest).map_err(|reason| conflict(dest, reason))?;
        let mut at = 0;
        while let Some(i) = dest[at..].find('/') {
            let parent = &dest[..at + i];
            match self.entries.get(parent) {
                Some(LayoutEntry::File { .. }) => {
                    return Err(conflict(dest, "its parent is a file"));
                }
                Some(LayoutEntry::Dir { .. }) => {}
                None => {
                    self.entries
                        .insert(parent.to_owned(), LayoutEntry::Dir { mode: 0o755 });
                }
            }
            at += i + 1;
        }
        Ok(())
    }

    /// Entries in bundle order: sorted, so a directory precedes its contents.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &LayoutEntry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn conflict(dest: &str, reason: &str) -> BuildError {
    BuildError::Destination {
        dest: dest.to_owned(),
        reason: reason.to_owned(),
    }
}

fn source_error(path: &Path, e: io::Error) -> BuildError {
    if e.kind() == io::ErrorKind::NotFound {
        BuildError::SourceMissing {
            path: path.to_path_buf(),
        }
    } else {
        BuildError::Source {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Refuses at once a mode the reader would refuse (see FORMAT.md), rather than
/// after the whole payload is compressed.
fn check_mode(dest: &str, mode: u32) -> Result<(), BuildError> {
    let problem = if mode & !0o777 != 0 {
        "has bits beyond 0777 (setuid, setgid or sticky)"
    } else if mode & 0o022 != 0 {
        "lets group or others write (at most 0755)"
    } else {
        return Ok(());
    };
    Err(conflict(dest, &format!("mode {mode:04o} {problem}")))
}

fn normal_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// What to write besides the entries.
pub struct BuildOptions<'a> {
    pub kind: Kind,
    pub version: semver::Version,
    pub platform: String,
    pub created: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    /// zstd level, 1 to 19 (the "ultra" levels need windows readers refuse).
    pub compression_level: i32,
    /// Compression threads; 1 compresses on the calling thread.
    pub threads: u32,
    /// Keys to sign with now; none leaves the bundle unsigned for `sign_bundle`.
    pub signing_keys: &'a [SigningKey],
    /// Called with source bytes read so far and the total.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
}

impl std::fmt::Debug for BuildOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("platform", &self.platform)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("compression_level", &self.compression_level)
            .field("threads", &self.threads)
            .field("signing_keys", &self.signing_keys)
            .finish_non_exhaustive()
    }
}

/// Writes the bundle described by `layout` to `out` (atomically: a temporary file
/// next to it, renamed when complete) and returns its manifest.
pub fn build_bundle(
    layout: &Layout,
    out: &Path,
    mut options: BuildOptions<'_>,
) -> Result<Manifest, BuildError> {
    if !(1..=19).contains(&options.compression_level) {
        return Err(BuildError::CompressionLevel {
            level: options.compression_level,
        });
    }
    // Sizes now, so that progress has a total and a changing source is noticed.
    let mut sizes = Vec::with_capacity(layout.len());
    let mut total = 0u64;
    for (_, entry) in layout.entries() {
        let size = match entry {
            LayoutEntry::Dir { .. } => 0,
            LayoutEntry::File { source, .. } => fs::metadata(source)
                .map_err(|e| source_error(source, e))?
                .len(),
        };
        total += size;
        sizes.push(size);
    }

    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out.file_name().unwrap_or(OsStr::new("bundle"));
    let payload_tmp = TempFile::create(&dir, name, "payload")?;
    let mtime = u64::try_from(options.created.timestamp()).unwrap_or(0);

    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Write { path, source }
    };
    let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, payload_tmp.file()?));
    let mut encoder = zstd::stream::write::Encoder::new(hashing, options.compression_level)
        .map_err(write_err(&payload_tmp.path))?;
    encoder
        .include_checksum(true)
        .map_err(write_err(&payload_tmp.path))?;
    if options.threads > 1 {
        encoder
            .multithread(options.threads)
            .map_err(write_err(&payload_tmp.path))?;
    }
    let mut tar = tar::Builder::new(encoder);
    let mut entries = Vec::with_capacity(layout.len());
    let mut done = 0u64;
    for ((dest, entry), size) in layout.entries().zip(sizes) {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        match entry {
            LayoutEntry::Dir { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                tar.append_data(&mut header, dest, io::empty())
                    .map_err(write_err(&payload_tmp.path))?;
                entries.push(Entry::Dir {
                    path: dest.to_owned(),
                    mode: Mode(*mode),
                });
            }
            LayoutEntry::File { source, mode } => {
                let file = File::open(source).map_err(|e| source_error(source, e))?;
                let mut reader = HashingReader::new(file.take(size));
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(size);
                if let Err(e) = tar.append_data(&mut header, dest, &mut reader) {
                    return Err(match reader.error.take() {
                        Some(read_error) => source_error(source, read_error),
                        None => write_err(&payload_tmp.path)(e),
                    });
                }
                let grown = fs::metadata(source)
                    .map(|m| m.len() != size)
                    .unwrap_or(true);
                if reader.count != size || grown {
                    return Err(BuildError::SourceChanged {
                        path: source.clone(),
                    });
                }
                done += size;
                if let Some(p) = options.progress.as_deref_mut() {
                    p(Progress { done, total });
                }
                entries.push(Entry::File {
                    path: dest.to_owned(),
                    mode: Mode(*mode),
                    size,
                    sha256: Sha256(reader.finish()),
                });
            }
        }
    }
    let encoder = tar.into_inner().map_err(write_err(&payload_tmp.path))?;
    let hashing = encoder.finish().map_err(write_err(&payload_tmp.path))?;
    let (payload_size, payload_sha) = hashing.finish().map_err(write_err(&payload_tmp.path))?;

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind: options.kind,
        version: options.version.clone(),
        platform: options.platform.clone(),
        created: options.created,
        expires: options.expires,
        payload: Payload {
            compression: Compression::Zstd,
            size: payload_size,
            sha256: Sha256(payload_sha),
        },
        entries,
    };
    // Never write what the reader would refuse.
    manifest.validate(out, &Limits::default())?;
    let manifest_bytes = manifest.to_bytes();
    let signatures: Vec<SignatureRecord> = options
        .signing_keys
        .iter()
        .map(|key| SignatureRecord {
            key_id: key.id(),
            signature: key.sign(&manifest_bytes),
        })
        .collect();

    let mut payload = payload_tmp.file()?;
    payload
        .seek(SeekFrom::Start(0))
        .map_err(write_err(&payload_tmp.path))?;
    write_file_atomically(out, |w| {
        write_bundle(w, &manifest_bytes, &signatures, &mut payload).map(drop)
    })?;
    Ok(manifest)
}

/// Writes `out` through a temporary file in the same directory, synced, then renamed.
pub(crate) fn write_file_atomically(
    out: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> Result<(), BuildError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out.file_name().unwrap_or(OsStr::new("bundle"));
    let tmp = TempFile::create(&dir, name, "tmp")?;
    let file = tmp.file()?;
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, &file);
        write(&mut w)?;
        w.flush()?;
        drop(w);
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.sync_all()?;
        fs::rename(&tmp.path, out)
    })();
    result.map_err(|source| BuildError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    tmp.forget();
    Ok(())
}

/// A temporary file removed on drop unless forgotten.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// `.<name>.<tag>-<random>` in `dir`.
    fn create(dir: &Path, name: &OsStr, tag: &str) -> Result<TempFile, BuildError> {
        let path = dir.join(hidden_name(name, tag));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| BuildError::Write {
                path: path.clone(),
                source,
            })?;
        Ok(TempFile {
            path,
            file: Some(file),
        })
    }

    fn file(&self) -> Result<File, BuildError> {
        self.file
            .as_ref()
            .expect("open until dropped")
            .try_clone()
            .map_err(|source| BuildError::Write {
                path: self.path.clone(),
                source,
            })
    }

    fn forget(mut self) {
        self.file = None;
        self.path = PathBuf::new();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Hashes and counts what is read through it, keeping a read error for reporting.
struct HashingReader<R> {
    inner: R,
    sha: digest::Context,
    count: u64,
    error: Option<io::Error>,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            sha: digest::Context::new(&digest::SHA256),
            count: 0,
            error: None,
        }
    }

    fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.sha.finish().as_ref());
        out
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.sha.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                let message = e.to_string();
                self.error = Some(e);
                Err(io::Error::new(kind, message))
            }
        }
    }
}

/// Hashes and counts what is written through it.
struct HashingWriter<W> {
    inner: W,
    sha: digest::Context,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            sha: digest::Context::new(&digest::SHA256),
            count: 0,
        }
    }

    fn finish(mut self) -> io::Result<(u64, [u8; 32])> {
        self.inner.flush()?;
        let mut out = [0u8; 32];
        out.copy_from_slice(self.sha.finish().as_ref());
        Ok((self.count, out))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
