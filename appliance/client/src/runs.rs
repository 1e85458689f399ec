//! Runs from the client: trigger, show, confirm, discard, cancel, review, and
//! their logs, read whole or followed live over the server's Server-Sent
//! Events (reconnecting after a dropped connection without printing a chunk
//! twice).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::{Client, ClientError};

/// The fields every run command shows.
pub const RUN_FIELDS: &str = "id kind state commitSha commitMessage branch triggeredBy failureReason createdAt updatedAt stack { slug } changes { add change destroy outputs }";

/// States in which a run waits for nobody but a person.
const WAITS_FOR_PEOPLE: &[&str] = &["UNCONFIRMED"];

/// The states after which nothing more happens to a run.
pub const TERMINAL: &[&str] = &["FINISHED", "FAILED", "DISCARDED", "CANCELED", "STOPPED"];

pub async fn trigger(
    client: &Client,
    stack: &str,
    commit: Option<&str>,
    proposed: bool,
) -> Result<Value, ClientError> {
    let q = format!(
        "mutation($s: String!, $c: String, $k: RunKindValue!) {{ triggerRun(stack: $s, commitSha: $c, kind: $k) {{ {RUN_FIELDS} }} }}"
    );
    let kind = if proposed { "PROPOSED" } else { "TRACKED" };
    let d = client
        .graphql(&q, json!({ "s": stack, "c": commit, "k": kind }))
        .await?;
    Ok(d["triggerRun"].clone())
}

/// Queues a task: `command` run in the stack's workspace on a worker.
pub async fn task(client: &Client, stack: &str, command: &str, commit: Option<&str>) -> Result<Value, ClientError> {
    let q = format!(
        "mutation($s: String!, $x: String!, $c: String) {{ runTask(stack: $s, command: $x, commitSha: $c) {{ {RUN_FIELDS} }} }}"
    );
    let d = client.graphql(&q, json!({ "s": stack, "x": command, "c": commit })).await?;
    Ok(d["runTask"].clone())
}

pub async fn show(client: &Client, id: &str) -> Result<Value, ClientError> {
    let q = format!("query($id: ID!) {{ run(id: $id) {{ {RUN_FIELDS} }} }}");
    let d = client.graphql(&q, json!({ "id": id })).await?;
    match &d["run"] {
        Value::Null => Err(ClientError::GraphQl {
            operation: "run".into(),
            code: "NOT_FOUND".into(),
            message: format!("run {id:?} does not exist"),
        }),
        run => Ok(run.clone()),
    }
}

/// `confirmRun`, `discardRun` or `cancelRun` of run `id`.
pub async fn operate(client: &Client, mutation: &str, id: &str) -> Result<Value, ClientError> {
    let q = format!("mutation($id: ID!) {{ {mutation}(id: $id) {{ {RUN_FIELDS} }} }}");
    let d = client.graphql(&q, json!({ "id": id })).await?;
    Ok(d[mutation].clone())
}

pub async fn review(
    client: &Client,
    id: &str,
    approve: bool,
    note: &str,
) -> Result<Value, ClientError> {
    let q = format!(
        "mutation($id: ID!, $d: ReviewDecisionValue!, $n: String!) {{ reviewRun(id: $id, decision: $d, note: $n) {{ {RUN_FIELDS} }} }}"
    );
    let decision = if approve { "APPROVE" } else { "REJECT" };
    let d = client
        .graphql(&q, json!({ "id": id, "d": decision, "n": note }))
        .await?;
    Ok(d["reviewRun"].clone())
}

/// The whole stored log of run `id` (of one phase, when given).
pub async fn logs(client: &Client, id: &str, phase: Option<&str>) -> Result<String, ClientError> {
    let path = log_path(id, phase, false);
    let req = client.request(Method::GET, &path)?;
    let r = req.send().await.map_err(|source| ClientError::Transport {
        url: path.clone(),
        source,
    })?;
    let status = r.status();
    let text = r.text().await.map_err(|source| ClientError::Transport {
        url: path.clone(),
        source,
    })?;
    if !status.is_success() {
        return Err(api_error(&path, status.as_u16(), &text));
    }
    Ok(text)
}

fn log_path(id: &str, phase: Option<&str>, follow: bool) -> String {
    let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let mut path = format!("/api/v1/runs/{id}/logs");
    let mut sep = '?';
    if let Some(p) = phase {
        path.push_str(&format!("{sep}phase={}", p.to_ascii_lowercase()));
        sep = '&';
    }
    if follow {
        path.push_str(&format!("{sep}follow=true"));
    }
    path
}

fn api_error(path: &str, status: u16, body: &str) -> ClientError {
    let (code, message) = serde_json::from_str::<hangar_types::http::ErrorBody>(body)
        .map(|b| (b.error.code.to_string(), b.error.message))
        .unwrap_or_else(|_| (status.to_string(), body.chars().take(200).collect()));
    ClientError::Api {
        method: "GET".into(),
        path: path.to_string(),
        status,
        code,
        message,
    }
}

/// How a followed log stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// The run ended in this state.
    Ended(String),
    /// The run waits for a person (to confirm or discard) in this state.
    Waiting(String),
}

