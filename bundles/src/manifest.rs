//! The signed manifest: what a bundle is and every entry it holds.
//!
//! The manifest is JSON. Its exact bytes are what the signatures cover, so it is
//! parsed from those bytes only after a trusted signature verified them, and
//! never re-serialized for checking. Parsing is strict (unknown fields are
//! errors) and followed by validation of every rule that does not need the payload.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::BundleError;
use crate::limits::{Limits, MAX_COMPONENT_BYTES, MAX_PATH_BYTES};

/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// What a bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A whole release of the appliance.
    Appliance,
    /// What a worker host needs.
    Worker,
    /// More Terraform/OpenTofu versions and providers.
    Tools,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Appliance => "appliance",
            Kind::Worker => "worker",
            Kind::Tools => "tools",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "appliance" => Ok(Kind::Appliance),
            "worker" => Ok(Kind::Worker),
            "tools" => Ok(Kind::Tools),
            other => Err(format!(
                "unknown bundle kind {other:?} (appliance, worker or tools)"
            )),
        }
    }
}

/// The manifest of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub kind: Kind,
    /// The product version (semver) the bundle carries.
    pub version: semver::Version,
    /// Target platform, `<os>-<arch>` such as `linux-x86_64`, or `any`.
    pub platform: String,
    pub created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    pub payload: Payload,
    /// In archive order; a directory always comes before what it contains.
    pub entries: Vec<Entry>,
}

/// The compressed payload that follows the signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub compression: Compression,
    /// Exact length in bytes of the payload in the file.
    pub size: u64,
    /// SHA-256 of those bytes.
    pub sha256: Sha256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// One zstd frame, with its content checksum, holding a tar archive.
    Zstd,
}

/// One member of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Entry {
    Dir {
        path: String,
        mode: Mode,
    },
    File {
        path: String,
        mode: Mode,
        size: u64,
        sha256: Sha256,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } => path,
        }
    }

    pub fn mode(&self) -> Mode {
        match self {
            Entry::Dir { mode, .. } | Entry::File { mode, .. } => *mode,
        }
    }

    /// File size; 0 for a directory.
    pub fn size(&self) -> u64 {
        match self {
            Entry::Dir { .. } => 0,
            Entry::File { size, .. } => *size,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Entry::Dir { .. })
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Entry::Dir { .. } => "directory",
            Entry::File { .. } => "regular file",
        }
    }
}

/// Unix permission bits, written in the manifest as an octal string (`"0755"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mode(pub u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(serde::de::Error::custom(
                "mode must be four octal digits such as \"0755\"",
            ));
        }
        u32::from_str_radix(&s, 8)
            .map(Mode)
            .map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 digest, written in the manifest as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sha256, D::Error> {
        let s = String::deserialize(d)?;
        let lower_hex = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lower_hex {
            return Err(serde::de::Error::custom(
                "sha256 must be 64 lowercase hex digits",
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Sha256(out))
    }
}

impl Manifest {
    /// Parses and validates manifest bytes read from the bundle at `bundle`.
    pub fn parse(bytes: &[u8], bundle: &Path, limits: &Limits) -> Result<Manifest, BundleError> {
        let bad = |source| BundleError::BadManifest {
            path: bundle.to_path_buf(),
            source,
        };
        // Entries are counted before any is kept: a manifest within the size
        // limit can list millions of tiny entries, several times its size in memory.
        let count = serde_json::from_slice::<EntryCount>(bytes)
            .map_err(bad)?
            .entries
            .0;
        if count > limits.max_entries {
            return Err(BundleError::TooManyEntries {
                path: bundle.to_path_buf(),
                count,
                max: limits.max_entries,
            });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(bad)?;
        manifest.validate(bundle, limits)?;
        Ok(manifest)
    }

    /// The exact bytes written into a bundle (compact JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// Total size of all files.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(Entry::size)
            .fold(0, u64::saturating_add)
    }

    pub fn file_count(&self) -> usize {
        self.entries.iter().filter(|e| !e.is_dir()).count()
    }

    /// Checks every rule that does not need the payload.
    pub fn validate(&self, bundle: &Path, limits: &Limits) -> Result<(), BundleError> {
        let path = || bundle.to_path_buf();
        let field = |field: &'static str, reason: String| BundleError::ManifestField {
            path: path(),
            field,
            reason,
        };
        if self.format_version != FORMAT_VERSION {
            return Err(field(
                "format_version",
                format!("{} is not {FORMAT_VERSION}", self.format_version),
            ));
        }
        let platform_ok = !self.platform.is_empty()
            && self.platform.len() <= 64
            && self
                .platform
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if !platform_ok {
            return Err(field(
                "platform",
                format!("{:?} is not like linux-x86_64", self.platform),
            ));
        }
        if let Some(expires) = self.expires
            && expires <= self.created
        {
            return Err(field("expires", "is not after `created`".into()));
        }
        let count = self.entries.len() as u64;
        if count > limits.max_entries {
            return Err(BundleError::TooManyEntries {
                path: path(),
                count,
                max: limits.max_entries,
            });
        }

        // Index of each path, to find duplicates and check that parents come first.
        let mut seen: HashMap<&str, bool> = HashMap::with_capacity(self.entries.len());
        let mut total: u64 = 0;
        for entry in &self.entries {
            let name = entry.path();
            let entry_err = |reason| BundleError::ManifestEntry {
                path: path(),
                entry: name.to_owned(),
                reason,
            };
            check_entry_path(name).map_err(|reason| BundleError::UnsafePath {
                path: path(),
                entry: name.to_owned(),
                reason,
            })?;
            if seen.contains_key(name) {
                return Err(BundleError::DuplicateEntry {
                    path: path(),
                    entry: name.to_owned(),
                });
            }
            if let Some((parent, _)) = name.rsplit_once('/') {
                match seen.get(parent) {
                    Some(true) => {}
                    Some(false) => return Err(entry_err("its parent is a file")),
                    None => return Err(entry_err("its parent directory is not listed before it")),
                }
            }
            let mode = entry.mode().0;
            if mode & !0o777 != 0 {
                return Err(entry_err(
                    "mode has bits beyond 0777 (setuid, setgid or sticky)",
                ));
            }
            if mode & 0o022 != 0 {
                // Extracted as root, a writable binary is anyone's to replace.
                return Err(entry_err("mode lets group or others write (at most 0755)"));
            }
            match entry {
                Entry::Dir { .. } if mode & 0o700 != 0o700 => {
                    return Err(entry_err("a directory's mode must give its owner rwx"));
                }
                Entry::File { size, .. } => {
                    if mode & 0o400 == 0 {
                        return Err(entry_err("a file's mode must let its owner read it"));
                    }
                    if *size > limits.max_file_size {
                        return Err(BundleError::FileTooLarge {
                            path: path(),
                            entry: name.to_owned(),
                            size: *size,
                            max: limits.max_file_size,
                        });
                    }
                    total = total.saturating_add(*size);
                }
                Entry::Dir { .. } => {}
            }
            seen.insert(name, entry.is_dir());
        }
        if total > limits.max_total_size {
            return Err(BundleError::TotalTooLarge {
                path: path(),
                size: total,
                max: limits.max_total_size,
            });
        }
        // A bomb is output out of all proportion to its input: the files'
        // bytes are counted, not the room for headers `decompressed_bound`
        // allows (3 KiB for every entry, which refused honest trees of many
        // empty or small files). Headers are never written anywhere.
        if total > limits.ratio_floor {
            let ratio = total / self.payload.size.max(1);
            if ratio > limits.max_compression_ratio {
                return Err(BundleError::CompressionRatio {
                    path: path(),
                    ratio,
                    max: limits.max_compression_ratio,
                });
            }
        }
        Ok(())
    }

    /// The most bytes the payload may decompress to: each entry's data rounded
    /// to tar blocks, plus room for its header and extension headers, plus the
    /// end-of-archive blocks. The reader stops at this bound.
    pub fn decompressed_bound(&self) -> u64 {
        let per_entry = |e: &Entry| -> u64 {
            let path = e.path().len() as u64 + 2;
            4 * BLOCK + 2 * round_up(path) + round_up(e.size())
        };
        self.entries
            .iter()
            .map(per_entry)
            .fold(END_ALLOWANCE, u64::saturating_add)
    }
}

