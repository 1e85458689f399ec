//! The supervisor's side of the control socket (see `protocol` for the format).

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::SupervisorError;
use crate::config::Plan;
use crate::logs;
use crate::protocol::{MAX_REQUEST, Request, RequestLine, Response, ServiceStatus, State, VERSION};
use crate::service::Cmd;
use crate::supervisor::{Shared, SlotView, wait_limit};

/// Connections served at once; more are answered with an error and closed.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `tail -f` looks for more output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Takes the control socket, refusing to start when another supervisor answers on it.
pub async fn bind(plan: &Plan) -> Result<UnixListener, SupervisorError> {
    let path = &plan.socket;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(SupervisorError::AlreadyRunning { path: path.clone() });
        }
        // Left by a supervisor that did not stop cleanly.
        std::fs::remove_file(path).map_err(|source| SupervisorError::Listen {
            path: path.clone(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| SupervisorError::Listen {
        path: path.clone(),
        source,
    })?;
    let err = |source| SupervisorError::Listen {
        path: path.clone(),
        source,
    };
    // Only root and the service user (and its group) may control the supervisor.
    let mode = if plan.socket_owner.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    if let Some(owner) = &plan.socket_owner {
        nix::unistd::chown(path, Some(owner.uid), Some(owner.gid)).map_err(|e| err(e.into()))?;
    }
    Ok(listener)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let stop = stop.clone();
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                tasks.spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = connection(stream, shared) => {}
                    }
                });
            }
            Err(_) => {
                tasks.spawn(async move {
                    let mut s = stream;
                    let _ = write_line(&mut s, &Response::error("the supervisor is busy: too many control connections")).await;
                });
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

async fn write_line<W: AsyncWriteExt + Unpin>(w: &mut W, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

/// Reads the request line; `Err` holds the answer for a bad one.
async fn read_request<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Request, Response> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, (&mut *r).take(MAX_REQUEST as u64 + 1).read_until(b'\n', &mut line)).await;
    match read {
        Err(_) => return Err(Response::error("no request within 10s")),
        Ok(Err(e)) => return Err(Response::error(format!("cannot read the request: {e}"))),
        Ok(Ok(0)) => return Err(Response::error("empty request")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err(Response::error(format!("request longer than {MAX_REQUEST} bytes")));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&line).map_err(|e| Response::error(format!("request is not JSON: {e}")))?;
    match value.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(Response::error(format!(
                "unsupported protocol version {v}; this supervisor speaks version {VERSION}"
            )));
        }
        None => return Err(Response::error("request has no protocol version (\"v\")")),
    }
    serde_json::from_value::<RequestLine>(value)
        .map(|l| l.request)
        .map_err(|e| Response::error(format!("bad request: {e}")))
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let request = match read_request(&mut reader).await {
        Ok(r) => r,
        Err(resp) => {
            let _ = write_line(&mut write, &resp).await;
            return;
        }
    };
    if let Request::Tail { service, lines, follow } = &request {
        let view = match lookup(&shared, service) {
            Ok(v) => v,
            Err(resp) => {
                let _ = write_line(&mut write, &resp).await;
                return;
            }
        };
        tail(view, *lines, *follow, reader, write).await;
        return;
    }
    let resp = handle(&shared, request).await;
    let _ = write_line(&mut write, &resp).await;
}

fn lookup(shared: &Shared, name: &str) -> Result<SlotView, Box<Response>> {
    let slots = shared.slots.read().unwrap_or_else(|e| e.into_inner());
    slots.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = slots.keys().map(|s| s.as_str()).collect();
        Box::new(Response::error(format!("unknown service {name:?} (known: {})", known.join(", "))))
    })
}

async fn send(view: &SlotView, make: impl FnOnce(crate::service::Reply) -> Cmd) -> Result<String, String> {
    let (tx, rx) = oneshot::channel();
    view.cmds
        .send(make(tx))
        .await
        .map_err(|_| format!("{} is being replaced or removed; try again", view.spec.name))?;
    rx.await
        .map_err(|_| format!("{} is being replaced or removed; try again", view.spec.name))?
}

