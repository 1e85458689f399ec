//! The test provider stays a test: no other crate of the workspace depends on
//! it or on what it brings (the tf-provider crate and its rcgen 0.13), and no
//! bundle recipe carries it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const PROVIDER_CRATE: &str = "hangar-test-provider";

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().and_then(Path::parent).expect("tests/provider is two levels down")
}

#[test]
fn no_other_crate_reaches_the_provider_or_what_it_brings() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
        .arg(workspace_root().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages: HashMap<&str, (&str, &str)> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), (p["name"].as_str().unwrap(), p["version"].as_str().unwrap())))
        .collect();
    // Edges a build of the crate follows: normal and build dependencies.
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].as_str() != Some("dev")))
            .map(|d| d["pkg"].as_str().unwrap())
            .collect();
        edges.insert(node["id"].as_str().unwrap(), deps);
    }
    let members: Vec<&str> = meta["workspace_members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(members.iter().any(|m| packages[m].0 == PROVIDER_CRATE), "the provider crate is a workspace member");
    let forbidden = |id: &str| {
        let (name, version) = packages[id];
        name == PROVIDER_CRATE || name == "tf-provider" || (name == "rcgen" && version.starts_with("0.13."))
    };
    for member in members.iter().filter(|m| packages[*m].0 != PROVIDER_CRATE) {
        let mut seen = HashSet::new();
        let mut todo = vec![*member];
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            assert!(!forbidden(id), "{} depends on {} {}", packages[member].0, packages[id].0, packages[id].1);
            todo.extend(edges.get(id).into_iter().flatten().copied());
        }
    }
}

#[test]
fn no_bundle_recipe_carries_the_provider() {
    let recipes = workspace_root().join("bundles/recipes");
    let mut read = 0;
    for entry in std::fs::read_dir(&recipes).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hangartest"), "{} names the test provider", path.display());
        read += 1;
    }
    assert!(read > 0, "no recipe found in {}", recipes.display());
}
