//! Every hostile bundle of the corpus is refused with its specific error naming
//! the entry, nothing is written outside the staging directory, and the staging
//! directory is gone afterwards.

mod common;

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};

use common::corpus::{self, Case};
use common::{snapshot, trust};
use hangar_bundle::{Bundle, BundleError, ExtractOptions, Progress, TrustStore};

/// The cases the issue lists, by the names the corpus gives them.
const REQUIRED: &[&str] = &[
    "bad signature",
    "unknown key",
    "tampered payload byte",
    "tampered manifest",
    "truncated file",
    "extra entry",
    "missing entry",
    "dot-dot entry",
    "absolute path",
    "symlink escaping",
    "symlink then an entry through it",
    "hard link escaping",
    "device file",
    "duplicate path",
    "size lie",
    "PAX size disagrees with ustar size",
    "zstd bomb (signed)",
    "oversized zstd window",
    "downgrade",
    "expired",
    "file taken from another signed bundle",
    "manifest length too short",
    "signature after the payload",
    "world-writable file (signed)",
    "group-writable directory (signed)",
];

struct Outcome {
    error: BundleError,
    /// Staging directories seen in the destination's parent during extraction.
    staging_seen: Vec<PathBuf>,
}

fn options<'a>(case: &Case) -> ExtractOptions<'a> {
    ExtractOptions {
        installed_version: case.installed.map(|v| v.parse().unwrap()),
        ..Default::default()
    }
}

/// Opens and extracts `path` into `dest`, watching the staging directory.
fn attempt(path: &Path, trust: &TrustStore, case: &Case, dest: &Path) -> Result<(), Outcome> {
    let parent = dest.parent().unwrap().to_path_buf();
    let seen = RefCell::new(Vec::new());
    let mut watch = |_: Progress| {
        for e in fs::read_dir(&parent).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains(".staging-")
                && !seen.borrow().contains(&p)
            {
                seen.borrow_mut().push(p);
            }
        }
    };
    let result = Bundle::open(path, trust).and_then(|bundle| {
        let mut opts = options(case);
        opts.progress = Some(&mut watch);
        bundle.extract(dest, opts).map(drop)
    });
    result.map_err(|error| Outcome {
        error,
        staging_seen: seen.into_inner(),
    })
}

#[test]
fn the_corpus_covers_every_rule_of_the_issue() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<&str> = corpus::hostile(dir.path()).iter().map(|c| c.name).collect();
    for required in REQUIRED {
        assert!(names.contains(required), "corpus lacks {required:?}");
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "duplicate case names");
}

#[test]
fn the_genuine_bundles_of_the_corpus_are_accepted() {
    // Without this the refusals below could be for a reason that is not the forgery.
    let root = tempfile::tempdir().unwrap();
    let key = corpus::trusted_key();
    for (name, meta, tool) in [
        ("a.bundle", common::Meta::default(), corpus::tool_v1()),
        (
            "b.bundle",
            common::Meta {
                version: "0.9.0",
                ..Default::default()
            },
            corpus::tool_v09(),
        ),
    ] {
        let path = root.path().join(name);
        fs::write(
            &path,
            corpus::genuine(&meta, &corpus::sample(&tool), &[&key]),
        )
        .unwrap();
        let bundle = Bundle::open(&path, &trust(&[&key])).unwrap();
        let dest = root.path().join(format!("{name}.out"));
        let summary = bundle.extract(&dest, ExtractOptions::default()).unwrap();
        assert_eq!(summary.files, 5);
        assert_eq!(fs::read(dest.join("bin/tool")).unwrap(), tool);
    }
}

