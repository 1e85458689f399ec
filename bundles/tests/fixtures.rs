//! The format is frozen by fixtures: the format-1 bundle checked in under
//! `tests/fixtures/v1` must keep verifying and extracting, and the invalid ones
//! must keep being refused with the error their `expected.toml` states.

use std::fs;
use std::path::{Path, PathBuf};

use hangar_bundle::{Bundle, ExtractOptions, Kind, PublicKey, TrustStore};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn fixture_trust() -> TrustStore {
    // Built from the key files rather than the directory: a checkout's directory
    // modes depend on the umask, and the trust directory rules are tested elsewhere.
    let mut trust = TrustStore::empty();
    for name in ["fixture.pub", "fixture-2.pub"] {
        trust.add(PublicKey::from_file(&fixtures().join("trust").join(name)).unwrap());
    }
    trust
}

#[test]
fn the_format_1_fixture_still_verifies_and_extracts() {
    let bundle = Bundle::open(&fixtures().join("signed.bundle"), &fixture_trust()).unwrap();
    let m = bundle.manifest();
    assert_eq!(m.format_version, 1);
    assert_eq!(m.kind, Kind::Appliance);
    assert_eq!(m.version.to_string(), "0.1.0");
    assert_eq!(m.platform, "linux-x86_64");
    assert_eq!(m.created.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    assert_eq!(m.expires, None);
    let signers: Vec<String> = bundle
        .trusted_signers()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(signers, ["59c8910454cec418"]);

    let summary = bundle.verify(ExtractOptions::default()).unwrap();
    assert_eq!((summary.files, summary.dirs), (3, 6));

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("release");
    bundle.extract(&dest, ExtractOptions::default()).unwrap();
    for file in ["bin/hello", "etc/hello.toml", "share/doc/README.txt"] {
        assert_eq!(
            fs::read(dest.join(file)).unwrap(),
            fs::read(fixtures().join("content").join(file)).unwrap(),
            "{file}"
        );
    }
    assert!(dest.join("tools/providers").is_dir());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode("bin/hello"), mode("etc/hello.toml"), mode("bin")),
        (0o755, 0o644, 0o755)
    );
}

#[derive(Deserialize)]
struct Expected {
    case: Vec<ExpectedCase>,
}

#[derive(Deserialize)]
struct ExpectedCase {
    file: String,
    code: String,
    message: String,
}

#[test]
fn the_invalid_fixtures_are_refused_as_expected() {
    let dir = fixtures().join("invalid");
    let expected: Expected =
        toml::from_str(&fs::read_to_string(dir.join("expected.toml")).unwrap()).unwrap();
    let listed: Vec<&str> = expected.case.iter().map(|c| c.file.as_str()).collect();
    for entry in fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "expected.toml" || listed.contains(&name.as_str()),
            "{name} has no expected error"
        );
    }
    let trust = fixture_trust();
    for case in &expected.case {
        let path = dir.join(&case.file);
        let error = Bundle::open(&path, &trust)
            .and_then(|b| b.verify(ExtractOptions::default()))
            .expect_err(&case.file);
        assert_eq!(error.code(), case.code, "{}: {error}", case.file);
        let text = error.to_string();
        assert!(text.contains(&case.message), "{}: {text}", case.file);
        assert!(
            text.contains(&case.file),
            "{}: the message names the bundle: {text}",
            case.file
        );
    }
}
