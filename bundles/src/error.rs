//! Errors of the bundle reader, the builder and key handling.
//!
//! Every variant names what failed and where: the bundle file, and for anything
//! about a member of the bundle, that entry. Entry names come from untrusted
//! archives, so they are always printed with `{:?}`: escaped, quoted, one line.

use std::path::PathBuf;

/// A bundle could not be opened, verified or extracted.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    // ---- the file and its layout ----
    #[error("cannot read bundle {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a Hangar bundle (bad magic)", path.display())]
    NotABundle { path: PathBuf },
    #[error("{}: bundle format version {version} is not supported (this build reads version 1)", path.display())]
    UnsupportedFormat { path: PathBuf, version: u32 },
    #[error("{}: the file is truncated", path.display())]
    Truncated { path: PathBuf },
    #[error("{}: data follows the end of the payload ({extra} bytes)", path.display())]
    TrailingBytes { path: PathBuf, extra: u64 },
    #[error("{}: corrupt header: {reason}", path.display())]
    CorruptHeader { path: PathBuf, reason: &'static str },

    // ---- the manifest ----
    #[error("{}: manifest of {size} bytes exceeds the limit of {max}", path.display())]
    ManifestTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: the manifest is not valid JSON for format version 1", path.display())]
    BadManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: manifest field `{field}`: {reason}", path.display())]
    ManifestField {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    #[error("{}: manifest entry {entry:?}: {reason}", path.display())]
    ManifestEntry {
        path: PathBuf,
        entry: String,
        reason: &'static str,
    },

    // ---- signatures and trust ----
    #[error("{}: the bundle is not signed", path.display())]
    Unsigned { path: PathBuf },
    #[error("{}: {count} signatures exceed the limit of {max}", path.display())]
    TooManySignatures { path: PathBuf, count: u32, max: u32 },
    #[error("{}: the signature by trusted key {key_id} does not verify (manifest or signature altered)", path.display())]
    BadSignature { path: PathBuf, key_id: String },
    #[error("{}: no signature by a trusted key (signed by {key_ids})", path.display())]
    UntrustedSigners { path: PathBuf, key_ids: String },
    #[error("cannot verify {}: no trusted keys (give a trust directory)", path.display())]
    NoTrustedKeys { path: PathBuf },

    // ---- hard limits ----
    #[error("{}: {count} entries exceed the limit of {max}", path.display())]
    TooManyEntries { path: PathBuf, count: u64, max: u64 },
    #[error("{}: entry {entry:?}: {size} bytes exceed the per-file limit of {max}", path.display())]
    FileTooLarge {
        path: PathBuf,
        entry: String,
        size: u64,
        max: u64,
    },
    #[error("{}: {size} bytes in all exceed the limit of {max}", path.display())]
    TotalTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: the payload would expand {ratio}-fold, more than the limit of {max} (compression bomb)", path.display())]
    CompressionRatio { path: PathBuf, ratio: u64, max: u64 },
    #[error("{}: the zstd frame asks for a 2^{window_log}-byte window, more than the limit of 2^{max}", path.display())]
    ZstdWindow {
        path: PathBuf,
        window_log: u32,
        max: u32,
    },
    #[error("{}: {reason}", path.display())]
    BadCompression { path: PathBuf, reason: &'static str },
    #[error("{}: the payload decompresses to more than the {limit} bytes its manifest allows (compression bomb)", path.display())]
    DecompressedTooLarge { path: PathBuf, limit: u64 },

    // ---- policy ----
    #[error("{}: version {version} is older than the installed {installed}; a downgrade must be asked for explicitly", path.display())]
    Downgrade {
        path: PathBuf,
        version: String,
        installed: String,
    },
    #[error("{}: the bundle expired at {expires}; refusing it without an explicit unsafe override", path.display())]
    Expired { path: PathBuf, expires: String },
    #[error("{}: the bundle is for platform {platform}, not {expected}", path.display())]
    WrongPlatform {
        path: PathBuf,
        platform: String,
        expected: String,
    },

    // ---- archive entries ----
    #[error("{}: entry {entry:?}: unsafe path ({reason})", path.display())]
    UnsafePath {
        path: PathBuf,
        entry: String,
        reason: &'static str,
    },
    #[error("{}: entry {entry:?} is a {kind}; only regular files and directories are extracted", path.display())]
    NotRegularFile {
        path: PathBuf,
        entry: String,
        kind: &'static str,
    },
    #[error("{}: entry {entry:?} is not in the manifest", path.display())]
    NotInManifest { path: PathBuf, entry: String },
    #[error("{}: entry {entry:?} appears twice", path.display())]
    DuplicateEntry { path: PathBuf, entry: String },
    #[error("{}: entry {entry:?} of the manifest is missing from the archive", path.display())]
    MissingEntry { path: PathBuf, entry: String },
    #[error("{}: entry {entry:?} is a {archive} in the archive but a {manifest} in the manifest", path.display())]
    TypeMismatch {
        path: PathBuf,
        entry: String,
        manifest: &'static str,
        archive: &'static str,
    },
    #[error("{}: entry {entry:?} has {archive} bytes in the archive but {manifest} in the manifest", path.display())]
    SizeMismatch {
        path: PathBuf,
        entry: String,
        manifest: u64,
        archive: u64,
    },
    #[error("{}: entry {entry:?}: PAX size {pax:?} disagrees with the ustar size {ustar}", path.display())]
    PaxSizeMismatch {
        path: PathBuf,
        entry: String,
        pax: String,
        ustar: u64,
    },
    #[error("{}: entry {entry:?}: bad extended header ({reason})", path.display())]
    BadExtendedHeader {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{}: entry {entry:?}: content does not match its SHA-256 in the manifest", path.display())]
    HashMismatch { path: PathBuf, entry: String },
    #[error("{}: the payload ends inside entry {entry:?}", path.display())]
    TruncatedEntry { path: PathBuf, entry: String },
    #[error("{}: corrupt tar archive at {position}", path.display())]
    BadArchive {
        path: PathBuf,
        position: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the payload does not decompress at {position}", path.display())]
    Decompress {
        path: PathBuf,
        position: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: non-zero data after the end of the archive", path.display())]
    TrailingData { path: PathBuf },
    #[error("{}: the payload does not match its SHA-256 in the manifest", path.display())]
    PayloadHashMismatch { path: PathBuf },

    // ---- extraction ----
    #[error("cannot extract to {}: it already exists", dest.display())]
    DestinationExists { dest: PathBuf },
    #[error("cannot extract to {}: its parent directory is missing", dest.display())]
    NoParent { dest: PathBuf },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot write {} in {}", path.display(), what(entry.as_deref()), dir.display())]
    ExtractWrite {
        path: PathBuf,
        /// The directory extraction writes in (the destination's parent).
        dir: PathBuf,
        entry: Option<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move the extracted files into place as {}", dest.display())]
    Commit {
        staging: PathBuf,
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: interrupted; nothing was extracted", path.display())]
    Interrupted { path: PathBuf },

    #[error(transparent)]
    Key(#[from] KeyError),
}

impl BundleError {
    /// A stable machine-readable name for the kind of failure (`--json` output, logs).
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Read { .. } => "read",
            BundleError::NotABundle { .. } => "not_a_bundle",
            BundleError::UnsupportedFormat { .. } => "unsupported_format",
            BundleError::Truncated { .. } => "truncated",
            BundleError::TrailingBytes { .. } => "trailing_bytes",
            BundleError::CorruptHeader { .. } => "corrupt_header",
            BundleError::ManifestTooLarge { .. } => "manifest_too_large",
            BundleError::BadManifest { .. } => "bad_manifest",
            BundleError::ManifestField { .. } => "manifest_field",
            BundleError::ManifestEntry { .. } => "manifest_entry",
            BundleError::Unsigned { .. } => "unsigned",
            BundleError::TooManySignatures { .. } => "too_many_signatures",
            BundleError::BadSignature { .. } => "bad_signature",
            BundleError::UntrustedSigners { .. } => "untrusted_signers",
            BundleError::NoTrustedKeys { .. } => "no_trusted_keys",
            BundleError::TooManyEntries { .. } => "too_many_entries",
            BundleError::FileTooLarge { .. } => "file_too_large",
            BundleError::TotalTooLarge { .. } => "total_too_large",
            BundleError::CompressionRatio { .. } => "compression_ratio",
            BundleError::ZstdWindow { .. } => "zstd_window",
            BundleError::BadCompression { .. } => "bad_compression",
            BundleError::DecompressedTooLarge { .. } => "decompressed_too_large",
            BundleError::Downgrade { .. } => "downgrade",
            BundleError::Expired { .. } => "expired",
            BundleError::WrongPlatform { .. } => "wrong_platform",
            BundleError::UnsafePath { .. } => "unsafe_path",
            BundleError::NotRegularFile { .. } => "not_regular_file",
            BundleError::NotInManifest { .. } => "not_in_manifest",
            BundleError::DuplicateEntry { .. } => "duplicate_entry",
            BundleError::MissingEntry { .. } => "missing_entry",
            BundleError::TypeMismatch { .. } => "type_mismatch",
            BundleError::SizeMismatch { .. } => "size_mismatch",
            BundleError::PaxSizeMismatch { .. } => "pax_size_mismatch",
            BundleError::BadExtendedHeader { .. } => "bad_extended_header",
            BundleError::HashMismatch { .. } => "hash_mismatch",
            BundleError::TruncatedEntry { .. } => "truncated_entry",
            BundleError::BadArchive { .. } => "bad_archive",
            BundleError::Decompress { .. } => "decompress",
            BundleError::TrailingData { .. } => "trailing_data",
            BundleError::PayloadHashMismatch { .. } => "payload_hash_mismatch",
            BundleError::DestinationExists { .. } => "destination_exists",
            BundleError::NoParent { .. } => "no_parent",
            BundleError::Write { .. } => "write",
            BundleError::ExtractWrite { .. } => "write",
            BundleError::Commit { .. } => "commit",
            BundleError::Interrupted { .. } => "interrupted",
            BundleError::Key(e) => e.code(),
        }
    }

    /// The archive or manifest entry the error is about, when it is about one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            BundleError::ManifestEntry { entry, .. }
            | BundleError::FileTooLarge { entry, .. }
            | BundleError::UnsafePath { entry, .. }
            | BundleError::NotRegularFile { entry, .. }
            | BundleError::NotInManifest { entry, .. }
            | BundleError::DuplicateEntry { entry, .. }
            | BundleError::MissingEntry { entry, .. }
            | BundleError::TypeMismatch { entry, .. }
            | BundleError::SizeMismatch { entry, .. }
            | BundleError::PaxSizeMismatch { entry, .. }
            | BundleError::BadExtendedHeader { entry, .. }
            | BundleError::HashMismatch { entry, .. }
            | BundleError::TruncatedEntry { entry, .. } => Some(entry),
            BundleError::ExtractWrite { entry, .. } => entry.as_deref(),
            _ => None,
        }
    }
}

/// What an extraction was writing when it failed.
fn what(entry: Option<&str>) -> String {
    match entry {
        Some(entry) => format!("entry {entry:?}"),
        None => "the staging directory".into(),
    }
}

/// A key or trust-directory file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; refusing to overwrite a key", path.display())]
    Exists { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: &'static str },
    #[error("{} is accessible by group or others (mode {mode:03o}); a private key must be 0600", path.display())]
    InsecurePrivateKey { path: PathBuf, mode: u32 },
    #[error("{} is writable by group or others (mode {mode:03o}); anyone could add a trusted key", path.display())]
    InsecureTrust { path: PathBuf, mode: u32 },
    #[error("cannot generate a key pair")]
    Generate,
}

impl KeyError {
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Read { .. } => "key_read",
            KeyError::Write { .. } => "key_write",
            KeyError::Exists { .. } => "key_exists",
            KeyError::Malformed { .. } => "key_malformed",
            KeyError::InsecurePrivateKey { .. } => "insecure_private_key",
            KeyError::InsecureTrust { .. } => "insecure_trust",
            KeyError::Generate => "key_generate",
        }
    }
}

/// A bundle could not be built or signed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read recipe {}", path.display())]
    ReadRecipe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recipe {} is not valid", path.display())]
    ParseRecipe {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("recipe {}: {reason}", path.display())]
    Recipe { path: PathBuf, reason: String },
    #[error("recipe {}: variable `{name}` is not set (pass --var {name}=...)", path.display())]
    UnknownVariable { path: PathBuf, name: String },
    #[error("source {} does not exist", path.display())]
    SourceMissing { path: PathBuf },
    #[error("cannot read source {}", path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("source {} is a {kind}; only files, directories and symbolic links to files are bundled", path.display())]
    UnsupportedSource { path: PathBuf, kind: &'static str },
    #[error("source {} changed while it was being bundled", path.display())]
    SourceChanged { path: PathBuf },
    #[error("glob {pattern:?} is not valid")]
    BadGlob {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("glob {pattern:?} matches nothing")]
    GlobEmpty { pattern: String },
    #[error("cannot run {command:?}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command:?} failed ({status})")]
    CommandFailed { command: String, status: String },
    #[error("bundle path {dest:?}: {reason}")]
    Destination { dest: String, reason: String },
    #[error("zstd level {level} is not within 1..=19")]
    CompressionLevel { level: i32 },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl BuildError {
    pub fn code(&self) -> &'static str {
        match self {
            BuildError::ReadRecipe { .. } => "recipe_read",
            BuildError::ParseRecipe { .. } => "recipe_parse",
            BuildError::Recipe { .. } => "recipe",
            BuildError::UnknownVariable { .. } => "recipe_variable",
            BuildError::SourceMissing { .. } => "source_missing",
            BuildError::Source { .. } => "source_read",
            BuildError::UnsupportedSource { .. } => "source_unsupported",
            BuildError::SourceChanged { .. } => "source_changed",
            BuildError::BadGlob { .. } => "glob_invalid",
            BuildError::GlobEmpty { .. } => "glob_empty",
            BuildError::Spawn { .. } => "command_spawn",
            BuildError::CommandFailed { .. } => "command_failed",
            BuildError::Destination { .. } => "destination",
            BuildError::CompressionLevel { .. } => "compression_level",
            BuildError::Write { .. } => "write",
            BuildError::Key(e) => e.code(),
            BuildError::Bundle(e) => e.code(),
        }
    }
}
