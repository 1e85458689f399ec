//! Bundle upload benchmark: `hangar bundle upload FILE` of a signed bundle of
//! incompressible bytes to the release `hangar server` over TLS on loopback,
//! verified while it streams (signature, manifest, every hash) and staged,
//! timed from the command's start to its exit with the bundle staged. MB/s
//! is the bundle's size over that time (10^6 bytes per MB).
//!
//! `cargo bench -p hangar-server --bench upload` (`-- --quick` for one run of
//! 256 MiB; `-- --mib N` for another size). Each size is uploaded with the
//! client's default chunk (64 MiB) and with 16 MiB and 256 MiB chunks.

mod support;

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;
use support::Options;

fn main() {
    support::main(async move {
        let work = tempfile::tempdir().unwrap();
        let keys = work.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let (key, _, _) = hangar_bundle::generate_key_files(&keys.join("bench")).unwrap();
        let staging = work.path().join("staging");
        let quick = support::quick();
        let mib: u64 = support::arg("--mib").unwrap_or(if quick { 256 } else { 1024 });
        let support::Bench { app, admin, .. } = support::start(Options {
            server_extra: format!(
                "bundles_dir = \"{}\"\nbundle_trust_dir = \"{}\"\nmax_bundle_bytes = {}\n",
                staging.display(),
                keys.display(),
                (mib + 64) << 20
            ),
            ..Default::default()
        })
        .await;
        let api_key = app.ok(&admin, "mutation { createApiKey(name: \"bench\", role: ADMIN) { key } }", json!({})).await["createApiKey"]["key"]
            .as_str()
            .unwrap()
            .to_string();

        // Random bytes: the bundle is as large as its content.
        let bundle = work.path().join("bench-1.0.0.bundle");
        support::common::random_bundle(&bundle, mib << 20, key);
        let size = std::fs::metadata(&bundle).unwrap().len();
        println!("bundle: {:.0} MiB of random bytes (one file), zstd level 1, signed\n", size as f64 / 1048576.0);

        let chunks: &[u64] = if quick { &[64] } else { &[64, 16, 256] };
        let runs = if quick { 1 } else { 3 };
        println!("| chunk | run | seconds | MB/s |");
        println!("|---|---|---|---|");
        for &chunk in chunks {
            let mut rates = Vec::new();
            for run in 1..=runs {
                let state = work.path().join(format!("state-{chunk}-{run}"));
                let started = Instant::now();
                let out = Command::new(hangar_testkit::cargo_bin("hangar"))
                    .args(["bundle", "upload"])
                    .arg(&bundle)
                    .args(["--json", "--no-resume", "--chunk-mib", &chunk.to_string(), "--server"])
                    .arg(app.url("/"))
                    .arg("--ca-file")
                    .arg(app.ca_path())
                    .env("HANGAR_API_KEY", &api_key)
                    .env("HANGAR_CLIENT_CONFIG", state.join("no-client.toml"))
                    .env("XDG_STATE_HOME", &state)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                let secs = started.elapsed().as_secs_f64();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let staged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let rate = size as f64 / secs / 1e6;
                rates.push(rate);
                println!("| {chunk} MiB | {run} | {secs:.2} | {rate:.0} |");
                // The next run starts from an empty staging area.
                let id = staged["id"].as_str().unwrap();
                let r = support::client(&app)
                    .delete(app.url(&format!("/api/v1/bundles/{id}")))
                    .bearer_auth(&admin)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
            }
            rates.sort_by(f64::total_cmp);
            println!("| {chunk} MiB | median | | {:.0} |", rates[rates.len() / 2]);
        }
    });
}
