//! Run logs: chunks stored through `hangar_server::logs::append` against the
//! appliance's own PostgreSQL and Garage (another process than the server, as a
//! worker's route would be), then read back through the server over TLS — the
//! GraphQL `runLogs` query, the plain download and the Server-Sent Events
//! stream — with retries, conflicts, oversize and hostile requests.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use hangar_db::runs::{self, NewRun};
use hangar_db::{DbPool, schema::run_log_chunks};
use hangar_objects::{ObjectStore, ObjectsConfig};
use hangar_server::logs::{self, LogError};
use hangar_store::run_objects::log_chunk_key;
use hangar_types::worker::{MAX_LOG_CHUNK_BYTES, MAX_LOG_SEQ, Phase};
use hangar_types::{RunKind, RunState};
use serde_json::json;

/// The test's own handles on the appliance's database and object store.
struct Store {
    db: DbPool,
    objects: ObjectStore,
    stack: i64,
    slug: String,
}

impl Store {
    async fn open(app: &Appliance) -> Store {
        let config: toml::Table = toml::from_str(&std::fs::read_to_string(&app.config).unwrap()).unwrap();
        let objects: ObjectsConfig = config["objects"].clone().try_into().unwrap();
        let objects = ObjectStore::connect(&objects).await.expect("object store");
        let w = app.admin_token().await;
        let slug = format!("logs-{}", rand_suffix());
        let created = app.ok(&w, CREATE_STACK, json!({ "i": stack_input(&slug, "https://git.invalid/infra.git") })).await;
        let stack = created["createStack"]["id"].as_str().unwrap().parse().unwrap();
        Store { db: app.pg.database().pool(Some(4)).unwrap(), objects, stack, slug }
    }

    async fn run(&self) -> i64 {
        let mut c = self.db.get().await.unwrap();
        let new = NewRun {
            stack_id: self.stack,
            kind: RunKind::Proposed,
            commit_sha: "a".repeat(40),
            branch: "main".into(),
            command: None,
            triggered_by: "test".into(),
        };
        runs::create(&mut c, &new, "test").await.unwrap().id
    }

    async fn advance(&self, run: i64, path: &[RunState]) {
        let mut c = self.db.get().await.unwrap();
        for to in path {
            runs::transition(&mut c, run, None, *to, "test worker", "worker:1").await.unwrap();
        }
    }

    async fn append(&self, run: i64, phase: Phase, seq: u64, body: impl Into<Bytes>) -> Result<(), LogError> {
        logs::append(&self.db, &self.objects, run, phase, seq, body.into()).await
    }

    async fn rows(&self, run: i64) -> Vec<(String, i64, i32, bool)> {
        use diesel::{ExpressionMethods, QueryDsl};
        let mut c = self.db.get().await.unwrap();
        run_log_chunks::table
            .filter(run_log_chunks::run_id.eq(run))
            .order((run_log_chunks::phase.asc(), run_log_chunks::seq.asc()))
            .select((run_log_chunks::phase, run_log_chunks::seq, run_log_chunks::size, run_log_chunks::stored))
            .load(&mut c)
            .await
            .unwrap()
    }
}

const TO_PLANNING: [RunState; 4] = [RunState::Ready, RunState::Preparing, RunState::Initializing, RunState::Planning];

