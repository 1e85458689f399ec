//! Building, signing, opening, verifying and extracting genuine bundles through
//! the library, and the refusals that are not about a forged bundle: keys,
//! trust directories, destinations, limits and recipes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{key, snapshot, trust};
use hangar_bundle::recipe::{Recipe, RecipeBuild};
use hangar_bundle::{
    BuildError, BuildOptions, Bundle, BundleError, ExtractOptions, KeyError, Kind, Layout, Limits,
    Progress, PublicKey, SigningKey, TrustStore, build_bundle, generate_key_files, sign_bundle,
};

fn options<'a>(keys: &'a [SigningKey]) -> BuildOptions<'a> {
    BuildOptions {
        kind: Kind::Tools,
        version: "2.1.0".parse().unwrap(),
        platform: "linux-x86_64".into(),
        created: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        expires: None,
        compression_level: 3,
        threads: 2,
        signing_keys: keys,
        progress: None,
    }
}

/// A source tree with the awkward cases: long names, empty files and
/// directories, an executable, a symlink to a file, nesting.
fn source_tree(root: &Path) {
    let deep = root.join("a/b/c/d/e/f/g");
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("leaf.txt"), b"deep").unwrap();
    let long = "x".repeat(120);
    fs::create_dir_all(root.join(&long)).unwrap();
    fs::write(
        root.join(&long).join(format!("{long}.bin")),
        common::noise(7, 300_000),
    )
    .unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("run.sh", root.join("alias.sh")).unwrap();
}

#[test]
fn a_built_bundle_verifies_and_extracts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source_tree(&src);
    let mut layout = Layout::new();
    layout.add_tree("tools", &src).unwrap();
    layout.add_dir("providers", 0o755).unwrap();
    let keys = [key(1)];
    let out = dir.path().join("t.bundle");
    let manifest = build_bundle(&layout, &out, options(&keys)).unwrap();
    assert!(
        manifest.entries.iter().any(|e| e.path().len() > 200),
        "a GNU long name is exercised"
    );

    let bundle = Bundle::open(&out, &trust(&[&keys[0]])).unwrap();
    assert_eq!(bundle.manifest(), &manifest);
    assert_eq!(bundle.trusted_signers(), vec![keys[0].id()]);

    let mut seen = Vec::new();
    let mut record = |p: Progress| seen.push(p);
    let summary = bundle
        .verify(ExtractOptions {
            progress: Some(&mut record),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(summary.bytes, manifest.total_size());
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(seen.last().unwrap().done, manifest.total_size());
    assert!(seen.iter().all(|p| p.total == manifest.total_size()));

    let dest = dir.path().join("releases/2.1.0");
    fs::create_dir(dir.path().join("releases")).unwrap();
    let summary = bundle.extract(&dest, ExtractOptions::default()).unwrap();
    assert_eq!(summary.files as usize, manifest.file_count());

    // Same content, modes normalised to 0755/0644, the symlink's target as a plain file.
    let extracted = snapshot(&dest.join("tools"));
    let script = hex::encode(common::sha256(b"#!/bin/sh\necho hi\n"));
    let expected: std::collections::BTreeMap<_, _> = snapshot(&src)
        .into_iter()
        .map(|(path, what)| {
            let fields: Vec<&str> = what.split(' ').collect();
            let normal = match fields[..] {
                ["dir", _] => "dir 40755".to_owned(),
                ["file", mode, hash] if mode.ends_with('7') || mode.ends_with("700") => {
                    format!("file 100755 {hash}")
                }
                ["file", _, hash] => format!("file 100644 {hash}"),
                _ => format!("file 100755 {script}"),
            };
            (path, normal)
        })
        .collect();
    assert_eq!(extracted, expected);
    assert_eq!(
        fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(dest.join("providers").is_dir());
    // Nothing but the release is left in its parent.
    assert_eq!(
        fs::read_dir(dir.path().join("releases")).unwrap().count(),
        1
    );
}

#[test]
fn builds_are_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    source_tree(&dir.path().join("src"));
    let mut layout = Layout::new();
    layout.add_tree("", &dir.path().join("src")).unwrap();
    let keys = [key(1)];
    let a = dir.path().join("a.bundle");
    let b = dir.path().join("b.bundle");
    build_bundle(&layout, &a, options(&keys)).unwrap();
    build_bundle(&layout, &b, options(&keys)).unwrap();
    assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap());
}

