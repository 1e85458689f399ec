//! The PostgreSQL job queue (DESIGN §6): at-least-once delivery, batched claims
//! with `FOR UPDATE SKIP LOCKED`, visibility leases, retries with exponential
//! back-off, dead jobs kept with their last error, deduplication by key, and
//! LISTEN/NOTIFY wake-ups.
//!
//! A claim moves a job's `run_at` to the end of its lease and increments
//! `attempts`. If the consumer dies, the job is simply due again once the lease
//! runs out; nothing has to notice the death. The `(id, attempts)` pair is the
//! claim's fencing token: acknowledging, failing or extending with a stale token
//! (after the lease passed to another consumer) changes nothing.

mod consumer;

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::Rng;

pub use consumer::{
    Consumer, ConsumerConfig, ConsumerStats, Handlers, JobError, JobHandler, handler_fn,
};

use crate::DbError;
use crate::schema::{job_keys, jobs};

/// The channel enqueues notify on; the payload is the queue name.
pub const NOTIFY_CHANNEL: &str = "hangar_jobs";
/// The queue the drain consumes unless told otherwise.
pub const DEFAULT_QUEUE: &str = "default";

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Deduplication key (e.g. a webhook delivery id): a second job with the same
    /// key in the same queue is dropped, even after the first one finished.
    pub unique_key: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
}

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        NewJob {
            queue: DEFAULT_QUEUE.into(),
            kind: kind.into(),
            payload,
            unique_key: None,
            run_at: None,
            max_attempts: 5,
        }
    }
    pub fn queue(mut self, q: impl Into<String>) -> Self {
        self.queue = q.into();
        self
    }
    pub fn unique_key(mut self, k: impl Into<String>) -> Self {
        self.unique_key = Some(k.into());
        self
    }
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Created(i64),
    /// A job with the same key was enqueued before; nothing was added.
    Duplicate { existing: i64 },
}

/// A claim on one job: its id and the attempt number the claim made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobToken {
    pub id: i64,
    pub attempt: i32,
}

/// A job handed to a consumer.
#[derive(Debug, Clone, QueryableByName)]
pub struct ClaimedJob {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub queue: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
    #[diesel(sql_type = Nullable<Text>)]
    pub unique_key: Option<String>,
    /// 1 on the first delivery.
    #[diesel(sql_type = Int4, column_name = attempts)]
    pub attempt: i32,
    #[diesel(sql_type = Int4)]
    pub max_attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

impl ClaimedJob {
    pub fn token(&self) -> JobToken {
        JobToken {
            id: self.id,
            attempt: self.attempt,
        }
    }
}

/// A row of the jobs table, for listings (dead jobs in the API).
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub unique_key: Option<String>,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub locked_by: Option<String>,
    pub locked_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Exponential back-off between attempts, with jitter so that jobs failing together
/// do not come back together.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt after `attempt` (1-based): base·2^(attempt-1),
    /// capped, then scaled by a random factor in [0.8, 1.2).
    pub fn delay_after(&self, attempt: i32) -> Duration {
        let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        raw.mul_f64(rand::rng().random_range(0.8..1.2))
    }
}

/// What `fail` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    Retry { at: DateTime<Utc> },
    Dead,
    /// The claim was no longer ours (lease expired and the job moved on).
    Stale,
}

