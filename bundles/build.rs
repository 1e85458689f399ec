//! Compiles the release signing keys into the binary.
//!
//! Official release builds set `HANGAR_BUNDLE_RELEASE_KEYS` to a directory of
//! `*.pub` files (PEM Ed25519 public keys); those keys are then trusted by every
//! copy of the tool and the installer without any trust directory. Without the
//! variable no key is compiled in: builds from the repository trust nothing by
//! default.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "src/pubkey_pem.rs"]
mod pubkey_pem;

const KEYS_ENV: &str = "HANGAR_BUNDLE_RELEASE_KEYS";

fn main() {
    println!("cargo:rerun-if-env-changed={KEYS_ENV}");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut code = String::from("pub(crate) static RELEASE_KEYS: &[(&str, [u8; 32])] = &[\n");
    if let Some(dir) = env::var_os(KEYS_ENV) {
        for (name, key) in release_keys(Path::new(&dir)) {
            writeln!(code, "    ({name:?}, {key:?}),").expect("writing to a String");
        }
    }
    code.push_str("];\n");
    fs::write(out.join("release_keys.rs"), code).expect("cannot write release_keys.rs");
}

fn release_keys(dir: &Path) -> Vec<(String, [u8; 32])> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "{KEYS_ENV}={}: cannot read the directory: {e}",
            dir.display()
        )
    });
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("reading the release key directory").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        panic!(
            "{KEYS_ENV}={}: the directory holds no *.pub key",
            dir.display()
        );
    }
    paths
        .iter()
        .map(|path| {
            println!("cargo:rerun-if-changed={}", path.display());
            let text = fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("{}: cannot read: {e}", path.display()));
            let key = pubkey_pem::parse_public_key_pem(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, key)
        })
        .collect()
}
