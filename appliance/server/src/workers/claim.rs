//! A worker's calls about runs: heartbeats that renew its lease, claiming a
//! READY run of its pool, state reports checked by the one transition table,
//! the sealed plan (in `plans`) and the sealed `errored.tfstate`.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hangar_db::runs::{RunRow, TransitionFailure};
use hangar_db::schema::runs;
use hangar_types::worker::{
    ClaimWait, ClaimWaitReply, MAX_CLAIM_WAIT_SECS, EnvVar, Heartbeat, HeartbeatReply, RouteError, RunAssignment, RunStatus, StackSpec, StateReport, ToolDownload,
    ToolSpec, WorkerRoute, WorkerStatus,
};
use hangar_types::{RunKind, RunState, Tool};
use warp::http::StatusCode;

use super::auth::{self, Worker};
use super::wait::Wake;
use super::{Reply2, WorkerApiError, json, parse_json};
use warp::reply::Response;
use crate::{App, PeerCertificates};
use hangar_store::StoreError;
use hangar_store::stacks::{self, Owner, StackRow};


/// Answers a call of a joined worker after authenticating it.
pub(crate) async fn dispatch(
    app: &App,
    route: WorkerRoute,
    auth: Option<&str>,
    peer: Option<&PeerCertificates>,
    body: bytes::Bytes,
) -> Reply2 {
    if route == WorkerRoute::ClaimWait {
        // Holds no connection while it waits: it takes its own, twice.
        return claim_wait(app, auth, peer, &body).await;
    }
    let since = std::time::Instant::now();
    // Workers retry a 503 after a pause; queueing here is cheaper for everyone
    // than a fleet's burst of claims failing and coming back.
    let mut conn = hangar_db::connection_within(&app.db, WORKER_DB_WAIT).await.map_err(WorkerApiError::db)?;
    let worker = auth::worker(&mut conn, peer, auth).await?;
    if route == WorkerRoute::Claim {
        // The desk takes its own connection for many claims at once.
        drop(conn);
        return claim(app, worker, since).await;
    }
    match route {
        // Answered before any worker is authenticated (see `super::call`).
        WorkerRoute::Join => Err(WorkerApiError::Route(RouteError::Unknown)),
        WorkerRoute::Heartbeat => heartbeat(app, &mut conn, worker, parse_json(&body)?).await,
        // Answered above.
        WorkerRoute::Claim | WorkerRoute::ClaimWait => Err(WorkerApiError::Route(RouteError::Unknown)),
        WorkerRoute::RunStatus { run } => {
            let run = held(&mut conn, worker, run).await?;
            Ok(json(StatusCode::OK, &status_of(&run)))
        }
        WorkerRoute::ReportState { run } => report(app, &mut conn, worker, run, parse_json(&body)?).await,
        WorkerRoute::StorePlan { run } => {
            let run = held(&mut conn, worker, run).await?;
            super::plans::store(app, &mut conn, &run, &body).await
        }
        WorkerRoute::FetchPlan { run } => {
            let run = held(&mut conn, worker, run).await?;
            super::plans::fetch(app, &mut conn, &run).await
        }
        WorkerRoute::StorePlanJson { run } => {
            let run = held(&mut conn, worker, run).await?;
            super::plans::store_json(app, &mut conn, &run, &body).await
        }
        WorkerRoute::ErroredState { run } => {
            let run = held(&mut conn, worker, run).await?;
            errored_state(app, &mut conn, &run, &body).await
        }
        WorkerRoute::LogChunk { run, phase, seq } => {
            let run = held(&mut conn, worker, run).await?;
            drop(conn);
            crate::logs::append_chunk(app, run.id, phase, seq, body).await.map_err(WorkerApiError::Log)?;
            Ok(warp::reply::Reply::into_response(StatusCode::NO_CONTENT))
        }
    }
}

