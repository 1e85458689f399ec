//! End to end on engines the operator already runs. An install whose database
//! is a separately-run PostgreSQL 15 cluster (TLS from a CA of its own,
//! `hostssl` only, a role with a password) comes up ready with its data in
//! that cluster and nothing of a local PostgreSQL; a wrong CA, a certificate
//! for another host name, a wrong password, a plain-text-only server, an
//! unreachable port, a missing database and a password inside the URL are
//! each refused on one line before anything on the host changes; backups and
//! upgrades are refused (the external server's are its operator's) and an
//! uninstall leaves the external database as it was. An install on an external
//! S3 endpoint (Garage behind a TLS front of its own CA) stores into that
//! bucket. With both, a worker applies Terraform on a host that runs only
//! Hangar's own processes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{Api, Site, bundle, check, error_line};
use diesel_async::RunQueryDsl;
use hangar_testkit::pg::{PgOptions, PgServer};

/// The install is refused with one line holding every one of `expected`, and
/// nothing is written under the prefix.
fn refused(site: &Site, expected: &[&str]) -> String {
    let out = site.install();
    assert_eq!(out.status.code(), Some(1), "{}", common::both(&out));
    let line = error_line(&out);
    assert!(line.starts_with("hangar-install: error: "), "{line}");
    for e in expected {
        assert!(line.contains(e), "expected {e:?} in: {line}");
    }
    assert_eq!(site.files(), Vec::<String>::new(), "the prefix was changed ({line})");
    line
}

fn point_at(site: &mut Site, url: &str, password: &str, ca: &std::path::Path) {
    site.set("database", "external");
    site.set("database_url", url);
    site.set("database_password", password);
    site.set("database_ca_file", ca.display().to_string());
}

/// Garage serves no TLS: a TLS front (`hangar tls-proxy`) with a certificate
/// from a CA of the test's own stands for the operator's HTTPS endpoint.
/// Returns the endpoint, that CA's file and the front's process.
fn behind_tls(garage: &hangar_testkit::Garage, dir: &std::path::Path) -> (String, std::path::PathBuf, hangar_testkit::ChildProcess) {
    let store = hangar_certs::CertStore::open_or_create(&dir.join("s3-pki"), &hangar_certs::CaOptions::default()).unwrap();
    store.ensure("s3", &hangar_certs::LeafRequest::server("s3", &["localhost", "127.0.0.1"]), time::Duration::days(1)).unwrap();
    let front = hangar_testkit::free_port();
    let mut cmd = std::process::Command::new(common::profile_dir().join("hangar"));
    cmd.args(["tls-proxy", "--listen", &format!("127.0.0.1:{front}"), "--to", &format!("127.0.0.1:{}", garage.s3_port), "--cert"])
        .arg(store.cert_path("s3"))
        .arg("--key")
        .arg(store.key_path("s3"));
    let process = hangar_testkit::ChildProcess::spawn(cmd, "s3-tls", dir);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", front)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (format!("https://127.0.0.1:{front}"), store.ca_cert_path(), process)
}

/// The keys of every object in the bucket.
async fn keys_in(garage: &hangar_testkit::Garage) -> Vec<String> {
    let listed = garage.bucket().list(String::new(), None).await.unwrap();
    listed.iter().flat_map(|p| p.contents.iter().map(|o| o.key.clone())).collect()
}

#[derive(diesel::QueryableByName)]
struct Email {
    #[diesel(sql_type = diesel::sql_types::Text)]
    email: String,
}

