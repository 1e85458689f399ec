//! Runs in the database: creation, and every state change through one function
//! that checks the transition table, records the event with its time and cause,
//! and announces the change (NOTIFY on `hangar_runs`) in the same transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hangar_types::{RunKind, RunState, TransitionError};
use serde::Serialize;

use crate::DbError;
use crate::jobs::{Job, RunRef, StackRef};
use crate::queue::{self, NewJob};
use crate::schema::{run_events, runs, stacks};

/// The channel every run transition is announced on; the payload is a
/// [`RunChange`] as JSON. The server turns these into broker messages.
pub const RUNS_CHANNEL: &str = "hangar_runs";

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Serialize)]
#[diesel(table_name = runs)]
pub struct RunRow {
    pub id: i64,
    pub stack_id: i64,
    pub kind: String,
    pub state: String,
    pub commit_sha: String,
    pub branch: String,
    pub command: Option<String>,
    pub triggered_by: String,
    pub worker_id: Option<i64>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The commit's subject, once a worker checked it out.
    pub commit_message: Option<String>,
}

impl RunRow {
    pub fn state(&self) -> RunState {
        self.state.parse().unwrap_or(RunState::Failed)
    }
    pub fn kind(&self) -> RunKind {
        self.kind.parse().unwrap_or(RunKind::Tracked)
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = run_events)]
pub struct RunEventRow {
    pub id: i64,
    pub run_id: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    pub cause: String,
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// What is announced on [`RUNS_CHANNEL`] after every transition.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RunChange {
    pub run: i64,
    pub stack: i64,
    pub pool: Option<i64>,
    pub worker: Option<i64>,
    pub from: Option<RunState>,
    pub to: RunState,
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub stack_id: i64,
    pub kind: RunKind,
    pub commit_sha: String,
    pub branch: String,
    pub command: Option<String>,
    pub triggered_by: String,
}

/// Why a transition did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransitionFailure {
    #[error("run {0} does not exist")]
    NotFound(i64),
    #[error("run {run}: {source}")]
    NotAllowed {
        run: i64,
        #[source]
        source: TransitionError,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for TransitionFailure {
    fn from(e: diesel::result::Error) -> Self {
        TransitionFailure::Db(DbError::Query(e))
    }
}

/// Creates a QUEUED run, records its first event and asks the drain to schedule
/// its stack — all in one transaction.
pub async fn create(conn: &mut AsyncPgConnection, new: &NewRun, actor: &str) -> Result<RunRow, DbError> {
    let new = new.clone();
    let actor = actor.to_string();
    conn.transaction::<_, DbError, _>(async move |c| {
        let run: RunRow = diesel::insert_into(runs::table)
            .values((
                runs::stack_id.eq(new.stack_id),
                runs::kind.eq(new.kind.as_str()),
                runs::state.eq(RunState::Queued.as_str()),
                runs::commit_sha.eq(&new.commit_sha),
                runs::branch.eq(&new.branch),
                runs::command.eq(&new.command),
                runs::triggered_by.eq(&new.triggered_by),
            ))
            .returning(RunRow::as_returning())
            .get_result(c)
            .await?;
        record(c, &run, None, RunState::Queued, &format!("triggered by {}", new.triggered_by), &actor).await?;
        queue::enqueue(c, &schedule_job(new.stack_id)).await?;
        Ok(run)
    })
    .await
}

/// The job that (re)considers a stack's queued runs.
pub fn schedule_job(stack_id: i64) -> NewJob {
    Job::Schedule(StackRef { stack: stack_id }).to_new()
}

/// Moves run `id` to `to` if the transition table allows it from its current
/// state (and, when `only_from` is given, only from one of those states). The
/// row is locked for the check, so concurrent transitions serialize.
pub async fn transition(
    conn: &mut AsyncPgConnection,
    id: i64,
    only_from: Option<&[RunState]>,
    to: RunState,
    cause: &str,
    actor: &str,
) -> Result<RunRow, TransitionFailure> {
    let only_from = only_from.map(|s| s.to_vec());
    let (cause, actor) = (cause.to_string(), actor.to_string());
    conn.transaction::<_, TransitionFailure, _>(async move |c| {
        let run: RunRow = runs::table
            .filter(runs::id.eq(id))
            .for_update()
            .select(RunRow::as_select())
            .get_result(c)
            .await
            .optional()?
            .ok_or(TransitionFailure::NotFound(id))?;
        let from = run.state();
        let allowed = from.can_become(to) && only_from.as_ref().is_none_or(|s| s.contains(&from));
        if !allowed {
            return Err(TransitionFailure::NotAllowed { run: id, source: TransitionError { from, to } });
        }
        apply(c, run, to, &cause, &actor).await.map_err(Into::into)
    })
    .await
}

/// A transition the caller already checked, of a run whose row it locked in
/// the transaction it passes (`SELECT ... FOR UPDATE`): what [`transition`]
/// does after its own lock and check, without a nested transaction.
pub async fn apply_held(c: &mut AsyncPgConnection, run: RunRow, to: RunState, cause: &str, actor: &str) -> Result<RunRow, DbError> {
    apply(c, run, to, cause, actor).await
}

/// Who takes a READY run, with what (see [`claim_ready`]).
pub struct Claim<'a> {
    pub pool: i64,
    pub worker: i64,
    pub lease: DateTime<Utc>,
    /// The run token's public id and stored hash.
    pub token_id: &'a str,
    pub token_hash: &'a str,
    pub actor: &'a str,
}

