//! Terraform's HTTP state backend against a real appliance (PostgreSQL, Garage
//! behind TLS, `hangar server` as its own process): Terraform's own
//! remote-lock sequence, one winner among 100 concurrent LOCKs, writes refused
//! without the holder's lock id, Content-MD5, serial and lineage checks, run
//! tokens confined to their run's stack and their run's life, stale locks of
//! finished runs, versions listed, downloaded and imported through the API —
//! and the genuine Terraform 1.0.3 running init, apply, state pull and
//! force-unlock against it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use common::*;
use hangar_db::runs::{self, NewRun};
use hangar_store::run_tokens;
use hangar_types::{RunKind, RunState};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Credentials as the backend sees them.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    /// `run:<token>`, as workers configure Terraform.
    Basic(&'a str),
    Bearer(&'a str),
    Raw(&'a str),
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn md5_b64(body: &[u8]) -> String {
    use md5::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

async fn call(app: &Appliance, method: &str, path: &str, auth: Auth<'_>, body: Option<&[u8]>, md5: Option<&str>) -> Answer {
    let mut req = app.client.request(Method::from_bytes(method.as_bytes()).unwrap(), app.url(path));
    req = match auth {
        Auth::None => req,
        Auth::Basic(token) => req.basic_auth("run", Some(token)),
        Auth::Bearer(token) => req.bearer_auth(token),
        Auth::Raw(value) => req.header("authorization", value),
    };
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_vec());
        let digest = md5.map(str::to_string).unwrap_or_else(|| md5_b64(b));
        req = req.header("content-md5", digest);
    }
    let resp = req.send().await.expect("send a state backend request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap().to_vec();
    Answer { status, headers, body }
}

fn state_path(slug: &str) -> String {
    format!("/state/v1/{slug}")
}

fn lock_info(id: &str, who: &str) -> Vec<u8> {
    json!({
        "ID": id, "Operation": "OperationTypeApply", "Info": "", "Who": who,
        "Version": "1.0.3", "Created": "2026-11-28T01:00:00Z", "Path": "",
    })
    .to_string()
    .into_bytes()
}

fn state(lineage: &str, serial: u64, message: &str) -> Vec<u8> {
    json!({
        "version": 4, "terraform_version": "1.0.3", "serial": serial, "lineage": lineage,
        "outputs": { "message": { "value": message, "type": "string" } }, "resources": [],
    })
    .to_string()
    .into_bytes()
}

async fn lock(app: &Appliance, slug: &str, auth: Auth<'_>, id: &str, who: &str) -> Answer {
    call(app, "LOCK", &state_path(slug), auth, Some(&lock_info(id, who)), None).await
}

async fn unlock(app: &Appliance, slug: &str, auth: Auth<'_>, id: &str) -> Answer {
    call(app, "UNLOCK", &state_path(slug), auth, Some(&lock_info(id, "")), None).await
}

async fn post(app: &Appliance, slug: &str, auth: Auth<'_>, lock_id: Option<&str>, body: &[u8]) -> Answer {
    let path = match lock_id {
        Some(id) => format!("{}?ID={id}", state_path(slug)),
        None => state_path(slug),
    };
    call(app, "POST", &path, auth, Some(body), None).await
}

/// Creates a stack; returns its id.
async fn stack(app: &Appliance, admin: &str, slug: &str) -> i64 {
    let made = app.ok(admin, CREATE_STACK, json!({ "i": stack_input(slug, "https://git.example/infra.git") })).await;
    made["createStack"]["id"].as_str().unwrap().parse().unwrap()
}

/// A tracked run on `stack_id` and its token.
async fn run_with_token(app: &Appliance, stack_id: i64) -> (i64, String) {
    run_of_kind(app, stack_id, RunKind::Tracked).await
}

async fn run_of_kind(app: &Appliance, stack_id: i64, kind: RunKind) -> (i64, String) {
    let mut c = app.pg.database().connect().await.unwrap();
    let new = NewRun {
        stack_id,
        kind,
        commit_sha: "0123456789abcdef0123456789abcdef01234567".into(),
        branch: "main".into(),
        command: None,
        triggered_by: "test".into(),
    };
    let run = runs::create(&mut c, &new, "test").await.unwrap();
    let token = run_tokens::issue(&mut c, run.id).await.unwrap();
    (run.id, token.expose().to_string())
}

async fn finish(app: &Appliance, run: i64) {
    let mut c = app.pg.database().connect().await.unwrap();
    runs::transition(&mut c, run, None, RunState::Canceled, "test", "test").await.unwrap();
}

async fn versions(app: &Appliance, token: &str, slug: &str) -> Vec<Value> {
    let q = "query($s: String!) { stateVersions(stack: $s) { id serial lineage size md5 runId createdBy createdAt } }";
    app.ok(token, q, json!({ "s": slug })).await["stateVersions"].as_array().unwrap().clone()
}

async fn api_key(app: &Appliance, token: &str, name: &str) -> String {
    let q = "mutation($n: String!) { createApiKey(name: $n) { key } }";
    app.ok(token, q, json!({ "n": name })).await["createApiKey"]["key"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn terraforms_remote_lock_sequence_and_one_winner_among_a_hundred() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let stack_id = stack(&app, &admin, "locks").await;
    let (_, a) = run_with_token(&app, stack_id).await;
    let key = api_key(&app, &admin, "operator").await;

    // A locks; B (another holder) is told who holds it; A unlocks; B locks.
    let taken = lock(&app, "locks", Auth::Basic(&a), "lock-a", "worker-a@host").await;
    assert_eq!(taken.status, 200, "{}", taken.text());
    let refused = lock(&app, "locks", Auth::Bearer(&key), "lock-b", "operator@laptop").await;
    assert_eq!(refused.status, 423, "{}", refused.text());
    let holder = refused.json();
    assert_eq!(holder["ID"], "lock-a");
    assert_eq!(holder["Who"], "worker-a@host");
    // Only the holder's id unlocks; a wrong one is answered with the holder.
    let wrong = unlock(&app, "locks", Auth::Basic(&a), "lock-b").await;
    assert_eq!(wrong.status, 423);
    assert_eq!(wrong.json()["ID"], "lock-a");
    assert_eq!(unlock(&app, "locks", Auth::Basic(&a), "lock-a").await.status, 200);
    assert_eq!(unlock(&app, "locks", Auth::Basic(&a), "lock-a").await.status, 409, "nothing left to unlock");
    let b = lock(&app, "locks", Auth::Bearer(&key), "lock-b", "operator@laptop").await;
    assert_eq!(b.status, 200, "{}", b.text());
    // The holder retrying its own LOCK (a lost answer) keeps it.
    assert_eq!(lock(&app, "locks", Auth::Bearer(&key), "lock-b", "operator@laptop").await.status, 200);
    let again = lock(&app, "locks", Auth::Basic(&a), "lock-a", "worker-a@host").await;
    assert_eq!(again.status, 423);
    assert_eq!(again.json()["ID"], "lock-b");
    assert_eq!(unlock(&app, "locks", Auth::Bearer(&key), "lock-b").await.status, 200);

    // 100 concurrent LOCKs with distinct ids: exactly one 200, every other
    // answer names that winner.
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (app, a) = (app.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let r = lock(&app, "locks", Auth::Basic(&a), &format!("racer-{i}"), "racer").await;
            (i, r.status, r.body)
        }));
    }
    let mut winners = Vec::new();
    let mut named = Vec::new();
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        match status.as_u16() {
            200 => winners.push(format!("racer-{i}")),
            423 => named.push(serde_json::from_slice::<Value>(&body).unwrap()["ID"].as_str().unwrap().to_string()),
            other => panic!("racer {i}: status {other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(named.len(), 99);
    assert!(named.iter().all(|n| *n == winners[0]), "{named:?}");
}

#[tokio::test]
async fn writes_need_the_holders_lock_id_and_follow_the_history() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let stack_id = stack(&app, &admin, "net").await;
    let (_, a) = run_with_token(&app, stack_id).await;
    let (_, b) = run_with_token(&app, stack_id).await;

    // No state yet: Terraform reads 204 as empty.
    let empty = call(&app, "GET", &state_path("net"), Auth::Basic(&a), None, None).await;
    assert_eq!(empty.status, 204);

    assert_eq!(lock(&app, "net", Auth::Basic(&a), "la", "a").await.status, 200);
    let v1 = state("lin-1", 1, "one");
    // Without the lock id, with another id, from another run holding the
    // right id, or with a stale id: refused with the holder, nothing stored.
    for (auth, id) in [(&a, None), (&a, Some("other")), (&b, Some("la")), (&b, None)] {
        let r = post(&app, "net", Auth::Basic(auth), id, &v1).await;
        assert_eq!(r.status, 423, "{:?}: {}", id, r.text());
        assert_eq!(r.json()["ID"], "la");
    }
    assert!(versions(&app, &admin, "net").await.is_empty());

    // Content-MD5 that does not match the body, and bodies that are no state.
    let bad_md5 = call(&app, "POST", &format!("{}?ID=la", state_path("net")), Auth::Basic(&a), Some(&v1), Some(&md5_b64(b"x"))).await;
    assert_eq!(bad_md5.status, 400, "{}", bad_md5.text());
    assert!(bad_md5.text().contains("Content-MD5"), "{}", bad_md5.text());
    assert_eq!(bad_md5.json()["error"]["code"], "BAD_REQUEST", "{}", bad_md5.text());
    let garbage_md5 = call(&app, "POST", &format!("{}?ID=la", state_path("net")), Auth::Basic(&a), Some(&v1), Some("%%%")).await;
    assert_eq!(garbage_md5.status, 400);
    for bad in [&b"{not json"[..], b"[]", br#"{"serial":1}"#, br#"{"serial":-3,"lineage":"x"}"#, br#"{"serial":1,"lineage":""}"#] {
        let r = post(&app, "net", Auth::Basic(&a), Some("la"), bad).await;
        assert_eq!(r.status, 400, "{}: {}", String::from_utf8_lossy(bad), r.text());
    }
    assert!(versions(&app, &admin, "net").await.is_empty());

    // The holder's write is stored; the same bytes again add nothing.
    assert_eq!(post(&app, "net", Auth::Basic(&a), Some("la"), &v1).await.status, 200);
    assert_eq!(post(&app, "net", Auth::Basic(&a), Some("la"), &v1).await.status, 200);
    let listed = versions(&app, &admin, "net").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["serial"], 1);
    assert_eq!(listed[0]["lineage"], "lin-1");
    assert_eq!(listed[0]["size"], v1.len());

    // History: another lineage, an older serial, the same serial with other
    // content — each refused, nothing stored.
    for (body, why) in [
        (state("lin-2", 2, "forked"), "lineage"),
        (state("lin-1", 0, "older"), "older"),
        (state("lin-1", 1, "changed"), "different content"),
    ] {
        let r = post(&app, "net", Auth::Basic(&a), Some("la"), &body).await;
        assert_eq!(r.status, 409, "{why}: {}", r.text());
        assert!(r.text().contains(why), "{}", r.text());
    }
    assert_eq!(versions(&app, &admin, "net").await.len(), 1);

    let v2 = state("lin-1", 2, "two");
    assert_eq!(post(&app, "net", Auth::Basic(&a), Some("la"), &v2).await.status, 200);
    let got = call(&app, "GET", &state_path("net"), Auth::Basic(&a), None, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, v2);
    assert_eq!(got.headers["content-md5"].to_str().unwrap(), md5_b64(&v2));

    // After unlocking, a write that still carries the old id is refused: the
    // lock it names is gone.
    assert_eq!(unlock(&app, "net", Auth::Basic(&a), "la").await.status, 200);
    let stale = post(&app, "net", Auth::Basic(&a), Some("la"), &state("lin-1", 3, "three")).await;
    assert_eq!(stale.status, 409, "{}", stale.text());
    // Unlocked, a plain write (Terraform with -lock=false) is accepted.
    assert_eq!(post(&app, "net", Auth::Basic(&b), None, &state("lin-1", 3, "three")).await.status, 200);
    let listed = versions(&app, &admin, "net").await;
    assert_eq!(listed.iter().map(|v| v["serial"].as_i64().unwrap()).collect::<Vec<_>>(), vec![3, 2, 1]);
    assert!(listed[0]["createdBy"].as_str().unwrap().starts_with("run "), "{listed:?}");
    assert!(!listed[0]["runId"].is_null());
}

#[tokio::test]
async fn credentials_open_only_what_they_should() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let net = stack(&app, &admin, "net").await;
    stack(&app, &admin, "dns").await;
    let (run, token) = run_with_token(&app, net).await;
    let reader = app.user_token(&admin, "reader@hangar.test", "READER").await;
    let key = api_key(&app, &admin, "ops").await;

    // No credentials, or nonsense: 401 asking for basic auth.
    for auth in [
        Auth::None,
        Auth::Raw("Basic !!!"),
        Auth::Raw("Digest abc"),
        Auth::Basic("hrt_nope_nope"),
        Auth::Basic("not-a-token"),
        Auth::Bearer("hak_unknown_secret"),
    ] {
        let r = call(&app, "GET", &state_path("net"), auth, None, None).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r.headers["www-authenticate"].to_str().unwrap().starts_with("Basic"), "{:?}", r.headers);
    }
    // A run token opens its own stack only, whether the other exists or not.
    for other in ["dns", "no-such-stack"] {
        let r = lock(&app, other, Auth::Basic(&token), "x", "w").await;
        assert_eq!(r.status, 403, "{other}: {}", r.text());
    }
    // A reader's session is not enough for the backend; an admin's key is,
    // and as basic auth password too.
    assert_eq!(call(&app, "GET", &state_path("net"), Auth::Bearer(&reader), None, None).await.status, 403);
    assert_eq!(call(&app, "GET", &state_path("net"), Auth::Bearer(&key), None, None).await.status, 204);
    let basic_key = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("ops:{key}")));
    assert_eq!(call(&app, "GET", &state_path("net"), Auth::Raw(&basic_key), None, None).await.status, 204);
    assert_eq!(call(&app, "GET", &state_path("no-such-stack"), Auth::Bearer(&key), None, None).await.status, 404);

    // DELETE never deletes; unknown methods neither.
    for m in ["DELETE", "PUT", "PATCH"] {
        let r = call(&app, m, &state_path("net"), Auth::Bearer(&key), None, None).await;
        assert_eq!(r.status, 405, "{m}");
    }
    // A LOCK body far beyond any lock info is refused unread.
    // (The server may close the connection before the client finished sending.)
    let huge = vec![b' '; 200 * 1024];
    let sent = app
        .client
        .request(Method::from_bytes(b"LOCK").unwrap(), app.url(&state_path("net")))
        .basic_auth("run", Some(&token))
        .body(huge)
        .send()
        .await;
    if let Ok(r) = sent {
        assert_eq!(r.status(), 413);
    }
    assert!(app.ok(&reader, "query { stateLock(stack: \"net\") { lockId } }", json!({})).await["stateLock"].is_null());
    assert_eq!(call(&app, "LOCK", &state_path("net"), Auth::Basic(&token), Some(b"{}"), None).await.status, 400);

    // The token takes the lock, then its run finishes: the token dies with it.
    assert_eq!(lock(&app, "net", Auth::Basic(&token), "run-lock", "w").await.status, 200);
    finish(&app, run).await;
    assert_eq!(call(&app, "GET", &state_path("net"), Auth::Basic(&token), None, None).await.status, 401);
    assert_eq!(post(&app, "net", Auth::Basic(&token), Some("run-lock"), &state("l", 1, "x")).await.status, 401);

    // The finished run's lock is released by the next LOCK...
    let (_, next) = run_with_token(&app, net).await;
    assert_eq!(lock(&app, "net", Auth::Basic(&next), "next-lock", "w2").await.status, 200);
    let lock_q = "query { stateLock(stack: \"net\") { lockId heldBy runId operation who } }";
    let held = app.ok(&reader, lock_q, json!({})).await;
    assert_eq!(held["stateLock"]["lockId"], "next-lock");
    assert_eq!(held["stateLock"]["operation"], "OperationTypeApply");

    // ...unless the stack awaits reconciliation (an apply lost its worker):
    // then it stays for an operator, visible, and only a force-unlock frees it.
    let (next_run, _) = (held["stateLock"]["runId"].as_str().unwrap().parse::<i64>().unwrap(), ());
    {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut c = app.pg.database().connect().await.unwrap();
        diesel::update(hangar_db::schema::stacks::table.find(net))
            .set(hangar_db::schema::stacks::needs_reconciliation.eq(true))
            .execute(&mut c)
            .await
            .unwrap();
    }
    finish(&app, next_run).await;
    let (_, third) = run_with_token(&app, net).await;
    let r = lock(&app, "net", Auth::Basic(&third), "third-lock", "w3").await;
    assert_eq!(r.status, 423);
    assert_eq!(r.json()["ID"], "next-lock");
    // A run cannot break another holder's lock, even with Terraform's
    // empty-bodied force-unlock.
    assert_eq!(call(&app, "UNLOCK", &state_path("net"), Auth::Basic(&third), Some(b""), None).await.status, 423);

    let force = "mutation($l: String!) { forceUnlockState(stack: \"net\", lockId: $l) { lockId heldBy } }";
    assert_eq!(app.err(Some(&reader), force, json!({ "l": "next-lock" })).await.0, "FORBIDDEN");
    // An unlock must name the lock it releases: a made-up id releases nothing,
    // and the answer names the holder.
    let (code, message) = app.err(Some(&admin), force, json!({ "l": "made-up" })).await;
    assert_eq!(code, "CONFLICT");
    assert!(message.contains(&format!("run {next_run}")) && message.contains("\"next-lock\""), "{message}");
    assert_eq!(app.ok(&reader, lock_q, json!({})).await["stateLock"]["lockId"], "next-lock");
    let removed = app.ok(&admin, force, json!({ "l": "next-lock" })).await;
    assert_eq!(removed["forceUnlockState"]["lockId"], "next-lock");
    assert!(app.ok(&reader, lock_q, json!({})).await["stateLock"].is_null());
    assert!(app.ok(&admin, force, json!({ "l": "next-lock" })).await["forceUnlockState"].is_null());
    let audit = app.ok(&admin, "query { auditEvents(action: \"state.force_unlock\") { items { actor target details } } }", json!({})).await;
    let events = audit["auditEvents"]["items"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{audit}");
    assert_eq!(events[0]["target"], "stack:net");
    // The holder it displaced: who, which run, since when, Terraform's account.
    let displaced = &events[0]["details"];
    assert_eq!(displaced["held_by"], format!("run {next_run}"), "{displaced}");
    assert_eq!(displaced["run_id"], next_run, "{displaced}");
    assert_eq!(displaced["who"], "w2", "{displaced}");
    assert_eq!(displaced["operation"], "OperationTypeApply", "{displaced}");
    assert!(displaced["locked_at"].is_string(), "{displaced}");
    assert_eq!(lock(&app, "net", Auth::Basic(&third), "third-lock", "w3").await.status, 200);
}

