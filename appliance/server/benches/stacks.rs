//! Stacks at scale on real workers: the release `hangar server`, `hangar
//! drain` and `hangar scheduler`, and N `hangar-worker run` processes
//! running Terraform 1.0.3, with a real git server.
//!
//! 1. **A DAG of stacks applied end to end**: `--levels` × `--width` stacks
//!    (10 × 10 by default), each of level l > 0 depending on two stacks of
//!    level l − 1 and taking one's output as its variable; each manages a
//!    file through the test provider served by the appliance's mirror. The
//!    stacks of level 0 are triggered; the rest follow from the dependencies
//!    alone. Reported: the wall time from the first trigger to the last
//!    apply, the critical path (the longest chain of run times, claim to
//!    finish, through the DAG), the sum of all run times, and what the
//!    wall time adds to the lower bound no schedule can beat: the longer of
//!    the critical path and the sum spread over the N workers.
//! 2. **A drift sweep**: `--stacks` stacks (1,000 by default) on one pool,
//!    each with a finished tracked run recorded, given a drift schedule
//!    that fires once, at the next minute; the scheduler's tick creates the
//!    drift runs and N workers plan them. Reported: from the schedule's
//!    occurrence to the last drift run finished, runs per minute, and that
//!    every stack got exactly one drift run.
//!
//! `cargo bench -p hangar-server --bench stacks -- [--workers N] [--levels L]
//! [--width W] [--stacks S] [--skip-dag] [--skip-sweep]`. PostgreSQL runs
//! without fsync here (the test appliance): the runs, not the commits,
//! dominate.

mod support;

#[path = "../tests/fleet/mod.rs"]
mod fleet;

use support::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use fleet::{Fleet, FleetOptions};
use hangar_testkit::{ChildProcess, GitServer, TestDir, provider, wait_for};
use serde_json::json;

