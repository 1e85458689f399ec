//! `POST /webhooks/{kind}/{integration}` against a real appliance (PostgreSQL,
//! Garage, `hangar server` over TLS) with `hangar drain` running: the hostile
//! deliveries of the issue are each refused with the right status and leave no
//! job, no delivery row and no run; a redelivery is answered but acted on once;
//! a payload for a repository no stack uses is recorded and makes no run. Also
//! the integrations API: secrets are write-only, admins only, audited.

mod common;
mod vcs_support;

use common::*;
use serde_json::json;
use vcs_support::*;

const SECRET: &str = "It's a Secret to Everybody";
const REPO_URL: &str = "https://git.example.test/infra/network.git";
const ZERO: &str = "0000000000000000000000000000000000000000";

async fn setup(app: &Appliance) -> String {
    let admin = app.admin_token().await;
    let created = app
        .ok(
            &admin,
            CREATE_INTEGRATION,
            json!({ "i": { "name": "ghe", "kind": "GITHUB", "baseUrl": "https://git.example.test", "token": "ghp_api_token_value", "webhookSecret": SECRET } }),
        )
        .await;
    let i = &created["createVcsIntegration"];
    assert_eq!(i["kind"], "GITHUB");
    assert_eq!(i["hasToken"], true);
    assert_eq!(i["hasWebhookSecret"], true);
    assert_eq!(i["webhookPath"], "/webhooks/github/ghe");
    app.ok(&admin, CREATE_STACK, json!({ "i": stack_input("network", REPO_URL) })).await;
    app.ok(&admin, LINK, json!({ "s": "network", "i": "ghe" })).await;
    admin
}