/// How long a worker call waits for a database connection before it is
/// answered 503: well within the worker's own 30 s request timeout, so a
/// claim is never handed to a worker that stopped waiting for the answer.
pub(super) const WORKER_DB_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The run `id` when this worker holds it (in whatever state).
async fn held(conn: &mut AsyncPgConnection, worker: Worker, id: i64) -> Result<RunRow, WorkerApiError> {
    let run = hangar_db::runs::get(conn, id).await.map_err(WorkerApiError::db)?;
    match run {
        Some(r) if r.worker_id == Some(worker.id) => Ok(r),
        // Another worker's run and no run look the same.
        _ => Err(WorkerApiError::NotHolder { run: id }),
    }
}

fn status_of(run: &RunRow) -> RunStatus {
    RunStatus { run_id: run.id, state: run.state(), failure_reason: run.failure_reason.clone() }
}

pub(super) fn lease_until(app: &App) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + app.workers.lease
}

async fn heartbeat(app: &App, conn: &mut AsyncPgConnection, worker: Worker, hb: Heartbeat) -> Reply2 {
    // Drained is the operator's word; offline is what a stopping worker says.
    let status = if worker.drained {
        WorkerStatus::Drained
    } else {
        match hb.status {
            WorkerStatus::Busy => WorkerStatus::Busy,
            WorkerStatus::Offline => WorkerStatus::Offline,
            WorkerStatus::Idle | WorkerStatus::Drained => WorkerStatus::Idle,
        }
    };
    // The run's lease below is renewed durably.
    mark_seen(conn, worker.id, status).await?;
    let (mut lease, mut run_state) = (None, None);
    if let Some(run) = hb.run {
        let terminal: Vec<&str> = RunState::ALL.into_iter().filter(|s| s.is_terminal()).map(|s| s.as_str()).collect();
        let renewed: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> = diesel::update(
            runs::table
                .filter(runs::id.eq(run))
                .filter(runs::worker_id.eq(worker.id))
                .filter(runs::state.ne_all(&terminal)),
        )
        .set(runs::lease_expires_at.eq(lease_until(app)))
        .returning((runs::state, runs::lease_expires_at))
        .get_result(conn)
        .await
        .optional()
        .map_err(WorkerApiError::db)?;
        match renewed {
            Some((state, until)) => {
                run_state = state.parse().ok();
                lease = until.map(|u| u.to_rfc3339());
            }
            // Over (canceled, reaped): say so, so the worker lets go of it.
            None => {
                run_state = runs::table
                    .filter(runs::id.eq(run))
                    .filter(runs::worker_id.eq(worker.id))
                    .select(runs::state)
                    .first::<String>(conn)
                    .await
                    .optional()
                    .map_err(WorkerApiError::db)?
                    .and_then(|s| s.parse().ok());
            }
        }
    }
    Ok(json(StatusCode::OK, &HeartbeatReply { lease_expires_at: lease, run_state, drain: worker.drained }))
}

