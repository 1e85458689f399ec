//! The job queue against a real PostgreSQL: claims, leases, fencing, retries,
//! dead jobs, deduplication, LISTEN/NOTIFY wake-ups, and consumers killed with
//! SIGKILL in the middle of a batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use hangar_db::queue::{
    self, Consumer, ConsumerConfig, Enqueued, FailOutcome, Handlers, JobError, NewJob, RetryPolicy,
    handler_fn,
};
use hangar_db::{DbPool, migrate};
use hangar_testkit::{ChildProcess, PgServer, TestDir, cargo_bin, wait_for};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn migrated() -> (PgServer, DbPool) {
    let pg = PgServer::start().await;
    migrate::run_pending(&pg.database()).await.unwrap();
    let pool = pg.database().pool(Some(8)).unwrap();
    (pg, pool)
}

#[tokio::test]
async fn claim_ack_and_fencing() {
    let (_pg, pool) = migrated().await;
    let mut conn = pool.get().await.unwrap();
    for i in 0..5 {
        queue::enqueue(&mut conn, &NewJob::new("k", json!({ "i": i }))).await.unwrap();
    }
    let lease = Duration::from_secs(30);
    let a = queue::claim(&mut conn, "default", "a", 3, lease).await.unwrap();
    let b = queue::claim(&mut conn, "default", "b", 10, lease).await.unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 2, "claimed jobs are invisible to other consumers");
    assert!(a.iter().all(|j| j.attempt == 1));
    let ids: HashSet<i64> = a.iter().chain(&b).map(|j| j.id).collect();
    assert_eq!(ids.len(), 5);
    assert!(queue::claim(&mut conn, "default", "c", 10, lease).await.unwrap().is_empty());

    // A stale token (wrong attempt) acknowledges nothing.
    let mut stale = a[0].token();
    stale.attempt += 1;
    assert_eq!(queue::complete(&mut conn, &[stale]).await.unwrap(), 0);
    let tokens: Vec<_> = a.iter().chain(&b).map(|j| j.token()).collect();
    assert_eq!(queue::complete(&mut conn, &tokens).await.unwrap(), 5);
    assert_eq!(queue::counts(&mut conn).await.unwrap(), Default::default());
}