#[tokio::test]
async fn versions_are_imported_listed_and_downloaded() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    stack(&app, &admin, "net").await;
    stack(&app, &admin, "dns").await;
    let writer = app.user_token(&admin, "writer@hangar.test", "WRITER").await;
    let reader = app.user_token(&admin, "reader@hangar.test", "READER").await;

    let import = "mutation($s: String!, $t: String!) { importState(stack: $s, state: $t) { id serial lineage createdBy } }";
    let original = String::from_utf8(state("imported", 7, "from elsewhere")).unwrap();
    assert_eq!(app.err(Some(&writer), import, json!({ "s": "net", "t": original })).await.0, "FORBIDDEN");
    assert_eq!(app.err(Some(&admin), import, json!({ "s": "net", "t": "{nope" })).await.0, "BAD_USER_INPUT");
    assert_eq!(app.err(Some(&admin), import, json!({ "s": "ghost", "t": original })).await.0, "NOT_FOUND");
    let made = app.ok(&admin, import, json!({ "s": "net", "t": original })).await;
    assert_eq!(made["importState"]["serial"], 7);
    assert_eq!(made["importState"]["createdBy"], ADMIN_EMAIL);
    let id = made["importState"]["id"].as_str().unwrap().to_string();
    // Only into a stack without state.
    assert_eq!(app.err(Some(&admin), import, json!({ "s": "net", "t": original })).await.0, "CONFLICT");

    // Terraform continues from the imported version.
    let key = api_key(&app, &admin, "ops").await;
    let got = call(&app, "GET", &state_path("net"), Auth::Bearer(&key), None, None).await;
    assert_eq!(got.body, original.as_bytes());
    let next = state("imported", 8, "next");
    assert_eq!(post(&app, "net", Auth::Bearer(&key), None, &next).await.status, 200);

    let listed = versions(&app, &reader, "net").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1]["id"], id.as_str());
    assert!(versions(&app, &reader, "dns").await.is_empty());
    assert_eq!(app.err(None, "{ stateVersions(stack: \"net\") { id } }", json!({})).await.0, "UNAUTHENTICATED");

    // Any reader downloads a version, decrypted and audited.
    let url = format!("/api/v1/stacks/net/state/versions/{id}");
    let d = call(&app, "GET", &url, Auth::Bearer(&reader), None, None).await;
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(d.body, original.as_bytes());
    assert!(d.headers["content-disposition"].to_str().unwrap().contains("net-7.tfstate"));
    let audit = app.ok(&admin, "query { auditEvents(action: \"state.download\") { items { actor target details } } }", json!({})).await;
    assert_eq!(audit["auditEvents"]["items"][0]["actor"], "reader@hangar.test");
    let imports = app.ok(&admin, "query { auditEvents(action: \"state.import\") { items { target } } }", json!({})).await;
    assert_eq!(imports["auditEvents"]["items"][0]["target"], "stack:net");

    // Not through another stack's path, not without credentials, not with a run token.
    for (path, auth, status) in [
        (format!("/api/v1/stacks/dns/state/versions/{id}"), Auth::Bearer(&reader), 404),
        ("/api/v1/stacks/net/state/versions/999999".into(), Auth::Bearer(&reader), 404),
        ("/api/v1/stacks/net/state/versions/abc".into(), Auth::Bearer(&reader), 404),
        ("/api/v1/stacks/ghost/state/versions/1".into(), Auth::Bearer(&reader), 404),
        (url.clone(), Auth::None, 401),
    ] {
        let r = call(&app, "GET", &path, auth, None, None).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    let net_id: i64 = app.ok(&admin, "{ stack(slug: \"net\") { id } }", json!({})).await["stack"]["id"].as_str().unwrap().parse().unwrap();
    let (_, token) = run_with_token(&app, net_id).await;
    assert_eq!(call(&app, "GET", &url, Auth::Basic(&token), None, None).await.status, 401);

    // A stack with state cannot be deleted (its versions would be lost); one
    // without can.
    let delete = "mutation($s: String!) { deleteStack(slug: $s) }";
    assert_eq!(app.err(Some(&admin), delete, json!({ "s": "net" })).await.0, "CONFLICT");
    assert_eq!(app.ok(&admin, delete, json!({ "s": "dns" })).await["deleteStack"], true);
    assert_eq!(versions(&app, &reader, "net").await.len(), 2);

    // What the object store holds is sealed: the state's text is not in it.
    let objects = garage_objects(&app).await;
    assert!(!objects.is_empty());
    for o in &objects {
        assert!(!o.windows(b"from elsewhere".len()).any(|w| w == b"from elsewhere"), "plaintext state in the object store");
    }
}