/// How often a claim or report is retried while the drain is scheduling the run's stack.
const BUSY_RETRIES: u32 = 100;
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Takes the key-share lock on the run's stack that the foreign-key check of
/// a second update of the run in this transaction needs, without waiting.
///
/// The drain locks a stack and then its runs; a transaction that holds a run
/// and then waits for its stack would deadlock with it. Not waiting breaks
/// the cycle: the caller rolls back and tries again in a moment. A
/// transaction that writes the run once needs no such lock (PostgreSQL
/// checks the key only when the row was already written in it).
async fn hold_stack(c: &mut AsyncPgConnection, stack_id: i64) -> Result<bool, diesel::result::Error> {
    let r = diesel::sql_query("SELECT id FROM stacks WHERE id = $1 FOR KEY SHARE NOWAIT")
        .bind::<diesel::sql_types::BigInt, _>(stack_id)
        .execute(c)
        .await;
    match r {
        Ok(_) => Ok(true),
        Err(diesel::result::Error::DatabaseError(_, info)) if info.message().contains("could not obtain lock") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Why a claim did not produce an assignment.
pub(super) enum ClaimFailure {
    Db(TransitionFailure),
    Store(StoreError),
    /// The run cannot be given to any worker (its tool is missing, a secret
    /// does not open): it is failed with this reason.
    Unrunnable { run: i64, reason: String },
    /// The drain holds the run's stack: try again.
    Busy,
}

impl From<diesel::result::Error> for ClaimFailure {
    fn from(e: diesel::result::Error) -> Self {
        ClaimFailure::Db(e.into())
    }
}

impl From<StoreError> for ClaimFailure {
    fn from(e: StoreError) -> Self {
        ClaimFailure::Store(e)
    }
}

impl From<TransitionFailure> for ClaimFailure {
    fn from(e: TransitionFailure) -> Self {
        ClaimFailure::Db(e)
    }
}

async fn claim(app: &App, worker: Worker, since: std::time::Instant) -> Reply2 {
    Ok(match app.claims.claim(worker, since).await? {
        Some(a) => json(StatusCode::OK, &a),
        None => warp::reply::Reply::into_response(StatusCode::NO_CONTENT),
    })
}

/// A long-poll claim (the HTTP transport): authenticated, recorded as the
/// worker's heartbeat, a claim at once, and when nothing is there the wait
/// for a wake-up, with no database connection held, then another claim.
async fn claim_wait(app: &App, auth: Option<&str>, peer: Option<&PeerCertificates>, body: &[u8]) -> Reply2 {
    let waiters = &app.workers.waiters;
    let since = std::time::Instant::now();
    let mut conn = hangar_db::connection_within(&app.db, WORKER_DB_WAIT).await.map_err(WorkerApiError::db)?;
    let worker = auth::worker(&mut conn, peer, auth).await?;
    let ask: ClaimWait = parse_json(body)?;
    if !(1..=MAX_CLAIM_WAIT_SECS).contains(&ask.max_wait_secs) {
        return Err(WorkerApiError::Malformed(format!(
            "max_wait_secs is {}: it must be between 1 and {MAX_CLAIM_WAIT_SECS}",
            ask.max_wait_secs
        )));
    }
    let deadline = tokio::time::Instant::now() + waiters.hold.min(std::time::Duration::from_secs(ask.max_wait_secs));
    seen(&mut conn, worker).await?;
    // Registered before the first claim: a run made READY after that claim
    // looked wakes this poll.
    let mut ticket = waiters.register(worker.id, worker.pool_id).map_err(|f| WorkerApiError::Busy { held: f.held })?;
    drop(conn);
    if let Some(a) = app.claims.claim(worker, since).await? {
        ticket.pass_on();
        return Ok(wait_reply(Some(a), false));
    }
    let woken = tokio::select! {
        w = &mut ticket.woken => w.ok(),
        _ = tokio::time::sleep_until(deadline) => None,
        // A stopping server answers its held polls at once rather than
        // holding its shutdown for them; the workers poll again elsewhere.
        _ = app.logs.stopping().cancelled() => Some(Wake::Superseded),
    };
    drop(ticket);
    if woken == Some(Wake::Superseded) {
        return Ok(wait_reply(None, worker.drained));
    }
    // Woken for a run and gone before claiming it (the client left, the
    // worker was revoked, the database failed): another waiter is woken.
    let mut pass_on = PassOn { waiters, pool: worker.pool_id, armed: woken == Some(Wake::Work) };
    // The worker may have been revoked or drained meanwhile: it is checked
    // again, and its poll's end is a heartbeat too.
    let since = std::time::Instant::now();
    let mut conn = hangar_db::connection_within(&app.db, WORKER_DB_WAIT).await.map_err(WorkerApiError::db)?;
    let worker = auth::worker(&mut conn, peer, auth).await?;
    seen(&mut conn, worker).await?;
    drop(conn);
    let run = app.claims.claim(worker, since).await?;
    // A drained worker takes nothing: the run it was woken for is another's.
    pass_on.armed = pass_on.armed && worker.drained;
    Ok(wait_reply(run, worker.drained))
}

/// Wakes another waiter of the pool when dropped armed.
struct PassOn<'a> {
    waiters: &'a std::sync::Arc<super::wait::Waiters>,
    pool: i64,
    armed: bool,
}

impl Drop for PassOn<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.waiters.work(self.pool, 1);
        }
    }
}

