//! A signed manifest within the size limit but listing far more entries than
//! allowed is refused on its count, before its entries take memory: the reader
//! holds the manifest's bytes and little more. Measured in a child process (this
//! test binary run again), whose peak resident size is its own.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use hangar_bundle::format::{SignatureRecord, write_bundle};
use hangar_bundle::{Bundle, Limits};

const CHILD: &str = "HANGAR_TEST_OPEN_BUNDLE";
const TEST: &str = "millions_of_entries_are_refused_before_they_take_memory";
const MIB: u64 = 1 << 20;

#[test]
fn millions_of_entries_are_refused_before_they_take_memory() {
    if let Some(path) = std::env::var_os(CHILD) {
        child(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("many.bundle");
    let manifest_len = write_bundle_of_many_entries(&bundle);
    assert!(manifest_len <= Limits::default().max_manifest_bytes);

    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, &bundle)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name first, on the same line.
    let line = stdout
        .lines()
        .find_map(|l| l.find("opened:").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report from the child: {stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "too_many_entries", "{line}");
    let (baseline, peak): (u64, u64) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    // The manifest's bytes, plus a margin far below what its 1.4 million
    // entries take once parsed (over 150 MiB).
    let allowed = manifest_len + 40 * MIB;
    assert!(
        (peak - baseline) * 1024 < allowed,
        "opening took {} MiB for a {} MiB manifest",
        (peak - baseline) / 1024,
        manifest_len / MIB
    );
}

/// A bundle signed by the tests' key whose manifest lists ~1.4 million
/// directories in 60 MiB; returns the manifest's length.
fn write_bundle_of_many_entries(path: &Path) -> u64 {
    let mut manifest = String::with_capacity(61 << 20);
    manifest.push_str(
        "{\"format_version\":1,\"kind\":\"tools\",\"version\":\"1.0.0\",\"platform\":\"any\",\
         \"created\":\"2025-01-01T00:00:00Z\",\"payload\":{\"compression\":\"zstd\",\"size\":0,\
         \"sha256\":\"0000000000000000000000000000000000000000000000000000000000000000\"},\"entries\":[",
    );
    let mut i = 0u64;
    while manifest.len() < 60 << 20 {
        if i > 0 {
            manifest.push(',');
        }
        manifest.push_str(&format!(
            "{{\"type\":\"dir\",\"path\":\"d{i}\",\"mode\":\"0755\"}}"
        ));
        i += 1;
    }
    manifest.push_str("]}");
    let bytes = manifest.into_bytes();
    let key = common::key(1);
    let record = SignatureRecord {
        key_id: key.id(),
        signature: key.sign(&bytes),
    };
    let mut file = fs::File::create(path).unwrap();
    write_bundle(&mut file, &bytes, &[record], &mut &b""[..]).unwrap();
    file.flush().unwrap();
    bytes.len() as u64
}

/// In the child: open the bundle, report the error and the peak resident size
/// before and after, in KiB.
fn child(path: &Path) {
    let baseline = vm_hwm_kib();
    let error = Bundle::open(path, &common::trust(&[&common::key(1)])).unwrap_err();
    println!("opened: {} {baseline} {}", error.code(), vm_hwm_kib());
}

fn vm_hwm_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
