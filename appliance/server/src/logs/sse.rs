//! `GET /api/v1/runs/{id}/logs[?phase=planning][&follow=true]`: a run's log for
//! the console. Without `follow` it is the whole stored log as `text/plain`;
//! with it, Server-Sent Events — every stored chunk in order, then each new one
//! as it is announced, `event: state` when the run changes state, and
//! `event: end` once the run ended and everything was sent. The caller
//! authenticates as for GraphQL (a session or API key as `Authorization:
//! Bearer`), or with the console's session cookie: these reads change nothing,
//! and the cookie is `SameSite=Strict`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hangar_types::Role;
use hangar_types::http::ErrorCode;
use hangar_types::worker::Phase;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};
use warp::sse::Event;

use super::hub::HubEvent;
use super::{LogError, Utf8Joiner, contiguous, fetch, parse_phase, progress};
use crate::App;

/// A follower re-reads at least this often, whatever it was told, and sends a
/// comment so proxies keep the connection open.
const RECHECK: Duration = Duration::from_secs(15);
/// Chunks fetched from the object store at once for one reader.
const PREFETCH: usize = 8;

/// The query string; anything else in it is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    follow: Option<String>,
}

/// Why a log request is answered with an error.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("missing bearer token")]
    NoToken,
    #[error("invalid, expired or revoked token")]
    BadToken,
    #[error("this needs the reader role")]
    Forbidden,
    #[error("run id {0:?} is not a positive integer")]
    BadRun(String),
    #[error("follow must be true or false")]
    BadFollow,
    #[error("service unavailable: the database cannot be reached")]
    Unavailable,
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ReadError {
    fn code(&self) -> ErrorCode {
        match self {
            ReadError::NoToken | ReadError::BadToken => ErrorCode::Unauthenticated,
            ReadError::Forbidden => ErrorCode::Forbidden,
            ReadError::BadRun(_) | ReadError::BadFollow => ErrorCode::BadRequest,
            ReadError::Unavailable => ErrorCode::Unavailable,
            ReadError::Log(e) => e.code(),
        }
    }

    fn into_response(self) -> Response {
        let code = self.code();
        let message = match &self {
            // Which store or table failed is for the server log, not the client.
            ReadError::Log(e @ (LogError::Db { .. } | LogError::Objects { .. })) => {
                tracing::warn!(error = %hangar_types::error_chain(e), "cannot read a run log");
                "service unavailable: the log cannot be read".to_string()
            }
            other => other.to_string(),
        };
        let mut r = crate::http::error_response(code, &message);
        if code == ErrorCode::Unauthenticated {
            r.headers_mut().insert(warp::http::header::WWW_AUTHENTICATE, warp::http::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The route, answered for any method but GET with 405 by the caller's recover.
pub(crate) fn route(app: Arc<App>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "runs" / String / "logs")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("cookie"))
        .and(warp::query::<LogQuery>())
        .then(move |run: String, auth: Option<String>, cookie: Option<String>, query: LogQuery| {
            let app = app.clone();
            async move {
                let auth = auth.or_else(|| crate::http::console_session(cookie.as_deref()));
                match respond(app, run, auth, query).await {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                }
            }
        })
        .boxed()
}

async fn respond(app: Arc<App>, run: String, auth: Option<String>, query: LogQuery) -> Result<Response, ReadError> {
    let caller = crate::http::caller(&app, auth.as_deref()).await.map_err(|e| match e {
        crate::http::HttpError::Unavailable => ReadError::Unavailable,
        _ => ReadError::BadToken,
    })?;
    let caller = caller.ok_or(ReadError::NoToken)?;
    let run_id = run.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(|| ReadError::BadRun(run.chars().take(40).collect()))?;
    {
        // A run of a space the caller cannot see is answered as a missing one.
        let mut conn = app.db.get().await.map_err(|_| ReadError::Unavailable)?;
        let space = match hangar_db::runs::get(&mut conn, run_id).await {
            Ok(Some(r)) => hangar_store::stacks::stack_by_id(&mut conn, r.stack_id).await.ok().flatten().map(|s| s.space_id),
            Ok(None) => None,
            Err(_) => return Err(ReadError::Unavailable),
        };
        match space {
            Some(s) if caller.may(s, Role::Reader) => {}
            Some(s) if caller.sees(s) => return Err(ReadError::Forbidden),
            _ => return Err(ReadError::Log(LogError::UnknownRun { run: run_id })),
        }
    }
    let phases: Vec<Phase> = match query.phase.as_deref() {
        None => Phase::ALL.to_vec(),
        Some(p) => vec![parse_phase(p)?],
    };
    let follow = match query.follow.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(ReadError::BadFollow),
    };
    {
        let mut conn = app.db.get().await.map_err(|_| ReadError::Unavailable)?;
        progress(&mut conn, run_id).await?;
    }
    // Subscribed before the first read, so nothing announced after it is missed.
    let wake = app.logs.subscribe();
    if follow {
        let (tx, rx) = mpsc::channel(PREFETCH * 2);
        tokio::spawn(follow_log(app, run_id, phases, wake, tx));
        let events = ChannelStream(rx);
        let mut r = warp::sse::reply(events).into_response();
        r.headers_mut().insert("x-accel-buffering", warp::http::HeaderValue::from_static("no"));
        Ok(r)
    } else {
        drop(wake);
        let (tx, rx) = mpsc::channel(PREFETCH * 2);
        tokio::spawn(download(app, run_id, phases, tx));
        let mut r = warp::reply::stream(ChannelStream(rx)).into_response();
        r.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok(r)
    }
}

/// The whole stored log, phase after phase, as the bytes were sent. An error
/// part-way ends the body early, which the client sees as a broken transfer.
async fn download(app: Arc<App>, run: i64, phases: Vec<Phase>, tx: mpsc::Sender<Result<bytes::Bytes, std::io::Error>>) {
    for phase in phases {
        let (from, to) = match stored_range(&app, run, phase, 0).await {
            Ok(r) => r,
            Err(e) => return drop(tx.send(Err(std::io::Error::other(e))).await),
        };
        let mut chunks = chunk_stream(&app, run, phase, from, to);
        while let Some(c) = futures::StreamExt::next(&mut chunks).await {
            let item = c.map(bytes::Bytes::from).map_err(std::io::Error::other);
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    }
}

async fn stored_range(app: &App, run: i64, phase: Phase, from: u64) -> Result<(u64, u64), LogError> {
    let mut conn = app.db.get().await.map_err(|e| LogError::db(run, e))?;
    let c = contiguous(&mut conn, run, phase, from).await?;
    Ok((c.from, c.next))
}

/// Chunks `from..to` of a phase, in order, a few fetched ahead.
fn chunk_stream(
    app: &Arc<App>,
    run: i64,
    phase: Phase,
    from: u64,
    to: u64,
) -> impl Stream<Item = Result<Vec<u8>, LogError>> + Send + 'static {
    use futures::StreamExt;
    let app = app.clone();
    futures::stream::iter(from..to)
        .map(move |seq| {
            let app = app.clone();
            async move { fetch(&app.objects, run, phase, seq).await }
        })
        .buffered(PREFETCH)
}

/// Where a follower is in each phase.
struct Cursor {
    phase: Phase,
    next: u64,
    text: Utf8Joiner,
}

enum Step {
    /// Wait for news; `gaps`: chunks past a missing one are stored already.
    Continue { gaps: bool },
    Done,
}

async fn follow_log(
    app: Arc<App>,
    run: i64,
    phases: Vec<Phase>,
    mut wake: broadcast::Receiver<HubEvent>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut cursors: Vec<Cursor> =
        phases.into_iter().map(|phase| Cursor { phase, next: 0, text: Utf8Joiner::default() }).collect();
    let stop = app.logs.stopping().clone();
    let mut last_state = None;
    loop {
        let gaps = match catch_up(&app, run, &mut cursors, &tx, &mut last_state).await {
            Ok(Step::Done) => return,
            Ok(Step::Continue { gaps }) => gaps,
            Err(e) => {
                tracing::warn!(run_id = run, error = %hangar_types::error_chain(&e), "log follower cannot read; retrying");
                false
            }
        };
        // Wait for news of this run; a chunk that is the next one expected is
        // sent straight from the object store, anything else means re-reading.
        let deadline = tokio::time::sleep(RECHECK);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                _ = &mut deadline => {
                    if tx.send(Ok(Event::default().comment(""))).await.is_err() {
                        return;
                    }
                    break;
                }
                e = wake.recv() => e,
            };
            match event {
                Ok(HubEvent::Chunk(n)) if n.run == run => {
                    let Some(c) = cursors.iter_mut().find(|c| c.phase == n.phase) else { continue };
                    if n.seq < c.next {
                        continue; // already sent (a retry announced again)
                    }
                    if n.seq > c.next {
                        break; // a gap: the catch-up read decides what is contiguous
                    }
                    match fetch(&app.objects, run, n.phase, n.seq).await {
                        Ok(bytes) => {
                            if !send_chunk(&tx, c, n.seq, &bytes).await {
                                return;
                            }
                            if gaps {
                                break; // it filled a gap: what followed it is stored already
                            }
                        }
                        Err(_) => break,
                    }
                }
                Ok(e) if e.concerns(run) => break,
                Ok(_) => {}
                // Fell behind: what was missed is in the store.
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Sends every stored chunk past each cursor; `Done` once the run ended and
/// nothing is missing (or the run is long over and what is missing will never come).
async fn catch_up(
    app: &Arc<App>,
    run: i64,
    cursors: &mut [Cursor],
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    last_state: &mut Option<hangar_types::RunState>,
) -> Result<Step, LogError> {
    // The state is read before the chunks: a worker stores its output before it
    // reports the end, so an ended run read first has all of it stored by then.
    let state = {
        let mut conn = app.db.get().await.map_err(|e| LogError::db(run, e))?;
        progress(&mut conn, run).await?
    };
    if *last_state != Some(state.state) {
        *last_state = Some(state.state);
        let e = Event::default().event("state").data(serde_json::json!({ "run": run, "state": state.state.as_str() }).to_string());
        if !send(tx, e).await {
            return Ok(Step::Done);
        }
    }
    let mut gaps = false;
    for c in cursors.iter_mut() {
        let contiguous = {
            let mut conn = app.db.get().await.map_err(|e| LogError::db(run, e))?;
            contiguous(&mut conn, run, c.phase, c.next).await?
        };
        gaps |= contiguous.beyond_gap;
        let mut chunks = std::pin::pin!(chunk_stream(app, run, c.phase, contiguous.from, contiguous.next));
        let mut seq = contiguous.from;
        while let Some(bytes) = futures::StreamExt::next(&mut chunks).await {
            if !send_chunk(tx, c, seq, &bytes?).await {
                return Ok(Step::Done);
            }
            seq += 1;
        }
    }
    if state.is_terminal() && (!gaps || state.is_closed()) {
        for c in cursors.iter_mut() {
            let rest = c.text.finish();
            if !rest.is_empty() && !send(tx, chunk_event(c.phase, c.next.saturating_sub(1), rest)).await {
                return Ok(Step::Done);
            }
        }
        let end = Event::default()
            .event("end")
            .data(serde_json::json!({ "run": run, "state": state.state.as_str() }).to_string());
        let _ = send(tx, end).await;
        return Ok(Step::Done);
    }
    Ok(Step::Continue { gaps })
}

async fn send_chunk(tx: &mpsc::Sender<Result<Event, Infallible>>, c: &mut Cursor, seq: u64, bytes: &[u8]) -> bool {
    let text = c.text.push(bytes);
    c.next = seq + 1;
    send(tx, chunk_event(c.phase, seq, text)).await
}

fn chunk_event(phase: Phase, seq: u64, text: String) -> Event {
    Event::default()
        .event("chunk")
        .id(format!("{}:{seq}", phase.as_str()))
        .data(serde_json::json!({ "phase": phase.as_str(), "seq": seq, "text": text }).to_string())
}

async fn send(tx: &mpsc::Sender<Result<Event, Infallible>>, e: Event) -> bool {
    tx.send(Ok(e)).await.is_ok()
}

/// A response body fed by the task that reads the log: the body is `Sync`
/// (warp asks for it) while the reading future need not be.
struct ChannelStream<T>(mpsc::Receiver<T>);

impl<T> Stream for ChannelStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