fn wait_reply(run: Option<RunAssignment>, drain: bool) -> Response {
    json(StatusCode::OK, &ClaimWaitReply { run, drain })
}

/// An idle worker's long poll is its heartbeat: it is seen now, idle (or
/// drained, the operator's word). Written as heartbeats are, without waiting
/// for the WAL flush.
async fn seen(conn: &mut AsyncPgConnection, worker: Worker) -> Result<(), WorkerApiError> {
    let status = if worker.drained { WorkerStatus::Drained } else { WorkerStatus::Idle };
    mark_seen(conn, worker.id, status).await
}

/// Records that worker `id` was seen now, in `status`. Without waiting for
/// the WAL flush: a crash losing the last few seconds of `last_seen_at` costs
/// nothing (the next heartbeat writes it again), and thousands of idle
/// workers otherwise queue on the disk.
async fn mark_seen(conn: &mut AsyncPgConnection, id: i64, status: WorkerStatus) -> Result<(), WorkerApiError> {
    diesel::sql_query(
        "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) \
         UPDATE workers SET last_seen_at = now(), status = $2 FROM relaxed WHERE workers.id = $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(id)
    .bind::<diesel::sql_types::Text, _>(status.as_str())
    .execute(conn)
    .await
    .map_err(WorkerApiError::db)?;
    Ok(())
}

/// Claims the oldest READY run of the worker's pool for it, exactly once, in
/// a transaction of its own (claims usually go through the desk,
/// [`super::desk`], which takes several together).
pub(super) async fn claim_run(app: &App, conn: &mut AsyncPgConnection, worker: Worker) -> Result<Option<RunAssignment>, WorkerApiError> {
    if worker.drained {
        return Ok(None);
    }
    let actor = format!("worker:{}", worker.id);
    let lease = lease_until(app);
    let mut attempts = 0;
    let result = loop {
        let r = claim_once(app, conn, worker, lease, &actor).await;
        attempts += 1;
        if !matches!(r, Err(ClaimFailure::Busy)) || attempts >= BUSY_RETRIES {
            break r;
        }
        tokio::time::sleep(BUSY_PAUSE).await;
    };
    match result {
        Ok(Some(a)) => {
            tracing::info!(run_id = a.run_id, worker = worker.id, stack = %a.stack.slug, "run claimed");
            Ok(Some(a))
        }
        // Still busy after the retries: the worker asks again at its next notification or poll.
        Ok(None) | Err(ClaimFailure::Busy) => {
            mark_idle(conn, worker.id).await?;
            Ok(None)
        }
        Err(ClaimFailure::Db(e)) => Err(WorkerApiError::db(e)),
        Err(ClaimFailure::Store(e)) => Err(WorkerApiError::db(e)),
        Err(ClaimFailure::Unrunnable { run, reason }) => {
            tracing::warn!(run_id = run, %reason, "run cannot be handed to a worker; failing it");
            // Left READY it would be claimed and refused forever.
            match hangar_db::runs::transition(conn, run, Some(&[RunState::Ready]), RunState::Failed, &reason, &actor).await {
                Ok(_) | Err(TransitionFailure::NotAllowed { .. }) => {}
                Err(e) => return Err(WorkerApiError::db(e)),
            }
            mark_idle(conn, worker.id).await?;
            Ok(None)
        }
    }
}

/// A worker that asked for work and got none is idle: the broker tells such
/// workers when work comes (`hangar_broker`'s dispatch). Written only when it
/// changes, and without waiting for the WAL flush, as heartbeats are.
async fn mark_idle(conn: &mut AsyncPgConnection, worker: i64) -> Result<(), WorkerApiError> {
    diesel::sql_query(
        "WITH relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) \
         UPDATE workers SET status = 'idle' FROM relaxed WHERE workers.id = $1 AND status NOT IN ('idle', 'drained')",
    )
    .bind::<diesel::sql_types::BigInt, _>(worker)
    .execute(conn)
    .await
    .map_err(WorkerApiError::db)?;
    Ok(())
}

async fn claim_once(
    app: &App,
    conn: &mut AsyncPgConnection,
    worker: Worker,
    lease: chrono::DateTime<chrono::Utc>,
    actor: &str,
) -> Result<Option<RunAssignment>, ClaimFailure> {
    conn.transaction::<_, ClaimFailure, _>(async |c| {
            let token = hangar_store::run_tokens::fresh();
            let claim = hangar_db::runs::Claim {
                pool: worker.pool_id,
                worker: worker.id,
                lease,
                token_id: &token.id,
                token_hash: &token.hash,
                actor,
            };
            let Some(run) = hangar_db::runs::claim_ready(c, &claim).await.map_err(|e| ClaimFailure::Db(TransitionFailure::Db(e)))? else {
                return Ok(None);
            };
            let assignment = assemble(app, c, &run, token.token.expose(), lease).await?;
            Ok(Some(assignment))
        })
        .await
}

/// Everything the worker needs for `run`.
async fn assemble(
    app: &App,
    c: &mut AsyncPgConnection,
    run: &RunRow,
    run_token: &str,
    lease: chrono::DateTime<chrono::Utc>,
) -> Result<RunAssignment, ClaimFailure> {
    Ok(Prepared::read(app, c, run).await?.assignment(app, run, run_token, lease))
}

/// What every run of one stack is handed: the stack, its tool and its
/// environment, read once for all the runs of a claim.
pub(super) struct Prepared {
    stack: StackRow,
    tool: Tool,
    sha256: String,
    env: Vec<EnvVar>,
}

impl Prepared {
    /// Reads what a run of `run`'s stack needs; `run` names the run failed
    /// when it cannot be handed to any worker.
    pub(super) async fn read(app: &App, c: &mut AsyncPgConnection, run: &RunRow) -> Result<Prepared, ClaimFailure> {
        let unrunnable = |reason: String| ClaimFailure::Unrunnable { run: run.id, reason };
        let stack: StackRow = stacks::stack_by_id(c, run.stack_id)
            .await?
            .ok_or_else(|| unrunnable(format!("stack {} no longer exists", run.stack_id)))?;
        let tool: Tool = stack.tool.parse().map_err(unrunnable)?;
        let (os, arch) = TARGET;
        let file = super::tools::locate(&app.workers, tool.as_str(), &stack.tool_version, os, arch)
            .await
            .ok_or_else(|| unrunnable(format!("{} {} for {os}_{arch} is not on the appliance", tool.as_str(), stack.tool_version)))?;
        let sha256 = app
            .workers
            .sha256_of(&file)
            .await
            .map_err(|e| unrunnable(format!("cannot read {} {}: {e}", tool.as_str(), stack.tool_version)))?;
        let env = environment(app, c, run.id, &stack).await?;
        Ok(Prepared { stack, tool, sha256, env })
    }

    /// `run`'s assignment, with its token and lease.
    pub(super) fn assignment(&self, app: &App, run: &RunRow, run_token: &str, lease: chrono::DateTime<chrono::Utc>) -> RunAssignment {
        let Prepared { stack, tool, sha256, env } = self;
        let (os, arch) = TARGET;
        let base = &app.workers.public_url;
        RunAssignment {
            run_id: run.id,
            kind: run.kind(),
            stack: StackSpec {
                id: stack.id,
                slug: stack.slug.clone(),
                repository: stack.repository.clone(),
                project_root: stack.project_root.clone(),
            },
            commit_sha: run.commit_sha.clone(),
            branch: run.branch.clone(),
            command: run.command.clone(),
            env: env.clone(),
            run_token: run_token.to_string(),
            state_url: format!("{base}/state/v1/{}", stack.slug),
            tool: ToolSpec {
                tool: *tool,
                version: stack.tool_version.clone(),
                url: format!(
                    "{base}{}",
                    ToolDownload { tool: tool.as_str(), version: &stack.tool_version, os, arch }.path()
                ),
                sha256: sha256.clone(),
            },
            provider_mirror_url: format!("{base}/v1/providers/"),
            lease_expires_at: lease.to_rfc3339(),
            autodeploy: stack.autodeploy,
        }
    }
}

/// The platform workers run tools on.
const TARGET: (&str, &str) = ("linux", "amd64");

/// The stack's variables over those of its contexts (the context listed
/// first among attachments winning among contexts), secrets opened, and
/// the outputs its dependencies pass over all of them.
async fn environment(app: &App, c: &mut AsyncPgConnection, run_id: i64, stack: &StackRow) -> Result<Vec<EnvVar>, ClaimFailure> {
    let mut owners: Vec<Owner> =
        stacks::attachments_of_stack(c, stack.id).await?.into_iter().rev().map(|(_, ctx)| Owner::Context(ctx.id)).collect();
    owners.push(Owner::Stack(stack.id));
    let mut env: BTreeMap<String, EnvVar> = BTreeMap::new();
    for owner in owners {
        for v in stacks::variables_of(c, owner).await? {
            let value = if v.secret {
                let sealed = stacks::sealed_value(c, owner, &v.name).await?.ok_or_else(|| ClaimFailure::Unrunnable {
                    run: run_id,
                    reason: format!("secret variable {} has no sealed value", v.name),
                })?;
                let plain = app.secrets.open(c, &sealed, &owner.seal_context(&v.name)).await.map_err(|e| {
                    tracing::error!(variable = %v.name, error = %e, "cannot open a secret variable");
                    ClaimFailure::Unrunnable { run: run_id, reason: format!("secret variable {} cannot be opened", v.name) }
                })?;
                String::from_utf8(plain).map_err(|_| ClaimFailure::Unrunnable {
                    run: run_id,
                    reason: format!("secret variable {} is not UTF-8", v.name),
                })?
            } else {
                v.value.clone().unwrap_or_default()
            };
            env.insert(v.name.clone(), EnvVar { name: v.name, value, secret: v.secret });
        }
    }
    // Outputs of the stack's dependencies, the most specific, last.
    let inputs = crate::dependencies::inputs(app, c, stack.id).await.map_err(|e| match e {
        crate::dependencies::InputsError::Missing(reason) => ClaimFailure::Unrunnable { run: run_id, reason },
        crate::dependencies::InputsError::Unavailable(why) => {
            tracing::warn!(run_id, %why, "cannot read the outputs of a stack's dependencies now");
            ClaimFailure::Busy
        }
    })?;
    for v in inputs {
        env.insert(v.name.clone(), v);
    }
    Ok(env.into_values().collect())
}

/// States a worker may report; the others are the operator's or the scheduler's.
fn reportable(to: RunState) -> bool {
    matches!(
        to,
        RunState::Preparing
            | RunState::Initializing
            | RunState::Planning
            | RunState::Unconfirmed
            | RunState::Applying
            | RunState::Finished
            | RunState::Failed
    )
}

/// Why a state report was not applied.
enum NotApplied {
    /// Refused by the rules: answered 409 with the run as it is.
    Refused(RunRow),
    Api(WorkerApiError),
    /// The drain holds the run's stack: try again.
    Busy,
}

impl From<diesel::result::Error> for NotApplied {
    fn from(e: diesel::result::Error) -> Self {
        NotApplied::Api(WorkerApiError::db(e))
    }
}

async fn report(app: &App, conn: &mut AsyncPgConnection, worker: Worker, run_id: i64, r: StateReport) -> Reply2 {
    let note: String = r.note.chars().filter(|c| !c.is_control() || *c == '\n').take(2000).collect();
    let actor = format!("worker:{}", worker.id);
    if let Some(denied) = plan_policies(app, conn, worker, run_id, &r).await? {
        return Ok(json(StatusCode::CONFLICT, &status_of(&denied)));
    }
    crate::drift::before_finish(app, conn, worker.id, run_id, r.to).await;
    let lease = lease_until(app);
    let mut attempts = 0;
    let result = loop {
        let r = report_once(conn, worker, run_id, &r, &note, &actor, lease).await;
        attempts += 1;
        if !matches!(r, Err(NotApplied::Busy)) || attempts >= BUSY_RETRIES {
            break r;
        }
        tokio::time::sleep(BUSY_PAUSE).await;
    };
    if let Ok(run) = &result
        && run.state().is_terminal()
        && run.kind() == RunKind::Tracked
    {
        // The run's end stands whatever its trigger policies make of it.
        if let Err(e) = crate::policies::fire_triggers(app, conn, run).await {
            tracing::error!(run_id = run.id, error = %e, "trigger policies could not be evaluated");
        }
    }
    match result {
        Ok(run) => Ok(json(StatusCode::OK, &status_of(&run))),
        Err(NotApplied::Refused(run)) => Ok(json(StatusCode::CONFLICT, &status_of(&run))),
        Err(NotApplied::Api(e)) => Err(e),
        // A transient condition: the worker retries 503s.
        Err(NotApplied::Busy) => Err(WorkerApiError::Unavailable),
    }
}

/// Before a run leaves PLANNING with a plan (to wait for confirmation, apply
/// or finish), the plan policies of its stack read the plan: a denial fails
/// the run instead, with the policies' reasons as its note, and the report is
/// answered 409 with the run as it now is. `None` lets the report through.
async fn plan_policies(
    app: &App,
    conn: &mut AsyncPgConnection,
    worker: Worker,
    run_id: i64,
    r: &StateReport,
) -> Result<Option<RunRow>, WorkerApiError> {
    if !matches!(r.to, RunState::Unconfirmed | RunState::Applying | RunState::Finished) {
        return Ok(None);
    }
    let run = held(conn, worker, run_id).await?;
    if run.state() != RunState::Planning || run.kind() == RunKind::Task {
        return Ok(None);
    }
    let verdict = crate::policies::check_plan(app, &run).await.map_err(|e| {
        tracing::error!(run_id, error = %e, "plan policies could not be evaluated");
        WorkerApiError::Unavailable
    })?;
    let Some(note) = verdict.note() else { return Ok(None) };
    tracing::warn!(run_id, reason = %note, "plan policies denied the run");
    let actor = "policy:plan";
    match hangar_db::runs::transition(conn, run_id, Some(&[RunState::Planning]), RunState::Failed, &note, actor).await {
        Ok(row) => Ok(Some(row)),
        // It moved meanwhile (stopped by an operator): answer with what it is.
        Err(TransitionFailure::NotAllowed { .. }) => Ok(Some(held(conn, worker, run_id).await?)),
        Err(e) => Err(WorkerApiError::db(e)),
    }
}

async fn report_once(
    conn: &mut AsyncPgConnection,
    worker: Worker,
    run_id: i64,
    r: &StateReport,
    note: &str,
    actor: &str,
    lease: chrono::DateTime<chrono::Utc>,
) -> Result<RunRow, NotApplied> {
    conn.transaction::<_, NotApplied, _>(async |c| {
            let run: RunRow = runs::table
                .filter(runs::id.eq(run_id))
                .for_update()
                .select(RunRow::as_select())
                .get_result(c)
                .await
                .optional()?
                .filter(|r| r.worker_id == Some(worker.id))
                .ok_or(NotApplied::Api(WorkerApiError::NotHolder { run: run_id }))?;
            let subject = r.commit_message.as_deref().and_then(hangar_types::worker::commit_subject);
            let writes_before = r.changes.is_some() || subject.is_some() || !r.to.is_terminal();
            if writes_before && !hold_stack(c, run.stack_id).await? {
                return Err(NotApplied::Busy);
            }
            let from = run.state();
            // Only tracked runs apply, and only after a human confirmed unless
            // the stack deploys automatically.
            let applies = matches!(r.to, RunState::Unconfirmed | RunState::Applying);
            let skips_confirmation = r.to == RunState::Applying && from == RunState::Planning;
            let refused = !reportable(r.to)
                || !from.can_become(r.to)
                || (applies && run.kind() != RunKind::Tracked)
                || (skips_confirmation && !stack_autodeploys(c, run.stack_id).await?);
            if refused {
                return Err(NotApplied::Refused(run));
            }
            if let Some(changes) = r.changes {
                let v = serde_json::to_value(changes)
                    .map_err(|e| NotApplied::Api(WorkerApiError::internal("encoding changes", e)))?;
                diesel::update(runs::table.find(run_id)).set(runs::changes.eq(v)).execute(c).await?;
            }
            // Bounded and stripped here too: the worker is not trusted to have done it.
            if let Some(subject) = subject {
                diesel::update(runs::table.find(run_id)).set(runs::commit_message.eq(subject)).execute(c).await?;
            }
            if !r.to.is_terminal() {
                diesel::update(runs::table.find(run_id)).set(runs::lease_expires_at.eq(lease)).execute(c).await?;
            }
            let cause = if note.is_empty() { format!("reported by worker {}", worker.id) } else { note.to_string() };
            // The row is locked and the move checked above.
            hangar_db::runs::apply_held(c, run, r.to, &cause, actor).await.map_err(|e| NotApplied::Api(WorkerApiError::db(e)))
        })
        .await
}

async fn stack_autodeploys(c: &mut AsyncPgConnection, stack: i64) -> QueryResult<bool> {
    use hangar_db::schema::stacks;
    stacks::table.find(stack).select(stacks::autodeploy).first(c).await
}

/// Where a run's sealed errored state lives, and the context it is sealed under.
pub(crate) fn errored_state_key(run: i64) -> (String, String) {
    (format!("runs/{run}/errored.tfstate.sealed"), format!("run:{run}:errored-state"))
}

async fn errored_state(app: &App, conn: &mut AsyncPgConnection, run: &RunRow, body: &[u8]) -> Reply2 {
    if body.is_empty() {
        return Err(WorkerApiError::Malformed("the errored state is empty".into()));
    }
    let (key, context) = errored_state_key(run.id);
    // State holds secrets: sealed like secret variables before it leaves this process.
    let sealed = app
        .secrets
        .seal(conn, body, &context)
        .await
        .map_err(|e| WorkerApiError::internal("sealing an errored state", e))?;
    app.objects.put(&key, &sealed.bytes).await.map_err(|e| WorkerApiError::internal("storing an errored state", e))?;
    diesel::update(runs::table.find(run.id))
        .set((runs::errored_state_key.eq(&key), runs::errored_state_data_key.eq(sealed.data_key_id)))
        .execute(conn)
        .await
        .map_err(WorkerApiError::db)?;
    tracing::warn!(run_id = run.id, bytes = body.len(), "the worker uploaded errored.tfstate: Terraform could not save state");
    Ok(warp::reply::Reply::into_response(StatusCode::NO_CONTENT))
}