#[tokio::test]
async fn append_stores_announces_and_takes_retries_but_not_conflicts() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let run = store.run().await;
    store.advance(run, &TO_PLANNING).await;

    let mut listener = app.pg.database().connect().await.unwrap();
    diesel::sql_query(format!("LISTEN {}", logs::LOGS_CHANNEL)).execute(&mut listener).await.unwrap();
    let mut notices = std::pin::pin!(listener.notifications_stream());

    store.append(run, Phase::Planning, 0, "Terraform will perform:\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), notices.next()).await.expect("a notification").unwrap().unwrap();
    assert_eq!(n.channel, logs::LOGS_CHANNEL);
    let notice: logs::ChunkNotice = serde_json::from_str(&n.payload).unwrap();
    assert_eq!(notice, logs::ChunkNotice { run, phase: Phase::Planning, seq: 0 });
    assert_eq!(
        store.objects.get(&log_chunk_key(run, Phase::Planning, 0)).await.unwrap(),
        b"Terraform will perform:\n"
    );

    // A retry with the same bytes is accepted and changes nothing.
    store.append(run, Phase::Planning, 0, "Terraform will perform:\n").await.unwrap();
    // Different bytes under a number already taken are refused; the first stay.
    let e = store.append(run, Phase::Planning, 0, "something else\n").await.unwrap_err();
    assert!(matches!(e, LogError::Conflict { seq: 0, .. }), "{e:?}");
    assert_eq!(e.status(), 409);
    assert_eq!(
        store.objects.get(&log_chunk_key(run, Phase::Planning, 0)).await.unwrap(),
        b"Terraform will perform:\n"
    );
    assert_eq!(store.rows(run).await, vec![("planning".to_string(), 0, 24, true)]);

    // An empty chunk is a chunk; one of exactly the limit is taken, one byte more is not.
    store.append(run, Phase::Planning, 1, Bytes::new()).await.unwrap();
    store.append(run, Phase::Planning, 2, vec![b'x'; MAX_LOG_CHUNK_BYTES as usize]).await.unwrap();
    let e = store.append(run, Phase::Planning, 3, vec![b'x'; MAX_LOG_CHUNK_BYTES as usize + 1]).await.unwrap_err();
    assert!(matches!(e, LogError::TooLarge { .. }), "{e:?}");
    assert_eq!(e.status(), 413);
    let e = store.append(run, Phase::Planning, MAX_LOG_SEQ + 1, "x").await.unwrap_err();
    assert!(matches!(e, LogError::BadSeq { .. }), "{e:?}");
    let e = store.append(run, Phase::Planning, u64::MAX, "x").await.unwrap_err();
    assert!(matches!(e, LogError::BadSeq { .. }), "{e:?}");
    let e = store.append(i64::MAX, Phase::Planning, 0, "x").await.unwrap_err();
    assert!(matches!(e, LogError::UnknownRun { .. }), "{e:?}");
    assert_eq!(e.status(), 404);
    assert_eq!(store.rows(run).await.len(), 3, "refused chunks leave no row");
    assert!(store.objects.get(&log_chunk_key(run, Phase::Planning, 3)).await.is_err(), "nor an object");
}

#[tokio::test]
async fn concurrent_appends_of_one_number_store_exactly_one_content() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let run = store.run().await;
    store.advance(run, &TO_PLANNING).await;

    // The same bytes from many retries at once: all accepted.
    let same = (0..8).map(|_| store.append(run, Phase::Preparing, 0, "cloning\n"));
    for r in futures::future::join_all(same).await {
        r.unwrap();
    }
    // Different bytes racing for one number: exactly one wins, and its bytes are stored.
    let racing = (0..8).map(|i| store.append(run, Phase::Preparing, 1, format!("writer {i}\n")));
    let results = futures::future::join_all(racing).await;
    let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(matches!(r, Err(LogError::Conflict { .. })), "{r:?}");
    }
    let stored = store.objects.get(&log_chunk_key(run, Phase::Preparing, 1)).await.unwrap();
    assert_eq!(stored, format!("writer {}\n", winners[0]).into_bytes());
}

