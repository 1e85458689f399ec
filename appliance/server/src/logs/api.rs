//! GraphQL `runLogs(run: ID!, phase: Phase)`: the text of a run's stored log,
//! in order, and whether it is complete (the run ended). Readers may read it.

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use futures::StreamExt;
use hangar_store::access::Op;
use hangar_types::worker::Phase;

use super::{LogError, Utf8Joiner, contiguous, fetch, progress};
use crate::api::{ApiError, app, caller, conn};

/// Longest text one query returns; the rest is in the download.
pub const MAX_TEXT_BYTES: usize = 16 * 1024 * 1024;
/// Chunks fetched from the object store at once.
const PREFETCH: usize = 8;

/// A phase of a run's log.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "Phase")]
pub enum LogPhase {
    Preparing,
    Initializing,
    Planning,
    Applying,
}

impl From<LogPhase> for Phase {
    fn from(p: LogPhase) -> Phase {
        match p {
            LogPhase::Preparing => Phase::Preparing,
            LogPhase::Initializing => Phase::Initializing,
            LogPhase::Planning => Phase::Planning,
            LogPhase::Applying => Phase::Applying,
        }
    }
}

/// A run's log as stored so far.
#[derive(SimpleObject, Debug)]
pub struct RunLog {
    /// The output, phase after phase, up to the first chunk not arrived yet.
    text: String,
    /// The run ended: no more output will come.
    complete: bool,
    /// Chunks the text is made of.
    chunks: i32,
    /// The text stopped at the size limit; the download has everything.
    truncated: bool,
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> ApiError {
        match e {
            LogError::UnknownRun { run } => ApiError::not_found("run", run.to_string()),
            other => ApiError::Unavailable(hangar_types::error_chain(&other)),
        }
    }
}

#[derive(Default)]
pub struct LogsQuery;

#[Object]
impl LogsQuery {
    /// A run's log, one phase or all of them in order.
    async fn run_logs(&self, ctx: &Context<'_>, run: ID, phase: Option<LogPhase>) -> async_graphql::Result<RunLog> {
        let caller = caller(ctx)?;
        let run = crate::api::id(&run, "run")?;
        let app = app(ctx);
        crate::api::runs::check_run(&mut *conn(ctx).await?, caller, run, Op::Read.role()).await?;
        let phases: Vec<Phase> = match phase {
            Some(p) => vec![p.into()],
            None => Phase::ALL.to_vec(),
        };
        let mut c = conn(ctx).await?;
        let state = progress(&mut c, run).await.map_err(ApiError::from)?;
        let mut ranges = Vec::new();
        for p in phases {
            let r = contiguous(&mut c, run, p, 0).await.map_err(ApiError::from)?;
            ranges.push((p, r.next));
        }
        drop(c);

        let mut log = RunLog { text: String::new(), complete: state.is_terminal(), chunks: 0, truncated: false };
        'phases: for (phase, count) in ranges {
            let mut joiner = Utf8Joiner::default();
            let mut chunks = futures::stream::iter(0..count)
                .map(|seq| fetch(&app.objects, run, phase, seq))
                .buffered(PREFETCH);
            while let Some(bytes) = chunks.next().await {
                let bytes = bytes.map_err(ApiError::from)?;
                if log.text.len() + bytes.len() > MAX_TEXT_BYTES {
                    log.truncated = true;
                    break 'phases;
                }
                log.text.push_str(&joiner.push(&bytes));
                log.chunks += 1;
            }
            log.text.push_str(&joiner.finish());
        }
        Ok(log)
    }
}