async fn handle(shared: &Shared, request: Request) -> Response {
    match request {
        Request::Status => {
            let slots: Vec<SlotView> = shared
                .slots
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            let mut services: Vec<(usize, ServiceStatus)> =
                slots.iter().map(|v| (v.order, v.status.borrow().clone())).collect();
            services.sort_by_key(|(o, _)| *o);
            Response {
                services: Some(services.into_iter().map(|(_, s)| s).collect()),
                reload_error: shared.reload_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                ..Response::ok()
            }
        }
        Request::Stop { service } => {
            let view = match lookup(shared, &service) {
                Ok(v) => v,
                Err(r) => return *r,
            };
            match send(&view, Cmd::Stop).await {
                Ok(m) => Response::message(m),
                Err(e) => Response::error(e),
            }
        }
        Request::Start { service, wait } => start(shared, &service, wait, false).await,
        Request::Restart { service, wait } => start(shared, &service, wait, true).await,
        Request::Tail { .. } => Response::error("tail is answered as a stream"),
    }
}

async fn start(shared: &Shared, service: &str, wait: bool, restart: bool) -> Response {
    let view = match lookup(shared, service) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let before = view.status.borrow().clone();
    let running = matches!(before.state, State::Starting | State::Ready | State::Unready | State::Waiting);
    let sent = if restart {
        send(&view, Cmd::Restart).await
    } else {
        send(&view, Cmd::Start).await
    };
    let message = match sent {
        Ok(m) => m,
        Err(e) => return Response::error(e),
    };
    if !wait {
        return Response::message(message);
    }
    let fresh_start_needed = restart || !running;
    match wait_ready(&view, &before, fresh_start_needed).await {
        Ok(m) => Response::message(m),
        Err(e) => Response::error(e),
    }
}

/// Waits for the service to be ready — after a new start of its child when
/// `fresh` — or to fail.
async fn wait_ready(view: &SlotView, before: &ServiceStatus, fresh: bool) -> Result<String, String> {
    let mut rx = view.status.clone();
    let name = &view.spec.name;
    let deadline = tokio::time::Instant::now() + wait_limit(&view.spec);
    let mut seen_start = !fresh;
    loop {
        {
            let s = rx.borrow_and_update();
            if !seen_start && (s.restarts != before.restarts || (before.pid.is_none() && s.pid.is_some())) {
                seen_start = true;
            }
            if seen_start {
                match s.state {
                    State::Ready => return Ok(format!("{name} ready (pid {})", s.pid.unwrap_or(0))),
                    State::Failed => return Err(format!("{name} failed: {}", s.detail)),
                    State::Backoff => {
                        let exit = s.last_exit.map(|e| e.to_string()).unwrap_or_else(|| "could not start".into());
                        return Err(format!(
                            "{name} exited while starting ({exit}); it will be restarted — see `hangar ctl tail {name}`"
                        ));
                    }
                    State::Stopped => return Err(format!("{name} was stopped")),
                    _ => {}
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(format!("{name} was removed")),
            Err(_) => {
                let s = rx.borrow();
                return Err(format!("{name} not ready in time ({}: {})", s.state, s.detail));
            }
        }
    }
}

async fn tail<R, W>(view: SlotView, lines: usize, follow: bool, mut reader: BufReader<R>, mut write: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let path = view.log.path().to_path_buf();
    let chunk = |data: &[u8]| Response {
        data: Some(String::from_utf8_lossy(data).into_owned()),
        ..Response::ok()
    };
    let (data, mut offset) = match logs::tail(&path, lines) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => {
            let _ = write_line(&mut write, &Response::error(format!("cannot read {}: {e}", path.display()))).await;
            return;
        }
    };
    for part in data.chunks(32 * 1024) {
        if write_line(&mut write, &chunk(part)).await.is_err() {
            return;
        }
    }
    if !follow {
        let _ = write_line(&mut write, &Response { end: true, ..Response::ok() }).await;
        return;
    }
    let mut inode = std::fs::metadata(&path).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            // The client hung up (or sent something it should not): stop following.
            _ = reader.read(&mut scratch) => return,
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        match logs::read_from(&path, offset, &mut inode, 1024 * 1024) {
            Ok((data, end)) => {
                offset = end;
                for part in data.chunks(32 * 1024) {
                    if write_line(&mut write, &chunk(part)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return,
        }
    }
}