#[tokio::test]
async fn hostile_deliveries_are_refused_and_create_nothing() {
    let app = Appliance::start().await;
    let admin = setup(&app).await;
    let _drain = spawn(&app, "drain");
    let push = serde_json::to_vec(&github_push(REPO_URL, "infra/network", "main", &"a".repeat(40), &"b".repeat(40), &["main.tf"])).unwrap();

    // No signature, a wrong one, a malformed one.
    assert_eq!(post_github(&app, "ghe", "push", "d-unsigned", &push, None).await.0, 401);
    assert_eq!(post_github(&app, "ghe", "push", "d-wrong", &push, Some("not the secret")).await.0, 401);
    let resp = app
        .client
        .post(app.url("/webhooks/github/ghe"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-malformed")
        .header("x-hub-signature-256", "sha256=zz")
        .body(push.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // A body signed for another body.
    let mut tampered = push.clone();
    let at = tampered.len() - 3;
    tampered[at] = b' ';
    let resp = app
        .client
        .post(app.url("/webhooks/github/ghe"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-tampered")
        .header("x-hub-signature-256", github_signature(SECRET, &push))
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // Over GitHub's 25 MB: refused on its declared length before a byte of it
    // is sent, and when streamed without a length, as soon as the limit is
    // crossed.
    let sig = github_signature(SECRET, b"");
    let hdrs = [("x-github-event", "push"), ("x-github-delivery", "d-big"), ("x-hub-signature-256", sig.as_str())];
    let line = status_for_declared_length(&app, "/webhooks/github/ghe", &hdrs, 26 * 1024 * 1024).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    let chunks = futures::stream::iter((0..420).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])));
    let resp = app
        .client
        .post(app.url("/webhooks/github/ghe"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-big-stream")
        .header("x-hub-signature-256", github_signature(SECRET, b""))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    // The server may answer and close before the whole body was sent; either
    // way nothing is enqueued (checked below).
    if let Ok(r) = resp {
        assert_eq!(r.status().as_u16(), 413);
    }

    // Correctly signed, but not JSON (or not an object).
    assert_eq!(post_github(&app, "ghe", "push", "d-json", b"{\"ref\": ", Some(SECRET)).await.0, 400);
    assert_eq!(post_github(&app, "ghe", "push", "d-array", b"[1, 2]", Some(SECRET)).await.0, 400);

    // Unknown integration, a kind that is not the integration's, an unknown kind.
    assert_eq!(post_github(&app, "nope", "push", "d-404", &push, Some(SECRET)).await.0, 404);
    let resp = app
        .client
        .post(app.url("/webhooks/gitlab/ghe"))
        .header("x-gitlab-event", "Push Hook")
        .header("x-gitlab-token", SECRET)
        .header("x-gitlab-event-uuid", "d-kind")
        .body(push.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let resp = app.client.post(app.url("/webhooks/svn/ghe")).body(push.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    // Only POST.
    let resp = app.client.get(app.url("/webhooks/github/ghe")).send().await.unwrap();
    assert_ne!(resp.status().as_u16(), 200);

    assert_eq!(delivery_jobs(&app).await, 0, "a refused delivery enqueued a job");
    assert_eq!(delivery_rows(&app).await, 0, "a refused delivery was recorded");

    // A good delivery, then its redelivery: one job, one run.
    let (status, body) = post_github(&app, "ghe", "push", "d-good", &push, Some(SECRET)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let (status, body) = post_github(&app, "ghe", "push", "d-good", &push, Some(SECRET)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "duplicate");
    let d = processed(&app, &admin, "ghe", "d-good").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    assert_eq!(d["runIds"].as_array().unwrap().len(), 1);
    // A third time, after it was processed.
    assert_eq!(post_github(&app, "ghe", "push", "d-good", &push, Some(SECRET)).await.0, 200);
    assert_eq!(delivery_jobs(&app).await, 1);
    let runs = runs_of_stack(&app, "network").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].1, "tracked");
    assert_eq!(runs[0].3, "b".repeat(40));

    // A payload for a repository no stack uses: recorded, no run.
    let other = serde_json::to_vec(&github_push(
        "https://git.example.test/someone/else.git",
        "someone/else",
        "main",
        &"c".repeat(40),
        &"d".repeat(40),
        &["main.tf"],
    ))
    .unwrap();
    assert_eq!(post_github(&app, "ghe", "push", "d-unknown-repo", &other, Some(SECRET)).await.0, 202);
    let d = processed(&app, &admin, "ghe", "d-unknown-repo").await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("no stack linked to ghe uses this repository"), "{d}");

    // Signed JSON the parser refuses (a push without a ref): recorded as failed.
    let (status, _) = post_github(&app, "ghe", "push", "d-no-ref", b"{\"after\": 1}", Some(SECRET)).await;
    assert_eq!(status, 202);
    let d = processed(&app, &admin, "ghe", "d-no-ref").await;
    assert_eq!(d["outcome"], "FAILED", "{d}");
    assert!(d["error"].as_str().unwrap().contains("github push delivery"), "{d}");

    // Tags, deletions and pings: recorded and ignored.
    let mut tag = github_push(REPO_URL, "infra/network", "main", ZERO, &"e".repeat(40), &[]);
    tag["ref"] = json!("refs/tags/v1.0.0");
    let tag = serde_json::to_vec(&tag).unwrap();
    assert_eq!(post_github(&app, "ghe", "push", "d-tag", &tag, Some(SECRET)).await.0, 202);
    let d = processed(&app, &admin, "ghe", "d-tag").await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(d["detail"].as_str().unwrap().starts_with("tag v1.0.0 created"), "{d}");
    let deleted = serde_json::to_vec(&github_push(REPO_URL, "infra/network", "main", &"b".repeat(40), ZERO, &[])).unwrap();
    assert_eq!(post_github(&app, "ghe", "push", "d-deleted", &deleted, Some(SECRET)).await.0, 202);
    assert_eq!(processed(&app, &admin, "ghe", "d-deleted").await["outcome"], "IGNORED");
    let ping = br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#;
    assert_eq!(post_github(&app, "ghe", "ping", "d-ping", ping, Some(SECRET)).await.0, 202);
    assert_eq!(processed(&app, &admin, "ghe", "d-ping").await["outcome"], "IGNORED");

    assert_eq!(all_runs(&app).await, 1, "only the one good push made a run");
}

#[tokio::test]
async fn integration_secrets_are_write_only_and_admin_only() {
    let app = Appliance::start().await;
    let admin = setup(&app).await;
    let writer = app.user_token(&admin, "writer@hangar.test", "WRITER").await;
    let reader = app.user_token(&admin, "reader@hangar.test", "READER").await;

    // Nothing in any answer, audit event or log carries a secret.
    let list = app.ok(&admin, "{ vcsIntegrations { name kind baseUrl hasToken hasWebhookSecret stacks } }", json!({})).await;
    assert_eq!(list["vcsIntegrations"][0]["stacks"], json!(["network"]));
    let audit = app.ok(&admin, "{ auditEvents(first: 100) { items { action details } } }", json!({})).await;
    let everything = format!("{list}{audit}{}", app.server_log());
    assert!(!everything.contains(SECRET) && !everything.contains("ghp_api_token_value"), "a secret leaked");
    assert!(audit.to_string().contains("vcs_integration.create"), "{audit}");

    // Admins only for integrations; writers link stacks; readers read deliveries.
    let (code, _) = app.err(Some(&writer), "{ vcsIntegrations { name } }", json!({})).await;
    assert_eq!(code, "FORBIDDEN");
    let (code, _) = app
        .err(
            Some(&writer),
            CREATE_INTEGRATION,
            json!({ "i": { "name": "x", "kind": "GITEA", "baseUrl": "https://gitea.test", "webhookSecret": "s3cret" } }),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    app.ok(&writer, LINK, json!({ "s": "network", "i": null })).await;
    app.ok(&writer, LINK, json!({ "s": "network", "i": "ghe" })).await;
    assert_eq!(app.err(Some(&reader), LINK, json!({ "s": "network", "i": null })).await.0, "FORBIDDEN");
    app.ok(&reader, DELIVERIES, json!({ "i": "ghe" })).await;
    assert_eq!(app.err(None, DELIVERIES, json!({ "i": "ghe" })).await.0, "UNAUTHENTICATED");

    // Invalid settings are refused before anything is stored.
    for (input, field) in [
        (json!({ "name": "a", "kind": "GITHUB", "baseUrl": "https://g.test" }), "webhookSecret"),
        (json!({ "name": "b", "kind": "GITHUB", "baseUrl": "http://g.test", "webhookSecret": "s" }), "baseUrl"),
        (json!({ "name": "c", "kind": "GITLAB", "baseUrl": "https://g.test", "webhookSecret": "whsec_???" }), "webhookSecret"),
        (json!({ "name": "Bad Name", "kind": "GIT", "baseUrl": "https://g.test" }), "name"),
        (json!({ "name": "d", "kind": "GITEA", "baseUrl": "https://g.test", "webhookSecret": "s", "caPem": "not a pem" }), "caPem"),
        (json!({ "name": "e", "kind": "GITEA", "baseUrl": "https://g.test", "webhookSecret": "s\u{0}x" }), "webhookSecret"),
    ] {
        let (code, msg) = app.err(Some(&admin), CREATE_INTEGRATION, json!({ "i": input })).await;
        assert_eq!(code, "BAD_USER_INPUT", "{input}: {msg}");
        assert!(msg.starts_with(field), "{input}: {msg}");
    }
    let (code, _) = app
        .err(
            Some(&admin),
            CREATE_INTEGRATION,
            json!({ "i": { "name": "ghe", "kind": "GITEA", "baseUrl": "https://g.test", "webhookSecret": "s" } }),
        )
        .await;
    assert_eq!(code, "CONFLICT");

    // Rotating the webhook secret: the old one stops working at once.
    let push = serde_json::to_vec(&github_push(REPO_URL, "infra/network", "main", &"a".repeat(40), &"b".repeat(40), &["x.tf"])).unwrap();
    app.ok(
        &admin,
        "mutation { updateVcsIntegration(name: \"ghe\", input: { webhookSecret: \"new-secret\" }) { hasWebhookSecret } }",
        json!({}),
    )
    .await;
    assert_eq!(post_github(&app, "ghe", "push", "r-1", &push, Some(SECRET)).await.0, 401);
    assert_eq!(post_github(&app, "ghe", "push", "r-2", &push, Some("new-secret")).await.0, 202);
    // Clearing the secret of a vendor integration is refused.
    let (code, _) = app
        .err(Some(&admin), "mutation { updateVcsIntegration(name: \"ghe\", input: { webhookSecret: \"\" }) { name } }", json!({}))
        .await;
    assert_eq!(code, "BAD_USER_INPUT");

    // Deleting it unlinks the stack and takes its deliveries with it.
    app.ok(&admin, "mutation { deleteVcsIntegration(name: \"ghe\") }", json!({})).await;
    assert_eq!(post_github(&app, "ghe", "push", "r-3", &push, Some("new-secret")).await.0, 404);
    assert_eq!(delivery_rows(&app).await, 0);
    assert_eq!(app.err(Some(&admin), DELIVERIES, json!({ "i": "ghe" })).await.0, "NOT_FOUND");
}

#[tokio::test]
async fn gitlab_and_gitea_deliveries_are_verified_their_own_way() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    for (name, kind, secret) in [("lab", "GITLAB", "gitlab-secret-token"), ("tea", "GITEA", "gitea-hmac-secret")] {
        app.ok(
            &admin,
            CREATE_INTEGRATION,
            json!({ "i": { "name": name, "kind": kind, "baseUrl": "https://git.example.test", "webhookSecret": secret } }),
        )
        .await;
    }
    let body = br#"{"object_kind": "push"}"#.to_vec();
    let post = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let mut req = app.client.post(app.url(path)).header("content-type", "application/json").body(body.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let lab = |token: &str, id: &str| {
        vec![("x-gitlab-event", "Push Hook".to_string()), ("x-gitlab-token", token.to_string()), ("x-gitlab-event-uuid", id.to_string())]
    };
    assert_eq!(post("/webhooks/gitlab/lab", lab("wrong-token", "l-1")).await, 401);
    assert_eq!(post("/webhooks/gitlab/lab", vec![("x-gitlab-event", "Push Hook".into())]).await, 401);
    assert_eq!(post("/webhooks/gitlab/lab", lab("gitlab-secret-token", "l-2")).await, 202);
    assert_eq!(post("/webhooks/gitlab/lab", lab("gitlab-secret-token", "l-2")).await, 200);

    let sig = |secret: &str| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        hex::encode(ring::hmac::sign(&key, &body).as_ref())
    };
    let tea = |s: String, id: &str| {
        vec![("x-gitea-event", "push".to_string()), ("x-gitea-delivery", id.to_string()), ("x-gitea-signature", s)]
    };
    assert_eq!(post("/webhooks/gitea/tea", tea(sig("not-it"), "t-1")).await, 401);
    assert_eq!(post("/webhooks/gitea/tea", tea(sig("gitea-hmac-secret"), "t-2")).await, 202);
    // Forgejo's name for the kind reaches the same integration.
    assert_eq!(post("/webhooks/forgejo/tea", tea(sig("gitea-hmac-secret"), "t-3")).await, 202);
    // A GitHub-style signature on the Gitea integration is not Gitea's.
    assert_eq!(post("/webhooks/github/tea", tea(sig("gitea-hmac-secret"), "t-4")).await, 404);
    assert_eq!(delivery_rows(&app).await, 3);
}

/// Deliveries as real git servers send them, end to end: GitLab before 17.4
/// (one event UUID shared by distinct events) and before 14.8 (no id header
/// at all), Gitea's form-encoded bodies, GitHub's (refused with what to
/// change), Bitbucket's unsigned "Test connection", Gitea's "Test Delivery"
/// buttons (pings, never runs), a GitLab token that GitLab could never send,
/// and the order of the checks (an unknown integration is 404 whatever its
/// size).
#[tokio::test]
async fn deliveries_as_real_git_servers_send_them() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    for (name, kind, secret) in [
        ("lab", "GITLAB", "gitlab-secret-token"),
        ("tea", "GITEA", "gitea-hmac-secret"),
        ("ghe", "GITHUB", SECRET),
        ("bb", "BITBUCKET", "bitbucket-secret"),
    ] {
        app.ok(
            &admin,
            CREATE_INTEGRATION,
            json!({ "i": { "name": name, "kind": kind, "baseUrl": "https://git.example.test", "webhookSecret": secret } }),
        )
        .await;
    }
    app.ok(&admin, CREATE_STACK, json!({ "i": stack_input("app", "https://git.example.test/org/app.git") })).await;
    app.ok(&admin, LINK, json!({ "s": "app", "i": "tea" })).await;
    let _drain = spawn(&app, "drain");
    let post = |path: &str, headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let mut req = app.client.post(app.url(path)).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let hmac = |secret: &str, body: &[u8]| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    };

    // GitLab 14.8 to 17.3: two events under one UUID are two deliveries; the
    // same one resent is one. Before 14.8 there is no id header at all.
    let lab = |extra: Vec<(&'static str, String)>| {
        let mut h = vec![("x-gitlab-event", "Push Hook".to_string()), ("x-gitlab-token", "gitlab-secret-token".to_string())];
        h.extend(extra);
        h
    };
    let uuid = || vec![("x-gitlab-event-uuid", "13792a34-cac6-4fda-95a8-c58e00a3954e".to_string())];
    let (a, b) = (br#"{"object_kind": "push", "after": "a"}"#.to_vec(), br#"{"object_kind": "push", "after": "b"}"#.to_vec());
    assert_eq!(post("/webhooks/gitlab/lab", lab(uuid()), a.clone()).await.0, 202);
    assert_eq!(post("/webhooks/gitlab/lab", lab(uuid()), b.clone()).await.0, 202, "a distinct event under the same UUID");
    assert_eq!(post("/webhooks/gitlab/lab", lab(uuid()), a.clone()).await.0, 200, "the same delivery again");
    let (status, answer) = post("/webhooks/gitlab/lab", lab(vec![]), a.clone()).await;
    assert_eq!(status, 202, "a GitLab older than 14.8: {answer}");
    assert_eq!(post("/webhooks/gitlab/lab", lab(vec![]), a.clone()).await.0, 200);

    // A GitLab token GitLab could never send is refused when it is set.
    let (code, message) = app
        .err(
            Some(&admin),
            CREATE_INTEGRATION,
            json!({ "i": { "name": "lab2", "kind": "GITLAB", "baseUrl": "https://git.example.test", "webhookSecret": "pässwörd" } }),
        )
        .await;
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(message.contains("X-Gitlab-Token"), "{message}");

    // Gitea's form-encoded body: verified on the JSON it carries, which is
    // what is queued.
    let json_doc = br#"{"zen": "form-encoded", "ref": "refs/heads/main"}"#;
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("payload", std::str::from_utf8(json_doc).unwrap());
    let form = form.finish().into_bytes();
    let tea = |sig: String, id: &str| {
        vec![
            ("content-type", "application/x-www-form-urlencoded".to_string()),
            ("x-gitea-event", "issues".to_string()),
            ("x-gitea-delivery", id.to_string()),
            ("x-gitea-signature", sig),
        ]
    };
    let (status, answer) = post("/webhooks/gitea/tea", tea(hmac("gitea-hmac-secret", json_doc), "f-1"), form.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let d = processed(&app, &admin, "tea", "f-1").await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(d["error"].is_null(), "the queued document is the JSON: {d}");
    assert_eq!(post("/webhooks/gitea/tea", tea(hmac("gitea-hmac-secret", &form), "f-2"), form.clone()).await.0, 401);
    // GitHub's form bodies: the signature holds, and the answer says what to change.
    let (status, answer) = post(
        "/webhooks/github/ghe",
        vec![
            ("content-type", "application/x-www-form-urlencoded".to_string()),
            ("x-github-event", "ping".to_string()),
            ("x-github-delivery", "g-form".to_string()),
            ("x-hub-signature-256", github_signature(SECRET, &form)),
        ],
        form.clone(),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("application/json"), "{answer}");

    // Bitbucket's "Test connection" is unsigned: a clear answer, nothing queued.
    let rows = delivery_rows(&app).await;
    let (status, answer) = post(
        "/webhooks/bitbucket/bb",
        vec![("x-event-key", "diagnostics:ping".to_string()), ("x-request-id", "bb-test".to_string())],
        br#"{"test": true}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "ping");
    assert!(answer["message"].as_str().unwrap().contains("nothing was queued"), "{answer}");
    assert_eq!(delivery_rows(&app).await, rows);

    // Gitea's "Test Delivery": all-zero ids (current), or the head twice
    // (older). Pings, never runs.
    let zero = "0".repeat(40);
    let head = "bffeb74224043ba2feb48d137756c8a9331c449a".to_string();
    for (id, before, after) in [("t-new", zero.clone(), zero.clone()), ("t-old", head.clone(), head.clone())] {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "before": before, "after": after, "compare_url": "",
            "commits": [{ "id": after, "message": "test", "added": ["main.tf"], "removed": [], "modified": [] }],
            "total_commits": 1,
            "repository": { "full_name": "org/app", "clone_url": "https://git.example.test/org/app.git" },
            "pusher": { "login": "admin" }
        }))
        .unwrap();
        let headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-gitea-event", "push".to_string()),
            ("x-gitea-delivery", id.to_string()),
            ("x-gitea-signature", hmac("gitea-hmac-secret", &body)),
        ];
        assert_eq!(post("/webhooks/gitea/tea", headers, body).await.0, 202);
        let d = processed(&app, &admin, "tea", id).await;
        assert_eq!(d["outcome"], "IGNORED", "{d}");
        assert!(d["detail"].as_str().unwrap().starts_with("ping"), "{d}");
    }
    assert!(runs_of_stack(&app, "app").await.is_empty(), "a test delivery made a run");

    // An unknown integration is 404 however large the body says it is.
    let line = status_for_declared_length(&app, "/webhooks/github/nope", &[("x-github-event", "push")], 100 * 1024 * 1024).await;
    assert!(line.starts_with("HTTP/1.1 404"), "{line}");
}

#[tokio::test]
async fn bodies_being_read_share_one_budget_of_memory() {
    // Room for 1 MiB of bodies at once.
    let app = Appliance::start_with(Options {
        server_extra: "webhook_bytes_in_flight = 1048576\n".into(),
        ..Default::default()
    })
    .await;
    setup(&app).await;

    // A sender that declares 700 KiB, sends a little and stalls: it holds
    // its room while it stalls, signed or not.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{\"ref\":".to_vec())).await.unwrap();
    let stalled = app
        .client
        .post(app.url("/webhooks/github/ghe"))
        .header("content-type", "application/json")
        .header("content-length", (700 * 1024).to_string())
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-stalled")
        .body(reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })))
        .send();
    let stalled = tokio::spawn(stalled);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // A good delivery of 600 KiB finds no room and is told to come back.
    let mut push = github_push(REPO_URL, "infra/network", "main", &"a".repeat(40), &"b".repeat(40), &["main.tf"]);
    push["padding"] = json!("x".repeat(600 * 1024));
    let push = serde_json::to_vec(&push).unwrap();
    let (status, body) = post_github(&app, "ghe", "push", "d-big", &push, Some(SECRET)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["message"], "too many webhook deliveries are being read at once; send it again later", "{body}");
    assert_eq!(delivery_rows(&app).await, 0);

    // Once the stalled sender is gone, its room is free again.
    drop(tx);
    let _ = stalled.await;
    let (status, body) = post_github(&app, "ghe", "push", "d-big", &push, Some(SECRET)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(delivery_rows(&app).await, 1);
}
