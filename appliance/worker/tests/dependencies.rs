//! The worker host's binary links nothing of the appliance's database, HTTP
//! server or broker stacks: `cargo tree` proves it for the normal dependencies.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "diesel",
    "diesel-async",
    "diesel_migrations",
    "tokio-postgres",
    "warp",
    "rumqttd",
    "hangar-db",
    "hangar-server",
    "hangar-broker",
    "hangar-objects",
];

#[test]
fn the_worker_links_no_appliance_stack() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--manifest-path",
            manifest,
        ])
        .args(["-p", "hangar-worker"])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"hangar-worker") && crates.contains(&"rumqttc"),
        "the tree is the worker's: {crates:?}"
    );
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| crates.contains(f)).collect();
    assert!(found.is_empty(), "the worker links {found:?}");
    // ring is the only crypto provider.
    assert!(
        !crates.contains(&"aws-lc-rs") && !crates.contains(&"openssl-sys"),
        "{crates:?}"
    );
}