/// The audit trail's `state.*` actions on `stack`, oldest first, with their actors.
async fn state_audit(app: &Appliance, stack: &str) -> Vec<(String, String, Value)> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        action: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        actor: String,
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        details: Value,
    }
    let mut c = app.pg.database().connect().await.unwrap();
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT action, actor, details FROM audit_events WHERE target = $1 AND action LIKE 'state.%' ORDER BY id",
    )
    .bind::<diesel::sql_types::Text, _>(format!("stack:{stack}"))
    .load(&mut c)
    .await
    .unwrap();
    rows.into_iter().map(|r| (r.action, r.actor, r.details)).collect()
}

/// The keys under `state/{stack_id}/` in the appliance's bucket.
async fn state_keys(app: &Appliance, stack_id: i64) -> Vec<String> {
    let mut keys = Vec::new();
    for page in app.garage.bucket().list(format!("state/{stack_id}/"), None).await.expect("list the bucket") {
        keys.extend(page.contents.into_iter().map(|o| o.key));
    }
    keys
}

#[tokio::test]
async fn what_people_do_through_the_backend_is_audited_and_runs_are_not() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let net = stack(&app, &admin, "net").await;
    stack(&app, &admin, "dns").await;
    let key = api_key(&app, &admin, "ops").await;
    let actions = actions_of;

    // A person's lock, write and unlock through Terraform's protocol.
    assert_eq!(lock(&app, "net", Auth::Bearer(&key), "person-1", "ops").await.status, 200);
    assert_eq!(post(&app, "net", Auth::Bearer(&key), Some("person-1"), &state("l", 1, "by hand")).await.status, 200);
    assert_eq!(unlock(&app, "net", Auth::Bearer(&key), "person-1").await.status, 200);
    let trail = state_audit(&app, "net").await;
    assert_eq!(actions(&trail), ["state.lock", "state.write", "state.unlock"]);
    assert!(trail.iter().all(|(_, actor, _)| actor.contains(ADMIN_EMAIL)), "{trail:?}");
    assert_eq!(trail[1].2["serial"], 1);
    assert_eq!(trail[1].2["via"], "state backend");
    // A write refused (an older serial) is not in the trail.
    assert_eq!(post(&app, "net", Auth::Bearer(&key), None, &state("l", 0, "older")).await.status, 409);
    assert_eq!(state_audit(&app, "net").await.len(), 3);

    // A run's own lock, write and unlock are its job, not an admin action.
    let (run, token) = run_with_token(&app, net).await;
    assert_eq!(lock(&app, "net", Auth::Basic(&token), "run-1", "run").await.status, 200);
    assert_eq!(post(&app, "net", Auth::Basic(&token), Some("run-1"), &state("l", 2, "by a run")).await.status, 200);
    assert_eq!(unlock(&app, "net", Auth::Basic(&token), "run-1").await.status, 200);
    assert_eq!(state_audit(&app, "net").await.len(), 3);
    // Taking a run's lock away is.
    assert_eq!(lock(&app, "net", Auth::Basic(&token), "run-2", "run").await.status, 200);
    let forced = app.ok(&admin, "mutation { forceUnlockState(stack: \"net\", lockId: \"run-2\") { lockId } }", json!({})).await;
    assert_eq!(forced["forceUnlockState"]["lockId"], "run-2");
    let trail = state_audit(&app, "net").await;
    assert_eq!(actions(&trail).last().map(String::as_str), Some("state.force_unlock"));
    assert_eq!(trail.last().unwrap().2["held_by"], format!("run {run}"));

    // An import is recorded once, with the version it made; a refused one not at all.
    let import = "mutation($s: String!, $t: String!) { importState(stack: $s, state: $t) { id serial } }";
    let original = String::from_utf8(state("imported", 7, "from elsewhere")).unwrap();
    let made = app.ok(&admin, import, json!({ "s": "dns", "t": original })).await;
    assert_eq!(app.err(Some(&admin), import, json!({ "s": "dns", "t": original })).await.0, "CONFLICT");
    let trail = state_audit(&app, "dns").await;
    assert_eq!(actions(&trail), ["state.import"]);
    assert_eq!(trail[0].2["version"].to_string(), made["importState"]["id"].as_str().unwrap());
    assert_eq!(trail[0].2["via"], "api");
}

