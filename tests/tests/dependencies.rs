//! Crate boundaries that must hold, proven on the normal dependency tree
//! (`cargo tree -e normal`), so that a regression fails the suite:
//!
//! - the worker host's binary links nothing of the appliance's database, HTTP
//!   server or broker stacks;
//! - the drain and the scheduler (`hangar-background`) are clients of the
//!   store, not of the HTTP server, and compile without warp or GraphQL;
//! - the store is transport-free;
//! - the installer reads the configuration through `hangar-config`, never
//!   through the `hangar` binary crate or the server, broker and drain crates.

use std::process::Command;

const HTTP_STACK: &[&str] = &["warp", "async-graphql", "hangar-server"];

/// Each crate and what must not be in its tree.
const RULES: &[(&str, &[&str])] = &[
    (
        "hangar-worker",
        &[
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
            "hangar-store",
            // Policies are evaluated by the appliance, never on a worker host.
            "hangar-policy",
            "regorus",
        ],
    ),
    ("hangar-background", HTTP_STACK),
    ("hangar-store", &["warp", "async-graphql", "rumqttd", "hangar-server", "hangar-broker"]),
    (
        "hangar-install",
        &["hangar", "hangar-server", "hangar-broker", "hangar-background", "hangar-store", "warp", "async-graphql", "rumqttd"],
    ),
];

/// The names of the crates in `package`'s normal dependency tree.
fn tree(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none", "--format", "{p}", "--manifest-path", manifest])
        .args(["-p", package])
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree -p {package} failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut crates: Vec<String> = text.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
    crates.sort();
    crates.dedup();
    crates
}

#[test]
fn crate_boundaries_hold() {
    let mut broken = Vec::new();
    for (package, forbidden) in RULES {
        let crates = tree(package);
        assert!(crates.iter().any(|c| c == package), "the tree is {package}'s: {crates:?}");
        for f in *forbidden {
            if crates.iter().any(|c| c == f) {
                broken.push(format!("{package} depends on {f}"));
            }
        }
        // ring is the only crypto provider anywhere.
        for f in ["aws-lc-rs", "openssl-sys"] {
            if crates.iter().any(|c| c == f) {
                broken.push(format!("{package} depends on {f}"));
            }
        }
    }
    assert!(broken.is_empty(), "crate boundaries broken: {broken:?}");
}

#[test]
fn the_check_sees_what_a_tree_holds() {
    // The rules would pass vacuously if the tree came back empty or named
    // crates differently: the server's own tree holds what the others must not.
    let server = tree("hangar-server");
    for c in ["hangar-server", "warp", "async-graphql", "hangar-store", "hangar-db"] {
        assert!(server.iter().any(|s| s == c), "{c} not found in {server:?}");
    }
}