#[tokio::test]
async fn a_run_that_ended_takes_late_chunks_only_within_the_grace_period() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let run = store.run().await;
    store.advance(run, &TO_PLANNING).await;
    store.append(run, Phase::Planning, 0, "planning\n").await.unwrap();
    store.advance(run, &[RunState::Stopped]).await;
    // Just ended: the worker's last output still arrives.
    store.append(run, Phase::Planning, 1, "killed\n").await.unwrap();

    // Long ended: the log is closed.
    let mut c = store.db.get().await.unwrap();
    diesel::sql_query("UPDATE runs SET updated_at = now() - interval '1 hour' WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(run)
        .execute(&mut c)
        .await
        .unwrap();
    let e = store.append(run, Phase::Planning, 2, "too late\n").await.unwrap_err();
    assert!(matches!(e, LogError::RunOver { state: RunState::Stopped, .. }), "{e:?}");
    assert_eq!(e.status(), 410);
    // A retry of a chunk already stored is refused the same way: nothing is written after the close.
    assert!(store.append(run, Phase::Planning, 1, "killed\n").await.is_err());
    assert_eq!(store.rows(run).await.len(), 2);
}

const RUN_LOGS: &str = "query($r: ID!, $p: Phase) { runLogs(run: $r, phase: $p) { text complete chunks truncated } }";

#[tokio::test]
async fn graphql_and_the_download_read_chunks_in_order_up_to_the_first_gap() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let admin = app.admin_token().await;
    let reader = app.user_token(&admin, "reader@hangar.test", "READER").await;
    let run = store.run().await;
    store.advance(run, &TO_PLANNING).await;

    // "✓" is split between chunks 0 and 1; chunk 4 arrives before chunk 3.
    let check = "✓".as_bytes();
    store.append(run, Phase::Preparing, 0, "cloned\n").await.unwrap();
    store.append(run, Phase::Planning, 0, [b"plan ".as_slice(), &check[..1]].concat()).await.unwrap();
    store.append(run, Phase::Planning, 1, [&check[1..], b" ok\n".as_slice()].concat()).await.unwrap();
    store.append(run, Phase::Planning, 2, "two\n").await.unwrap();
    store.append(run, Phase::Planning, 4, "four\n").await.unwrap();

    let r = app.ok(&reader, RUN_LOGS, json!({ "r": run.to_string(), "p": "PLANNING" })).await;
    assert_eq!(r["runLogs"], json!({ "text": "plan ✓ ok\ntwo\n", "complete": false, "chunks": 3, "truncated": false }));
    let all = app.ok(&reader, RUN_LOGS, json!({ "r": run.to_string() })).await;
    assert_eq!(all["runLogs"]["text"], "cloned\nplan ✓ ok\ntwo\n");
    let none = app.ok(&reader, RUN_LOGS, json!({ "r": run.to_string(), "p": "APPLYING" })).await;
    assert_eq!(none["runLogs"], json!({ "text": "", "complete": false, "chunks": 0, "truncated": false }));

    let download = |phase: &'static str| {
        let req = app.client.get(app.url(&format!("/api/v1/runs/{run}/logs?phase={phase}"))).bearer_auth(&reader);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
            resp.text().await.unwrap()
        }
    };
    assert_eq!(download("planning").await, "plan ✓ ok\ntwo\n");

    // The missing chunk arrives: everything after it follows; the run ends: complete.
    store.append(run, Phase::Planning, 3, "three\n").await.unwrap();
    store.advance(run, &[RunState::Finished]).await;
    let r = app.ok(&reader, RUN_LOGS, json!({ "r": run.to_string(), "p": "PLANNING" })).await;
    assert_eq!(r["runLogs"]["text"], "plan ✓ ok\ntwo\nthree\nfour\n");
    assert_eq!(r["runLogs"]["complete"], true);
    let whole = app.client.get(app.url(&format!("/api/v1/runs/{run}/logs"))).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(whole.text().await.unwrap(), "cloned\nplan ✓ ok\ntwo\nthree\nfour\n");

    // GraphQL refusals: unknown run, no token, a phase that is not one.
    let (code, _) = app.err(Some(&reader), RUN_LOGS, json!({ "r": "999999" })).await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = app.err(None, RUN_LOGS, json!({ "r": run.to_string() })).await;
    assert_eq!(code, "UNAUTHENTICATED");
    for bad in ["planning", "PLANNING ", "DESTROYING"] {
        let (status, body) = app.gql(Some(&reader), RUN_LOGS, json!({ "r": run.to_string(), "p": bad })).await;
        assert_eq!(status, 200);
        assert!(body["errors"][0].is_object(), "{bad}: {body}");
    }
    for bad in ["0", "-3", "abc", "99999999999999999999"] {
        let (code, _) = app.err(Some(&reader), RUN_LOGS, json!({ "r": bad })).await;
        assert_eq!(code, "BAD_USER_INPUT", "{bad}");
    }
}

