//! Run logs on the appliance: the chunks workers send, kept in the object store
//! and listed in `run_log_chunks`, announced on `hangar_logs` for live readers,
//! and read back in order (GraphQL `runLogs`, and `GET /api/v1/runs/{id}/logs`
//! as a download or as Server-Sent Events).
//!
//! A chunk is identified by (run, phase, seq). Workers number chunks per run and
//! phase from 0 without gaps and resend a failed chunk under the same number, so
//! a second arrival with the same bytes is accepted and changes nothing, while
//! different bytes under a number already taken are refused. Readers only ever
//! see the contiguous prefix of a phase: a chunk that has not arrived yet is
//! waited for, never skipped.

pub(crate) mod api;
pub(crate) mod hub;
pub(crate) mod sse;

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{run_log_chunks, runs};
use hangar_db::{DbError, DbPool};
use hangar_objects::{ObjectStore, ObjectsError};
use hangar_store::run_objects::log_chunk_key;
use hangar_types::RunState;
use hangar_types::http::ErrorCode;
use hangar_types::worker::{MAX_LOG_CHUNK_BYTES, MAX_LOG_SEQ, Phase};
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;

use crate::App;

/// The channel a stored chunk is announced on; the payload is a [`ChunkNotice`].
pub const LOGS_CHANNEL: &str = "hangar_logs";
/// How long after a run ended its late chunks are still taken: a worker's
/// outbox may deliver the last output after an operator canceled the run.
pub const TERMINAL_GRACE: Duration = Duration::from_secs(600);

/// Why a chunk was not taken or a log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("run {run} does not exist")]
    UnknownRun { run: i64 },
    #[error("unknown log phase {given:?} (expected preparing, initializing, planning or applying)")]
    BadPhase { given: String },
    #[error("chunk number {given:?} is not between 0 and {MAX_LOG_SEQ}")]
    BadSeq { given: String },
    #[error("log chunk {run}/{phase}/{seq} is {size} bytes, more than {MAX_LOG_CHUNK_BYTES}")]
    TooLarge { run: i64, phase: &'static str, seq: u64, size: usize },
    #[error("log chunk {run}/{phase}/{seq} was already stored with different content")]
    Conflict { run: i64, phase: &'static str, seq: u64 },
    #[error("run {run} ended ({state}) more than {} s ago: its log is closed", TERMINAL_GRACE.as_secs())]
    RunOver { run: i64, state: RunState },
    #[error("log database unavailable for run {run}")]
    Db {
        run: i64,
        #[source]
        source: DbError,
    },
    #[error("object store unavailable for log chunk {key}")]
    Objects {
        key: String,
        /// Boxed: the object store's errors are large, and this one travels
        /// inside every result of the log paths.
        #[source]
        source: Box<ObjectsError>,
    },
}

impl LogError {
    /// The code a client is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            LogError::UnknownRun { .. } => ErrorCode::NotFound,
            LogError::BadPhase { .. } | LogError::BadSeq { .. } => ErrorCode::BadRequest,
            LogError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            LogError::Conflict { .. } => ErrorCode::Conflict,
            LogError::RunOver { .. } => ErrorCode::Gone,
            // Both are worth a retry: the worker resends the same chunk.
            LogError::Db { .. } | LogError::Objects { .. } => ErrorCode::Unavailable,
        }
    }

    /// The HTTP status that goes with [`LogError::code`].
    pub fn status(&self) -> StatusCode {
        crate::http::status_of(self.code())
    }

    fn db(run: i64, e: impl Into<DbError>) -> LogError {
        LogError::Db { run, source: e.into() }
    }
}

/// Parses a phase exactly as it appears in paths (`planning`), nothing else.
pub fn parse_phase(s: &str) -> Result<Phase, LogError> {
    Phase::parse(s).ok_or_else(|| LogError::BadPhase { given: s.chars().take(40).collect() })
}

/// What [`LOGS_CHANNEL`] carries for every stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkNotice {
    pub run: i64,
    pub phase: Phase,
    pub seq: u64,
}

/// Stores a chunk a worker sent for `run_id` (the caller has checked the worker
/// holds the run). Idempotent for the same bytes.
pub(crate) async fn append_chunk(app: &App, run_id: i64, phase: Phase, seq: u64, body: Bytes) -> Result<(), LogError> {
    append(&app.db, &app.objects, run_id, phase, seq, body).await
}