/// Counts for health pages and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct QueueCounts {
    /// Due now and not held by anyone.
    #[diesel(sql_type = BigInt)]
    pub ready: i64,
    /// Held under a live lease.
    #[diesel(sql_type = BigInt)]
    pub running: i64,
    /// Waiting for a later time (back-off or scheduled).
    #[diesel(sql_type = BigInt)]
    pub scheduled: i64,
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Enqueues one job, inside the caller's transaction when there is one.
pub async fn enqueue(conn: &mut AsyncPgConnection, job: &NewJob) -> Result<Enqueued, DbError> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let Some(key) = &job.unique_key else {
        let id: i64 = diesel::insert_into(jobs::table)
            .values((
                jobs::queue.eq(&job.queue),
                jobs::kind.eq(&job.kind),
                jobs::payload.eq(&job.payload),
                jobs::max_attempts.eq(job.max_attempts),
                jobs::run_at.eq(job.run_at.unwrap_or_else(Utc::now)),
            ))
            .returning(jobs::id)
            .get_result(conn)
            .await?;
        return Ok(Enqueued::Created(id));
    };
    // The key row and the job are written by one statement; a concurrent enqueue
    // of the same key waits on the key's unique index and then inserts nothing.
    let created: Option<Id> = diesel::sql_query(
        "WITH k AS (
             INSERT INTO job_keys (queue, unique_key, job_id)
             VALUES ($1, $2, nextval(pg_get_serial_sequence('jobs', 'id')))
             ON CONFLICT DO NOTHING
             RETURNING job_id
         )
         INSERT INTO jobs (id, queue, kind, payload, unique_key, max_attempts, run_at)
         SELECT k.job_id, $1, $3, $4, $2, $5, COALESCE($6, now()) FROM k
         RETURNING id",
    )
    .bind::<Text, _>(&job.queue)
    .bind::<Text, _>(key)
    .bind::<Text, _>(&job.kind)
    .bind::<Jsonb, _>(&job.payload)
    .bind::<Int4, _>(job.max_attempts)
    .bind::<Nullable<Timestamptz>, _>(job.run_at)
    .get_result(conn)
    .await
    .optional()?;
    match created {
        Some(Id { id }) => Ok(Enqueued::Created(id)),
        None => {
            let existing: i64 = job_keys::table
                .filter(job_keys::queue.eq(&job.queue))
                .filter(job_keys::unique_key.eq(key))
                .select(job_keys::job_id)
                .get_result(conn)
                .await?;
            Ok(Enqueued::Duplicate { existing })
        }
    }
}

/// Enqueues many jobs without keys in one statement (keyed jobs go one by one).
/// Returns how many jobs were created.
pub async fn enqueue_batch(conn: &mut AsyncPgConnection, batch: &[NewJob]) -> Result<u64, DbError> {
    let (keyed, plain): (Vec<&NewJob>, Vec<&NewJob>) =
        batch.iter().partition(|j| j.unique_key.is_some());
    let mut created = 0u64;
    if !plain.is_empty() {
        let queues: Vec<&str> = plain.iter().map(|j| j.queue.as_str()).collect();
        let kinds: Vec<&str> = plain.iter().map(|j| j.kind.as_str()).collect();
        let payloads: Vec<&serde_json::Value> = plain.iter().map(|j| &j.payload).collect();
        let max: Vec<i32> = plain.iter().map(|j| j.max_attempts).collect();
        let now = Utc::now();
        let run_at: Vec<DateTime<Utc>> = plain.iter().map(|j| j.run_at.unwrap_or(now)).collect();
        created += diesel::sql_query(
            "INSERT INTO jobs (queue, kind, payload, max_attempts, run_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int4[], $5::timestamptz[])",
        )
        .bind::<Array<Text>, _>(queues)
        .bind::<Array<Text>, _>(kinds)
        .bind::<Array<Jsonb>, _>(payloads)
        .bind::<Array<Int4>, _>(max)
        .bind::<Array<Timestamptz>, _>(run_at)
        .execute(conn)
        .await? as u64;
    }
    for job in keyed {
        if let Enqueued::Created(_) = enqueue(conn, job).await? {
            created += 1;
        }
    }
    Ok(created)
}

/// Claims up to `limit` due jobs of `queue` for `consumer`, each under a lease of
/// `lease`. Rows locked by a concurrent claim are skipped, never waited for.
///
/// The claim commits without waiting for the WAL flush: if the server crashes and
/// loses it, the job is simply due again, which at-least-once allows. That keeps
/// a disk flush off the path from enqueue to handler start.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    queue: &str,
    consumer: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, DbError> {
    Ok(diesel::sql_query(
        "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
         due AS (
             SELECT id FROM jobs, relaxed
             WHERE queue = $1 AND state = 'pending' AND run_at <= now()
             ORDER BY run_at, id
             LIMIT $2
             FOR UPDATE OF jobs SKIP LOCKED
         )
         UPDATE jobs j
         SET attempts = j.attempts + 1,
             run_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000),
             locked_by = $4,
             locked_at = clock_timestamp()
         FROM due WHERE j.id = due.id
         RETURNING j.id, j.queue, j.kind, j.payload, j.unique_key, j.attempts,
                   j.max_attempts, j.last_error, j.created_at",
    )
    .bind::<Text, _>(queue)
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(millis(lease))
    .bind::<Text, _>(consumer)
    .load(conn)
    .await?)
}

