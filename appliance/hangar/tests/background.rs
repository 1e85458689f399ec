//! `hangar drain` and `hangar scheduler` as separate processes against a real
//! PostgreSQL: run scheduling, dead jobs, leader election and hand-over, the
//! stuck-run reaper, drift checks and retention.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::jobs::JobKind;
use hangar_db::queue::{self, NewJob};
use hangar_db::runs::{self, NewRun};
use hangar_db::schema::{job_keys, jobs, processes, runs as runs_t, scheduler_entries, sessions, stacks, users};
use hangar_db::{DbPool, migrate};
use hangar_testkit::{ChildProcess, PgServer, TestDir, wait_for};
use hangar_types::{RunKind, RunState};
use serde_json::json;

struct Env {
    pg: PgServer,
    pool: DbPool,
    dir: TestDir,
}

async fn env(label: &str) -> Env {
    let pg = PgServer::start().await;
    migrate::run_pending(&pg.database()).await.unwrap();
    let pool = pg.database().pool(Some(4)).unwrap();
    Env { pg, pool, dir: TestDir::new(label) }
}

impl Env {
    /// A configuration with `extra` TOML appended.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let db = self.pg.write_config(self.dir.path());
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[database]\nhost = \"127.0.0.1\"\nport = {}\nname = \"hangar\"\nuser = \"hangar\"\n\
                 password_file = \"{}\"\nca_file = \"{}\"\npool_size = 4\n{extra}",
                self.pg.port,
                db.password_file.display(),
                db.ca_file.display()
            ),
        )
        .unwrap();
        path
    }

    fn spawn(&self, what: &str, name: &str, config: &Path) -> ChildProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hangar"));
        cmd.arg("--config").arg(config).arg(what).env("HANGAR_LOG", "info");
        ChildProcess::spawn(cmd, name, self.dir.path())
    }

    async fn stack(&self, slug: &str) -> i64 {
        let mut c = self.pool.get().await.unwrap();
        diesel::insert_into(stacks::table)
            .values((
                stacks::slug.eq(slug),
                stacks::name.eq(slug),
                stacks::repository.eq("https://git.example/infra.git"),
                stacks::branch.eq("main"),
                stacks::tool_version.eq("1.0.3"),
            ))
            .returning(stacks::id)
            .get_result(&mut c)
            .await
            .unwrap()
    }

    async fn run(&self, stack: i64, kind: RunKind) -> i64 {
        let mut c = self.pool.get().await.unwrap();
        let new = NewRun {
            stack_id: stack,
            kind,
            commit_sha: "c0ffee".repeat(6) + "abcd",
            branch: "main".into(),
            command: None,
            triggered_by: "test".into(),
        };
        runs::create(&mut c, &new, "test").await.unwrap().id
    }

    async fn state(&self, run: i64) -> RunState {
        let mut c = self.pool.get().await.unwrap();
        runs::get(&mut c, run).await.unwrap().unwrap().state()
    }

    async fn wait_state(&self, run: i64, want: RunState) {
        wait_for(&format!("run {run} to be {want}"), Duration::from_secs(20), || async move {
            (self.state(run).await == want).then_some(())
        })
        .await
    }
}