/// Without the token's hash: a claim printed in a log or a panic gives none away.
impl std::fmt::Debug for Claim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("pool", &self.pool)
            .field("worker", &self.worker)
            .field("lease", &self.lease)
            .field("token_id", &self.token_id)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// Hands the oldest READY run of `claim.pool` that no concurrent claimer is
/// taking to `claim.worker`, inside the caller's transaction: READY →
/// PREPARING, the worker, its lease and the run token written in one UPDATE,
/// the event recorded and announced, the worker marked busy. `None` when no
/// run is waiting.
///
/// Concurrent claimers skip each other's locked rows (`SKIP LOCKED`) instead
/// of queueing behind them, so each run goes to exactly one. The run row is
/// written once: a second write in the same transaction makes PostgreSQL
/// check its foreign key, taking a key-share lock on the stack row, which
/// waits behind a drain that locked the stack and waits for this run: a
/// deadlock. Written once, a claim never touches the stack's lock.
pub async fn claim_ready(c: &mut AsyncPgConnection, claim: &Claim<'_>) -> Result<Option<RunRow>, DbError> {
    #[derive(QueryableByName)]
    struct Ready {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    // The worker is busy from here until it asks again and gets nothing: no
    // announcement of work goes to it meanwhile.
    let found: Option<Ready> = diesel::sql_query(
        "WITH pick AS (SELECT r.id FROM runs r JOIN stacks s ON s.id = r.stack_id \
             WHERE r.state = 'READY' AND s.worker_pool_id = $1 \
             ORDER BY r.id LIMIT 1 FOR UPDATE OF r SKIP LOCKED), \
         busy AS (UPDATE workers SET status = 'busy' WHERE id = $2 AND EXISTS (SELECT 1 FROM pick)) \
         SELECT id FROM pick",
    )
    .bind::<diesel::sql_types::BigInt, _>(claim.pool)
    .bind::<diesel::sql_types::BigInt, _>(claim.worker)
    .get_result(c)
    .await
    .optional()?;
    let Some(Ready { id }) = found else { return Ok(None) };
    let run: RunRow = diesel::update(runs::table.filter(runs::id.eq(id)))
        .set((
            runs::state.eq(RunState::Preparing.as_str()),
            runs::updated_at.eq(diesel::dsl::now),
            runs::worker_id.eq(claim.worker),
            runs::lease_expires_at.eq(claim.lease),
            runs::run_token_id.eq(claim.token_id),
            runs::run_token_hash.eq(claim.token_hash),
        ))
        .returning(RunRow::as_returning())
        .get_result(c)
        .await?;
    let cause = format!("claimed by worker {}", claim.worker);
    record(c, &run, Some(RunState::Ready), RunState::Preparing, &cause, claim.actor).await?;
    Ok(Some(run))
}

/// One worker's part of a claim for several (see [`claim_ready_many`]).
pub struct Claimant<'a> {
    pub worker: i64,
    /// The run token's public id and stored hash.
    pub token_id: &'a str,
    pub token_hash: &'a str,
}