/// Acknowledges finished jobs: they are deleted. Stale tokens are ignored.
/// Like `extend` and `release`, it locks the rows in id order first: a batch
/// statement otherwise locks them in whatever order its join yields, and an
/// acknowledgement and a lease renewal of the same jobs, on two connections,
/// could each hold a row the other waits for.
/// Returns how many jobs were acknowledged. Like a claim, an acknowledgement
/// commits asynchronously: losing it in a crash only means a redelivery.
pub async fn complete(conn: &mut AsyncPgConnection, tokens: &[JobToken]) -> Result<u64, DbError> {
    if tokens.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = tokens.iter().map(|t| t.id).collect();
    let attempts: Vec<i32> = tokens.iter().map(|t| t.attempt).collect();
    Ok(diesel::sql_query(
        "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)),
         held AS MATERIALIZED (SELECT j.id FROM jobs j JOIN unnest($1::int8[], $2::int4[]) AS d(id, attempt)
             ON j.id = d.id AND j.attempts = d.attempt WHERE j.state = 'pending' ORDER BY j.id FOR UPDATE OF j)
         DELETE FROM jobs j USING held, relaxed WHERE j.id = held.id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Int4>, _>(attempts)
    .execute(conn)
    .await? as u64)
}

/// Records a failed attempt: the job comes back after `retry`'s back-off, or is
/// kept as dead (with `error`) when it has used all its attempts or `permanent`.
pub async fn fail(
    conn: &mut AsyncPgConnection,
    token: JobToken,
    error: &str,
    retry: &RetryPolicy,
    permanent: bool,
) -> Result<FailOutcome, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = Timestamptz)]
        run_at: DateTime<Utc>,
    }
    let delay = retry.delay_after(token.attempt);
    let row: Option<Row> = diesel::sql_query(
        "UPDATE jobs
         SET state = CASE WHEN $3 OR attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
             run_at = clock_timestamp() + make_interval(secs => $4::float8 / 1000),
             last_error = $5,
             locked_by = NULL,
             locked_at = NULL
         WHERE id = $1 AND attempts = $2 AND state = 'pending'
         RETURNING state, run_at",
    )
    .bind::<BigInt, _>(token.id)
    .bind::<Int4, _>(token.attempt)
    .bind::<diesel::sql_types::Bool, _>(permanent)
    .bind::<BigInt, _>(millis(delay))
    .bind::<Text, _>(truncate(error, 8 * 1024))
    .get_result(conn)
    .await
    .optional()?;
    Ok(match row {
        None => FailOutcome::Stale,
        Some(r) if r.state == "dead" => FailOutcome::Dead,
        Some(r) => FailOutcome::Retry { at: r.run_at },
    })
}

/// Marks a claimed job dead without running it (it came back more often than its
/// attempts allow: its consumers kept dying).
pub async fn bury(conn: &mut AsyncPgConnection, token: JobToken, error: &str) -> Result<bool, DbError> {
    let n = diesel::update(
        jobs::table
            .filter(jobs::id.eq(token.id))
            .filter(jobs::attempts.eq(token.attempt))
            .filter(jobs::state.eq("pending")),
    )
    .set((
        jobs::state.eq("dead"),
        jobs::last_error.eq(truncate(error, 8 * 1024)),
        jobs::locked_by.eq(None::<String>),
        jobs::locked_at.eq(None::<DateTime<Utc>>),
    ))
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Extends the leases of jobs still being worked on; returns the ids still held.
pub async fn extend(
    conn: &mut AsyncPgConnection,
    tokens: &[JobToken],
    lease: Duration,
) -> Result<Vec<i64>, DbError> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    if tokens.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<i64> = tokens.iter().map(|t| t.id).collect();
    let attempts: Vec<i32> = tokens.iter().map(|t| t.attempt).collect();
    let held: Vec<Id> = diesel::sql_query(
        "WITH held AS MATERIALIZED (SELECT j.id FROM jobs j JOIN unnest($1::int8[], $2::int4[]) AS d(id, attempt)
             ON j.id = d.id AND j.attempts = d.attempt WHERE j.state = 'pending' ORDER BY j.id FOR UPDATE OF j)
         UPDATE jobs j SET run_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000)
         FROM held WHERE j.id = held.id
         RETURNING j.id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Int4>, _>(attempts)
    .bind::<BigInt, _>(millis(lease))
    .load(conn)
    .await?;
    Ok(held.into_iter().map(|i| i.id).collect())
}