/// [`append_chunk`] on a given database and object store: the object is written
/// before its row says `stored`, then the chunk is announced.
pub async fn append(
    db: &DbPool,
    objects: &ObjectStore,
    run_id: i64,
    phase: Phase,
    seq: u64,
    body: Bytes,
) -> Result<(), LogError> {
    if seq > MAX_LOG_SEQ {
        return Err(LogError::BadSeq { given: seq.to_string() });
    }
    if body.len() as u64 > MAX_LOG_CHUNK_BYTES {
        return Err(LogError::TooLarge { run: run_id, phase: phase.as_str(), seq, size: body.len() });
    }
    let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &body));
    let mut conn = db.get().await.map_err(|e| LogError::db(run_id, e))?;
    check_open(&mut conn, run_id).await?;

    // Claim the number: the first writer inserts, every later one finds its row.
    let inserted = diesel::insert_into(run_log_chunks::table)
        .values((
            run_log_chunks::run_id.eq(run_id),
            run_log_chunks::phase.eq(phase.as_str()),
            run_log_chunks::seq.eq(seq as i64),
            run_log_chunks::size.eq(body.len() as i32),
            run_log_chunks::sha256.eq(&sha),
        ))
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await
        .map_err(|e| LogError::db(run_id, e))?;
    if inserted == 0 {
        let (existing, stored): (String, bool) = run_log_chunks::table
            .find((run_id, phase.as_str(), seq as i64))
            .select((run_log_chunks::sha256, run_log_chunks::stored))
            .get_result(&mut conn)
            .await
            .map_err(|e| LogError::db(run_id, e))?;
        if existing != sha {
            return Err(LogError::Conflict { run: run_id, phase: phase.as_str(), seq });
        }
        if stored {
            return Ok(());
        }
        // Same bytes, not stored yet: an earlier attempt failed or is under way.
        // Writing the same object again is harmless either way.
    }

    let key = log_chunk_key(run_id, phase, seq);
    if let Err(source) = objects.put(&key, &body).await {
        if inserted == 1 {
            // Give the number back, so the retry is not bound to these bytes
            // by a row whose object never got written.
            let _ = diesel::delete(
                run_log_chunks::table
                    .find((run_id, phase.as_str(), seq as i64))
                    .filter(run_log_chunks::stored.eq(false)),
            )
            .execute(&mut conn)
            .await;
        }
        return Err(LogError::Objects { key, source: Box::new(source) });
    }

    let notice = ChunkNotice { run: run_id, phase, seq };
    conn.transaction::<_, diesel::result::Error, _>(async move |c| {
        diesel::update(run_log_chunks::table.find((run_id, phase.as_str(), seq as i64)))
            .set(run_log_chunks::stored.eq(true))
            .execute(c)
            .await?;
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<diesel::sql_types::Text, _>(LOGS_CHANNEL)
            .bind::<diesel::sql_types::Text, _>(serde_json::to_string(&notice).unwrap_or_default())
            .execute(c)
            .await?;
        Ok(())
    })
    .await
    .map_err(|e| LogError::db(run_id, e))?;
    tracing::debug!(run_id, phase = phase.as_str(), seq, size = body.len(), "log chunk stored");
    Ok(())
}

/// A run's state and when it last changed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunProgress {
    pub state: RunState,
    pub changed_at: DateTime<Utc>,
}

impl RunProgress {
    pub(crate) fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// Ended long enough ago that no more chunks will be taken.
    pub(crate) fn is_closed(&self) -> bool {
        self.is_terminal()
            && Utc::now() - self.changed_at > chrono::Duration::from_std(TERMINAL_GRACE).unwrap_or_default()
    }
}

pub(crate) async fn progress(conn: &mut AsyncPgConnection, run: i64) -> Result<RunProgress, LogError> {
    let row: Option<(String, DateTime<Utc>)> = runs::table
        .find(run)
        .select((runs::state, runs::updated_at))
        .get_result(conn)
        .await
        .optional()
        .map_err(|e| LogError::db(run, e))?;
    let (state, changed_at) = row.ok_or(LogError::UnknownRun { run })?;
    Ok(RunProgress { state: state.parse().unwrap_or(RunState::Failed), changed_at })
}

async fn check_open(conn: &mut AsyncPgConnection, run: i64) -> Result<(), LogError> {
    let p = progress(conn, run).await?;
    if p.is_closed() {
        return Err(LogError::RunOver { run, state: p.state });
    }
    Ok(())
}