#[test]
fn one_trusted_signature_among_unknown_ones_is_enough() {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    layout.add_dir("empty", 0o755).unwrap();
    let keys = [key(1), key(2), key(3)];
    let out = dir.path().join("t.bundle");
    build_bundle(&layout, &out, options(&keys)).unwrap();
    let bundle = Bundle::open(&out, &trust(&[&keys[1]])).unwrap();
    let trusted: Vec<bool> = bundle.signatures().iter().map(|s| s.trusted).collect();
    assert_eq!(trusted, [false, true, false]);
    assert_eq!(bundle.trusted_signers(), vec![keys[1].id()]);
}

#[test]
fn signing_later_verifies_the_payload_first() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), common::noise(1, 100_000)).unwrap();
    let mut layout = Layout::new();
    layout.add_file("f", &dir.path().join("f"), None).unwrap();
    let unsigned = dir.path().join("u.bundle");
    build_bundle(&layout, &unsigned, options(&[])).unwrap();
    let k = key(5);
    let store = trust(&[&k]);
    assert!(matches!(
        Bundle::open(&unsigned, &store),
        Err(BundleError::Unsigned { .. })
    ));

    let signed = dir.path().join("s.bundle");
    assert_eq!(
        sign_bundle(&unsigned, &signed, &[k]).unwrap(),
        vec![key(5).id()]
    );
    Bundle::open(&signed, &store)
        .unwrap()
        .verify(ExtractOptions::default())
        .unwrap();
    // Signing again with the same key replaces its signature.
    sign_bundle(&signed, &signed, &[key(5), key(6)]).unwrap();
    let bundle = Bundle::open(&signed, &store).unwrap();
    assert_eq!(bundle.signatures().len(), 2);

    // An altered payload is not signed.
    let mut bytes = fs::read(&unsigned).unwrap();
    let last = bytes.len() - 5000;
    bytes[last] ^= 1;
    fs::write(&unsigned, bytes).unwrap();
    let err = sign_bundle(&unsigned, &dir.path().join("x.bundle"), &[key(5)]).unwrap_err();
    assert!(matches!(err, BuildError::Bundle(_)), "{err}");
    assert!(!dir.path().join("x.bundle").exists());
}

#[test]
fn extraction_never_replaces_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new();
    layout.add_dir("bin", 0o755).unwrap();
    let keys = [key(1)];
    let out = dir.path().join("t.bundle");
    build_bundle(&layout, &out, options(&keys)).unwrap();
    let bundle = Bundle::open(&out, &trust(&[&keys[0]])).unwrap();

    let existing = dir.path().join("existing");
    fs::create_dir(&existing).unwrap();
    let before = snapshot(dir.path());
    let err = bundle
        .extract(&existing, ExtractOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, BundleError::DestinationExists { .. }),
        "{err}"
    );
    let err = bundle
        .extract(
            &dir.path().join("no/such/parent/x"),
            ExtractOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, BundleError::NoParent { .. }), "{err}");
    let err = bundle
        .extract(
            &dir.path().join("other"),
            ExtractOptions {
                platform: Some("linux-aarch64".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, BundleError::WrongPlatform { .. }), "{err}");
    assert_eq!(before, snapshot(dir.path()));
}

#[test]
fn names_up_to_the_filesystem_limit_work_as_destinations() {
    // The staging and temporary names add to the name they are made from; a
    // legal name must still work, however long.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"content").unwrap();
    let mut layout = Layout::new();
    layout
        .add_file("bin/f", &dir.path().join("f"), None)
        .unwrap();
    let keys = [key(1)];
    let store = trust(&[&keys[0]]);
    for len in [229, 230, 240, 255] {
        let out = dir.path().join(format!("{}.bundle", "b".repeat(len - 7)));
        build_bundle(&layout, &out, options(&keys)).unwrap();
        let bundle = Bundle::open(&out, &store).unwrap();
        let dest = dir.path().join("é".repeat(len / 2) + &"r".repeat(len % 2));
        assert_eq!(dest.file_name().unwrap().len(), len);
        bundle.extract(&dest, ExtractOptions::default()).unwrap();
        assert_eq!(fs::read(dest.join("bin/f")).unwrap(), b"content");
        fs::remove_dir_all(&dest).unwrap();
        fs::remove_file(&out).unwrap();
    }
    // Nothing else was left behind.
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["f"]);
}

