//! Bundle uploads through the API (`/api/v1/bundles/…`): chunked and
//! resumable, verified while the bytes arrive, for admins only, audited; every
//! hostile bundle of the format's corpus is refused with the reason the file
//! reader gives, and a refused upload leaves nothing in the staging area.

mod common;

#[path = "../../../bundles/tests/common/mod.rs"]
#[allow(unused_imports)]
mod bundle_kit;

use std::path::PathBuf;

use bundle_kit::corpus;
use common::*;
use serde_json::{Value, json};

struct Uploads {
    app: Appliance,
    staging: PathBuf,
    admin: String,
}

async fn start() -> Uploads {
    let keys = tempfile::tempdir().unwrap().keep();
    std::fs::write(
        keys.join("trusted.pub"),
        corpus::trusted_key().public_key().to_pem(),
    )
    .unwrap();
    let staging = keys.with_extension("staging");
    let app = Appliance::start_with(Options {
        server_extra: format!(
            "bundles_dir = \"{}\"\nbundle_trust_dir = \"{}\"\n",
            staging.display(),
            keys.display()
        ),
        ..Default::default()
    })
    .await;
    let admin = app.admin_token().await;
    Uploads {
        app,
        staging,
        admin,
    }
}

impl Uploads {
    async fn call(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        offset: Option<u64>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .app
            .client
            .request(method, self.app.url(path))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(o) = offset {
            req = req.header("upload-offset", o.to_string());
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn begin(&self, name: &str, size: u64) -> String {
        let body = serde_json::to_vec(&json!({ "name": name, "size": size })).unwrap();
        let (status, v) = self
            .call(
                Some(&self.admin),
                reqwest::Method::POST,
                "/api/v1/bundles/uploads",
                None,
                body,
            )
            .await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    async fn patch(&self, id: &str, offset: u64, bytes: &[u8]) -> (u16, Value) {
        let path = format!("/api/v1/bundles/uploads/{id}");
        self.call(
            Some(&self.admin),
            reqwest::Method::PATCH,
            &path,
            Some(offset),
            bytes.to_vec(),
        )
        .await
    }

    /// Names in the staging area's two directories.
    fn left(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["uploads", "staged"] {
            for e in std::fs::read_dir(self.staging.join(sub)).unwrap() {
                out.push(format!(
                    "{sub}/{}",
                    e.unwrap().file_name().to_string_lossy()
                ));
            }
        }
        out.sort();
        out
    }
}

fn genuine() -> Vec<u8> {
    let key = corpus::trusted_key();
    corpus::genuine(
        &bundle_kit::Meta::default(),
        &corpus::sample(&corpus::tool_v1()),
        &[&key],
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

#[tokio::test]
async fn an_upload_in_chunks_is_resumed_where_it_stopped_verified_and_staged() {
    let u = start().await;
    let bundle = genuine();
    let id = u.begin("hangar-1.0.0.bundle", bundle.len() as u64).await;

    let half = bundle.len() / 2;
    let (status, v) = u.patch(&id, 0, &bundle[..half]).await;
    assert_eq!(
        (status, v["offset"].as_u64()),
        (200, Some(half as u64)),
        "{v}"
    );
    assert!(v.get("bundle").is_none(), "{v}");

    // A client that lost track asks where to resume.
    let (status, v) = u
        .call(
            Some(&u.admin),
            reqwest::Method::GET,
            &format!("/api/v1/bundles/uploads/{id}"),
            None,
            vec![],
        )
        .await;
    assert_eq!(
        (status, v["offset"].as_u64()),
        (200, Some(half as u64)),
        "{v}"
    );
    // A chunk at the wrong offset is refused, and says where to resume.
    let (status, v) = u.patch(&id, 0, &bundle[..10]).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("resume from {half}")),
        "{v}"
    );

    // The server restarts between two chunks: the upload goes on from disk.
    let mut u = u;
    u.app.server().terminate(std::time::Duration::from_secs(20));
    u.app.start_server().await;
    let (status, v) = u.patch(&id, half as u64, &bundle[half..]).await;
    assert_eq!(status, 200, "{v}");
    let staged = &v["bundle"];
    assert_eq!(
        (staged["kind"].as_str(), staged["version"].as_str()),
        (Some("appliance"), Some("1.0.0")),
        "{v}"
    );
    assert_eq!(staged["sha256"], sha256_hex(&bundle), "{v}");
    assert_eq!(staged["uploaded_by"], ADMIN_EMAIL, "{v}");
    let on_disk = std::fs::read(u.staging.join("staged").join(format!("{id}.bundle"))).unwrap();
    assert_eq!(on_disk, bundle);
    assert_eq!(
        u.left(),
        vec![format!("staged/{id}.bundle"), format!("staged/{id}.json")]
    );

    let (status, v) = u
        .call(
            Some(&u.admin),
            reqwest::Method::GET,
            "/api/v1/bundles",
            None,
            vec![],
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["bundles"][0]["id"], id.as_str(), "{v}");

    // The upload is over: it cannot be written to again.
    let (status, _) = u.patch(&id, bundle.len() as u64, b"x").await;
    assert_eq!(status, 404);

    let events = u
        .app
        .ok(&u.admin, "{ auditEvents(first: 20, action: \"bundle.uploaded\") { items { actor target details } } }", json!({}))
        .await;
    let item = &events["auditEvents"]["items"][0];
    assert_eq!(
        (item["actor"].as_str(), item["target"].as_str()),
        (Some(ADMIN_EMAIL), Some(id.as_str())),
        "{events}"
    );

    // Removing a staged bundle removes its files.
    let (status, _) = u
        .call(
            Some(&u.admin),
            reqwest::Method::DELETE,
            &format!("/api/v1/bundles/{id}"),
            None,
            vec![],
        )
        .await;
    assert_eq!(status, 204);
    assert!(u.left().is_empty(), "{:?}", u.left());
}

#[tokio::test]
async fn only_admins_upload_and_limits_hold() {
    let u = start().await;
    let writer = u
        .app
        .user_token(&u.admin, "writer@hangar.test", "WRITER")
        .await;
    let body = serde_json::to_vec(&json!({ "name": "b", "size": 10 })).unwrap();
    for (token, expected) in [
        (None, 401),
        (Some("nonsense"), 401),
        (Some(writer.as_str()), 403),
    ] {
        let (status, v) = u
            .call(
                token,
                reqwest::Method::POST,
                "/api/v1/bundles/uploads",
                None,
                body.clone(),
            )
            .await;
        assert_eq!(status, expected, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let id = u.begin("b", 10).await;
    let (status, _) = u
        .call(
            Some(&writer),
            reqwest::Method::PATCH,
            &format!("/api/v1/bundles/uploads/{id}"),
            Some(0),
            vec![0; 4],
        )
        .await;
    assert_eq!(status, 403);

    let too_big = serde_json::to_vec(&json!({ "name": "b", "size": 1u64 << 50 })).unwrap();
    let (status, v) = u
        .call(
            Some(&u.admin),
            reqwest::Method::POST,
            "/api/v1/bundles/uploads",
            None,
            too_big,
        )
        .await;
    assert_eq!(status, 413, "{v}");
    for bad in [
        json!({ "name": "", "size": 10 }),
        json!({ "name": "a\nb", "size": 10 }),
        json!({ "name": "b", "size": 0 }),
        json!({ "size": 3 }),
    ] {
        let (status, v) = u
            .call(
                Some(&u.admin),
                reqwest::Method::POST,
                "/api/v1/bundles/uploads",
                None,
                serde_json::to_vec(&bad).unwrap(),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    // Bytes past the declared size are refused, and the upload is gone.
    let (status, v) = u.patch(&id, 0, &[0; 11]).await;
    assert_eq!(status, 400, "{v}");
    assert!(u.left().is_empty(), "{:?}", u.left());
    // Ids are checked before they touch the file system.
    let (status, _) = u.patch("../../etc/passwd", 0, b"x").await;
    assert_eq!(status, 404);
    let (status, _) = u
        .call(
            Some(&u.admin),
            reqwest::Method::DELETE,
            "/api/v1/bundles/..%2f..%2fx",
            None,
            vec![],
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn every_hostile_bundle_is_refused_through_the_upload_api_and_leaves_nothing() {
    let u = start().await;
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let trust = bundle_kit::trust(&[&corpus::trusted_key()]);
    let mut failures = Vec::new();
    for (i, case) in corpus::hostile(&outside).iter().enumerate() {
        // Downgrades are the installer's call, made against the installed
        // release; the staging area holds bundles of any version.
        if case.installed.is_some() {
            continue;
        }
        let path = root.path().join(format!("{i:02}.bundle"));
        std::fs::write(&path, &case.bundle).unwrap();
        let file_code = match hangar_bundle::Bundle::open(&path, &trust)
            .and_then(|b| b.verify(Default::default()))
        {
            Ok(_) => "accepted",
            Err(e) => e.code(),
        };
        let id = u.begin(case.name, case.bundle.len() as u64).await;
        // Two chunks: the refusal may come with either.
        let cut = case.bundle.len() / 2;
        let (mut status, mut v) = u.patch(&id, 0, &case.bundle[..cut]).await;
        if status == 200 {
            (status, v) = u.patch(&id, cut as u64, &case.bundle[cut..]).await;
        }
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let code = message
            .split_once("refused (")
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(c, _)| c)
            .unwrap_or("?");
        let same = code == file_code
            || (code == "length_mismatch"
                && matches!(file_code, "truncated" | "trailing_bytes" | "corrupt_header"));
        if status != 400 || !same {
            failures.push(format!(
                "{}: {status} {code}, the file reader says {file_code}: {v}",
                case.name
            ));
        }
        let left = u.left();
        if !left.is_empty() {
            failures.push(format!("{}: left {left:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let events = u
        .app
        .ok(
            &u.admin,
            "{ auditEvents(first: 5, action: \"bundle.upload_refused\") { items { details } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        events["auditEvents"]["items"].as_array().unwrap().len(),
        5,
        "{events}"
    );
}

/// `hangar bundle upload` with this appliance's address, CA and `key`, its
/// resume records under `state`.
fn upload_command(u: &Uploads, key: &str, state: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(hangar_testkit::cargo_bin("hangar"));
    cmd.arg("bundle")
        .args(args)
        .arg("--server")
        .arg(u.app.url("/"))
        .arg("--ca-file")
        .arg(u.app.ca_path())
        .env("HANGAR_API_KEY", key)
        .env("HANGAR_CLIENT_CONFIG", state.join("no-client.toml"))
        .env("XDG_STATE_HOME", state)
        .stdin(std::process::Stdio::null());
    cmd
}

#[tokio::test]
async fn a_one_gib_upload_killed_halfway_is_resumed_by_running_the_command_again() {
    use std::io::Read;
    let u = start().await;
    let made = u
        .app
        .ok(&u.admin, "mutation { createApiKey(name: \"uploads\", role: ADMIN) { key } }", json!({}))
        .await;
    let key = made["createApiKey"]["key"].as_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();

    // 1 GiB that does not compress: the bundle is as large.
    let bundle = work.path().join("hangar-1.0.0.bundle");
    random_bundle(&bundle, 1 << 30, corpus::trusted_key());
    let size = std::fs::metadata(&bundle).unwrap().len();
    assert!(size >= 1 << 30, "{size}");
    let expected = {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut f = std::fs::File::open(&bundle).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        hex::encode(ctx.finish().as_ref())
    };

    // Killed once more than half is on the appliance.
    let state = work.path().join("state");
    let bundle_arg = bundle.to_str().unwrap();
    let mut first = upload_command(&u, &key, &state, &["upload", bundle_arg, "--chunk-mib", "16"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let part_len = || -> u64 {
        std::fs::read_dir(u.staging.join("uploads"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .max()
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while part_len() < size / 2 {
        assert!(first.try_wait().unwrap().is_none(), "the upload ended before it was cut");
        assert!(std::time::Instant::now() < deadline, "the upload never got halfway");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let cut_at = part_len();
    assert!(cut_at < size, "cut at {cut_at} of {size}");

    let second = upload_command(&u, &key, &state, &["upload", bundle_arg, "--json"]).output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let staged: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!((staged["sha256"].as_str(), staged["size"].as_u64()), (Some(expected.as_str()), Some(size)), "{staged}");
    assert_eq!(staged["kind"], "tools");
    // One upload, resumed: never started over.
    let started = u
        .app
        .ok(&u.admin, "{ auditEvents(first: 10, action: \"bundle.upload_started\") { items { target } } }", json!({}))
        .await;
    assert_eq!(started["auditEvents"]["items"].as_array().unwrap().len(), 1, "{started}");
    assert_eq!(started["auditEvents"]["items"][0]["target"], staged["id"]);

    let list = upload_command(&u, &key, &state, &["list", "--json"]).output().unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["id"], staged["id"], "{listed}");
    std::fs::remove_file(u.staging.join("staged").join(format!("{}.bundle", staged["id"].as_str().unwrap()))).unwrap();

    // Where to connect is a usage question: exit code 2, one line.
    let bare = std::process::Command::new(hangar_testkit::cargo_bin("hangar"))
        .args(["bundle", "upload", bundle_arg])
        .env("HANGAR_CLIENT_CONFIG", state.join("no-client.toml"))
        .env_remove("HANGAR_SERVER")
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(2), "{}", String::from_utf8_lossy(&bare.stderr));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("no server"), "{}", String::from_utf8_lossy(&bare.stderr));
}

impl Uploads {
    /// Uploads `bytes` in one chunk; the staged bundle's id.
    async fn stage(&self, name: &str, bytes: &[u8]) -> String {
        let id = self.begin(name, bytes.len() as u64).await;
        let (status, v) = self.patch(&id, 0, bytes).await;
        assert_eq!(status, 200, "{v}");
        v["bundle"]["id"].as_str().unwrap().to_string()
    }

    async fn upgrade(&self, token: Option<&str>, id: &str) -> (u16, Value) {
        let path = format!("/api/v1/bundles/{id}/upgrade");
        self.call(token, reqwest::Method::POST, &path, None, vec![]).await
    }

    async fn staged(&self, id: &str) -> Value {
        let (status, v) = self
            .call(Some(&self.admin), reqwest::Method::GET, "/api/v1/bundles", None, vec![])
            .await;
        assert_eq!(status, 200, "{v}");
        v["bundles"].as_array().unwrap().iter().find(|b| b["id"] == id).cloned().unwrap_or(Value::Null)
    }
}

/// What the installer's upgrade agent would write (it runs as root on an
/// installed appliance; `installer/tests/upgrade.rs` runs the real one).
fn agent_writes(staging: &std::path::Path, request: &str, file: &str, body: Value) {
    std::fs::write(staging.join("upgrades").join(format!("{request}.{file}.json")), body.to_string()).unwrap();
}

#[tokio::test]
async fn an_upgrade_is_asked_for_by_an_admin_once_at_a_time_with_a_staged_release() {
    let u = start().await;
    let key = corpus::trusted_key();
    let release = u.stage("hangar-1.0.0.bundle", &genuine()).await;
    let tools_meta = bundle_kit::Meta { kind: hangar_bundle::Kind::Tools, ..Default::default() };
    let tools = u
        .stage("tools.bundle", &corpus::genuine(&tools_meta, &corpus::sample(&corpus::tool_v1()), &[&key]))
        .await;
    let same_meta = bundle_kit::Meta { version: env!("CARGO_PKG_VERSION"), ..Default::default() };
    let same = u.stage("same.bundle", &corpus::genuine(&same_meta, &corpus::sample(&corpus::tool_v1()), &[&key])).await;
    let writer = u.app.user_token(&u.admin, "writer@hangar.test", "WRITER").await;

    // Who may ask, and for what.
    assert_eq!(u.upgrade(None, &release).await.0, 401);
    assert_eq!(u.upgrade(Some(&writer), &release).await.0, 403);
    assert_eq!(u.upgrade(Some(&u.admin), "0123456789abcdef0123456789abcdef").await.0, 404);
    assert_eq!(u.upgrade(Some(&u.admin), "..%2f..%2fetc").await.0, 404);
    let (status, v) = u.upgrade(Some(&u.admin), &tools).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("is a tools bundle, not a release: apply it"), "{v}");
    let (status, v) = u.upgrade(Some(&u.admin), &same).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("is the one running"), "{v}");
    assert!(!u.staging.join("upgrades").read_dir().unwrap().any(|_| true), "nothing asked for yet");

    // Asked for: the request for the agent, the answer at once.
    let (status, v) = u.upgrade(Some(&u.admin), &release).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!((v["upgrade"]["state"].as_str(), v["upgrade"]["version"].as_str()), (Some("requested"), Some("1.0.0")), "{v}");
    let request = v["upgrade"]["id"].as_str().unwrap().to_string();
    let written: Value =
        serde_json::from_slice(&std::fs::read(u.staging.join("upgrades").join(format!("{request}.request.json"))).unwrap()).unwrap();
    assert_eq!((written["bundle"].as_str(), written["requested_by"].as_str()), (Some(release.as_str()), Some(ADMIN_EMAIL)), "{written}");
    assert_eq!(written["sha256"], sha256_hex(&genuine()), "{written}");
    assert_eq!(u.staged(&release).await["upgrade"]["state"], "requested");

    // One at a time, through the API and GraphQL alike; the release stays
    // staged while it is being installed.
    let (status, v) = u.upgrade(Some(&u.admin), &release).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("an upgrade is under way"), "{v}");
    let (_, v) = u
        .app
        .gql(Some(&u.admin), "mutation($b: ID!) { upgradeAppliance(bundle: $b) { state } }", json!({ "b": release }))
        .await;
    assert_eq!(v["errors"][0]["extensions"]["code"], "CONFLICT", "{v}");
    let (status, _) = u
        .call(Some(&u.admin), reqwest::Method::DELETE, &format!("/api/v1/bundles/{release}"), None, vec![])
        .await;
    assert_eq!(status, 409);

    // The agent's progress is what the list shows.
    agent_writes(&u.staging, &request, "taken", json!({ "id": request, "started_at": "2026-12-07T10:00:00Z", "log": "/var/log/hangar/upgrade.log" }));
    assert_eq!(u.staged(&release).await["upgrade"]["state"], "running");
    agent_writes(
        &u.staging,
        &request,
        "done",
        json!({ "id": request, "outcome": "refused", "message": "refused by the pre-check \"free disk\"", "record": null,
                "finished_at": "2026-12-07T10:00:05Z", "log": "/var/log/hangar/upgrade.log" }),
    );
    let shown = u.staged(&release).await;
    assert_eq!((shown["upgrade"]["state"].as_str(), shown["upgrade"]["message"].as_str()), (Some("refused"), Some("refused by the pre-check \"free disk\"")), "{shown}");

    // Once it ended, it may be asked for again (here through GraphQL).
    let d = u
        .app
        .ok(&u.admin, "mutation($b: ID!) { upgradeAppliance(bundle: $b) { id state version requestedBy } }", json!({ "b": release }))
        .await;
    assert_eq!((d["upgradeAppliance"]["state"].as_str(), d["upgradeAppliance"]["requestedBy"].as_str()), (Some("requested"), Some(ADMIN_EMAIL)), "{d}");
    assert_ne!(d["upgradeAppliance"]["id"], request.as_str());
    let events = u
        .app
        .ok(&u.admin, "{ auditEvents(first: 20, action: \"appliance.upgrade_requested\") { items { actor target details } } }", json!({}))
        .await;
    let items = events["auditEvents"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{events}");
    assert_eq!((items[0]["actor"].as_str(), items[0]["target"].as_str()), (Some(ADMIN_EMAIL), Some("release:1.0.0")), "{events}");
}

/// A console page's script uploads with the page's session: the cookie, the
/// page's CSRF token and its origin, all three; an API key never comes from
/// a cookie.
#[tokio::test]
async fn a_console_page_uploads_with_its_session_csrf_token_and_origin() {
    let u = start().await;
    let admin = ConsoleSession::login(&u.app).await;
    let csrf = admin.csrf("/admin/system").await;
    let page = admin.get("/admin/system").await;
    assert!(page.contains(&format!("data-upload data-csrf=\"{csrf}\"")), "{page}");
    let body = serde_json::to_vec(&json!({ "name": "b.bundle", "size": 10 })).unwrap();
    let post = |cookie: Option<String>, csrf: Option<String>, origin: Option<String>| {
        let mut r = u.app.client.post(u.app.url("/api/v1/bundles/uploads")).body(body.clone());
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        if let Some(t) = csrf {
            r = r.header("x-hangar-csrf", t);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    let (cookie, origin) = (Some(admin.cookie.clone()), Some(admin.origin.clone()));
    assert_eq!(post(cookie.clone(), Some(csrf.clone()), origin.clone()).await, 201);
    assert_eq!(post(cookie.clone(), None, origin.clone()).await, 401, "no CSRF token");
    assert_eq!(post(cookie.clone(), Some("0".repeat(40)), origin.clone()).await, 401, "a forged one");
    assert_eq!(post(cookie.clone(), Some(csrf.clone()), None).await, 401, "no origin");
    // Reading where an upload stands needs the token, not the origin (a
    // browser sends none on a same-origin GET).
    let list = |csrf: Option<&str>| {
        let mut r = u.app.client.get(u.app.url("/api/v1/bundles")).header("cookie", &admin.cookie);
        if let Some(t) = csrf {
            r = r.header("x-hangar-csrf", t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(list(Some(&csrf)).await, 200);
    assert_eq!(list(None).await, 401);
    assert_eq!(post(cookie.clone(), Some(csrf.clone()), Some("https://evil.example".into())).await, 401, "another origin");
    assert_eq!(post(None, Some(csrf.clone()), origin.clone()).await, 401, "no cookie");
    // An admin's API key in the cookie, with the CSRF token it would have.
    let key = u.app.ok(&u.admin, "mutation { createApiKey(name: \"k\", role: ADMIN) { key } }", json!({})).await["createApiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"hangar-console-csrf\0");
    ctx.update(key.as_bytes());
    let key_csrf = hex::encode(&ctx.finish().as_ref()[..20]);
    let in_cookie = format!("{}={key}", hangar_console::COOKIE);
    assert_eq!(post(Some(in_cookie), Some(key_csrf), origin.clone()).await, 401, "an API key in the cookie");
    // A writer's session is a session, and is refused as a writer.
    u.app
        .ok(&u.admin, "mutation { createUser(email: \"writer@hangar.test\", role: WRITER, password: \"Quiet-Harbor-Lantern-42\") { id } }", json!({}))
        .await;
    let writer = ConsoleSession::login_as(&u.app, "writer@hangar.test", "Quiet-Harbor-Lantern-42").await;
    let csrf = writer.csrf("/account").await;
    assert_eq!(post(Some(writer.cookie.clone()), Some(csrf), origin).await, 403);

    // The System page's Upgrade button asks for the upgrade; the page then
    // shows it asked for, and offers no second one.
    let release = u.stage("hangar-1.0.0.bundle", &genuine()).await;
    let page = admin.get("/admin/system").await;
    assert!(page.contains("aria-label=\"Upgrade the appliance to 1.0.0\""), "{page}");
    let csrf = admin.csrf("/admin/system").await;
    assert_eq!(admin.post(&format!("/admin/bundles/{release}/upgrade"), &[("csrf", "forged")]).await, 403);
    assert_eq!(u.staged(&release).await.get("upgrade"), None);
    assert_eq!(admin.post(&format!("/admin/bundles/{release}/upgrade"), &[("csrf", &csrf)]).await, 303);
    assert_eq!(u.staged(&release).await["upgrade"]["state"], "requested");
    let page = admin.get("/admin/system").await;
    assert!(page.contains(&format!("asked by {ADMIN_EMAIL}")) && !page.contains("aria-label=\"Upgrade the appliance to"), "{page}");
}

/// An upload the staging area's disk cannot hold is refused when it starts,
/// saying how much is free, rather than filling the disk the database shares.
#[tokio::test]
async fn an_upload_larger_than_the_free_disk_is_refused_at_its_start() {
    let keys = tempfile::tempdir().unwrap().keep();
    let staging = keys.with_extension("staging");
    let app = Appliance::start_with(Options {
        server_extra: format!(
            "bundles_dir = \"{}\"\nbundle_trust_dir = \"{}\"\nmax_bundle_bytes = {}\n",
            staging.display(),
            keys.display(),
            1u64 << 40
        ),
        ..Default::default()
    })
    .await;
    let admin = app.admin_token().await;
    let free = nix::sys::statvfs::statvfs(&staging).map(|s| s.blocks_available() * s.fragment_size()).unwrap();
    assert!(free + (1 << 30) <= 1 << 40, "this test needs a disk with less than 1 TiB free ({free} bytes)");
    let r = app
        .client
        .post(app.url("/api/v1/bundles/uploads"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "huge.bundle", "size": free + (1u64 << 30) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("not enough free disk") && message.contains(&staging.display().to_string()), "{v}");
    assert!(std::fs::read_dir(staging.join("uploads")).unwrap().next().is_none(), "nothing was created");
}