#[test]
fn every_hostile_bundle_is_refused_and_leaves_no_trace() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let outside = root.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"do not touch").unwrap();
    let releases = root.join("releases");
    fs::create_dir(&releases).unwrap();
    fs::create_dir(releases.join("0.9.0")).unwrap();
    fs::write(releases.join("0.9.0/marker"), b"installed").unwrap();
    let inbox = root.join("inbox");
    fs::create_dir(&inbox).unwrap();

    let cases = corpus::hostile(&outside);
    let trust = trust(&[&corpus::trusted_key()]);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let path = inbox.join(format!("{i:02}.bundle"));
        fs::write(&path, &case.bundle).unwrap();
        let dest = releases.join("1.0.0");
        let before = snapshot(root);
        let outcome = attempt(&path, &trust, case, &dest);
        let after = snapshot(root);

        let mut problems = Vec::new();
        match outcome {
            Ok(()) => problems.push("was accepted".to_owned()),
            Err(Outcome {
                error,
                staging_seen,
            }) => {
                let message = error.to_string();
                if error.code() != case.code {
                    problems.push(format!(
                        "refused as {} ({message}), not {}",
                        error.code(),
                        case.code
                    ));
                }
                match &case.entry {
                    Some(entry) => {
                        if error.entry() != Some(entry.as_str())
                            || !message.contains(&format!("{entry:?}"))
                        {
                            problems
                                .push(format!("message does not name entry {entry:?}: {message}"));
                        }
                    }
                    None => {
                        if !message.contains(&path.display().to_string()) {
                            problems.push(format!("message does not name the bundle: {message}"));
                        }
                    }
                }
                if message.contains('\n') {
                    problems.push(format!("message is not one line: {message:?}"));
                }
                for staging in &staging_seen {
                    if staging.exists() {
                        problems.push(format!(
                            "staging directory {} left behind",
                            staging.display()
                        ));
                    }
                }
                // The payload is only read after the signature and policy checks.
                let streamed = !matches!(
                    case.code,
                    "bad_signature"
                        | "untrusted_signers"
                        | "unsigned"
                        | "truncated"
                        | "trailing_bytes"
                        | "corrupt_header"
                        | "not_a_bundle"
                        | "unsupported_format"
                        | "compression_ratio"
                        | "unsafe_path"
                        | "duplicate_entry"
                        | "manifest_entry"
                        | "downgrade"
                        | "expired"
                ) || error.entry().is_some() && !case.name.contains("(signed)");
                if streamed && staging_seen.is_empty() {
                    problems.push("no staging directory was used".into());
                }
            }
        }
        if dest.exists() {
            problems.push("the destination exists".into());
        }
        if before != after {
            let changed: Vec<_> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(v))
                .map(|(k, _)| k.display().to_string())
                .chain(
                    before
                        .keys()
                        .filter(|k| !after.contains_key(*k))
                        .map(|k| format!("-{}", k.display())),
                )
                .collect();
            problems.push(format!("the filesystem changed: {changed:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
        fs::remove_file(&path).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn verification_refuses_what_extraction_refuses() {
    let root = tempfile::tempdir().unwrap();
    let before = snapshot(root.path());
    let cases = corpus::hostile(&root.path().join("outside"));
    let trust = trust(&[&corpus::trusted_key()]);
    let file = tempfile::NamedTempFile::new().unwrap();
    for case in &cases {
        fs::write(file.path(), &case.bundle).unwrap();
        let result = Bundle::open(file.path(), &trust).and_then(|b| b.verify(options(case)));
        let error = result
            .err()
            .unwrap_or_else(|| panic!("{}: verified", case.name));
        assert_eq!(error.code(), case.code, "{}: {error}", case.name);
    }
    assert_eq!(before, snapshot(root.path()));
}

#[test]
fn downgrade_and_expiry_pass_only_when_asked_for_explicitly() {
    let root = tempfile::tempdir().unwrap();
    let cases = corpus::hostile(&root.path().join("outside"));
    let trust = trust(&[&corpus::trusted_key()]);
    for (name, opts) in [
        (
            "downgrade",
            ExtractOptions {
                installed_version: Some("1.0.0".parse().unwrap()),
                allow_downgrade: true,
                ..Default::default()
            },
        ),
        (
            "expired",
            ExtractOptions {
                danger_allow_expired: true,
                ..Default::default()
            },
        ),
    ] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let path = root.path().join(format!("{name}.bundle"));
        fs::write(&path, &case.bundle).unwrap();
        let bundle = Bundle::open(&path, &trust).unwrap();
        let dest = root.path().join(name);
        bundle.extract(&dest, opts).unwrap();
        assert!(dest.join("data/blob").is_file());
    }
}