/// Follows the log of run `id`: `on_text` gets each piece of text as it
/// arrives, `on_state` each state the run enters. Returns when the run ended
/// or, if `stop_when_waiting`, when it waits for a person. A dropped
/// connection is opened again (up to `retries` times in a row); chunks
/// already given are not given again.
pub async fn follow(
    client: &Client,
    id: &str,
    stop_when_waiting: bool,
    retries: u32,
    on_text: &mut (dyn FnMut(&str, &str) + Send),
    on_state: &mut (dyn FnMut(&str) + Send),
) -> Result<Followed, ClientError> {
    let path = log_path(id, None, true);
    // The next chunk number wanted per phase.
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = 0;
    loop {
        let attempt = follow_once(
            client,
            &path,
            stop_when_waiting,
            &mut next,
            on_text,
            on_state,
        )
        .await;
        match attempt {
            Ok(Some(done)) => return Ok(done),
            // The server closed the stream without an end: read on.
            Ok(None) => failures = 0,
            Err(e @ ClientError::Api { .. }) => return Err(e),
            Err(e) => {
                failures += 1;
                if failures > retries {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
            }
        }
    }
}

async fn follow_once(
    client: &Client,
    path: &str,
    stop_when_waiting: bool,
    next: &mut BTreeMap<String, u64>,
    on_text: &mut (dyn FnMut(&str, &str) + Send),
    on_state: &mut (dyn FnMut(&str) + Send),
) -> Result<Option<Followed>, ClientError> {
    let req = client
        .request(Method::GET, path)?
        .header(reqwest::header::ACCEPT, "text/event-stream");
    let transport = |source| ClientError::Transport {
        url: path.to_string(),
        source,
    };
    let mut r = req.send().await.map_err(transport)?;
    if !r.status().is_success() {
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        return Err(api_error(path, status, &body));
    }
    let mut events = EventReader::default();
    while let Some(bytes) = r.chunk().await.map_err(transport)? {
        for ev in events.push(&bytes) {
            let data: Value = match serde_json::from_str(&ev.data) {
                Ok(v) => v,
                Err(e) => {
                    return Err(ClientError::Protocol {
                        path: path.to_string(),
                        problem: format!("an event that is not JSON: {e}"),
                    });
                }
            };
            match ev.event.as_str() {
                "chunk" => {
                    let phase = data["phase"].as_str().unwrap_or("").to_string();
                    let seq = data["seq"].as_u64().unwrap_or(0);
                    let wanted = next.entry(phase.clone()).or_insert(0);
                    // Chunks before `wanted` were given before a reconnection;
                    // but an ended run's last chunk number comes twice in a
                    // row, the second time with the rest of a character that
                    // was split at its end.
                    let fresh = seq >= *wanted || (ev.repeat_tail && seq + 1 == *wanted);
                    if fresh && let Some(text) = data["text"].as_str() {
                        on_text(&phase, text);
                    }
                    *wanted = (*wanted).max(seq + 1);
                }
                "state" => {
                    let state = data["state"].as_str().unwrap_or("").to_string();
                    on_state(&state);
                    if stop_when_waiting && WAITS_FOR_PEOPLE.contains(&state.as_str()) {
                        return Ok(Some(Followed::Waiting(state)));
                    }
                }
                "end" => {
                    let state = data["state"].as_str().unwrap_or("").to_string();
                    return Ok(Some(Followed::Ended(state)));
                }
                _ => {}
            }
        }
    }
    Ok(None)
}

/// One Server-Sent Event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Event {
    event: String,
    data: String,
    /// Set for a chunk event whose id repeats the one before it.
    repeat_tail: bool,
}

/// Turns bytes into events, however the stream is cut.
#[derive(Debug, Default)]
struct EventReader {
    buf: Vec<u8>,
    current: Event,
    last_id: Option<String>,
}

impl EventReader {
    fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                let ev = std::mem::take(&mut self.current);
                if !ev.data.is_empty() || !ev.event.is_empty() {
                    out.push(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.current.event = value.to_string(),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                }
                "id" => {
                    self.current.repeat_tail = self.last_id.as_deref() == Some(value);
                    self.last_id = Some(value.to_string());
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_whole_however_the_bytes_are_cut() {
        let stream = b": hello\n\nevent: chunk\nid: planning:0\ndata: {\"seq\":0}\n\nevent: end\r\ndata: {}\r\n\r\n";
        for cut in 1..stream.len() {
            let mut r = EventReader::default();
            let mut got = r.push(&stream[..cut]);
            got.extend(r.push(&stream[cut..]));
            let names: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
            assert_eq!(names, ["chunk", "end"], "cut at {cut}");
            assert_eq!(got[0].data, "{\"seq\":0}");
        }
    }

    #[test]
    fn log_paths_keep_only_an_id() {
        assert_eq!(
            log_path("12", Some("PLANNING"), true),
            "/api/v1/runs/12/logs?phase=planning&follow=true"
        );
        assert_eq!(log_path("1/../x?y", None, false), "/api/v1/runs/1xy/logs");
    }
}
