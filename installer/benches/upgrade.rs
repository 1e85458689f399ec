//! The downtime of an upgrade and the time of a rollback, on this machine:
//! installs the appliance bundle of this workspace's binaries into a fresh
//! prefix, upgrades it to the same binaries as release 0.2.0, then tries
//! 0.3.0 whose migration fails (the test release's binary), which rolls
//! back. Figures come from the upgrade records: downtime is from the first
//! service stopped to the health gate passed; the rollback from the failure
//! to the old release ready again. With `--runs N` the database first gets
//! N finished runs with their nine state changes each, so that the backup
//! (in the upgrade) and the restore (in the rollback) are measured on it.
//! Run as root, built in the profile whose binaries it should measure:
//!
//!     cargo build --workspace --bins && cargo bench -p hangar-install --bench upgrade --profile dev -- --runs 100000
//!
//! (`--profile release` with release binaries built the same way.)

#[path = "../tests/common/mod.rs"]
mod common;

use chrono::{DateTime, Utc};
use serde_json::Value;

const ROUNDS: usize = 3;

/// One stack with `n` finished runs, each with the state changes a run goes through.
fn fill(site: &common::Site, n: u64) {
    let sql = format!(
        "INSERT INTO stacks (slug, name, description, repository, branch, project_root, tool, tool_version, autodeploy, labels, needs_reconciliation, created_at, updated_at) \
         VALUES ('bench', 'Bench', '', 'https://git.example/bench.git', 'main', '', 'terraform', '1.0.3', false, '{{}}', false, now(), now());
         INSERT INTO runs (stack_id, kind, state, commit_sha, branch, triggered_by, created_at, updated_at, changes) \
         SELECT s.id, 'tracked', 'FINISHED', md5(g::text) || '00000000', 'main', 'bench@example.com', now(), now(), \
                '{{\"add\": 1, \"change\": 0, \"destroy\": 0, \"outputs\": 0}}'::jsonb \
         FROM generate_series(1, {n}) g, (SELECT id FROM stacks WHERE slug = 'bench') s;
         INSERT INTO run_events (run_id, from_state, to_state, cause, actor, at) \
         SELECT r.id, t.f, t.t, 'bench', 'worker:1', now() FROM runs r, (VALUES (NULL, 'QUEUED'), ('QUEUED', 'READY'), \
             ('READY', 'PREPARING'), ('PREPARING', 'INITIALIZING'), ('INITIALIZING', 'PLANNING'), ('PLANNING', 'UNCONFIRMED'), \
             ('UNCONFIRMED', 'CONFIRMED'), ('CONFIRMED', 'APPLYING'), ('APPLYING', 'FINISHED')) AS t(f, t);"
    );
    common::cluster(site).query(&sql).expect("filling the database");
}

fn secs(from: &Value, to: &Value) -> f64 {
    let t = |v: &Value| v.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok()).expect("a time");
    (t(to) - t(from)).num_milliseconds() as f64 / 1000.0
}

fn main() {
    assert!(nix::unistd::geteuid().is_root(), "the upgrade bench runs as root");
    let mut runs = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N");
        }
    }
    let built = common::bundle();
    let next = common::bundle_of(Some("0.2.0"));
    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        let site = common::Site::new("bench-upgrade", &built);
        common::check("install", site.install());
        if runs > 0 {
            fill(&site, runs);
        }
        let broken_bin = common::profile_dir().join("hangar-failing-migration");
        let broken = common::variant(&built, site.dir.path(), "broken.bundle", "0.3.0", common::created_of(&built.bundle, &built.trust), |tree| {
            std::fs::copy(&broken_bin, tree.join("bin/hangar")).unwrap();
            common::set_release_info(tree, "0.3.0", "0.1.0");
        });
        common::check("upgrade", common::upgrade(&site, &next.bundle, &[]));
        let up = common::records(&site).pop().unwrap();
        let failed = common::upgrade(&site, &broken, &[]);
        assert_eq!(failed.status.code(), Some(1), "{}", common::both(&failed));
        let back = common::records(&site).pop().unwrap();
        assert_eq!(back["outcome"], "rolled-back", "{back}");
        let steps = back["steps"].as_array().unwrap();
        let first_rollback = steps.iter().find(|s| s["phase"] == "rollback").unwrap();
        let last = steps.last().unwrap();
        let step = |rec: &Value, name: &str| {
            rec["steps"].as_array().unwrap().iter().rev().find(|s| s["name"] == name).map_or(0.0, |s| secs(&s["started_at"], &s["finished_at"]))
        };
        let row = (
            up["downtime_secs"].as_f64().unwrap(),
            secs(&up["started_at"], &up["finished_at"]),
            step(&up, "backup"),
            step(&up, "migrate"),
            secs(&first_rollback["started_at"], &last["finished_at"]),
            back["downtime_secs"].as_f64().unwrap_or(f64::NAN),
            step(&back, "restore database"),
        );
        println!(
            "round {round} ({runs} runs): upgrade downtime {:.2} s (whole upgrade {:.2} s; backup {:.2} s, migrate {:.2} s); rollback {:.2} s (restore {:.2} s; downtime of the failed upgrade {:.2} s)",
            row.0, row.1, row.2, row.3, row.4, row.6, row.5
        );
        rows.push(row);
        common::check("uninstall", site.command(&["uninstall"]).output().unwrap());
    }
    type Row = (f64, f64, f64, f64, f64, f64, f64);
    let median = |f: fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median of {ROUNDS}: upgrade downtime {:.2} s, whole upgrade {:.2} s, backup {:.2} s, rollback {:.2} s, restore {:.2} s",
        median(|r| r.0),
        median(|r| r.1),
        median(|r| r.2),
        median(|r| r.4),
        median(|r| r.6)
    );
}
