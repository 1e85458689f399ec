//! Helpers shared by the integration tests: keys, hand-made tar archives and zstd
//! frames, bundle assembly, and snapshots of directory trees.

#![allow(dead_code)]

pub mod corpus;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hangar_bundle::format::{SignatureRecord, write_bundle};
use hangar_bundle::manifest::{Compression, Entry, Manifest, Mode, Payload, Sha256};
use hangar_bundle::{Kind, SigningKey, TrustStore};

/// A reproducible key: tests never need a secret one.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

pub fn trust(keys: &[&SigningKey]) -> TrustStore {
    let mut store = TrustStore::empty();
    for k in keys {
        store.add(k.public_key().clone());
    }
    store
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// Deterministic pseudo-random bytes (splitmix64).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---- tar, by hand, so that anything can be forged ----

/// Tar member types, by their typeflag.
pub mod typeflag {
    pub const FILE: u8 = b'0';
    pub const HARD_LINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR_DEVICE: u8 = b'3';
    pub const BLOCK_DEVICE: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const GNU_LONG_NAME: u8 = b'L';
    pub const PAX: u8 = b'x';
    pub const PAX_GLOBAL: u8 = b'g';
}

/// A tar archive written member by member.
#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    /// A raw ustar header: `size` is what the header says, `data` what follows.
    pub fn member(
        &mut self,
        name: &[u8],
        flag: u8,
        mode: u32,
        size: u64,
        link: &[u8],
        data: &[u8],
    ) -> &mut Tar {
        let mut h = [0u8; 512];
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = flag;
        h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let field = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(field.as_bytes());
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Tar {
        self.member(
            name.as_bytes(),
            typeflag::FILE,
            mode,
            data.len() as u64,
            b"",
            data,
        )
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Tar {
        self.member(
            format!("{name}/").as_bytes(),
            typeflag::DIR,
            mode,
            0,
            b"",
            b"",
        )
    }

    pub fn link(&mut self, name: &str, flag: u8, target: &str) -> &mut Tar {
        self.member(name.as_bytes(), flag, 0o777, 0, target.as_bytes(), b"")
    }

    pub fn long_name(&mut self, name: &str) -> &mut Tar {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.member(
            b"././@LongLink",
            typeflag::GNU_LONG_NAME,
            0,
            data.len() as u64,
            b"",
            &data,
        )
    }

    pub fn pax(&mut self, records: &[(&str, &str)]) -> &mut Tar {
        let mut data = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            // The length field counts itself.
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        self.member(
            b"PaxHeaders/entry",
            typeflag::PAX,
            0o644,
            data.len() as u64,
            b"",
            &data,
        )
    }

    pub fn end(&mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        std::mem::take(&mut self.bytes)
    }
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

// ---- zstd ----

/// A normal zstd frame with its checksum, compressed hard.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd_level(data, 19)
}

pub fn zstd_level(data: &[u8], level: i32) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A zstd frame written block by block, for frames no encoder would produce.
pub struct Frame {
    pub bytes: Vec<u8>,
    block_max: usize,
}

impl Frame {
    /// A frame header with content checksum and a `2^window_log` window.
    pub fn new(window_log: u8) -> Frame {
        let mut bytes = vec![0x28, 0xb5, 0x2f, 0xfd, 0x04];
        bytes.push((window_log - 10) << 3);
        Frame {
            bytes,
            block_max: (1usize << window_log.min(17)).min(128 << 10),
        }
    }

    pub fn raw(&mut self, data: &[u8]) -> &mut Frame {
        for chunk in data.chunks(self.block_max) {
            self.block_header(0, chunk.len());
            self.bytes.extend_from_slice(chunk);
        }
        self
    }

    /// `count` copies of `byte`, in RLE blocks: 4 bytes per block of output.
    pub fn rle(&mut self, byte: u8, mut count: u64) -> &mut Frame {
        while count > 0 {
            let n = count.min(self.block_max as u64) as usize;
            self.block_header(1, n);
            self.bytes.push(byte);
            count -= n as u64;
        }
        self
    }

    fn block_header(&mut self, kind: u32, size: usize) {
        let h = (kind << 1) | ((size as u32) << 3);
        self.bytes.extend_from_slice(&h.to_le_bytes()[..3]);
    }

    /// Ends the frame with an empty last block and a (meaningless) checksum.
    pub fn finish(&mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&1u32.to_le_bytes()[..3]);
        self.bytes.extend_from_slice(&[0, 0, 0, 0]);
        std::mem::take(&mut self.bytes)
    }
}

// ---- bundles ----

/// What a forged manifest says besides its entries.
#[derive(Clone)]
pub struct Meta {
    pub kind: Kind,
    pub version: &'static str,
    pub platform: &'static str,
    pub created: chrono::DateTime<chrono::Utc>,
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
}

impl Default for Meta {
    fn default() -> Meta {
        Meta {
            kind: Kind::Appliance,
            version: "1.0.0",
            platform: "linux-x86_64",
            created: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            expires: None,
        }
    }
}

pub fn dir_entry(path: &str) -> Entry {
    Entry::Dir {
        path: path.into(),
        mode: Mode(0o755),
    }
}

pub fn file_entry(path: &str, mode: u32, data: &[u8]) -> Entry {
    Entry::File {
        path: path.into(),
        mode: Mode(mode),
        size: data.len() as u64,
        sha256: Sha256(sha256(data)),
    }
}

pub fn manifest(meta: &Meta, entries: Vec<Entry>, payload: &[u8]) -> Manifest {
    Manifest {
        format_version: 1,
        kind: meta.kind,
        version: meta.version.parse().unwrap(),
        platform: meta.platform.into(),
        created: meta.created,
        expires: meta.expires,
        payload: Payload {
            compression: Compression::Zstd,
            size: payload.len() as u64,
            sha256: Sha256(sha256(payload)),
        },
        entries,
    }
}

/// A whole bundle file: `manifest_bytes` signed by `signers`, then `payload`.
pub fn assemble(manifest_bytes: &[u8], signers: &[&SigningKey], payload: &[u8]) -> Vec<u8> {
    let records: Vec<SignatureRecord> = signers
        .iter()
        .map(|k| SignatureRecord {
            key_id: k.id(),
            signature: k.sign(manifest_bytes),
        })
        .collect();
    let mut out = Vec::new();
    write_bundle(&mut out, manifest_bytes, &records, &mut &payload[..]).unwrap();
    out
}

/// Where the manifest and payload of a bundle file start.
pub fn offsets(bundle: &[u8]) -> (usize, usize, usize) {
    let manifest_len = u32::from_le_bytes(bundle[12..16].try_into().unwrap()) as usize;
    let signatures = u32::from_le_bytes(bundle[16..20].try_into().unwrap()) as usize;
    let manifest_at = 20;
    let signatures_at = manifest_at + manifest_len;
    (manifest_at, signatures_at, signatures_at + 72 * signatures)
}

// ---- directory snapshots ----

/// Every path under `root` (links not followed) with its type, mode, and content hash.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let mut children: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    children.sort();
    for path in children {
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let mode = meta.permissions().mode();
        let what = if meta.file_type().is_symlink() {
            format!("link {:?}", fs::read_link(&path).unwrap())
        } else if meta.is_dir() {
            format!("dir {mode:o}")
        } else {
            format!(
                "file {mode:o} {}",
                hex::encode(sha256(&fs::read(&path).unwrap()))
            )
        };
        out.insert(rel, what);
        if meta.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// A private temporary directory that others (a dropped-privilege PostgreSQL) may enter.
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