#[tokio::test]
async fn the_log_endpoint_refuses_hostile_requests() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let admin = app.admin_token().await;
    let run = store.run().await;
    store.append(run, Phase::Preparing, 0, "x").await.unwrap();

    let get = |path: String, token: Option<&str>| {
        let mut req = app.client.get(app.url(&path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let ok = format!("/api/v1/runs/{run}/logs");
    assert_eq!(get(ok.clone(), Some(&admin)).await, (200, "x".to_string()));
    let (status, body) = get(ok.clone(), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(get(ok.clone(), Some("hs_not-a-token")).await.0, 401);
    let (status, body) = get(format!("{ok}?follow=true"), None).await;
    assert_eq!(status, 401, "no stream without a token: {body}");
    // Authentication comes first: without a token, an unknown run is not told apart.
    assert_eq!(get("/api/v1/runs/999999/logs".into(), None).await.0, 401);
    let (status, body) = get("/api/v1/runs/999999/logs".into(), Some(&admin)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(get("/api/v1/runs/999999/logs?follow=true".into(), Some(&admin)).await.0, 404);
    for bad in [
        "/api/v1/runs/-1/logs",
        "/api/v1/runs/0/logs",
        "/api/v1/runs/abc/logs",
        "/api/v1/runs/99999999999999999999/logs",
        &format!("{ok}?phase=PLANNING"),
        &format!("{ok}?phase=planning%00"),
        &format!("{ok}?phase=..%2Fplanning"),
        &format!("{ok}?phase="),
        &format!("{ok}?follow=yes"),
        &format!("{ok}?tail=10"),
    ] {
        let (status, body) = get(bad.to_string(), Some(&admin)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(!body.contains("hangar_"), "no internals in {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "BAD_REQUEST", "{bad}: {body}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {body}");
    }
    let post = app.client.post(app.url(&ok)).bearer_auth(&admin).body("x").send().await.unwrap();
    assert_eq!(post.status(), 405);
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    event: String,
    data: serde_json::Value,
}

/// Reads events from a `follow=true` response, skipping comments; `state`
/// events (for the console's live pages) are kept apart, in order.
struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: String,
    states: Vec<String>,
}

impl SseReader {
    async fn open(app: &Appliance, token: &str, run: i64, query: &str) -> SseReader {
        let resp = app
            .client
            .get(app.url(&format!("/api/v1/runs/{run}/logs?follow=true{query}")))
            .bearer_auth(token)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        SseReader { body: Box::pin(resp.bytes_stream()), buf: String::new(), states: Vec::new() }
    }

    /// The next event, or `None` when the server closed the stream.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v);
                    }
                }
                if event.is_empty() {
                    continue; // a keep-alive comment
                }
                if event == "state" {
                    let v: serde_json::Value = serde_json::from_str(&data).unwrap();
                    self.states.push(v["state"].as_str().unwrap().to_string());
                    continue;
                }
                return Some(Sse { event, data: serde_json::from_str(&data).unwrap() });
            }
            let bytes = tokio::time::timeout(Duration::from_secs(60), self.body.next()).await.expect("an event in time")?;
            self.buf.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
        }
    }

    /// The next event, which must be the chunk `phase`/`seq` with `text`.
    async fn expect_chunk(&mut self, phase: &str, seq: u64, text: &str) {
        let e = self.next().await.expect("a chunk, not the end of the stream");
        assert_eq!(e, Sse { event: "chunk".into(), data: json!({ "phase": phase, "seq": seq, "text": text }) });
    }
}