#[test]
fn trees_of_many_small_files_are_not_bombs() {
    // They compress extremely well, yet what they decompress to is mostly tar
    // headers: building and reading them must work, up to the entry limit.
    // In memory when possible: 120,000 file creations and a sync of the disk
    // would make this slow on a busy machine, and are not what it is about.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    // 30,000 copies of 4 KiB are 120 MiB that compress over 1000-fold.
    let small = common::corpus::words(4096);
    // At levels that compress each hard in reasonable time; the last one has as
    // many entries as a bundle may hold (the files and their directory).
    for (name, count, content, level) in [
        ("empty", 30_000, &b""[..], 19),
        ("copies", 30_000, &small[..], 9),
        ("most", 249_999, &b""[..], 3),
    ] {
        let src = dir.path().join(name);
        fs::create_dir(&src).unwrap();
        for i in 0..count {
            fs::write(src.join(format!("f{i:06}")), content).unwrap();
        }
        let mut layout = Layout::new();
        layout.add_tree(name, &src).unwrap();
        let keys = [key(1)];
        let out = dir.path().join(format!("{name}.bundle"));
        let manifest = build_bundle(
            &layout,
            &out,
            BuildOptions {
                compression_level: level,
                ..options(&keys)
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(manifest.file_count(), count);
        let bundle = Bundle::open(&out, &trust(&[&keys[0]])).unwrap();
        let dest = dir.path().join(format!("{name}.out"));
        let summary = bundle.extract(&dest, ExtractOptions::default()).unwrap();
        assert_eq!(summary.files as usize, count);
        let last = dest.join(name).join(format!("f{:06}", count - 1));
        assert_eq!(fs::read(last).unwrap(), content);
        fs::remove_file(&out).unwrap();
        fs::remove_dir_all(&dest).unwrap();
        fs::remove_dir_all(&src).unwrap();
    }
}

#[test]
fn limits_are_enforced_when_opening() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), vec![1u8; 5000]).unwrap();
    let mut layout = Layout::new();
    for i in 0..10 {
        layout
            .add_file(&format!("d/f{i}"), &dir.path().join("f"), None)
            .unwrap();
    }
    let keys = [key(1)];
    let out = dir.path().join("t.bundle");
    build_bundle(&layout, &out, options(&keys)).unwrap();
    let store = trust(&[&keys[0]]);
    let open = |limits: Limits| Bundle::open_with_limits(&out, &store, &limits).unwrap_err();
    let err = open(Limits {
        max_entries: 5,
        ..Limits::default()
    });
    assert!(
        matches!(err, BundleError::TooManyEntries { count: 11, .. }),
        "{err}"
    );
    let err = open(Limits {
        max_file_size: 4999,
        ..Limits::default()
    });
    assert!(
        matches!(err, BundleError::FileTooLarge { ref entry, .. } if entry == "d/f0"),
        "{err}"
    );
    let err = open(Limits {
        max_total_size: 40_000,
        ..Limits::default()
    });
    assert!(
        matches!(err, BundleError::TotalTooLarge { size: 50_000, .. }),
        "{err}"
    );
    let err = open(Limits {
        max_compression_ratio: 2,
        ratio_floor: 0,
        ..Limits::default()
    });
    assert!(matches!(err, BundleError::CompressionRatio { .. }), "{err}");
    let err = open(Limits {
        max_manifest_bytes: 100,
        ..Limits::default()
    });
    assert!(matches!(err, BundleError::ManifestTooLarge { .. }), "{err}");
    let err = Bundle::open(&out, &TrustStore::empty()).unwrap_err();
    assert!(matches!(err, BundleError::NoTrustedKeys { .. }), "{err}");
}

