//! Fuzzes the bundle reader: opening, verifying and extracting whatever the
//! fuzzer makes, and checks that nothing is ever written outside the staging
//! directory and that a successful extraction holds exactly the manifest.
//!
//! The fuzzer cannot forge signatures, so the harness signs for it: it takes
//! the manifest bytes from the input, fixes the payload size and hash in it when
//! it is a JSON object, and signs the result with a key the reader trusts. That
//! way every check after the signature is reachable. The first input byte picks
//! how the rest is read:
//!
//! - even: a whole bundle file (header, manifest, signatures, payload);
//! - odd: manifest JSON, a NUL byte, then an uncompressed tar archive, which the
//!   harness compresses (so the fuzzer mutates the archive, not zstd).

#![no_main]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::LazyLock;

use hangar_bundle::format::{SignatureRecord, write_bundle};
use hangar_bundle::{Bundle, ExtractOptions, Limits, SigningKey, TrustStore};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_seed(&[42; 32]));
static TRUST: LazyLock<TrustStore> = LazyLock::new(|| {
    let mut trust = TrustStore::empty();
    trust.add(KEY.public_key().clone());
    trust
});

/// Small limits keep each run fast; the rules are the same.
fn limits() -> Limits {
    Limits {
        max_entries: 1000,
        max_file_size: 8 << 20,
        max_total_size: 16 << 20,
        ratio_floor: 1 << 20,
        ..Limits::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bundle = if mode % 2 == 0 { from_file_bytes(rest) } else { from_parts(rest) };
    check(&bundle);
});

fn from_file_bytes(data: &[u8]) -> Vec<u8> {
    if data.len() < 20 || &data[..8] != b"HNGRBNDL" {
        return data.to_vec();
    }
    let manifest_len = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
    let signatures = u32::from_le_bytes(data[16..20].try_into().unwrap()).min(16) as usize;
    let manifest_end = 20usize.saturating_add(manifest_len);
    let payload_at = manifest_end.saturating_add(72 * signatures);
    if payload_at > data.len() {
        return data.to_vec();
    }
    assemble(&data[20..manifest_end], &data[payload_at..])
}

fn from_parts(data: &[u8]) -> Vec<u8> {
    let (manifest, tar) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    encoder.include_checksum(true).unwrap();
    std::io::Write::write_all(&mut encoder, tar).unwrap();
    assemble(manifest, &encoder.finish().unwrap())
}

/// Signs `manifest` (with its payload fields made true when it is a JSON object).
fn assemble(manifest: &[u8], payload: &[u8]) -> Vec<u8> {
    let manifest = match serde_json::from_slice::<serde_json::Value>(manifest) {
        Ok(mut value) if value.get("payload").is_some_and(|p| p.is_object()) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, payload);
            value["payload"]["size"] = payload.len().into();
            value["payload"]["sha256"] = hex::encode(digest.as_ref()).into();
            serde_json::to_vec(&value).unwrap()
        }
        _ => manifest.to_vec(),
    };
    let record = SignatureRecord {
        key_id: KEY.id(),
        signature: KEY.sign(&manifest),
    };
    let mut out = Vec::new();
    write_bundle(&mut out, &manifest, &[record], &mut &payload[..]).unwrap();
    out
}

fn check(bundle: &[u8]) {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("in.bundle");
    fs::write(&file, bundle).unwrap();
    let parent = root.path().join("releases");
    fs::create_dir(&parent).unwrap();
    let dest = parent.join("1.0.0");

    let Ok(opened) = Bundle::open_with_limits(&file, &TRUST, &limits()) else {
        assert_untouched(root.path(), &parent);
        return;
    };
    let lenient = || ExtractOptions {
        danger_allow_expired: true,
        ..Default::default()
    };
    let verified = opened.verify(lenient());
    match opened.extract(&dest, lenient()) {
        Ok(summary) => {
            assert!(verified.is_ok(), "extracted what verification refused");
            let listed: BTreeSet<String> = opened.manifest().entries.iter().map(|e| e.path().to_owned()).collect();
            let mut found = BTreeSet::new();
            walk(&dest, &dest, &mut found);
            assert_eq!(found, listed, "the extraction differs from the manifest");
            assert_eq!(summary.bytes, opened.manifest().total_size());
        }
        Err(_) => assert_untouched(root.path(), &parent),
    }
}

/// After a refusal: only the input file and the empty parent directory exist.
fn assert_untouched(root: &Path, parent: &Path) {
    let mut top: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["in.bundle", "releases"]);
    assert_eq!(fs::read_dir(parent).unwrap().count(), 0, "something was left in the parent");
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file() || meta.is_dir(), "{} is neither a file nor a directory", path.display());
        out.insert(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        if meta.is_dir() {
            walk(root, &path, out);
        }
    }
}