/// Without the token's hash, as [`Claim`]'s.
impl std::fmt::Debug for Claimant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimant").field("worker", &self.worker).field("token_id", &self.token_id).finish_non_exhaustive()
    }
}

/// [`claim_ready`] for several workers of pool `pool` at once, inside the
/// caller's transaction: the oldest READY runs no concurrent claimer is
/// taking go to the claimants in their order, one each, and the claimants
/// left over get none. Two statements whatever their number: one picks the
/// runs, marks their workers busy and writes each run once (READY →
/// PREPARING, its worker, `lease` and its token), the other records and
/// announces the events. Returns each claimed run with its claimant's index.
pub async fn claim_ready_many(
    c: &mut AsyncPgConnection,
    pool: i64,
    lease: DateTime<Utc>,
    claimants: &[Claimant<'_>],
) -> Result<Vec<(usize, RunRow)>, DbError> {
    use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
    #[derive(QueryableByName)]
    struct Claimed {
        #[diesel(embed)]
        run: RunRow,
        #[diesel(sql_type = BigInt)]
        claimant: i64,
    }
    if claimants.is_empty() {
        return Ok(vec![]);
    }
    let claimed: Vec<Claimed> = diesel::sql_query(
        "WITH pick AS (SELECT r.id FROM runs r JOIN stacks s ON s.id = r.stack_id \
             WHERE r.state = 'READY' AND s.worker_pool_id = $1 \
             ORDER BY r.id LIMIT $2 FOR UPDATE OF r SKIP LOCKED), \
         numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM pick), \
         claimants AS (SELECT * FROM unnest($3::bigint[], $4::text[], $5::text[]) WITH ORDINALITY AS c(worker, token_id, token_hash, n)), \
         matched AS (SELECT numbered.id AS run, claimants.* FROM numbered JOIN claimants USING (n)), \
         busy AS (UPDATE workers SET status = 'busy' WHERE id IN (SELECT worker FROM matched)) \
         UPDATE runs SET state = 'PREPARING', updated_at = now(), worker_id = matched.worker, lease_expires_at = $6, \
             run_token_id = matched.token_id, run_token_hash = matched.token_hash \
         FROM matched WHERE runs.id = matched.run \
         RETURNING runs.*, matched.n - 1 AS claimant",
    )
    .bind::<BigInt, _>(pool)
    .bind::<BigInt, _>(claimants.len() as i64)
    .bind::<Array<BigInt>, _>(claimants.iter().map(|c| c.worker).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(claimants.iter().map(|c| c.token_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(claimants.iter().map(|c| c.token_hash).collect::<Vec<_>>())
    .bind::<Timestamptz, _>(lease)
    .load(c)
    .await?;
    let mut claimed: Vec<(usize, RunRow)> = claimed.into_iter().map(|c| (c.claimant as usize, c.run)).collect();
    claimed.sort_by_key(|(i, _)| *i);
    record_many(c, &claimed.iter().map(|(_, r)| r).collect::<Vec<_>>(), RunState::Ready, RunState::Preparing, |r| {
        let worker = r.worker_id.unwrap_or_default();
        (format!("claimed by worker {worker}"), format!("worker:{worker}"))
    })
    .await?;
    Ok(claimed)
}

/// Writes an already-checked transition of a locked row. Callers hold the row lock.
pub(crate) async fn apply(
    c: &mut AsyncPgConnection,
    run: RunRow,
    to: RunState,
    cause: &str,
    actor: &str,
) -> Result<RunRow, DbError> {
    let from = run.state();
    // A run that ended holds no lease any more; a failed one says why.
    let lease: Option<Option<DateTime<Utc>>> = to.is_terminal().then_some(None);
    let reason = (to == RunState::Failed).then_some(cause);
    let update = diesel::update(runs::table.filter(runs::id.eq(run.id))).set((
        runs::state.eq(to.as_str()),
        runs::updated_at.eq(diesel::dsl::now),
        lease.map(|l| runs::lease_expires_at.eq(l)),
        reason.map(|r| runs::failure_reason.eq(r)),
    ));
    let updated: RunRow = update.returning(RunRow::as_returning()).get_result(c).await?;
    record(c, &updated, Some(from), to, cause, actor).await?;
    if to.is_terminal() && run.kind().holds_stack() {
        // The stack is free again: let its next queued run go.
        queue::enqueue(c, &schedule_job(run.stack_id)).await?;
    }
    // A tracked run's end is its dependents' cue: a finished one starts their
    // runs, any other end stops the chain (and the audit trail says where).
    if to.is_terminal() && run.kind() == RunKind::Tracked && has_dependents(c, run.stack_id).await? {
        queue::enqueue(c, &Job::Dependents(RunRef { run: run.id }).to_new()).await?;
    }
    Ok(updated)
}

async fn has_dependents(c: &mut AsyncPgConnection, stack: i64) -> QueryResult<bool> {
    use crate::schema::stack_dependencies as deps;
    diesel::select(diesel::dsl::exists(deps::table.filter(deps::depends_on_id.eq(stack)))).get_result(c).await
}

/// Records a run's transition as an event and announces it on
/// [`RUNS_CHANNEL`] with its stack's pool, in one statement: every transition
/// pays one round trip for both.
async fn record(
    c: &mut AsyncPgConnection,
    run: &RunRow,
    from: Option<RunState>,
    to: RunState,
    cause: &str,
    actor: &str,
) -> Result<(), DbError> {
    use diesel::sql_types::{BigInt, Nullable, Text};
    // The pool is read here rather than passed: a stack's pool can change,
    // and the announcement follows the stack as it is now.
    let change = RunChange { run: run.id, stack: run.stack_id, pool: None, worker: run.worker_id, from, to };
    diesel::sql_query(
        "WITH event AS (INSERT INTO run_events (run_id, from_state, to_state, cause, actor) VALUES ($1, $2, $3, $4, $5)) \
         SELECT pg_notify($6, jsonb_set($7::jsonb, '{pool}', \
             COALESCE((SELECT to_jsonb(worker_pool_id) FROM stacks WHERE id = $8), 'null'::jsonb))::text)",
    )
    .bind::<BigInt, _>(run.id)
    .bind::<Nullable<Text>, _>(from.map(|s| s.as_str()))
    .bind::<Text, _>(to.as_str())
    .bind::<Text, _>(cause)
    .bind::<Text, _>(actor)
    .bind::<Text, _>(RUNS_CHANNEL)
    .bind::<Text, _>(serde_json::to_string(&change).unwrap_or_default())
    .bind::<BigInt, _>(run.stack_id)
    .execute(c)
    .await?;
    Ok(())
}

/// [`record`] for several runs taking the same transition, each with its
/// cause and actor, in one statement.
async fn record_many(
    c: &mut AsyncPgConnection,
    runs: &[&RunRow],
    from: RunState,
    to: RunState,
    cause_and_actor: impl Fn(&RunRow) -> (String, String),
) -> Result<(), DbError> {
    use diesel::sql_types::{Array, BigInt, Text};
    if runs.is_empty() {
        return Ok(());
    }
    let (mut ids, mut stacks, mut causes, mut actors, mut changes) = (vec![], vec![], vec![], vec![], vec![]);
    for run in runs {
        let (cause, actor) = cause_and_actor(run);
        let change = RunChange { run: run.id, stack: run.stack_id, pool: None, worker: run.worker_id, from: Some(from), to };
        ids.push(run.id);
        stacks.push(run.stack_id);
        causes.push(cause);
        actors.push(actor);
        changes.push(serde_json::to_string(&change).unwrap_or_default());
    }
    diesel::sql_query(
        "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY \
             AS v(run, stack, cause, actor, change, n)), \
         event AS (INSERT INTO run_events (run_id, from_state, to_state, cause, actor) \
             SELECT run, $6, $7, cause, actor FROM v ORDER BY n) \
         SELECT pg_notify($8, jsonb_set(v.change::jsonb, '{pool}', \
             COALESCE((SELECT to_jsonb(worker_pool_id) FROM stacks WHERE id = v.stack), 'null'::jsonb))::text) FROM v ORDER BY n",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<BigInt>, _>(stacks)
    .bind::<Array<Text>, _>(causes)
    .bind::<Array<Text>, _>(actors)
    .bind::<Array<Text>, _>(changes)
    .bind::<Text, _>(from.as_str())
    .bind::<Text, _>(to.as_str())
    .bind::<Text, _>(RUNS_CHANNEL)
    .execute(c)
    .await?;
    Ok(())
}

/// Promotes what may run on stack `stack_id`: every queued run that only plans
/// (proposed, drift), and the oldest queued run that holds the stack when no
/// other such run is past QUEUED. Locks the stack row, so concurrent drains
/// take turns. Returns the runs made READY.
pub async fn schedule_stack(conn: &mut AsyncPgConnection, stack_id: i64, actor: &str) -> Result<Vec<RunRow>, DbError> {
    let actor = actor.to_string();
    conn.transaction::<_, DbError, _>(async move |c| {
        let exists: Option<i64> = stacks::table
            .filter(stacks::id.eq(stack_id))
            .for_update()
            .select(stacks::id)
            .get_result(c)
            .await
            .optional()?;
        if exists.is_none() {
            return Ok(vec![]);
        }
        let active: Vec<RunRow> = runs::table
            .filter(runs::stack_id.eq(stack_id))
            .filter(runs::state.ne_all(terminal_names()))
            .order(runs::id.asc())
            .for_update()
            .select(RunRow::as_select())
            .load(c)
            .await?;
        let holder_running = active
            .iter()
            .any(|r| r.kind().holds_stack() && r.state() != RunState::Queued);
        let mut promoted = Vec::new();
        let mut holder_taken = holder_running;
        for run in active.into_iter().filter(|r| r.state() == RunState::Queued) {
            let holds = run.kind().holds_stack();
            if holds && holder_taken {
                continue;
            }
            holder_taken |= holds;
            promoted.push(apply(c, run, RunState::Ready, "scheduled: the stack is free", &actor).await?);
        }
        Ok(promoted)
    })
    .await
}

fn terminal_names() -> Vec<&'static str> {
    RunState::ALL.into_iter().filter(|s| s.is_terminal()).map(|s| s.as_str()).collect()
}

/// The oldest tracked run of a stack that has not ended, if any.
pub async fn active_tracked(conn: &mut AsyncPgConnection, stack_id: i64) -> Result<Option<RunRow>, DbError> {
    Ok(runs::table
        .filter(runs::stack_id.eq(stack_id))
        .filter(runs::kind.eq(RunKind::Tracked.as_str()))
        .filter(runs::state.ne_all(terminal_names()))
        .order(runs::id.asc())
        .select(RunRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// A run by id.
pub async fn get(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<RunRow>, DbError> {
    Ok(runs::table.filter(runs::id.eq(id)).select(RunRow::as_select()).get_result(conn).await.optional()?)
}

/// A run, its row locked until the caller's transaction ends: what is decided
/// about it meanwhile (a confirmation, a review) happens one at a time.
pub async fn get_locked(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<RunRow>, DbError> {
    Ok(runs::table.filter(runs::id.eq(id)).for_update().select(RunRow::as_select()).get_result(conn).await.optional()?)
}

/// A run's state history, oldest first.
pub async fn events(conn: &mut AsyncPgConnection, run_id: i64) -> Result<Vec<RunEventRow>, DbError> {
    Ok(run_events::table
        .filter(run_events::run_id.eq(run_id))
        .order(run_events::id.asc())
        .select(RunEventRow::as_select())
        .load(conn)
        .await?)
}
