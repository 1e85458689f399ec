//! The private module registry end to end: a git repository with a module
//! tagged `v1.0.0`, `v1.1.0` (annotated) and `v2.0.0`, each managing a file
//! with other content; all three published through the API; a stack whose
//! configuration asks for `~> 1.0` of `<appliance>/acme/files/hangartest`,
//! run by a real worker with Terraform 1.0.3, resolves 1.1.0 offline (the
//! file's content, the output and the run's log say so). Then the registry
//! protocol as a hostile client sees it, the refusals of publishing, and the
//! deletion of a version.
//!
//! The appliance is named `127.0.0.1` here: Terraform takes the first part
//! of a module source as a registry host only when it has a dot in it, so
//! `localhost:PORT/…` would be read as a local path.

mod common;
mod fleet;

use std::process::{Command, Stdio};

use fleet::{Fleet, FleetOptions};
use hangar_testkit::{GitServer, TestDir, provider};
use serde_json::{Value, json};

const PUBLISH: &str = "mutation($n: String!, $s: String!, $r: String!, $t: String!, $v: String) { \
    publishModule(namespace: \"acme\", name: $n, system: $s, repository: $r, tag: $t, version: $v) \
    { version tag commitSha sha256 size publishedBy } }";

/// The module at `version`: it writes `module <version>` to the file at `path`.
fn module_at(version: &str) -> String {
    format!(
        "{}\nvariable \"path\" {{\n  type = string\n}}\n\nresource \"hangartest_file\" \"f\" {{\n  path    = var.path\n  content = \"module {version}\"\n}}\n\noutput \"version\" {{\n  value = \"{version}\"\n}}\n",
        provider::required_providers()
    )
}
async fn publish(fleet: &Fleet, token: &str, name: &str, repository: &str, tag: &str, version: Option<&str>) -> Value {
    let vars = json!({ "n": name, "s": "hangartest", "r": repository, "t": tag, "v": version });
    fleet.app.gql(Some(token), PUBLISH, vars).await.1
}