#[test]
fn key_files_are_private_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("release");
    let (key, private, public) = generate_key_files(&base).unwrap();
    assert_eq!(
        fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(SigningKey::from_file(&private).unwrap().id(), key.id());
    assert_eq!(PublicKey::from_file(&public).unwrap().id(), key.id());
    assert!(
        !format!("{key:?}").contains("pair"),
        "Debug shows the key id only: {key:?}"
    );
    assert!(matches!(
        generate_key_files(&base),
        Err(KeyError::Exists { .. })
    ));

    fs::set_permissions(&private, fs::Permissions::from_mode(0o640)).unwrap();
    let err = SigningKey::from_file(&private).unwrap_err();
    assert!(
        matches!(err, KeyError::InsecurePrivateKey { mode: 0o640, .. }),
        "{err}"
    );

    fs::write(dir.path().join("junk.key"), "not a key").unwrap();
    fs::set_permissions(
        dir.path().join("junk.key"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert!(matches!(
        SigningKey::from_file(&dir.path().join("junk.key")),
        Err(KeyError::Malformed { .. })
    ));
}

#[test]
fn keys_interoperate_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("o.key");
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    let key = SigningKey::from_file(&private).unwrap();
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap();
    let from_openssl = PublicKey::from_pem(std::str::from_utf8(&public.stdout).unwrap()).unwrap();
    assert_eq!(&from_openssl, key.public_key());
    // And OpenSSL reads ours.
    fs::write(dir.path().join("ours.pub"), key.public_key().to_pem()).unwrap();
    let status = Command::new("openssl")
        .args(["pkey", "-pubin", "-noout", "-in"])
        .arg(dir.path().join("ours.pub"))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn trust_directories_are_strict() {
    let dir = tempfile::tempdir().unwrap();
    let trust_dir = dir.path().join("trust");
    fs::create_dir(&trust_dir).unwrap();
    fs::set_permissions(&trust_dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(trust_dir.join("a.pub"), key(1).public_key().to_pem()).unwrap();
    fs::write(trust_dir.join("README"), "ignored").unwrap();
    let store = TrustStore::load(&trust_dir).unwrap();
    assert_eq!(store.len(), 1);
    assert!(store.get(&key(1).id()).is_some());

    fs::set_permissions(trust_dir.join("a.pub"), fs::Permissions::from_mode(0o666)).unwrap();
    assert!(matches!(
        TrustStore::load(&trust_dir),
        Err(KeyError::InsecureTrust { .. })
    ));
    fs::set_permissions(trust_dir.join("a.pub"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&trust_dir, fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(
        TrustStore::load(&trust_dir),
        Err(KeyError::InsecureTrust { .. })
    ));
    fs::set_permissions(&trust_dir, fs::Permissions::from_mode(0o755)).unwrap();

    fs::write(trust_dir.join("b.pub"), "garbage").unwrap();
    let err = TrustStore::load(&trust_dir).unwrap_err();
    assert!(
        matches!(err, KeyError::Malformed { ref path, .. } if path.ends_with("b.pub")),
        "{err}"
    );
}

#[test]
fn builds_from_the_repository_trust_no_compiled_in_key() {
    if option_env!("HANGAR_BUNDLE_RELEASE_KEYS").is_none() {
        assert!(TrustStore::release().is_empty());
    }
}

fn write_recipe(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("recipe.toml");
    fs::write(
        &path,
        format!("format = 1\nkind = \"worker\"\nversion = \"1.0.0\"\nplatform = \"linux-x86_64\"\n{body}"),
    )
    .unwrap();
    path
}

fn build_recipe(path: &Path, out: &Path) -> Result<hangar_bundle::Manifest, BuildError> {
    Recipe::load(path, &[])?.build(
        out,
        RecipeBuild {
            signing_keys: &[key(1)],
            compression_level: Some(1),
            progress: None,
        },
    )
}

#[test]
fn recipes_collect_every_kind_of_source() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("bin")).unwrap();
    for name in ["one", "two"] {
        fs::write(dir.path().join("bin").join(name), name).unwrap();
    }
    fs::create_dir_all(dir.path().join("tree/sub")).unwrap();
    fs::write(dir.path().join("tree/sub/x"), "x").unwrap();
    let recipe = write_recipe(
        dir.path(),
        r#"
expires_after_days = 30

[vars]
bin_dir = "bin"

[[source]]
type = "file"
path = "${bin_dir}/one"
dest = "bin/renamed"
mode = "0750"

[[source]]
type = "glob"
pattern = "${recipe_dir}/bin/*"
dest = "all"

[[source]]
type = "tree"
path = "tree"
dest = "t"

[[source]]
type = "dir"
dest = "empty/providers"

[[source]]
type = "command"
run = ["sh", "-c", "mkdir -p $$0/made && echo $$GREETING > $$0/made/hello", "${out}"]
dest = "cmd"
env = { GREETING = "hello ${bin_dir}" }
"#,
    );
    let out = dir.path().join("w.bundle");
    let manifest = build_recipe(&recipe, &out).unwrap();
    let paths: Vec<&str> = manifest.entries.iter().map(|e| e.path()).collect();
    assert_eq!(
        paths,
        [
            "all",
            "all/one",
            "all/two",
            "bin",
            "bin/renamed",
            "cmd",
            "cmd/made",
            "cmd/made/hello",
            "empty",
            "empty/providers",
            "t",
            "t/sub",
            "t/sub/x"
        ]
    );
    assert_eq!(manifest.kind, Kind::Worker);
    assert_eq!(
        manifest.expires,
        Some(manifest.created + chrono::Duration::days(30))
    );
    let renamed = manifest
        .entries
        .iter()
        .find(|e| e.path() == "bin/renamed")
        .unwrap();
    assert_eq!(renamed.mode().0, 0o750);
    let bundle = Bundle::open(&out, &trust(&[&key(1)])).unwrap();
    let dest = dir.path().join("x");
    bundle.extract(&dest, ExtractOptions::default()).unwrap();
    assert_eq!(
        fs::read_to_string(dest.join("cmd/made/hello")).unwrap(),
        "hello bin\n"
    );
}

#[test]
fn recipe_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.bundle");
    let cases: [(&str, &str); 8] = [
        (
            "[[source]]\ntype = \"file\"\npath = \"${bin_dir}/hangar-worker\"\ndest = \"bin/hangar-worker\"\n",
            "recipe_variable",
        ),
        (
            "[[source]]\ntype = \"file\"\npath = \"missing/hangar-worker\"\ndest = \"bin/hangar-worker\"\n",
            "source_missing",
        ),
        (
            "[[source]]\ntype = \"glob\"\npattern = \"nothing-*\"\ndest = \"x\"\n",
            "glob_empty",
        ),
        (
            "[[source]]\ntype = \"command\"\nrun = [\"false\"]\ndest = \"x\"\n",
            "command_failed",
        ),
        (
            "[[source]]\ntype = \"dir\"\ndest = \"../x\"\n",
            "destination",
        ),
        // Modes the reader would refuse are refused before anything is compressed.
        (
            "[[source]]\ntype = \"dir\"\ndest = \"x\"\nmode = \"0777\"\n",
            "destination",
        ),
        (
            "[[source]]\ntype = \"file\"\npath = \"recipe.toml\"\ndest = \"x\"\nmode = \"0664\"\n",
            "destination",
        ),
        (
            "[[source]]\ntype = \"dir\"\ndest = \"x\"\n[[source]]\ntype = \"tree\"\npath = \".\"\ndest = \"x\"\n[[source]]\ntype = \"tree\"\npath = \".\"\ndest = \"x\"\n",
            "destination",
        ),
    ];
    for (body, code) in cases {
        let recipe = write_recipe(dir.path(), body);
        let err = build_recipe(&recipe, &out).unwrap_err();
        assert_eq!(err.code(), code, "{body}: {err}");
        assert!(!err.to_string().contains('\n'));
        assert!(!out.exists());
    }
    let err = build_recipe(
        &write_recipe(
            dir.path(),
            "[[source]]\ntype = \"file\"\npath = \"missing/hangar-worker\"\ndest = \"bin/w\"\n",
        ),
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing/hangar-worker"), "{err}");
    // Nothing but the recipe is left behind.
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["recipe.toml"]);
}