/// Gives claimed jobs back at once (shutdown with work still in hand). The attempt
/// stays counted.
pub async fn release(conn: &mut AsyncPgConnection, tokens: &[JobToken]) -> Result<u64, DbError> {
    if tokens.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = tokens.iter().map(|t| t.id).collect();
    let attempts: Vec<i32> = tokens.iter().map(|t| t.attempt).collect();
    Ok(diesel::sql_query(
        "WITH held AS MATERIALIZED (SELECT j.id FROM jobs j JOIN unnest($1::int8[], $2::int4[]) AS d(id, attempt)
             ON j.id = d.id AND j.attempts = d.attempt WHERE j.state = 'pending' ORDER BY j.id FOR UPDATE OF j)
         UPDATE jobs j SET run_at = clock_timestamp(), locked_by = NULL, locked_at = NULL
         FROM held WHERE j.id = held.id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Int4>, _>(attempts)
    .execute(conn)
    .await? as u64)
}

/// When the next job of `queue` becomes due (a retry, a scheduled job, or a lease
/// that will run out), if any.
pub async fn next_due(conn: &mut AsyncPgConnection, queue: &str) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(jobs::table
        .filter(jobs::queue.eq(queue))
        .filter(jobs::state.eq("pending"))
        .select(diesel::dsl::min(jobs::run_at))
        .get_result(conn)
        .await?)
}

/// Dead jobs, newest first.
pub async fn dead_jobs(conn: &mut AsyncPgConnection, limit: i64) -> Result<Vec<JobRow>, DbError> {
    Ok(jobs::table
        .filter(jobs::state.eq("dead"))
        .order(jobs::id.desc())
        .limit(limit)
        .select(JobRow::as_select())
        .load(conn)
        .await?)
}

/// Puts a dead job back in the queue with a fresh set of attempts.
pub async fn requeue_dead(conn: &mut AsyncPgConnection, id: i64) -> Result<bool, DbError> {
    let n = diesel::update(jobs::table.filter(jobs::id.eq(id)).filter(jobs::state.eq("dead")))
        .set((
            jobs::state.eq("pending"),
            jobs::attempts.eq(0),
            jobs::run_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Forgets deduplication keys older than `older_than` (retention).
pub async fn prune_keys(conn: &mut AsyncPgConnection, older_than: DateTime<Utc>) -> Result<u64, DbError> {
    Ok(diesel::delete(job_keys::table.filter(job_keys::created_at.lt(older_than)))
        .execute(conn)
        .await? as u64)
}

/// Deletes dead jobs made before `older_than`; returns how many.
pub async fn prune_dead(conn: &mut AsyncPgConnection, older_than: DateTime<Utc>) -> Result<u64, DbError> {
    Ok(diesel::delete(jobs::table.filter(jobs::state.eq("dead")).filter(jobs::created_at.lt(older_than)))
        .execute(conn)
        .await? as u64)
}

/// How many jobs are in each condition.
pub async fn counts(conn: &mut AsyncPgConnection) -> Result<QueueCounts, DbError> {
    Ok(diesel::sql_query(
        "SELECT
           count(*) FILTER (WHERE state = 'pending' AND run_at <= now()) AS ready,
           count(*) FILTER (WHERE state = 'pending' AND run_at > now() AND locked_by IS NOT NULL) AS running,
           count(*) FILTER (WHERE state = 'pending' AND run_at > now() AND locked_by IS NULL) AS scheduled,
           count(*) FILTER (WHERE state = 'dead') AS dead
         FROM jobs",
    )
    .get_result(conn)
    .await?)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