#[tokio::test]
async fn drains_promote_runs_one_tracked_run_per_stack_at_a_time() {
    let e = env("drain-schedule").await;
    let cfg = e.config("drain", "");
    let _d1 = e.spawn("drain", "drain-1", &cfg);
    let _d2 = e.spawn("drain", "drain-2", &cfg);
    let stack = e.stack("network").await;
    let t1 = e.run(stack, RunKind::Tracked).await;
    let t2 = e.run(stack, RunKind::Tracked).await;
    let p1 = e.run(stack, RunKind::Proposed).await;
    e.wait_state(t1, RunState::Ready).await;
    e.wait_state(p1, RunState::Ready).await;
    assert_eq!(e.state(t2).await, RunState::Queued);

    // Both drains are alive and visible.
    wait_for("two drain heartbeats", Duration::from_secs(10), || async {
        let mut c = e.pool.get().await.unwrap();
        let n: i64 = processes::table.filter(processes::kind.eq("drain")).count().get_result(&mut c).await.unwrap();
        (n == 2).then_some(())
    })
    .await;

    // t1 runs to its end on a (simulated) worker; then t2 may go.
    let mut c = e.pool.get().await.unwrap();
    for s in [RunState::Preparing, RunState::Initializing, RunState::Planning] {
        runs::transition(&mut c, t1, None, s, "worker", "worker:1").await.unwrap();
    }
    // Asking to schedule the stack while t1 plans changes nothing.
    queue::enqueue(&mut c, &runs::schedule_job(stack)).await.unwrap();
    wait_for("the queue to drain", Duration::from_secs(10), || async {
        let mut c = e.pool.get().await.unwrap();
        let q = queue::counts(&mut c).await.unwrap();
        (q.ready + q.running == 0).then_some(())
    })
    .await;
    assert_eq!(e.state(t2).await, RunState::Queued);
    runs::transition(&mut c, t1, None, RunState::Finished, "worker", "worker:1").await.unwrap();
    e.wait_state(t2, RunState::Ready).await;
    let history = runs::events(&mut c, t2).await.unwrap();
    assert_eq!(history.last().unwrap().actor, "drain");
    // Each run was promoted once, though two drains were at work.
    let readies = history.iter().filter(|h| h.to_state == "READY").count();
    assert_eq!(readies, 1);
}

#[tokio::test]
async fn failing_jobs_are_retried_then_kept_dead_with_their_error() {
    let e = env("drain-dead").await;
    let cfg = e.config("drain", "");
    let mut c = e.pool.get().await.unwrap();
    queue::enqueue(&mut c, &NewJob::new("no.such.kind", json!({})).max_attempts(2)).await.unwrap();
    queue::enqueue(&mut c, &NewJob::new(JobKind::Schedule.as_str(), json!({ "stack": "not a number" }))).await.unwrap();
    let _d = e.spawn("drain", "drain", &cfg);
    let dead = wait_for("two dead jobs", Duration::from_secs(30), || async {
        let mut c = e.pool.get().await.unwrap();
        let d = queue::dead_jobs(&mut c, 10).await.unwrap();
        (d.len() == 2).then_some(d)
    })
    .await;
    let unknown = dead.iter().find(|j| j.kind == "no.such.kind").unwrap();
    assert_eq!(unknown.attempts, 2);
    assert!(unknown.last_error.as_deref().unwrap().contains("no handler"));
    let malformed = dead.iter().find(|j| j.kind == JobKind::Schedule.as_str()).unwrap();
    assert_eq!(malformed.attempts, 1, "a malformed payload is not retried");
    let error = malformed.last_error.as_deref().unwrap();
    assert!(error.contains("payload of a run.schedule job") && error.contains("not a number"), "{error}");
}

#[derive(QueryableByName)]
struct Tick {
    #[diesel(sql_type = diesel::sql_types::Text)]
    unique_key: String,
}

async fn ticks(pool: &DbPool) -> Vec<DateTime<Utc>> {
    let mut c = pool.get().await.unwrap();
    let keys: Vec<Tick> = diesel::sql_query("SELECT unique_key FROM job_keys WHERE unique_key LIKE 'cron:tick:%'")
        .load(&mut c)
        .await
        .unwrap();
    let mut t: Vec<DateTime<Utc>> = keys
        .iter()
        .map(|k| DateTime::parse_from_rfc3339(k.unique_key.trim_start_matches("cron:tick:")).unwrap().to_utc())
        .collect();
    t.sort();
    t
}