#[tokio::test]
async fn followers_get_the_past_then_the_live_chunks_in_order_and_an_end() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let token = app.admin_token().await;
    let run = store.run().await;
    store.advance(run, &TO_PLANNING).await;
    store.append(run, Phase::Preparing, 0, "cloned\n").await.unwrap();
    store.append(run, Phase::Planning, 0, "refreshing\n").await.unwrap();

    let mut all = SseReader::open(&app, &token, run, "").await;
    let mut planning = SseReader::open(&app, &token, run, "&phase=planning").await;
    all.expect_chunk("preparing", 0, "cloned\n").await;
    all.expect_chunk("planning", 0, "refreshing\n").await;
    planning.expect_chunk("planning", 0, "refreshing\n").await;

    // Live, appended by another process than the server: in order, and a chunk
    // that overtook the one before it waits for it.
    store.append(run, Phase::Planning, 1, "plan: 1 to add\n").await.unwrap();
    all.expect_chunk("planning", 1, "plan: 1 to add\n").await;
    planning.expect_chunk("planning", 1, "plan: 1 to add\n").await;
    store.append(run, Phase::Planning, 3, "three\n").await.unwrap();
    store.append(run, Phase::Planning, 2, "two\n").await.unwrap();
    planning.expect_chunk("planning", 2, "two\n").await;
    planning.expect_chunk("planning", 3, "three\n").await;
    all.expect_chunk("planning", 2, "two\n").await;
    all.expect_chunk("planning", 3, "three\n").await;
    // A retry announced again is not sent twice.
    store.append(run, Phase::Planning, 3, "three\n").await.unwrap();

    // A reader arriving mid-run gets the past, then the live.
    let mut late = SseReader::open(&app, &token, run, "&phase=planning").await;
    for (seq, text) in [(0, "refreshing\n"), (1, "plan: 1 to add\n"), (2, "two\n"), (3, "three\n")] {
        late.expect_chunk("planning", seq, text).await;
    }
    store.append(run, Phase::Planning, 4, "done\n").await.unwrap();
    for r in [&mut all, &mut planning, &mut late] {
        r.expect_chunk("planning", 4, "done\n").await;
    }

    // The run ends: every follower gets `end`, and the stream closes.
    store.advance(run, &[RunState::Finished]).await;
    for r in [&mut all, &mut planning, &mut late] {
        let end = r.next().await.expect("an end event");
        assert_eq!(end, Sse { event: "end".into(), data: json!({ "run": run, "state": "FINISHED" }) });
        assert_eq!(r.next().await, None);
        // Each state the reader saw was announced once, in order, the last one included.
        assert_eq!(r.states.last().map(String::as_str), Some("FINISHED"), "{:?}", r.states);
        let mut deduped = r.states.clone();
        deduped.dedup();
        assert_eq!(deduped, r.states);
    }

    // Following a run that already ended sends everything, then `end`, at once.
    let mut after = SseReader::open(&app, &token, run, "&phase=preparing").await;
    after.expect_chunk("preparing", 0, "cloned\n").await;
    assert_eq!(after.next().await.unwrap().event, "end");
    assert_eq!(after.next().await, None);
}

#[tokio::test]
async fn a_follower_waits_for_a_missing_chunk_of_an_ended_run_within_the_grace_period() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let token = app.admin_token().await;
    let run = store.run().await;
    store.advance(run, &TO_PLANNING).await;
    store.append(run, Phase::Planning, 0, "zero\n").await.unwrap();
    store.append(run, Phase::Planning, 2, "two\n").await.unwrap();
    store.advance(run, &[RunState::Stopped]).await;

    let mut r = SseReader::open(&app, &token, run, "&phase=planning").await;
    r.expect_chunk("planning", 0, "zero\n").await;
    // Chunk 1 is late (the worker's outbox is still retrying): no end before it.
    store.append(run, Phase::Planning, 1, "one\n").await.unwrap();
    r.expect_chunk("planning", 1, "one\n").await;
    r.expect_chunk("planning", 2, "two\n").await;
    assert_eq!(r.next().await.unwrap().event, "end");
}

