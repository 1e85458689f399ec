//! Applying tools and worker bundles to a tools area (`hangar_bundle::tools`):
//! where each file goes, what is skipped, that nothing installed is ever
//! replaced, and that a refused bundle writes nothing.

use std::path::{Path, PathBuf};

use hangar_bundle::{ApplyError, Bundle, BuildOptions, Kind, Layout, SigningKey, ToolsArea, TrustStore, build_bundle};

fn key() -> SigningKey {
    SigningKey::from_seed(&[7; 32])
}

fn trust() -> TrustStore {
    let mut t = TrustStore::empty();
    t.add(key().public_key().clone());
    t
}

/// A bundle of `kind` holding `files` (path, content), under `dir`.
fn bundle(dir: &Path, name: &str, kind: Kind, files: &[(&str, &str)]) -> PathBuf {
    let src = dir.join(format!("{name}-src"));
    let mut layout = Layout::new();
    for (path, text) in files {
        let from = src.join(path);
        std::fs::create_dir_all(from.parent().unwrap()).unwrap();
        std::fs::write(&from, text).unwrap();
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !layout.entries().any(|(p, _)| p == d) {
                layout.add_dir(&d, 0o755).unwrap();
            }
        }
        layout.add_file(path, &from, Some(0o644)).unwrap();
    }
    let out = dir.join(format!("{name}.bundle"));
    build_bundle(
        &layout,
        &out,
        BuildOptions {
            kind,
            version: "1.2.3".parse().unwrap(),
            platform: hangar_bundle::host_platform(),
            created: chrono::Utc::now(),
            expires: None,
            compression_level: 1,
            threads: 1,
            signing_keys: &[key()],
            progress: None,
        },
    )
    .unwrap();
    out
}

fn open(path: &Path) -> Bundle {
    Bundle::open(path, &trust()).unwrap()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

const ARCHIVE: &str = "providers/example.com/acme/thing/terraform-provider-thing_1.0.0_linux_amd64.zip";

#[test]
fn a_tools_bundle_goes_to_its_places_once() {
    let dir = tempfile::tempdir().unwrap();
    let (tools, mirror) = (dir.path().join("tools"), dir.path().join("mirror"));
    let area = ToolsArea { tools_dir: &tools, mirror_dir: Some(&mirror) };
    let b = bundle(
        dir.path(),
        "tools",
        Kind::Tools,
        &[
            ("terraform/1.5.7/terraform", "tf"),
            ("terraform/1.5.7/darwin_arm64/terraform", "tf for macs"),
            ("opentofu/1.6.0/tofu", "tofu"),
            (ARCHIVE, "zip"),
            ("providers/example.com/acme/thing/index.json", "{}"),
        ],
    );
    // What a killed apply left behind goes.
    std::fs::create_dir_all(tools.join(".apply-0123/terraform")).unwrap();
    let done = hangar_bundle::tools::apply(&open(&b), &area).unwrap();
    assert_eq!(done.installed.len(), 4, "{done:?}");
    assert_eq!(done.skipped, ["providers/example.com/acme/thing/index.json"]);
    assert_eq!(
        files(&tools),
        ["opentofu/1.6.0/tofu", "terraform/1.5.7/darwin_arm64/terraform", "terraform/1.5.7/terraform"]
    );
    assert_eq!(files(&mirror), ["example.com/acme/thing/terraform-provider-thing_1.0.0_linux_amd64.zip"]);
    assert_eq!(std::fs::read_to_string(tools.join("terraform/1.5.7/terraform")).unwrap(), "tf");

    let again = hangar_bundle::tools::apply(&open(&b), &area).unwrap();
    assert!(again.installed.is_empty() && again.unchanged.len() == 4, "{again:?}");
}

#[test]
fn a_file_installed_with_other_bytes_refuses_the_whole_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (tools, mirror) = (dir.path().join("tools"), dir.path().join("mirror"));
    std::fs::create_dir_all(tools.join("terraform/1.5.7")).unwrap();
    std::fs::write(tools.join("terraform/1.5.7/terraform"), "another build").unwrap();
    let area = ToolsArea { tools_dir: &tools, mirror_dir: Some(&mirror) };
    let b = bundle(dir.path(), "tools", Kind::Tools, &[(ARCHIVE, "zip"), ("terraform/1.5.7/terraform", "tf")]);
    let e = hangar_bundle::tools::apply(&open(&b), &area).unwrap_err();
    assert!(matches!(e, ApplyError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("never replaced") && e.to_string().contains("terraform/1.5.7/terraform"), "{e}");
    assert_eq!(files(&tools), ["terraform/1.5.7/terraform"], "nothing written, nothing left");
    assert!(files(&mirror).is_empty());
}

#[test]
fn kinds_and_entries_with_no_place_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    let mirror = dir.path().join("mirror");
    let area = ToolsArea { tools_dir: &tools, mirror_dir: Some(&mirror) };
    let refused = |name: &str, kind: Kind, files: &[(&str, &str)], area: &ToolsArea<'_>| {
        let b = bundle(dir.path(), name, kind, files);
        hangar_bundle::tools::apply(&open(&b), area).unwrap_err()
    };
    let e = refused("release", Kind::Appliance, &[("bin/hangar", "x")], &area);
    assert_eq!(e.code(), "wrong_kind", "{e}");
    for (i, path) in ["etc/motd", "terraform/latest/terraform", "terraform/1.0/tofu", "providers/a/b/c/thing.zip", "terraform/1.0/linux/terraform"]
        .into_iter()
        .enumerate()
    {
        let e = refused(&format!("odd{i}"), Kind::Tools, &[(path, "x")], &area);
        assert_eq!(e.code(), "unexpected_entry", "{path}: {e}");
        assert!(e.to_string().contains(path), "{e}");
    }
    let e = refused("nomirror", Kind::Tools, &[(ARCHIVE, "zip")], &ToolsArea { tools_dir: &tools, mirror_dir: None });
    assert_eq!(e.code(), "no_mirror", "{e}");
    let e = refused("noworker", Kind::Worker, &[("bin/other", "x")], &area);
    assert_eq!(e.code(), "no_worker_binary", "{e}");
    assert!(files(&tools).is_empty() && files(&mirror).is_empty());
}

#[test]
fn a_worker_bundle_brings_its_binary_under_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    let area = ToolsArea { tools_dir: &tools, mirror_dir: None };
    let b = bundle(dir.path(), "worker", Kind::Worker, &[("bin/hangar-worker", "elf"), ("tools/terraform/1.0.3/terraform", "tf")]);
    let done = hangar_bundle::tools::apply(&open(&b), &area).unwrap();
    assert_eq!(done.installed, ["bin/hangar-worker"]);
    assert_eq!(done.skipped, ["tools/terraform/1.0.3/terraform"]);
    assert_eq!(files(&tools), ["hangar-worker/1.2.3/hangar-worker"]);
}