#[derive(diesel::QueryableByName, Debug)]
struct Timing {
    #[diesel(sql_type = Text)]
    slug: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    claimed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Every run of `kind`, with when it was made, claimed and last changed.
async fn timings(db: &hangar_db::DbPool, kind: &str) -> Vec<Timing> {
    let mut c = db.get().await.unwrap();
    diesel::sql_query(
        "SELECT s.slug, r.state, r.created_at, r.updated_at, \
         (SELECT min(e.at) FROM run_events e WHERE e.run_id = r.id AND e.to_state = 'PREPARING') AS claimed_at \
         FROM runs r JOIN stacks s ON s.id = r.stack_id WHERE r.kind = $1 ORDER BY r.id",
    )
    .bind::<Text, _>(kind)
    .load(&mut c)
    .await
    .unwrap()
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

fn stack_name(level: usize, i: usize) -> String {
    format!("l{level:02}-s{i:02}")
}

fn dag_config(out: &std::path::Path) -> String {
    format!(
        "{}variable \"name\" {{\n  type = string\n}}\nvariable \"parent\" {{\n  type    = string\n  default = \"root\"\n}}\n\
         resource \"hangartest_file\" \"mark\" {{\n  path    = \"{}/${{var.name}}.txt\"\n  content = \"${{var.name}} after ${{var.parent}}\"\n}}\n\
         output \"id\" {{\n  value = var.name\n}}\n",
        provider::required_providers(),
        out.display()
    )
}

async fn dag(fleet: &Fleet, git: &GitServer, workers: &[ChildProcess], levels: usize, width: usize) {
    let out = fleet.files.subdir("dag-out");
    git.create_repo("dag");
    git.push_files("dag", "main", &[("infra/main.tf", &dag_config(&out))], "one stack of the DAG");
    for l in 0..levels {
        for i in 0..width {
            let s = stack_name(l, i);
            fleet.create_stack(&s, &git.url("dag"), "builders", json!({ "autodeploy": true })).await;
            fleet
                .ok(
                    "mutation($s: String!, $v: String!) { setStackVariable(stack: $s, name: \"TF_VAR_name\", value: $v) { name } }",
                    json!({ "s": s, "v": s }),
                )
                .await;
            if l > 0 {
                let dep = "mutation($s: String!, $d: String!, $o: [DependencyOutputInput!]!) { addStackDependency(stack: $s, dependsOn: $d, outputs: $o) { slug } }";
                let parent = stack_name(l - 1, i);
                let other = stack_name(l - 1, (i + 1) % width);
                fleet.ok(dep, json!({ "s": s, "d": parent, "o": [{ "output": "id", "input": "parent" }] })).await;
                if other != parent {
                    fleet.ok(dep, json!({ "s": s, "d": other, "o": [] })).await;
                }
            }
        }
    }
    let total = levels * width;
    let db = fleet.app.pg.database().pool(Some(2)).unwrap();
    let start = Utc::now();
    let wall = Instant::now();
    for i in 0..width {
        fleet.trigger(&stack_name(0, i)).await;
    }
    wait_for(&format!("{total} stacks applied"), Duration::from_secs(3600), || async {
        let t = timings(&db, "tracked").await;
        let failed: Vec<&Timing> = t.iter().filter(|r| r.state == "FAILED").collect();
        if !failed.is_empty() {
            for w in workers {
                eprintln!("{}", w.output_tail());
            }
            panic!("runs failed: {failed:?}");
        }
        (t.iter().filter(|r| r.state == "FINISHED").count() == total).then_some(())
    })
    .await;
    let wall = wall.elapsed();
    let t = timings(&db, "tracked").await;
    assert_eq!(t.len(), total, "every stack applied exactly once");
    let end = t.iter().map(|r| r.updated_at).max().unwrap();
    let run_time: HashMap<&str, f64> =
        t.iter().map(|r| (r.slug.as_str(), secs(r.updated_at - r.claimed_at.unwrap_or(r.created_at)))).collect();
    // The longest chain of run times through the DAG.
    let mut cp: HashMap<String, f64> = HashMap::new();
    for l in 0..levels {
        for i in 0..width {
            let s = stack_name(l, i);
            let before = if l == 0 {
                0.0
            } else {
                cp[&stack_name(l - 1, i)].max(cp[&stack_name(l - 1, (i + 1) % width)])
            };
            cp.insert(s.clone(), before + run_time[s.as_str()]);
        }
    }
    let critical = cp.values().cloned().fold(0.0, f64::max);
    let sum: f64 = run_time.values().sum();
    let span = secs(end - start);
    let content = std::fs::read_to_string(out.join(format!("{}.txt", stack_name(levels - 1, 0)))).unwrap();
    assert_eq!(content, format!("{} after {}", stack_name(levels - 1, 0), stack_name(levels - 2, 0)));
    println!("DAG of {total} stacks ({levels} levels × {width}, each on two of the level above), {} workers:", workers.len());
    println!("  wall, first trigger → last apply: {span:.1} s (client clock {:.1} s)", wall.as_secs_f64());
    println!("  critical path (longest chain of run times, claim → finished): {critical:.1} s");
    println!("  sum of all run times: {sum:.1} s (mean {:.2} s per run; parallelism {:.2})", sum / total as f64, sum / span);
    // No schedule can beat the longer of the critical path and the work
    // spread evenly over the workers.
    let bound = critical.max(sum / workers.len() as f64);
    println!(
        "  lower bound max(critical path, sum / {} workers): {bound:.1} s; added by dispatch and dependency triggers: {:.1} s ({:.2} s per level)\n",
        workers.len(),
        span - bound,
        (span - bound) / levels as f64
    );
}

async fn sweep(fleet: &Fleet, git: &GitServer, workers: usize, stacks: usize) {
    git.create_repo("sweep");
    let head = git.push_files("sweep", "main", &[("infra/main.tf", "output \"checked\" {\n  value = true\n}\n")], "a stack to check");
    let made = Instant::now();
    for n in 0..stacks {
        fleet.create_stack(&format!("sweep-{n:04}"), &git.url("sweep"), "sweepers", json!({})).await;
    }
    println!("  ({stacks} stacks created in {:.1} s)", made.elapsed().as_secs_f64());
    let db = fleet.app.pg.database().pool(Some(2)).unwrap();
    let mut c = db.get().await.unwrap();
    // What a drift run is measured against: the commit last applied.
    diesel::sql_query(
        "INSERT INTO runs (stack_id, kind, state, commit_sha, branch, triggered_by) \
         SELECT id, 'tracked', 'FINISHED', $1, 'main', 'bench: applied before' FROM stacks WHERE slug LIKE 'sweep-%'",
    )
    .bind::<Text, _>(&head)
    .execute(&mut c)
    .await
    .unwrap();
    // Once, at the next whole minute at least 20 s away.
    let at = (Utc::now() + chrono::Duration::seconds(80)).with_second(0).unwrap().with_nanosecond(0).unwrap();
    let cron = format!("{} {} * * *", at.minute(), at.hour());
    diesel::sql_query("UPDATE stacks SET drift_schedule = $1 WHERE slug LIKE 'sweep-%'").bind::<Text, _>(&cron).execute(&mut c).await.unwrap();
    println!("  drift schedule `{cron}` (UTC): fires at {}", at.to_rfc3339());
    wait_for(&format!("{stacks} drift runs finished"), Duration::from_secs(7200), || async {
        let t = timings(&db, "drift").await;
        let failed: Vec<&Timing> = t.iter().filter(|r| r.state == "FAILED").collect();
        assert!(failed.is_empty(), "drift runs failed: {failed:?}");
        (t.iter().filter(|r| r.state == "FINISHED").count() >= stacks).then_some(())
    })
    .await;
    let t = timings(&db, "drift").await;
    let per_stack: Vec<Count> = diesel::sql_query(
        "SELECT count(r.id) AS n FROM stacks s LEFT JOIN runs r ON r.stack_id = s.id AND r.kind = 'drift' WHERE s.slug LIKE 'sweep-%' GROUP BY s.id",
    )
    .load(&mut c)
    .await
    .unwrap();
    assert!(per_stack.iter().all(|n| n.n == 1), "every stack gets exactly one drift run");
    let first = t.iter().map(|r| r.created_at).min().unwrap();
    let last_made = t.iter().map(|r| r.created_at).max().unwrap();
    let end = t.iter().map(|r| r.updated_at).max().unwrap();
    let run_times: Vec<Duration> =
        t.iter().map(|r| (r.updated_at - r.claimed_at.unwrap_or(r.created_at)).to_std().unwrap_or_default()).collect();
    let sweep = secs(end - at);
    println!("drift sweep of {stacks} stacks on one pool, {workers} workers:");
    println!("  occurrence → first drift run created: {:.1} s; all {stacks} created within {:.1} s", secs(first - at), secs(last_made - first));
    println!("  occurrence → last drift run finished: {sweep:.1} s ({:.0} runs per minute)", stacks as f64 * 60.0 / sweep);
    let s = support::Summary::of(run_times);
    println!("  one drift run, claim → finished: p50 {:.2} s, p99 {:.2} s\n", s.p50 / 1000.0, s.p99 / 1000.0);
}

fn main() {
    support::main(async {
        let workers: usize = support::arg("--workers").unwrap_or(4);
        let levels: usize = support::arg("--levels").unwrap_or(10);
        let width: usize = support::arg("--width").unwrap_or(10);
        let stacks: usize = support::arg("--stacks").unwrap_or(1000);
        let skip = |name: &str| std::env::args().any(|a| a == name);
        println!("machine: {}", support::machine());
        let mirror = TestDir::new("provider-mirror");
        provider::add_to_mirror(mirror.path());
        let settings = format!("provider_mirror_dir = \"{}\"\n", mirror.path().display());
        let fleet = Fleet::start_with_server(FleetOptions { scheduler: true, ..FleetOptions::default() }, &settings).await;
        println!("appliance: release `hangar server`, drain and scheduler; {workers} `hangar-worker run` processes running Terraform 1.0.3\n");
        let git = GitServer::start().await;
        if !skip("--skip-dag") {
            let mut ws = Vec::new();
            for n in 0..workers {
                let config = fleet.join_worker("builders", &format!("dag-{n}")).await;
                ws.push(fleet.run_worker(&config, &format!("dag-{n}")));
            }
            fleet.wait_workers("builders", "idle", workers).await;
            dag(&fleet, &git, &ws, levels, width).await;
            drop(ws);
        }
        if !skip("--skip-sweep") {
            let mut ws = Vec::new();
            for n in 0..workers {
                let config = fleet.join_worker("sweepers", &format!("sweep-{n}")).await;
                ws.push(fleet.run_worker(&config, &format!("sweep-{n}")));
            }
            fleet.wait_workers("sweepers", "idle", workers).await;
            sweep(&fleet, &git, workers, stacks).await;
        }
        let _ = common::ADMIN_EMAIL;
    })
}