#[tokio::test]
async fn a_write_whose_transaction_fails_leaves_no_object_behind() {
    use diesel_async::RunQueryDsl;
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let net = stack(&app, &admin, "net").await;
    let key = api_key(&app, &admin, "ops").await;
    assert_eq!(post(&app, "net", Auth::Bearer(&key), None, &state("l", 1, "first")).await.status, 200);
    assert_eq!(state_keys(&app, net).await.len(), 1);

    // The database refuses the version row after the sealed object was put.
    let mut c = app.pg.database().connect().await.unwrap();
    for sql in [
        "CREATE FUNCTION refuse_state_versions() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'state versions refused by the test'; END $$",
        "CREATE TRIGGER refuse_state_versions BEFORE INSERT ON state_versions \
         FOR EACH ROW EXECUTE FUNCTION refuse_state_versions()",
    ] {
        diesel::sql_query(sql).execute(&mut c).await.unwrap();
    }
    let failed = post(&app, "net", Auth::Bearer(&key), None, &state("l", 2, "second")).await;
    assert!(failed.status.is_server_error(), "{}: {}", failed.status, failed.text());
    assert_eq!(state_keys(&app, net).await.len(), 1, "the failed write's object was left behind");
    assert_eq!(actions_of(&state_audit(&app, "net").await), ["state.write"], "a failed write is not audited");

    diesel::sql_query("DROP TRIGGER refuse_state_versions ON state_versions").execute(&mut c).await.unwrap();
    assert_eq!(post(&app, "net", Auth::Bearer(&key), None, &state("l", 2, "second")).await.status, 200);
    assert_eq!(state_keys(&app, net).await.len(), 2);
    let got = call(&app, "GET", &state_path("net"), Auth::Bearer(&key), None, None).await;
    assert_eq!(got.body, state("l", 2, "second"));
}