/// Schedulers leading according to a fresh heartbeat (a killed process leaves
/// its last row behind; it goes stale within a few beats).
async fn leaders(pool: &DbPool) -> Vec<String> {
    let mut c = pool.get().await.unwrap();
    processes::table
        .filter(processes::kind.eq("scheduler"))
        .filter(processes::leader.eq(true))
        .filter(processes::last_seen_at.gt(Utc::now() - chrono::Duration::seconds(5)))
        .select(processes::id)
        .load(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_schedulers_fire_each_tick_once_and_hand_over_when_the_leader_dies() {
    let e = env("scheduler").await;
    let cfg = e.config(
        "scheduler",
        "[scheduler]\nreaper = \"0 0 1 1 *\"\nretention = \"0 0 1 1 *\"\ndrift = \"0 0 1 1 *\"\nvcs_poll = \"0 0 1 1 *\"\n\
         [[scheduler.entry]]\nname = \"tick\"\nschedule = \"* * * * * *\"\nkind = \"runs.reap\"\n",
    );
    let mut a = e.spawn("scheduler", "scheduler-a", &cfg);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = e.spawn("scheduler", "scheduler-b", &cfg);

    wait_for("five ticks", Duration::from_secs(20), || async { (ticks(&e.pool).await.len() >= 5).then_some(()) }).await;
    let lead = wait_for("one leader", Duration::from_secs(10), || async {
        let l = leaders(&e.pool).await;
        (l.len() == 1).then_some(l[0].clone())
    })
    .await;
    let (leader, standby) = if lead.ends_with(&format!(":{}", a.pid())) { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert!(lead.ends_with(&format!(":{}", leader.pid())), "{lead}");
    assert!(!standby.output().contains("fired"), "the standby fired:\n{}", standby.output());

    // The leader dies; the standby takes over within seconds.
    let before = ticks(&e.pool).await;
    leader.kill();
    let killed_at = Utc::now();
    let after = wait_for("ticks from the new leader", Duration::from_secs(15), || async {
        let t = ticks(&e.pool).await;
        (t.len() >= before.len() + 3).then_some(t)
    })
    .await;
    let first_new = after.iter().find(|t| **t > *before.last().unwrap()).unwrap();
    let handover = (*first_new - killed_at).num_milliseconds();
    assert!(handover < 5_000, "hand-over took {handover} ms");
    let new_lead = wait_for("the standby to lead", Duration::from_secs(10), || async {
        let l = leaders(&e.pool).await;
        (l.len() == 1 && l[0] != lead).then_some(l[0].clone())
    })
    .await;
    assert!(new_lead.ends_with(&format!(":{}", standby.pid())));

    // Every tick once: distinct times, one job each, and as many "fired" lines
    // in both logs together as there are jobs.
    let mut c = e.pool.get().await.unwrap();
    let all = ticks(&e.pool).await;
    let mut distinct = all.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), all.len());
    let jobs_made: i64 = jobs::table.filter(jobs::kind.eq(JobKind::Reap.as_str())).count().get_result(&mut c).await.unwrap();
    assert_eq!(jobs_made as usize, all.len());
    let fired_lines = a.output().matches("fired").count() + b.output().matches("fired").count();
    assert_eq!(fired_lines, all.len());
    let fires: i64 = scheduler_entries::table
        .filter(scheduler_entries::name.eq("tick"))
        .select(scheduler_entries::fires)
        .get_result(&mut c)
        .await
        .unwrap();
    assert_eq!(fires as usize, all.len());
}

#[tokio::test]
async fn reaper_fails_runs_whose_worker_vanished_and_never_retries_an_apply() {
    let e = env("reaper").await;
    let cfg = e.config("bg", "[scheduler]\nreaper = \"* * * * * *\"\n");
    let planning_stack = e.stack("planning").await;
    let applying_stack = e.stack("applying").await;
    let lost_plan = e.run(planning_stack, RunKind::Tracked).await;
    let waiting = e.run(planning_stack, RunKind::Tracked).await;
    let lost_apply = e.run(applying_stack, RunKind::Tracked).await;
    let live = e.run(applying_stack, RunKind::Proposed).await;
    let mut c = e.pool.get().await.unwrap();
    for s in [RunState::Ready, RunState::Preparing, RunState::Initializing, RunState::Planning] {
        runs::transition(&mut c, lost_plan, None, s, "t", "t").await.unwrap();
        runs::transition(&mut c, live, None, s, "t", "t").await.unwrap();
    }
    for s in [RunState::Ready, RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Unconfirmed, RunState::Confirmed, RunState::Applying] {
        runs::transition(&mut c, lost_apply, None, s, "t", "t").await.unwrap();
    }
    let past = Utc::now() - chrono::Duration::seconds(30);
    let future = Utc::now() + chrono::Duration::minutes(10);
    for (run, lease) in [(lost_plan, past), (lost_apply, past), (live, future)] {
        diesel::update(runs_t::table.filter(runs_t::id.eq(run)))
            .set(runs_t::lease_expires_at.eq(Some(lease)))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let _s = e.spawn("scheduler", "scheduler", &cfg);
    let _d = e.spawn("drain", "drain", &cfg);

    e.wait_state(lost_plan, RunState::Failed).await;
    e.wait_state(lost_apply, RunState::Failed).await;
    let plan = runs::get(&mut c, lost_plan).await.unwrap().unwrap();
    assert!(plan.failure_reason.as_deref().unwrap().starts_with("worker lost during PLANNING"), "{:?}", plan.failure_reason);
    let apply = runs::get(&mut c, lost_apply).await.unwrap().unwrap();
    assert!(apply.failure_reason.as_deref().unwrap().starts_with("worker lost during apply"), "{:?}", apply.failure_reason);
    let reconcile: bool = stacks::table
        .filter(stacks::id.eq(applying_stack))
        .select(stacks::needs_reconciliation)
        .get_result(&mut c)
        .await
        .unwrap();
    assert!(reconcile, "the stack whose apply was lost needs reconciliation");
    // The stack whose plan was lost is free again.
    e.wait_state(waiting, RunState::Ready).await;
    // A run with a live lease is left alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(e.state(live).await, RunState::Planning);
}

#[tokio::test]
async fn drift_schedules_make_one_drift_run_per_occurrence() {
    let e = env("drift").await;
    let cfg = e.config("bg", "[scheduler]\ndrift = \"* * * * * *\"\n");
    let stack = e.stack("drifty").await;
    let never_applied = e.stack("fresh").await;
    let applied = e.run(stack, RunKind::Tracked).await;
    let mut c = e.pool.get().await.unwrap();
    for s in [RunState::Ready, RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Finished] {
        runs::transition(&mut c, applied, None, s, "t", "t").await.unwrap();
    }
    diesel::update(stacks::table.filter(stacks::id.eq_any([stack, never_applied])))
        .set(stacks::drift_schedule.eq(Some("*/2 * * * * *")))
        .execute(&mut c)
        .await
        .unwrap();
    let _s = e.spawn("scheduler", "scheduler", &cfg);
    let _d = e.spawn("drain", "drain", &cfg);
    let drift: Vec<(String, String)> = wait_for("two drift runs", Duration::from_secs(20), || async {
        let mut c = e.pool.get().await.unwrap();
        let r: Vec<(String, String)> = runs_t::table
            .filter(runs_t::kind.eq("drift"))
            .select((runs_t::commit_sha, runs_t::triggered_by))
            .load(&mut c)
            .await
            .unwrap();
        (r.len() >= 2).then_some(r)
    })
    .await;
    let commit = runs::get(&mut c, applied).await.unwrap().unwrap().commit_sha;
    assert!(drift.iter().all(|(sha, _)| *sha == commit), "drift plans the applied commit");
    let mut by = drift.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
    by.sort();
    by.dedup();
    assert_eq!(by.len(), drift.len(), "one run per occurrence");
    let fresh: i64 = runs_t::table.filter(runs_t::stack_id.eq(never_applied)).count().get_result(&mut c).await.unwrap();
    assert_eq!(fresh, 0, "no drift run for a stack never applied");
}

#[tokio::test]
async fn retention_forgets_old_keys_and_dead_jobs() {
    let e = env("retention").await;
    let cfg = e.config("bg", "[scheduler]\nretention = \"* * * * * *\"\nretention_days = 1\n");
    let mut c = e.pool.get().await.unwrap();
    let old = Utc::now() - chrono::Duration::days(3);
    diesel::insert_into(job_keys::table)
        .values((job_keys::queue.eq("default"), job_keys::unique_key.eq("old"), job_keys::job_id.eq(1_i64), job_keys::created_at.eq(old)))
        .execute(&mut c)
        .await
        .unwrap();
    diesel::insert_into(jobs::table)
        .values((jobs::kind.eq("x"), jobs::state.eq("dead"), jobs::created_at.eq(old), jobs::attempts.eq(5)))
        .execute(&mut c)
        .await
        .unwrap();
    queue::enqueue(&mut c, &NewJob::new("recent", json!({})).unique_key("recent")).await.unwrap();
    // Sessions: one expired two days ago, one revoked two days ago, one live.
    let user: i64 = diesel::insert_into(users::table)
        .values((users::email.eq("ret@example.com"), users::password_hash.eq("x"), users::role.eq("reader")))
        .returning(users::id)
        .get_result(&mut c)
        .await
        .unwrap();
    let two_days_ago = Utc::now() - chrono::Duration::days(2);
    for (token, expires, revoked) in [
        ("expired", two_days_ago, None),
        ("revoked", Utc::now() + chrono::Duration::hours(1), Some(two_days_ago)),
        ("live", Utc::now() + chrono::Duration::hours(1), None),
    ] {
        diesel::insert_into(sessions::table)
            .values((
                sessions::user_id.eq(user),
                sessions::token_id.eq(token),
                sessions::token_hash.eq(token),
                sessions::expires_at.eq(expires),
                sessions::revoked_at.eq(revoked),
            ))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let _s = e.spawn("scheduler", "scheduler", &cfg);
    let _d = e.spawn("drain", "drain", &cfg);
    let start = Instant::now();
    wait_for("old rows to go", Duration::from_secs(20), || async {
        let mut c = e.pool.get().await.unwrap();
        let keys: i64 = job_keys::table.filter(job_keys::unique_key.eq("old")).count().get_result(&mut c).await.unwrap();
        let dead: i64 = jobs::table.filter(jobs::kind.eq("x")).count().get_result(&mut c).await.unwrap();
        let sessions: i64 = sessions::table.count().get_result(&mut c).await.unwrap();
        (keys == 0 && dead == 0 && sessions == 1).then_some(())
    })
    .await;
    assert!(start.elapsed() < Duration::from_secs(20));
    let recent: i64 = job_keys::table.filter(job_keys::unique_key.eq("recent")).count().get_result(&mut c).await.unwrap();
    assert_eq!(recent, 1);
    let left: Vec<String> = sessions::table.select(sessions::token_id).load(&mut c).await.unwrap();
    assert_eq!(left, ["live"]);
}

#[tokio::test]
async fn drain_and_scheduler_stop_cleanly_on_sigterm() {
    let e = env("bg-term").await;
    let cfg = e.config("bg", "");
    let mut d = e.spawn("drain", "drain", &cfg);
    let mut s = e.spawn("scheduler", "scheduler", &cfg);
    wait_for("both heartbeats", Duration::from_secs(10), || async {
        let mut c = e.pool.get().await.unwrap();
        let n: i64 = processes::table.count().get_result(&mut c).await.unwrap();
        (n == 2).then_some(())
    })
    .await;
    for p in [&mut d, &mut s] {
        p.signal(nix::sys::signal::Signal::SIGTERM);
        let status = p.wait_timeout(Duration::from_secs(15)).expect("exits after SIGTERM");
        assert!(status.success(), "{status:?}\n{}", p.output_tail());
    }
    let mut c = e.pool.get().await.unwrap();
    let n: i64 = processes::table.count().get_result(&mut c).await.unwrap();
    assert_eq!(n, 0, "heartbeat rows are removed on a clean stop");
}