#[tokio::test]
async fn expired_lease_redelivers_and_old_claim_is_fenced_off() {
    let (_pg, pool) = migrated().await;
    let mut conn = pool.get().await.unwrap();
    queue::enqueue(&mut conn, &NewJob::new("k", json!({}))).await.unwrap();
    let first = queue::claim(&mut conn, "default", "dies", 1, Duration::from_millis(300)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(queue::claim(&mut conn, "default", "b", 1, Duration::from_secs(30)).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = queue::claim(&mut conn, "default", "b", 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].attempt, 2);
    // The first consumer comes back late: its ack, failure and renewal are ignored.
    assert_eq!(queue::complete(&mut conn, &[first[0].token()]).await.unwrap(), 0);
    let r = queue::fail(&mut conn, first[0].token(), "late", &RetryPolicy::default(), false).await.unwrap();
    assert_eq!(r, FailOutcome::Stale);
    assert!(queue::extend(&mut conn, &[first[0].token()], Duration::from_secs(1)).await.unwrap().is_empty());
    assert_eq!(queue::complete(&mut conn, &[second[0].token()]).await.unwrap(), 1);
}

#[tokio::test]
async fn failures_back_off_then_end_dead_with_their_error() {
    let (_pg, pool) = migrated().await;
    let mut conn = pool.get().await.unwrap();
    let Enqueued::Created(id) = queue::enqueue(&mut conn, &NewJob::new("k", json!({})).max_attempts(3)).await.unwrap() else {
        panic!("not created")
    };
    let policy = RetryPolicy { base: Duration::from_millis(200), max: Duration::from_secs(10) };
    let mut retry_delays = Vec::new();
    for attempt in 1..=3 {
        let job = wait_for("the job to be due", Duration::from_secs(5), || {
            let pool = pool.clone();
            async move {
                let mut c = pool.get().await.unwrap();
                queue::claim(&mut c, "default", "t", 1, Duration::from_secs(30)).await.unwrap().pop()
            }
        })
        .await;
        assert_eq!((job.id, job.attempt), (id, attempt));
        let before = Utc::now();
        match queue::fail(&mut conn, job.token(), &format!("boom {attempt}"), &policy, false).await.unwrap() {
            FailOutcome::Retry { at } => retry_delays.push((at - before).num_milliseconds()),
            FailOutcome::Dead => assert_eq!(attempt, 3),
            FailOutcome::Stale => panic!("stale"),
        }
    }
    // base·2^(n-1) ± 20 %: ~200 ms, then ~400 ms.
    assert!((150..=260).contains(&retry_delays[0]), "{retry_delays:?}");
    assert!((310..=500).contains(&retry_delays[1]), "{retry_delays:?}");
    let dead = queue::dead_jobs(&mut conn, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom 3"));
    assert_eq!(dead[0].attempts, 3);
    assert!(queue::claim(&mut conn, "default", "t", 1, Duration::from_secs(1)).await.unwrap().is_empty());

    // An operator can put it back.
    assert!(queue::requeue_dead(&mut conn, id).await.unwrap());
    let again = queue::claim(&mut conn, "default", "t", 1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(again[0].attempt, 1);
}

#[tokio::test]
async fn duplicate_keys_are_dropped_even_after_completion() {
    let (_pg, pool) = migrated().await;
    let mut conn = pool.get().await.unwrap();
    let job = NewJob::new("webhook", json!({"delivery": "d-1"})).unique_key("github:d-1");
    let Enqueued::Created(id) = queue::enqueue(&mut conn, &job).await.unwrap() else { panic!() };
    assert_eq!(queue::enqueue(&mut conn, &job).await.unwrap(), Enqueued::Duplicate { existing: id });
    // Another queue has its own keys.
    assert!(matches!(queue::enqueue(&mut conn, &job.clone().queue("other")).await.unwrap(), Enqueued::Created(_)));

    let claimed = queue::claim(&mut conn, "default", "c", 10, Duration::from_secs(5)).await.unwrap();
    queue::complete(&mut conn, &[claimed[0].token()]).await.unwrap();
    assert_eq!(queue::enqueue(&mut conn, &job).await.unwrap(), Enqueued::Duplicate { existing: id });

    // Racing enqueues of one key: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = pool.get().await.unwrap();
            queue::enqueue(&mut c, &NewJob::new("k", json!({})).unique_key("race")).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        if let Enqueued::Created(_) = t.await.unwrap() {
            created += 1;
        }
    }
    assert_eq!(created, 1);

    // Retention forgets old keys.
    let removed = queue::prune_keys(&mut conn, Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!(removed, 3);
    assert!(matches!(queue::enqueue(&mut conn, &job).await.unwrap(), Enqueued::Created(_)));
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_job() {
    let (_pg, pool) = migrated().await;
    let mut conn = pool.get().await.unwrap();
    let batch: Vec<NewJob> = (0..2000).map(|i| NewJob::new("k", json!({ "i": i }))).collect();
    assert_eq!(queue::enqueue_batch(&mut conn, &batch).await.unwrap(), 2000);
    drop(conn);
    let mut tasks = Vec::new();
    for w in 0..6 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let mut c = pool.get().await.unwrap();
                let got = queue::claim(&mut c, "default", &format!("w{w}"), 37, Duration::from_secs(60)).await.unwrap();
                if got.is_empty() {
                    return seen;
                }
                queue::complete(&mut c, &got.iter().map(|j| j.token()).collect::<Vec<_>>()).await.unwrap();
                seen.extend(got.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 2000, "every job exactly once");
    assert_eq!(unique.len(), 2000);
}

#[tokio::test]
async fn consumer_runs_handlers_by_kind_and_buries_panicking_ones() {
    let (pg, pool) = migrated().await;
    let ran = Arc::new(AtomicUsize::new(0));
    let mut handlers = Handlers::new();
    let r = ran.clone();
    handlers.register("ok", handler_fn(move |_job| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }));
    handlers.register("panics", handler_fn(|_job| async move {
        if true {
            panic!("handler exploded");
        }
        Ok(())
    }));
    handlers.register("bad-input", handler_fn(|_job| async move { Err(JobError::permanent("payload is not a run id")) }));
    let mut cfg = ConsumerConfig::new("default", "test-consumer");
    cfg.retry = RetryPolicy { base: Duration::from_millis(50), max: Duration::from_millis(100) };
    let consumer = Consumer::new(pg.database(), pool.clone(), cfg, handlers);
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));

    let mut conn = pool.get().await.unwrap();
    for _ in 0..20 {
        queue::enqueue(&mut conn, &NewJob::new("ok", json!({}))).await.unwrap();
    }
    queue::enqueue(&mut conn, &NewJob::new("panics", json!({})).max_attempts(3)).await.unwrap();
    queue::enqueue(&mut conn, &NewJob::new("bad-input", json!({}))).await.unwrap();
    queue::enqueue(&mut conn, &NewJob::new("unknown-kind", json!({})).max_attempts(2)).await.unwrap();

    let dead = wait_for("three dead jobs", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let mut c = pool.get().await.unwrap();
            let d = queue::dead_jobs(&mut c, 10).await.unwrap();
            (d.len() == 3).then_some(d)
        }
    })
    .await;
    let by_kind: HashMap<&str, &queue::JobRow> = dead.iter().map(|j| (j.kind.as_str(), j)).collect();
    assert_eq!(by_kind["panics"].attempts, 3);
    assert!(by_kind["panics"].last_error.as_deref().unwrap().contains("handler exploded"));
    assert_eq!(by_kind["bad-input"].attempts, 1, "permanent failures are not retried");
    assert!(by_kind["unknown-kind"].last_error.as_deref().unwrap().contains("no handler"));
    wait_for("all ok jobs", Duration::from_secs(10), || {
        let ran = ran.clone();
        async move { (AtomicUsize::load(&ran, Ordering::SeqCst) == 20).then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn idle_consumer_wakes_on_notify_not_on_polling() {
    let (pg, pool) = migrated().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut handlers = Handlers::new();
    handlers.register("ping", handler_fn(move |_job| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Instant::now());
            Ok(())
        }
    }));
    let mut cfg = ConsumerConfig::new("default", "idle");
    cfg.idle_poll = Duration::from_secs(600);
    let consumer = Consumer::new(pg.database(), pool.clone(), cfg, handlers);
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    // Let it go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_claims = std::sync::atomic::AtomicU64::load(&stats.claim_queries, Ordering::Relaxed);

    let mut conn = pool.get().await.unwrap();
    for _ in 0..5 {
        let sent = Instant::now();
        queue::enqueue(&mut conn, &NewJob::new("ping", json!({}))).await.unwrap();
        let started = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("woken by NOTIFY").unwrap();
        assert!(started - sent < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Five wake-ups, a handful of claims: no busy polling while idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claims = std::sync::atomic::AtomicU64::load(&stats.claim_queries, Ordering::Relaxed) - idle_claims;
    assert!(claims <= 15, "{claims} claim queries for 5 jobs");
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[derive(diesel::QueryableByName, Debug)]
struct LogRow {
    #[diesel(sql_type = BigInt)]
    job_id: i64,
    #[diesel(sql_type = Text)]
    consumer: String,
    #[diesel(sql_type = Timestamptz)]
    started_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    finished_at: Option<DateTime<Utc>>,
}

#[derive(diesel::QueryableByName)]
struct Now {
    #[diesel(sql_type = Timestamptz)]
    now: DateTime<Utc>,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test]
async fn sigkilled_consumer_loses_no_job_and_no_job_runs_twice_at_once() {
    let (pg, pool) = migrated().await;
    let dir = TestDir::new("queue-kill");
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "CREATE TABLE processing_log (
             id BIGSERIAL PRIMARY KEY, job_id BIGINT NOT NULL, consumer TEXT NOT NULL,
             started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let cfg = pg.write_config(dir.path());
    let total = 1500;
    let batch: Vec<NewJob> = (0..total).map(|i| NewJob::new("work", json!({ "i": i }))).collect();
    queue::enqueue_batch(&mut conn, &batch).await.unwrap();

    let bin = cargo_bin("queue-consumer");
    let spawn = |name: &str| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("127.0.0.1")
            .arg(pg.port.to_string())
            .arg(&cfg.password_file)
            .arg(&cfg.ca_file)
            .arg(name)
            .arg("1500") // lease, ms
            .arg("5") // work per job, ms
            .arg("16"); // concurrency
        ChildProcess::spawn(cmd, name, dir.path())
    };
    let mut victim = spawn("victim");
    let _a = spawn("survivor-a");
    let _b = spawn("survivor-b");

    // Kill the victim while it holds jobs it has started but not finished.
    wait_for("the victim to be mid-batch", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let mut c = pool.get().await.unwrap();
            let Count { n } = diesel::sql_query(
                "SELECT count(*) AS n FROM processing_log WHERE consumer = 'victim' AND finished_at IS NULL",
            )
            .get_result(&mut c)
            .await
            .unwrap();
            (n >= 4).then_some(())
        }
    })
    .await;
    victim.kill();
    let Now { now: killed_at } = diesel::sql_query("SELECT clock_timestamp() AS now").get_result(&mut conn).await.unwrap();

    wait_for("every job to be acknowledged", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let mut c = pool.get().await.unwrap();
            let Count { n } = diesel::sql_query("SELECT count(*) AS n FROM jobs").get_result(&mut c).await.unwrap();
            (n == 0).then_some(())
        }
    })
    .await;

    let rows: Vec<LogRow> = diesel::sql_query("SELECT job_id, consumer, started_at, finished_at FROM processing_log")
        .load(&mut conn)
        .await
        .unwrap();
    type Attempts = Vec<(DateTime<Utc>, DateTime<Utc>, String)>;
    let mut by_job: HashMap<i64, Attempts> = HashMap::new();
    let mut interrupted = 0;
    for r in &rows {
        let end = match (r.finished_at, r.consumer.as_str()) {
            (Some(t), _) => t,
            (None, "victim") => {
                interrupted += 1;
                killed_at
            }
            (None, other) => panic!("{other} left job {} unfinished", r.job_id),
        };
        by_job.entry(r.job_id).or_default().push((r.started_at, end, r.consumer.clone()));
    }
    assert!(interrupted >= 1, "the kill must interrupt running jobs");
    // No job lost: every one finished somewhere.
    let finished: HashSet<i64> = rows.iter().filter(|r| r.finished_at.is_some()).map(|r| r.job_id).collect();
    assert_eq!(finished.len(), total, "every job finished at least once");
    // No job ran on two consumers at the same time.
    let mut redelivered = 0;
    for (job, mut runs) in by_job {
        runs.sort();
        if runs.len() > 1 {
            redelivered += 1;
        }
        for w in runs.windows(2) {
            assert!(w[0].1 <= w[1].0, "job {job} ran concurrently: {:?} and {:?}", w[0], w[1]);
        }
    }
    assert!(redelivered >= interrupted, "interrupted jobs were redelivered");
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_and_leaves_the_rest_queued() {
    let (pg, pool) = migrated().await;
    let dir = TestDir::new("queue-term");
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "CREATE TABLE processing_log (
             id BIGSERIAL PRIMARY KEY, job_id BIGINT NOT NULL, consumer TEXT NOT NULL,
             started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let cfg = pg.write_config(dir.path());
    let batch: Vec<NewJob> = (0..200).map(|i| NewJob::new("work", json!({ "i": i }))).collect();
    queue::enqueue_batch(&mut conn, &batch).await.unwrap();
    let mut cmd = std::process::Command::new(cargo_bin("queue-consumer"));
    cmd.arg("127.0.0.1")
        .arg(pg.port.to_string())
        .arg(&cfg.password_file)
        .arg(&cfg.ca_file)
        .arg("graceful")
        .arg("30000") // lease, ms: long, so only a real hand-back makes jobs due again
        .arg("300") // work per job, ms
        .arg("8");
    let mut consumer = ChildProcess::spawn(cmd, "graceful", dir.path());
    wait_for("jobs to be running", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let mut c = pool.get().await.unwrap();
            let Count { n } = diesel::sql_query("SELECT count(*) AS n FROM processing_log")
                .get_result(&mut c)
                .await
                .unwrap();
            (n >= 8).then_some(())
        }
    })
    .await;
    consumer.signal(nix::sys::signal::Signal::SIGTERM);
    let status = consumer.wait_timeout(Duration::from_secs(20)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", consumer.output_tail());
    let Count { n: unfinished } =
        diesel::sql_query("SELECT count(*) AS n FROM processing_log WHERE finished_at IS NULL")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(unfinished, 0, "every started job finished before exit");
    let Count { n: done } = diesel::sql_query("SELECT count(*) AS n FROM processing_log").get_result(&mut conn).await.unwrap();
    let counts = queue::counts(&mut conn).await.unwrap();
    assert_eq!(counts.ready + counts.running + counts.scheduled, 200 - done, "{counts:?}");
    assert_eq!(counts.running, 0, "nothing left claimed: {counts:?}");
}