fn actions_of(rows: &[(String, String, Value)]) -> Vec<String> {
    rows.iter().map(|r| r.0.clone()).collect()
}

/// Every state object in the appliance's bucket, read with the S3 API.
async fn garage_objects(app: &Appliance) -> Vec<Vec<u8>> {
    let bucket = app.garage.bucket();
    let mut out = Vec::new();
    for page in bucket.list("state/".into(), None).await.expect("list the bucket") {
        for o in page.contents {
            out.push(bucket.get_object(&o.key).await.expect("get an object").bytes().to_vec());
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The genuine Terraform.

const CONFIG: &str = r#"
variable "greeting" {
  type    = string
  default = "hello"
}

locals {
  message = "${var.greeting} world"
}

output "message" {
  value = local.message
}
"#;

/// A working directory configured as workers configure it: the backend
/// override and a `-backend-config` file with the credentials.
fn workdir(app: &Appliance, name: &str, username: &str, password: &str) -> std::path::PathBuf {
    let dir = app.dir.subdir(name);
    std::fs::write(dir.join("main.tf"), CONFIG).unwrap();
    std::fs::write(dir.join("hangar_backend_override.tf"), "terraform {\n  backend \"http\" {}\n}\n").unwrap();
    let url = app.url(&state_path("infra"));
    let config = format!(
        "address = \"{url}\"\nlock_address = \"{url}\"\nunlock_address = \"{url}\"\nlock_method = \"LOCK\"\n\
         unlock_method = \"UNLOCK\"\nusername = \"{username}\"\npassword = \"{password}\"\n"
    );
    std::fs::write(dir.join("backend.hcl"), config).unwrap();
    dir
}

fn terraform(app: &Appliance, dir: &Path, args: &[&str]) -> Output {
    Command::new(hangar_testkit::terraform::terraform())
        .args(args)
        .current_dir(dir)
        // Go reads its trust roots from here: only the appliance's CA.
        .env("SSL_CERT_FILE", app.ca_path())
        .env("SSL_CERT_DIR", dir)
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("CHECKPOINT_DISABLE", "1")
        .env("HOME", dir)
        .env_remove("TF_LOG")
        .output()
        .expect("run terraform")
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "terraform {what} failed:\n{}\n{}", stdout(out), stderr(out));
}

#[tokio::test]
async fn terraform_inits_applies_pulls_and_force_unlocks_against_the_backend() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let stack_id = stack(&app, &admin, "infra").await;
    let (_, token) = run_with_token(&app, stack_id).await;
    let key = api_key(&app, &admin, "operator").await;

    let run_dir = workdir(&app, "run", "run", &token);
    ok(&terraform(&app, &run_dir, &["init", "-no-color", "-backend-config=backend.hcl"]), "init");
    ok(&terraform(&app, &run_dir, &["apply", "-no-color", "-auto-approve"]), "apply");
    let listed = versions(&app, &admin, "infra").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let first = listed[0]["serial"].as_i64().unwrap();
    let pulled = terraform(&app, &run_dir, &["state", "pull"]);
    ok(&pulled, "state pull");
    let pulled: Value = serde_json::from_slice(&pulled.stdout).unwrap();
    assert_eq!(pulled["outputs"]["message"]["value"], "hello world");
    assert_eq!(pulled["lineage"], listed[0]["lineage"]);

    // Another run holds the lock: this run's apply fails naming the holder.
    let (_, other) = run_with_token(&app, stack_id).await;
    let held = lock(&app, "infra", Auth::Basic(&other), "operator-lock-0001", "worker-b@host").await;
    assert_eq!(held.status, 200);
    let blocked = terraform(&app, &run_dir, &["apply", "-no-color", "-auto-approve", "-var", "greeting=hi"]);
    assert!(!blocked.status.success());
    let err = stderr(&blocked);
    assert!(err.contains("Error acquiring the state lock"), "{err}");
    assert!(err.contains("operator-lock-0001"), "{err}");

    // The run cannot force it open. Neither can an operator's Terraform 1.0.3:
    // its `force-unlock` sends no body, so it names no lock, and a made-up id
    // must not release whatever lock there is.
    let refused = terraform(&app, &run_dir, &["force-unlock", "-no-color", "-force", "operator-lock-0001"]);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let op_dir = workdir(&app, "operator", "operator", &key);
    ok(&terraform(&app, &op_dir, &["init", "-no-color", "-backend-config=backend.hcl"]), "operator init");
    for id in ["made-up-id", "operator-lock-0001"] {
        let forced = terraform(&app, &op_dir, &["force-unlock", "-no-color", "-force", id]);
        assert!(!forced.status.success(), "force-unlock {id}: {}", stdout(&forced));
    }
    let lock_q = "{ stack(slug: \"infra\") { stateLock { lockId heldBy runId who createdAt } } }";
    let held_now = app.ok(&admin, lock_q, json!({})).await;
    assert_eq!(held_now["stack"]["stateLock"]["lockId"], "operator-lock-0001", "{held_now}");
    assert_eq!(held_now["stack"]["stateLock"]["who"], "worker-b@host");
    // The API names the lock it releases.
    let force = "mutation($l: String!) { forceUnlockState(stack: \"infra\", lockId: $l) { lockId } }";
    let released = app.ok(&key, force, json!({ "l": "operator-lock-0001" })).await;
    assert_eq!(released["forceUnlockState"]["lockId"], "operator-lock-0001");
    let audit = app.ok(&admin, "query { auditEvents(action: \"state.force_unlock\") { items { actor } } }", json!({})).await;
    let items = audit["auditEvents"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(items[0]["actor"], format!("{ADMIN_EMAIL} (API key operator)"));

    ok(&terraform(&app, &run_dir, &["apply", "-no-color", "-auto-approve", "-var", "greeting=hi"]), "second apply");
    let listed = versions(&app, &admin, "infra").await;
    assert_eq!(listed.iter().map(|v| v["serial"].as_i64().unwrap()).collect::<Vec<_>>(), vec![first + 1, first]);
    let got = call(&app, "GET", &state_path("infra"), Auth::Bearer(&key), None, None).await;
    assert_eq!(serde_json::from_slice::<Value>(&got.body).unwrap()["outputs"]["message"]["value"], "hi world");
    // Terraform released its lock after each apply.
    assert!(app.ok(&admin, "{ stateLock(stack: \"infra\") { lockId } }", json!({})).await["stateLock"].is_null());
}

#[tokio::test]
async fn runs_that_only_plan_read_and_lock_in_parallel_but_never_write() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let stack_id = stack(&app, &admin, "net").await;
    let (_, tracked) = run_with_token(&app, stack_id).await;
    let (_, proposed) = run_of_kind(&app, stack_id, RunKind::Proposed).await;
    let (_, drift) = run_of_kind(&app, stack_id, RunKind::Drift).await;

    assert_eq!(lock(&app, "net", Auth::Basic(&tracked), "apply-lock", "w").await.status, 200);
    let v1 = state("lin", 1, "one");
    assert_eq!(post(&app, "net", Auth::Basic(&tracked), Some("apply-lock"), &v1).await.status, 200);

    // Plans lock without waiting for, or blocking, the tracked run.
    for token in [&proposed, &drift] {
        assert_eq!(lock(&app, "net", Auth::Basic(token), "plan-lock", "p").await.status, 200);
        let got = call(&app, "GET", &state_path("net"), Auth::Basic(token), None, None).await;
        assert_eq!(got.body, v1);
        let w = post(&app, "net", Auth::Basic(token), Some("plan-lock"), &state("lin", 2, "two")).await;
        assert_eq!(w.status, 403, "{}", w.text());
        assert!(w.text().contains("only plans"), "{}", w.text());
        assert_eq!(unlock(&app, "net", Auth::Basic(token), "plan-lock").await.status, 200);
        assert_eq!(call(&app, "LOCK", &state_path("net"), Auth::Basic(token), Some(b"nope"), None).await.status, 400);
    }
    // The tracked run's lock is untouched and its writes go on.
    let q = app.ok(&admin, "{ stateLock(stack: \"net\") { lockId } }", json!({})).await;
    assert_eq!(q["stateLock"]["lockId"], "apply-lock");
    assert_eq!(post(&app, "net", Auth::Basic(&tracked), Some("apply-lock"), &state("lin", 2, "two")).await.status, 200);
    assert_eq!(versions(&app, &admin, "net").await.len(), 2);
}

/// An UNLOCK names the lock it releases (its LockInfo body, or `?ID=`). An
/// empty one, as Terraform 1.0.3's `force-unlock` sends, names nothing and
/// releases only the caller's own lock; every release of someone else's lock
/// is audited with the holder it displaced.
#[tokio::test]
async fn unlocks_must_name_the_lock_they_release() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    let net = stack(&app, &admin, "net").await;
    let key = api_key(&app, &admin, "operator").await;

    // An operator's own lock, left by a terraform that died: an empty UNLOCK
    // from the same user releases it.
    assert_eq!(lock(&app, "net", Auth::Bearer(&key), "op-1", "me@laptop").await.status, 200);
    assert_eq!(call(&app, "UNLOCK", &state_path("net"), Auth::Bearer(&key), Some(b""), None).await.status, 200);
    assert_eq!(call(&app, "UNLOCK", &state_path("net"), Auth::Bearer(&key), Some(b""), None).await.status, 409);

    // A run's lock: an operator's empty UNLOCK, a wrong name in the body or in
    // the address, are all refused with 423 and the holder's lock info.
    let (run, token) = run_with_token(&app, net).await;
    assert_eq!(lock(&app, "net", Auth::Basic(&token), "run-lock", "worker@host").await.status, 200);
    let empty = call(&app, "UNLOCK", &state_path("net"), Auth::Bearer(&key), Some(b""), None).await;
    assert_eq!(empty.status, 423, "{}", empty.text());
    assert_eq!(empty.json()["ID"], "run-lock");
    assert_eq!(empty.json()["Who"], "worker@host");
    assert_eq!(unlock(&app, "net", Auth::Bearer(&key), "made-up").await.status, 423);
    let wrong = format!("{}?ID=made-up", state_path("net"));
    assert_eq!(call(&app, "UNLOCK", &wrong, Auth::Bearer(&key), Some(b""), None).await.status, 423);
    let q = "{ stack(slug: \"net\") { stateLock { lockId heldBy runId who createdAt } } }";
    let held = app.ok(&admin, q, json!({})).await;
    let held = &held["stack"]["stateLock"];
    assert_eq!(held["lockId"], "run-lock", "{held}");
    assert_eq!(held["heldBy"], format!("run {run}"));
    assert_eq!(held["runId"], run.to_string());
    assert_eq!(held["who"], "worker@host");
    assert!(held["createdAt"].is_string());
    assert!(state_audit(&app, "net").await.iter().all(|(action, _, _)| action != "state.force_unlock"));

    // Named in the address, as a Terraform that sends no body can be told to.
    let named = format!("{}?ID=run-lock", state_path("net"));
    assert_eq!(call(&app, "UNLOCK", &named, Auth::Bearer(&key), Some(b""), None).await.status, 200);
    assert!(app.ok(&admin, q, json!({})).await["stack"]["stateLock"].is_null());
    let trail = state_audit(&app, "net").await;
    let (_, actor, details) = trail.iter().find(|(action, _, _)| action == "state.force_unlock").expect("audited");
    assert_eq!(actor, &format!("{ADMIN_EMAIL} (API key operator)"));
    assert_eq!(details["lock_id"], "run-lock");
    assert_eq!(details["held_by"], format!("run {run}"));
    assert_eq!(details["run_id"], run);
    assert_eq!(details["who"], "worker@host");
    assert_eq!(details["via"], "state backend");
}