/// The first error of a GraphQL answer: its code and message.
fn error(v: &Value) -> (String, String) {
    let e = &v["errors"][0];
    assert!(e.is_object(), "expected an error: {v}");
    (e["extensions"]["code"].as_str().unwrap_or_default().to_string(), e["message"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_published_from_tags_resolves_by_constraint_on_a_real_worker() {
    let mirror_dir = TestDir::new("provider-mirror");
    provider::add_to_mirror(mirror_dir.path());
    let settings = format!("provider_mirror_dir = \"{}\"\nmax_module_bytes = 4096\n", mirror_dir.path().display());
    let opts = FleetOptions { public_host: "127.0.0.1", ..FleetOptions::default() };
    let fleet = Fleet::start_with_server(opts, &settings).await;
    let host = format!("127.0.0.1:{}", fleet.app.addr.port());
    let git = GitServer::start().await;

    // The module's repository: three tags, each with other content.
    git.create_repo("files-module");
    git.push_files("files-module", "main", &[("main.tf", &module_at("1.0.0"))], "1.0.0");
    let wc = git.working_copy("files-module", fleet.files.path());
    wc.git(&["tag", "v1.0.0"]);
    wc.commit(&[("main.tf", &module_at("1.1.0"))], "1.1.0", false);
    wc.git(&["tag", "-a", "v1.1.0", "-m", "the 1.1 release"]);
    wc.commit(&[("main.tf", &module_at("2.0.0"))], "2.0.0", false);
    wc.git(&["tag", "v2.0.0"]);
    wc.commit(&[("big.txt", &common::incompressible(16 * 1024))], "too big for the registry", false);
    wc.git(&["tag", "v3.0.0"]);
    wc.git(&["push", "--quiet", "origin", "HEAD:refs/heads/main", "--tags"]);
    let repo = git.url("files-module");

    // Published by a writer; the version is the tag without its `v`.
    let writer = fleet.app.user_token(&fleet.admin, "writer@hangar.test", "WRITER").await;
    let mut published = Vec::new();
    for tag in ["v1.0.0", "v1.1.0", "v2.0.0"] {
        let v = publish(&fleet, &writer, "files", &repo, tag, None).await;
        let p = v["data"]["publishModule"].clone();
        assert_eq!((p["tag"].as_str(), p["publishedBy"].as_str()), (Some(tag), Some("writer@hangar.test")), "{v}");
        assert_eq!(p["version"], &tag[1..]);
        assert!(p["size"].as_i64().unwrap() > 0 && p["sha256"].as_str().unwrap().len() == 64, "{p}");
        published.push(p);
    }
    assert_eq!(published[1]["commitSha"], wc.git(&["rev-parse", "v1.1.0^{commit}"]), "an annotated tag is its commit");

    // The same content again is the recorded version; other content under
    // a published version is refused.
    let again = publish(&fleet, &writer, "files", &repo, "v1.0.0", None).await;
    assert_eq!(again["data"]["publishModule"], published[0], "{again}");
    let rewrite = publish(&fleet, &writer, "files", &repo, "v2.0.0", Some("1.0.0")).await;
    let (code, message) = error(&rewrite);
    assert_eq!(code, "CONFLICT", "{rewrite}");
    assert!(message.contains("never rewritten") && !message.contains('\n'), "{message}");

    // Refusals, each one line saying why.
    for (name, repository, tag, version, want_code, needle) in [
        ("files", repo.as_str(), "v9.9.9", None, "REFUSED", "tag \"v9.9.9\" does not exist"),
        ("files", "https://127.0.0.1:1/nowhere.git", "v1.0.0", None, "REFUSED", "cannot reach https://127.0.0.1:1/nowhere.git"),
        ("files", repo.as_str(), "v3.0.0", None, "REFUSED", "larger than 4096 bytes"),
        ("Files", repo.as_str(), "v1.0.0", None, "BAD_USER_INPUT", "name must be"),
        ("../x", repo.as_str(), "v1.0.0", None, "BAD_USER_INPUT", "name must be"),
        ("files", repo.as_str(), "v1.0.0", Some("1.0"), "BAD_USER_INPUT", "version must be semver"),
        ("files", repo.as_str(), "v1.0.0", Some("1.0.0+build.1"), "BAD_USER_INPUT", "version must be semver"),
        ("files", "file:///etc", "v1.0.0", None, "BAD_USER_INPUT", "repository must be"),
        ("files", repo.as_str(), "--upload-pack=x", None, "BAD_USER_INPUT", "tag is not"),
    ] {
        let v = publish(&fleet, &writer, name, repository, tag, version).await;
        let (code, message) = error(&v);
        assert_eq!(code, want_code, "{name} {repository} {tag}: {v}");
        assert!(message.contains(needle) && !message.contains('\n'), "{name} {repository} {tag}: {message}");
    }
    let reader = fleet.app.user_token(&fleet.admin, "reader@hangar.test", "READER").await;
    assert_eq!(error(&publish(&fleet, &reader, "files", &repo, "v1.0.0", None).await).0, "FORBIDDEN");
    let audit = fleet.ok("query { auditEvents(first: 20, action: \"module.publish\") { items { target details } } }", json!({})).await;
    let events = audit["auditEvents"]["items"].as_array().unwrap();
    assert_eq!(events.len(), 3, "one event per version recorded: {audit}");
    assert_eq!(events[0]["target"], "module:acme/files/hangartest");

    // The list, with the source line to paste.
    let list = fleet.app.ok(&reader, "query { modules { source versions { version } } }", json!({})).await;
    assert_eq!(
        list["modules"],
        json!([{ "source": format!("{host}/acme/files/hangartest"),
                 "versions": [{ "version": "2.0.0" }, { "version": "1.1.0" }, { "version": "1.0.0" }] }])
    );

    // The console's page, with the line to paste.
    let console = common::ConsoleSession::login(&fleet.app).await;
    let page = console.get("/modules").await;
    assert!(page.contains(&format!("source  = \"{host}/acme/files/hangartest\"")), "{page}");
    assert!(page.contains("version = \"~> 2.0\"") && page.contains(">v1.1.0</td>"), "{page}");

    // The same from the command line.
    let cli = |args: &[&str]| {
        Command::new(hangar_testkit::cargo_bin("hangar"))
            .args(args)
            .env("HANGAR_CLIENT_CONFIG", fleet.files.path().join("client.toml"))
            .env("HANGAR_SERVER", fleet.app.url(""))
            .env("HANGAR_CA_FILE", fleet.app.ca_path())
            .env("HANGAR_API_KEY", &writer)
            .env_remove("HANGAR_PROFILE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = cli(&["module", "publish", "acme/files/hangartest", "--repository", &repo, "--tag", "v1.1.0"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.starts_with("acme/files/hangartest 1.1.0 from v1.1.0 (commit "), "{out:?}");
    let out = cli(&["module", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{host}/acme/files/hangartest  2.0.0, 1.1.0, 1.0.0\n"));
    let out = cli(&["module", "publish", "acme/files", "--repository", &repo, "--tag", "v1.1.0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = cli(&["module", "publish", "acme/files/hangartest", "--repository", &repo, "--tag", "v9.9.9"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && said.contains("tag \"v9.9.9\" does not exist"), "{out:?}");

    // A stack using `~> 1.0`, run by a real worker: Terraform resolves 1.1.0.
    let motd = fleet.files.subdir("worker-host").join("motd");
    let config = format!(
        "{}\nmodule \"m\" {{\n  source  = \"{host}/acme/files/hangartest\"\n  version = \"~> 1.0\"\n  path    = \"{}\"\n}}\n\noutput \"module_version\" {{\n  value = module.m.version\n}}\n",
        provider::required_providers(),
        motd.display()
    );
    git.create_repo("files");
    git.push_files("files", "main", &[("infra/main.tf", &config)], "use the module");
    fleet.create_stack("files", &git.url("files"), "builders", json!({})).await;
    let worker_dir = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&worker_dir, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;
    let id = fleet.trigger("files").await;
    fleet.wait_state(&id, "UNCONFIRMED", &[&worker]).await;
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": id })).await;
    fleet.wait_state(&id, "FINISHED", &[&worker]).await;
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "module 1.1.0");
    let log = fleet.run_log(&id).await;
    assert!(log.contains(&format!("Downloading {host}/acme/files/hangartest 1.1.0 for m")), "{log}");
    assert!(log.contains("module_version = \"1.1.0\""), "{log}");
    assert!(!log.contains("signature="), "archive links stay out of the log: {log}");

    // The protocol as any client sees it.
    let client = &fleet.app.client;
    let url = |p: &str| fleet.app.url(p);
    let r = client.get(url("/.well-known/terraform.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "modules.v1": "/v1/modules/" }));
    let versions = "/v1/modules/acme/files/hangartest/versions";
    let r = client.get(url(versions)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["errors"][0].as_str().unwrap().contains("credentials required"));
    let r = client.get(url(versions)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "modules": [{ "versions": [{ "version": "1.0.0" }, { "version": "1.1.0" }, { "version": "2.0.0" }] }] })
    );
    let r = client.get(url("/v1/modules/acme/files/hangartest/2.0.0/download")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let link = r.headers()["x-terraform-get"].to_str().unwrap().to_string();
    assert!(link.starts_with("/v1/modules/acme/files/hangartest/2.0.0/archive.tar.gz?expires="), "{link}");
    // The link authorizes itself (Terraform sends nothing with it).
    let r = client.get(url(&link)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()), (200, "application/gzip"));
    let bytes = r.bytes().await.unwrap();
    assert_eq!(hex_sha256(&bytes), published[2]["sha256"].as_str().unwrap());
    assert_eq!(bytes.len() as i64, published[2]["size"].as_i64().unwrap());
    let entries = untar_names(&bytes);
    assert!(entries.iter().any(|e| e == "main.tf"), "{entries:?}");

    // Hostile requests: every one refused, nothing echoed back.
    let forged = link.replacen("2.0.0/archive", "1.0.0/archive", 1);
    let tampered = format!("{}0", &link[..link.len() - 1]);
    let expired = format!("/v1/modules/acme/files/hangartest/2.0.0/archive.tar.gz?expires=1&signature={}", "0".repeat(64));
    for (path, status) in [
        (forged.as_str(), 403),
        (tampered.as_str(), 403),
        (expired.as_str(), 403),
        ("/v1/modules/acme/files/hangartest/2.0.0/archive.tar.gz", 403),
    ] {
        let r = client.get(url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
    }
    let huge = format!("/v1/modules/acme/files/hangartest/1.0.0-{}/download", "a".repeat(4000));
    for path in [
        "/v1/modules/acme/ghost/hangartest/versions",
        "/v1/modules/acme/files/hangartest/9.9.9/download",
        "/v1/modules/acme/..%2F..%2Fetc/hangartest/versions",
        "/v1/modules/acme/files/hangartest/..%2F1.0.0/download",
        "/v1/modules/acme/files/hangartest/v1.0.0/download",
        "/v1/modules/acme/files/hangar-test/versions",
        "/v1/modules/acme/files/hangartest/1.0.0/download/x",
        "/v1/modules/acme/files",
        huge.as_str(),
    ] {
        let r = client.get(url(path)).bearer_auth(&reader).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        let message = body["errors"][0].as_str().unwrap();
        assert!(!message.contains("..") && !message.contains("aaaa") && !message.contains("ghost"), "{path}: {message}");
    }
    let r = client.post(url(versions)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // A run's token is good while its run lives: one of a finished run is not.
    let finished: i64 = id.parse().unwrap();
    let mut c = fleet.app.pg.database().connect().await.unwrap();
    let token = hangar_store::run_tokens::issue(&mut c, finished).await.unwrap();
    let r = client.get(url(versions)).bearer_auth(token.expose()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    for bad in ["hrt_x_y", "not a token", ""] {
        let r = client.get(url(versions)).header("authorization", format!("Bearer {bad}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{bad:?}");
    }

    // Deleting a version: admins only; it is gone from the list and the protocol.
    const DELETE: &str = "mutation { deleteModuleVersion(namespace: \"acme\", name: \"files\", system: \"hangartest\", version: \"2.0.0\") }";
    assert_eq!(error(&fleet.app.gql(Some(&writer), DELETE, json!({})).await.1).0, "FORBIDDEN");
    assert_eq!(fleet.ok(DELETE, json!({})).await["deleteModuleVersion"], true);
    assert_eq!(error(&fleet.app.gql(Some(&fleet.admin), DELETE, json!({})).await.1).0, "NOT_FOUND");
    let r = client.get(url(&link)).send().await.unwrap();
    assert_eq!(r.status(), 404, "a deleted version's link serves nothing");
    let r = client.get(url(versions)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["modules"][0]["versions"].as_array().unwrap().len(), 2);
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The names in a `.tar.gz`.
fn untar_names(bytes: &[u8]) -> Vec<String> {
    let gz = gunzip(bytes);
    let mut archive = tar::Archive::new(gz.as_slice());
    archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
}

/// Gunzips with the system's `gzip`.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.stdout
}