/// The stored chunk numbers of `phase` from `from` on, in order, stopping at the
/// first gap (a chunk that has not arrived yet).
pub(crate) async fn contiguous(
    conn: &mut AsyncPgConnection,
    run: i64,
    phase: Phase,
    from: u64,
) -> Result<Contiguous, LogError> {
    let seqs: Vec<i64> = run_log_chunks::table
        .filter(run_log_chunks::run_id.eq(run))
        .filter(run_log_chunks::phase.eq(phase.as_str()))
        .filter(run_log_chunks::seq.ge(from as i64))
        .filter(run_log_chunks::stored.eq(true))
        .order(run_log_chunks::seq.asc())
        .select(run_log_chunks::seq)
        .load(conn)
        .await
        .map_err(|e| LogError::db(run, e))?;
    let mut next = from;
    for s in &seqs {
        if *s as u64 != next {
            break;
        }
        next += 1;
    }
    Ok(Contiguous { from, next, beyond_gap: seqs.len() as u64 > next - from })
}

/// A run of consecutive stored chunks: `from..next`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Contiguous {
    pub from: u64,
    pub next: u64,
    /// Chunks after the gap at `next` are stored already.
    pub beyond_gap: bool,
}

/// The bytes of one stored chunk.
pub(crate) async fn fetch(objects: &ObjectStore, run: i64, phase: Phase, seq: u64) -> Result<Vec<u8>, LogError> {
    let key = log_chunk_key(run, phase, seq);
    objects.get(&key).await.map_err(|source| LogError::Objects { key, source: Box::new(source) })
}

/// Deletes every chunk of `run`, objects first, then the rows, so a failure
/// part-way leaves rows that name what is left to delete.
pub async fn delete_run_logs(db: &DbPool, objects: &ObjectStore, run: i64) -> Result<usize, LogError> {
    let mut conn = db.get().await.map_err(|e| LogError::db(run, e))?;
    let chunks: Vec<(String, i64)> = run_log_chunks::table
        .filter(run_log_chunks::run_id.eq(run))
        .select((run_log_chunks::phase, run_log_chunks::seq))
        .load(&mut conn)
        .await
        .map_err(|e| LogError::db(run, e))?;
    for (phase, seq) in &chunks {
        let phase = parse_phase(phase)?;
        let key = log_chunk_key(run, phase, *seq as u64);
        objects.delete(&key).await.map_err(|source| LogError::Objects { key, source: Box::new(source) })?;
    }
    diesel::delete(run_log_chunks::table.filter(run_log_chunks::run_id.eq(run)))
        .execute(&mut conn)
        .await
        .map_err(|e| LogError::db(run, e))?;
    Ok(chunks.len())
}

/// Turns chunk bytes into text without breaking a character split between two
/// chunks: an incomplete sequence at the end is kept for the next chunk.
#[derive(Debug, Default)]
pub(crate) struct Utf8Joiner {
    pending: Vec<u8>,
}

impl Utf8Joiner {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep = incomplete_tail(&self.pending);
        let cut = self.pending.len() - keep;
        let text = String::from_utf8_lossy(&self.pending[..cut]).into_owned();
        self.pending.drain(..cut);
        text
    }

    /// What is left when no more chunks come.
    pub(crate) fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// How many bytes at the end start a UTF-8 sequence that is not complete yet.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: look further back for the lead
        }
        let len = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if len > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_strictly() {
        assert_eq!(parse_phase("planning").unwrap(), Phase::Planning);
        for bad in ["Planning", "planning ", "", "plan", "applying/../x", "PLANNING"] {
            assert!(matches!(parse_phase(bad), Err(LogError::BadPhase { .. })), "{bad:?}");
        }
    }

    #[test]
    fn statuses_follow_the_error() {
        assert_eq!(LogError::UnknownRun { run: 1 }.status(), StatusCode::NOT_FOUND);
        let big = LogError::TooLarge { run: 1, phase: "planning", seq: 0, size: MAX_LOG_CHUNK_BYTES as usize + 1 };
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(LogError::Conflict { run: 1, phase: "planning", seq: 0 }.status(), StatusCode::CONFLICT);
        assert_eq!(LogError::RunOver { run: 1, state: RunState::Finished }.status(), StatusCode::GONE);
    }

    #[test]
    fn characters_split_across_chunks_stay_whole() {
        let text = "plan: ✓ 2 to add — ünïcödé 🚀 done\n";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut j = Utf8Joiner::default();
            let mut out = j.push(&bytes[..split]);
            out += &j.push(&bytes[split..]);
            out += &j.finish();
            assert_eq!(out, text, "split at {split}");
        }
        // Invalid bytes become replacement characters instead of stalling the joiner.
        let mut j = Utf8Joiner::default();
        assert_eq!(j.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(j.push(b"\xe2\x9c"), "");
        assert_eq!(j.finish(), "\u{fffd}");
    }
}