#[tokio::test]
async fn deleting_a_runs_logs_removes_objects_and_rows_together() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let (run, other) = (store.run().await, store.run().await);
    for r in [run, other] {
        store.append(r, Phase::Preparing, 0, "a").await.unwrap();
        store.append(r, Phase::Planning, 0, "b").await.unwrap();
        store.append(r, Phase::Planning, 1, "c").await.unwrap();
    }
    assert_eq!(logs::delete_run_logs(&store.db, &store.objects, run).await.unwrap(), 3);
    assert!(store.rows(run).await.is_empty());
    for (phase, seq) in [(Phase::Preparing, 0), (Phase::Planning, 0), (Phase::Planning, 1)] {
        assert!(store.objects.get(&log_chunk_key(run, phase, seq)).await.is_err(), "{phase:?}/{seq} left behind");
        assert!(store.objects.get(&log_chunk_key(other, phase, seq)).await.is_ok(), "another run's log was touched");
    }
    assert_eq!(store.rows(other).await.len(), 3);
    // Nothing left: a second deletion has nothing to do.
    assert_eq!(logs::delete_run_logs(&store.db, &store.objects, run).await.unwrap(), 0);
}

#[tokio::test]
async fn deleting_a_stack_removes_the_objects_its_runs_left() {
    let app = Appliance::start().await;
    let store = Store::open(&app).await;
    let kept = Store::open(&app).await;
    let (run, done, other) = (store.run().await, store.run().await, kept.run().await);
    for r in [run, done, other] {
        store.append(r, Phase::Preparing, 0, "a").await.unwrap();
        store.append(r, Phase::Planning, 0, "b").await.unwrap();
    }
    // A sealed plan and an errored state, where the worker API puts them.
    let extra = [format!("runs/{done}/plan.sealed"), format!("runs/{done}/errored.tfstate.sealed")];
    for key in &extra {
        store.objects.put(key, b"sealed bytes").await.unwrap();
    }
    let mut c = store.db.get().await.unwrap();
    diesel::sql_query(format!(
        "UPDATE runs SET plan_key = '{}', errored_state_key = '{}' WHERE id = {done}",
        extra[0], extra[1]
    ))
    .execute(&mut c)
    .await
    .unwrap();
    let admin = app.admin_token().await;
    let deleted = app.ok(&admin, "mutation($s: String!) { deleteStack(slug: $s) }", json!({ "s": store.slug })).await;
    assert_eq!(deleted["deleteStack"], true);
    let mut keys: Vec<String> = [run, done]
        .into_iter()
        .flat_map(|r| [log_chunk_key(r, Phase::Preparing, 0), log_chunk_key(r, Phase::Planning, 0)])
        .collect();
    keys.extend(extra);
    // Gone from Garage itself, listed with the test's own S3 credentials.
    let bucket = app.garage.bucket();
    let mut left = Vec::new();
    for page in bucket.list("runs/".into(), None).await.unwrap() {
        left.extend(page.contents.into_iter().map(|o| o.key));
    }
    for key in &keys {
        assert!(!left.contains(key), "{key} left behind: {left:?}");
    }
    // Another stack's run keeps its log.
    for (phase, seq) in [(Phase::Preparing, 0), (Phase::Planning, 0)] {
        assert!(left.contains(&log_chunk_key(other, phase, seq)), "another stack's log was touched: {left:?}");
    }
    assert_eq!(kept.rows(other).await.len(), 2);
}