/// The number of entries of a manifest, found without keeping any of them
/// (every other field is skipped; the full parse checks them).
#[derive(Deserialize)]
struct EntryCount {
    #[serde(default)]
    entries: Counted,
}

#[derive(Default)]
struct Counted(u64);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Counted, D::Error> {
        struct Count;
        impl<'de> serde::de::Visitor<'de> for Count {
            type Value = Counted;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Counted, A::Error> {
                let mut n = 0u64;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Counted(n))
            }
        }
        d.deserialize_seq(Count)
    }
}

const BLOCK: u64 = 512;
/// End-of-archive blocks plus padding to a 10 KiB record, as some tar writers do.
const END_ALLOWANCE: u64 = 2 * BLOCK + 10240;

fn round_up(n: u64) -> u64 {
    n.saturating_add(BLOCK - 1) & !(BLOCK - 1)
}

/// Checks that `p` is a plain relative path that stays inside the target:
/// `/`-separated normal components, nothing else.
pub(crate) fn check_entry_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty path");
    }
    if p.len() > MAX_PATH_BYTES {
        return Err("path longer than 1024 bytes");
    }
    if p.starts_with('/') {
        return Err("absolute path");
    }
    if p.contains('\\') {
        return Err("backslash in path");
    }
    if p.chars().any(char::is_control) {
        return Err("control character in path");
    }
    for component in p.split('/') {
        match component {
            "" => return Err("empty component (`//` or trailing `/`)"),
            "." => return Err("`.` component"),
            ".." => return Err("`..` component"),
            c if c.len() > MAX_COMPONENT_BYTES => return Err("component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        for good in ["a", "bin/hangar", "a/b.c/d", "..a", "a..", "-x", "é"] {
            assert_eq!(check_entry_path(good), Ok(()), "{good}");
        }
        for bad in [
            "", "/a", "a/../b", "..", ".", "./a", "a//b", "a/", "a\\b", "a\nb", "a\0b",
        ] {
            assert!(check_entry_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_entry_path(&"a".repeat(256)).is_err());
        assert!(check_entry_path(&["a"; 600].join("/")).is_err());
    }

    #[test]
    fn mode_is_four_octal_digits() {
        let ok: Mode = serde_json::from_str("\"0755\"").unwrap();
        assert_eq!(ok.0, 0o755);
        for bad in ["\"755\"", "\"0855\"", "493", "\"07555\""] {
            assert!(serde_json::from_str::<Mode>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let entry = r#"{"type":"dir","path":"a","mode":"0755","size":1}"#;
        assert!(serde_json::from_str::<Entry>(entry).is_err());
        let link = r#"{"type":"symlink","path":"a","mode":"0755"}"#;
        assert!(serde_json::from_str::<Entry>(link).is_err());
    }
}