/// The e-mail addresses of the appliance's users, read in the external cluster.
async fn users_in(pg: &PgServer) -> Vec<String> {
    let mut conn = pg.database().connect().await.unwrap();
    let rows: Vec<Email> = diesel::sql_query("SELECT email FROM users ORDER BY email").load(&mut conn).await.unwrap();
    rows.into_iter().map(|r| r.email).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_external_postgresql_is_checked_then_used_and_never_touched_by_uninstall() {
    hangar_testkit::init();
    let built = bundle();
    // Also on a second loopback address, which its certificate does not name.
    let pg = PgServer::start_with(PgOptions { listen_addresses: "127.0.0.1,127.0.0.2".into(), ..PgOptions::default() }).await;
    let url = format!("postgres://hangar@127.0.0.1:{}/hangar", pg.port);
    let mut site = Site::new("install-external-db", &built);
    let target = format!("database hangar@127.0.0.1:{}/hangar", pg.port);

    // A CA that did not sign the server's certificate.
    let other = hangar_certs::CertStore::open_or_create(&site.dir.path().join("other-ca"), &hangar_certs::CaOptions::default()).unwrap();
    point_at(&mut site, &url, pg.app_password(), &other.ca_cert_path());
    refused(&site, &[&target, "error performing TLS handshake: invalid peer certificate"]);

    // The right CA, but a host name (here an address) the certificate does
    // not name: refused, as libpq's verify-full would.
    point_at(&mut site, &format!("postgres://hangar@127.0.0.2:{}/hangar", pg.port), pg.app_password(), &pg.ca_path());
    refused(&site, &[&format!("database hangar@127.0.0.2:{}/hangar", pg.port), "certificate not valid for name \"127.0.0.2\""]);

    // The right CA, the wrong password: never echoed.
    point_at(&mut site, &url, "Not-The-Password-0", &pg.ca_path());
    let line = refused(&site, &[&target, "password authentication failed for user \"hangar\""]);
    assert!(!line.contains("Not-The-Password-0"), "{line}");

    // A database that does not exist on that server.
    point_at(&mut site, &format!("postgres://hangar@127.0.0.1:{}/nope", pg.port), pg.app_password(), &pg.ca_path());
    refused(&site, &[&format!("database hangar@127.0.0.1:{}/nope", pg.port), "database \"nope\" does not exist"]);

    // A role that may log in but not create the schema's tables there.
    let mut conn = pg.superuser("hangar").connect().await.unwrap();
    diesel::sql_query("CREATE ROLE visitor LOGIN PASSWORD 'Visitor-Passw0rd-1'").execute(&mut conn).await.unwrap();
    drop(conn);
    point_at(&mut site, &format!("postgres://visitor@127.0.0.1:{}/hangar", pg.port), "Visitor-Passw0rd-1", &pg.ca_path());
    refused(&site, &["role visitor may not create tables in the schema public of database hangar"]);

    // Nothing listening there.
    let closed = hangar_testkit::free_port();
    point_at(&mut site, &format!("postgres://hangar@127.0.0.1:{closed}/hangar"), pg.app_password(), &pg.ca_path());
    refused(&site, &[&format!("database hangar@127.0.0.1:{closed}/hangar"), "Connection refused"]);

    // A server that speaks only plain text: the password never leaves.
    let plain = PgServer::start_with(PgOptions { tls: false, ..PgOptions::default() }).await;
    point_at(&mut site, &format!("postgres://hangar@127.0.0.1:{}/hangar", plain.port), pg.app_password(), &pg.ca_path());
    refused(&site, &[&format!("database hangar@127.0.0.1:{}/hangar", plain.port), "server does not support TLS"]);
    drop(plain);

    // Malformed URLs, refused as answers; a password in one is not shown.
    for (bad, expected) in [
        (format!("postgres://hangar:Secret-In-Url-1@127.0.0.1:{}/hangar", pg.port), "give it as `database_password`"),
        (format!("mysql://hangar@127.0.0.1:{}/hangar", pg.port), "the scheme is \"mysql\""),
        (format!("postgres://127.0.0.1:{}/hangar", pg.port), "names no role"),
        (format!("postgres://hangar@127.0.0.1:{}/", pg.port), "must name one database"),
        (format!("postgres://hangar@127.0.0.1:{}/hangar?sslmode=disable", pg.port), "has parameters"),
    ] {
        site.set("database_url", bad.as_str());
        let line = refused(&site, &["invalid `database_url`", expected]);
        assert!(!line.contains("Secret-In-Url-1"), "{line}");
    }
    site.remove("database_ca_file");
    site.set("database_url", url.as_str());
    refused(&site, &["missing key `database_ca_file`"]);

    // The right answers: the appliance comes up on the external cluster.
    point_at(&mut site, &url, pg.app_password(), &pg.ca_path());
    let out = check("install", site.install());
    assert!(out.contains("is ready"), "{out}");
    assert!(out.contains(&format!("external hangar@127.0.0.1:{}/hangar", pg.port)), "{out}");
    assert!(!out.contains(pg.app_password()), "the database password is never printed");
    let http = common::client(&site.ca());
    let ready: serde_json::Value =
        http.get(format!("https://localhost:{}/ready", site.ports.server)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["components"]["postgres"]["status"], "ok", "{ready}");

    // Its data lands in that cluster: the administrator, then a user made
    // through GraphQL.
    assert_eq!(users_in(&pg).await, vec![common::ADMIN_EMAIL.to_string()]);
    let api = Api::login(&site).await;
    api.ok(
        "mutation { createUser(email: \"ops@hangar.test\", name: \"Ops\", role: READER, password: \"Second-Passw0rd-For-Test\") { id } }",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(users_in(&pg).await, vec![common::ADMIN_EMAIL.to_string(), "ops@hangar.test".to_string()]);

    // The password sits in a 0600 secret file, nowhere else; the CA beside
    // the appliance's own; no local PostgreSQL anywhere.
    let secret = site.path("etc/hangar/secrets/db-password");
    assert_eq!(fs::read_to_string(&secret).unwrap(), pg.app_password());
    assert_eq!(fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    let config = fs::read_to_string(site.path("etc/hangar/hangar.toml")).unwrap();
    assert!(!config.contains(pg.app_password()), "{config}");
    assert!(config.contains(&format!("[database]\nhost = \"127.0.0.1\"\nport = {}\n", pg.port)), "{config}");
    assert!(config.contains(&format!("ca_file = \"{}\"", site.path("etc/hangar/pki/database-ca.crt").display())), "{config}");
    assert_eq!(fs::read(site.path("etc/hangar/pki/database-ca.crt")).unwrap(), pg.ca_pem());
    assert!(!config.contains("name = \"postgres\""), "a local PostgreSQL is supervised: {config}");
    assert!(!site.path("var/lib/hangar/postgres").exists());
    let state = fs::read_to_string(site.path("etc/hangar/install-state.json")).unwrap();
    assert!(state.contains(&format!("\"external_database\": \"hangar@127.0.0.1:{}/hangar\"", pg.port)), "{state}");
    assert!(!state.contains(pg.app_password()));
    let status = check("status", site.command(&["status"]).output().unwrap());
    assert!(status.contains("READY") && !status.contains("NOT READY"), "{status}");
    assert!(!status.lines().any(|l| l.trim_start().starts_with("postgres")), "{status}");
    assert!(status.contains(&format!("database        external hangar@127.0.0.1:{}/hangar (backed up by its operator)", pg.port)), "{status}");
    for (_, cmd) in site.processes() {
        assert!(!cmd.contains("postgres"), "a local PostgreSQL runs: {cmd}");
    }

    // Backups and upgrades drive the bundled PostgreSQL only: refused, said why.
    let out = site.command(&["backup"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", common::both(&out));
    let line = error_line(&out);
    assert!(line.contains("a backup works on the bundled PostgreSQL only") && line.contains("external"), "{line}");
    let out = common::upgrade(&site, &built.bundle, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::both(&out));
    let line = error_line(&out);
    assert!(line.contains("an upgrade works on the bundled PostgreSQL only"), "{line}");
    assert!(line.contains(&format!("(hangar@127.0.0.1:{}/hangar)", pg.port)), "{line}");

    // The operator changes the role's password (and ends its sessions): a
    // second run with the new one writes it and restarts the services, which
    // come back ready on it.
    let superuser = pg.superuser("postgres");
    let as_superuser = |sql: String| {
        let superuser = superuser.clone();
        async move {
            let mut conn = superuser.connect().await.unwrap();
            diesel::sql_query(sql).execute(&mut conn).await.unwrap();
        }
    };
    let rotated = "Rotated-Passw0rd-Of-The-Role";
    as_superuser(format!("ALTER ROLE hangar PASSWORD '{rotated}'")).await;
    as_superuser("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'hangar'".into()).await;
    site.set("database_password", rotated);
    let again = check("second install", site.install());
    assert!(again.contains("an external engine's credentials or CA changed"), "{again}");
    assert_eq!(fs::read_to_string(&secret).unwrap(), rotated);
    let ready = http.get(format!("https://localhost:{}/ready", site.ports.server)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // (The administrator was set again: a new sign-in.)
    Api::login(&site).await.ok("{ users { email } }", serde_json::json!({})).await;
    as_superuser(format!("ALTER ROLE hangar PASSWORD '{}'", pg.app_password())).await;

    // An uninstall that purges the data here leaves the external database whole.
    let out = check("uninstall --purge-data", site.command(&["uninstall", "--purge-data"]).output().unwrap());
    assert!(out.contains(&format!("left the external database hangar@127.0.0.1:{}/hangar as it is", pg.port)), "{out}");
    assert_eq!(site.processes(), Vec::<(i32, String)>::new(), "processes left");
    assert!(!site.path("etc/hangar").exists());
    assert_eq!(users_in(&pg).await, vec![common::ADMIN_EMAIL.to_string(), "ops@hangar.test".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_external_s3_endpoint_over_tls_stores_the_appliances_objects() {
    hangar_testkit::init();
    let built = bundle();
    let garage = hangar_testkit::Garage::start().await;
    let mut site = Site::new("install-external-s3", &built);

    let (endpoint, s3_ca, _front) = behind_tls(&garage, site.dir.path());

    site.set("object_store", "external");
    site.set("s3_endpoint", endpoint.as_str());
    site.set("s3_region", hangar_testkit::garage::REGION);
    site.set("s3_bucket", garage.bucket.clone());
    site.set("s3_access_key", garage.access_key.clone());
    site.set("s3_secret_key", garage.secret_key.clone());

    // The system's roots do not know the endpoint's CA: refused.
    site.set("s3_ca_file", "");
    let out = site.install();
    assert_eq!(out.status.code(), Some(1), "{}", common::both(&out));
    let line = error_line(&out);
    assert!(line.contains(&format!("object store {endpoint}")) && line.contains("certificate"), "{line}");
    assert_eq!(site.files(), Vec::<String>::new());

    site.set("s3_ca_file", s3_ca.display().to_string());
    let out = check("install", site.install());
    assert!(out.contains(&format!("external endpoint {endpoint} (verified)")), "{out}");
    assert!(!out.contains(&garage.secret_key));
    let config = fs::read_to_string(site.path("etc/hangar/hangar.toml")).unwrap();
    assert!(config.contains(&format!("[objects]\nengine = \"external\"\nendpoint = \"{endpoint}\"\n")), "{config}");
    assert!(config.contains(&format!("ca_file = \"{}\"", site.path("etc/hangar/pki/objects-ca.crt").display())), "{config}");
    assert!(!config.contains(&garage.secret_key) && !config.contains("name = \"garage\""), "{config}");
    let secret = site.path("etc/hangar/secrets/objects-secret-key");
    assert_eq!(fs::read_to_string(&secret).unwrap(), garage.secret_key);
    assert_eq!(fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    let http = common::client(&site.ca());
    let ready: serde_json::Value =
        http.get(format!("https://localhost:{}/ready", site.ports.server)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["components"]["objects"]["status"], "ok", "{ready}");

    // A state imported through the API lands, sealed, in that bucket.
    let before = keys_in(&garage).await.len();
    let api = Api::login(&site).await;
    api.ok(
        "mutation($i: StackInput!) { createStack(input: $i) { slug } }",
        serde_json::json!({ "i": { "slug": "net", "name": "Net", "repository": "https://git.example/infra.git", "branch": "main",
            "tool": "TERRAFORM", "toolVersion": "1.0.3" } }),
    )
    .await;
    let state = serde_json::json!({ "version": 4, "terraform_version": "1.0.3", "serial": 3, "lineage": "external-s3",
        "outputs": { "message": { "value": "stored outside", "type": "string" } }, "resources": [] })
    .to_string();
    api.ok("mutation($s: String!, $t: String!) { importState(stack: $s, state: $t) { id } }", serde_json::json!({ "s": "net", "t": state }))
        .await;
    let keys = keys_in(&garage).await;
    assert_eq!(keys.len(), before + 1, "{keys:?}");
    let object = keys.iter().find(|k| k.contains("state")).unwrap_or_else(|| panic!("no state object in {keys:?}"));
    let body = garage.bucket().get_object(object).await.unwrap();
    assert!(!String::from_utf8_lossy(body.as_slice()).contains("stored outside"), "the state is sealed before the store");

    // Nothing of a bundled object store here; the bucket outlives an uninstall.
    assert!(!site.path("var/lib/hangar/objects").exists());
    check("uninstall --purge-data", site.command(&["uninstall", "--purge-data"]).output().unwrap());
    assert!(garage.bucket().get_object(object).await.is_ok());
}

#[derive(diesel::QueryableByName)]
struct RunRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    state: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn one_host_on_an_external_postgresql_and_s3_applies_terraform() {
    hangar_testkit::init();
    let built = bundle();
    let pg = PgServer::start().await;
    let garage = hangar_testkit::Garage::start().await;
    let git = hangar_testkit::GitServer::start().await;
    git.create_repo("app");
    git.push_files("app", "main", &[("infra/main.tf", "output \"message\" {\n  value = \"hello from outside\"\n}\n")], "first");
    let files = hangar_testkit::TestDir::new("external-both-files");
    let mut site = Site::new("install-external-both", &built);
    let (endpoint, s3_ca, _front) = behind_tls(&garage, site.dir.path());
    point_at(&mut site, &format!("postgres://hangar@127.0.0.1:{}/hangar", pg.port), pg.app_password(), &pg.ca_path());
    site.set("object_store", "external");
    site.set("s3_endpoint", endpoint.as_str());
    site.set("s3_region", hangar_testkit::garage::REGION);
    site.set("s3_bucket", garage.bucket.clone());
    site.set("s3_access_key", garage.access_key.clone());
    site.set("s3_secret_key", garage.secret_key.clone());
    site.set("s3_ca_file", s3_ca.display().to_string());
    check("install", site.install());

    // Only Hangar's own processes on the host.
    let status = check("status", site.command(&["status"]).output().unwrap());
    for engine in ["postgres", "garage", "objects-tls", "minio"] {
        assert!(!status.lines().any(|l| l.trim_start().starts_with(engine)), "{engine}: {status}");
    }

    // A worker applies a stack.
    let api = Api::login(&site).await;
    api.ok("mutation { createWorkerPool(name: \"builders\") { id } }", serde_json::json!({})).await;
    let worker_dir = common::join_worker(&site, &api, &files, "builders").await;
    let mut worker = common::run_worker(&worker_dir, &files);
    api.ok(
        "mutation($i: StackInput!) { createStack(input: $i) { slug } }",
        serde_json::json!({ "i": {
            "slug": "app", "name": "App", "repository": git.url("app"), "branch": "main",
            "tool": "TERRAFORM", "toolVersion": "1.0.3", "workerPool": "builders", "projectRoot": "infra",
        }}),
    )
    .await;
    let run = common::apply(&api, "app", &worker).await;
    worker.terminate(std::time::Duration::from_secs(5));

    // The run is recorded in the external cluster, its logs and state are in
    // the external bucket.
    let mut conn = pg.database().connect().await.unwrap();
    let rows: Vec<RunRow> = diesel::sql_query(format!("SELECT state FROM runs WHERE id = {}", run.parse::<i64>().unwrap()))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.state.as_str()).collect::<Vec<_>>(), vec!["FINISHED"]);
    let keys = keys_in(&garage).await;
    assert!(keys.iter().any(|k| k.starts_with(&format!("runs/{run}/logs/"))), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("state")), "{keys:?}");
}
