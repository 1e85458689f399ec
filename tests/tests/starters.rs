//! Each starter of the test kit brings up the real thing, and the thing works.

use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use hangar_testkit::git::GitServerOptions;
use hangar_testkit::{Garage, GitServer, PgServer, TestDir};

#[derive(diesel::QueryableByName)]
struct One {
    #[diesel(sql_type = Text)]
    v: String,
}

#[tokio::test]
async fn postgres_runs_unprivileged_with_tls_and_refuses_plaintext() {
    let pg = PgServer::start().await;
    let mut conn = pg.database().connect().await.unwrap();
    let One { v } = diesel::sql_query("SELECT version() AS v").get_result(&mut conn).await.unwrap();
    assert!(v.starts_with("PostgreSQL 15"), "{v}");
    let One { v } = diesel::sql_query(
        "SELECT CASE WHEN ssl THEN version ELSE 'plain' END AS v FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert!(v.starts_with("TLSv1."), "connection is not TLS: {v}");

    // Without TLS there is no pg_hba line to match.
    let plain = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=hangar dbname=hangar password={} sslmode=disable", pg.port, pg.app_password()),
        tokio_postgres::NoTls,
    )
    .await;
    let err = hangar_types::error_chain(&plain.err().expect("plaintext connection must be refused"));
    assert!(err.contains("no encryption"), "{err}");

    // A wrong password is refused too.
    let wrong = hangar_db::Database::new(
        "127.0.0.1",
        pg.port,
        "hangar",
        "hangar",
        hangar_db::Password::new("not-the-password"),
        &pg.ca_pem(),
        "test",
    )
    .unwrap();
    let err = wrong.connect().await.err().expect("wrong password must fail").to_string();
    assert!(err.contains("127.0.0.1"), "error names the server: {err}");

    // The postmaster does not run as root.
    let pid_file = std::fs::read_to_string(pg.dir().join("data/postmaster.pid")).unwrap();
    let pid = pid_file.lines().next().unwrap().trim();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uid: u32 = uid_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_ne!(uid, 0, "postgres must not run as root");
}

#[tokio::test]
async fn postgres_restarts_in_fast_and_immediate_modes() {
    let mut pg = PgServer::start().await;
    let db = pg.database();
    for mode in [hangar_testkit::StopMode::Fast, hangar_testkit::StopMode::Immediate] {
        pg.restart(mode);
        hangar_testkit::pg::wait_ready(&db, Duration::from_secs(20)).await;
    }
    let mut conn = db.connect().await.unwrap();
    diesel::sql_query("SELECT 1").execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn garage_object_written_with_rust_s3_reads_back_through_a_presigned_url() {
    let garage = Garage::start().await;
    let bucket = garage.bucket();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    bucket.put_object("plans/run-1.tfplan", &body).await.unwrap();

    let url = bucket.presign_get("plans/run-1.tfplan", 300, None).await.unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), body.as_slice());

    // Upload through a pre-signed PUT with a plain HTTP client; read with rust-s3.
    let put = bucket.presign_put("logs/run-1/0001", 300, None, None).await.unwrap();
    let resp = reqwest::Client::new().put(&put).body("log chunk").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let back = bucket.get_object("logs/run-1/0001").await.unwrap();
    assert_eq!(back.bytes().as_ref(), b"log chunk");

    // A tampered signature and an unsigned request are refused.
    let tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 403);
    let anonymous = format!("{}/{}/plans/run-1.tfplan", garage.endpoint(), garage.bucket);
    assert_eq!(reqwest::get(&anonymous).await.unwrap().status(), 403);
}

#[tokio::test]
async fn git_server_serves_clone_and_push_over_http() {
    let git = GitServer::start().await;
    git.create_repo("infra");
    let sha = git.push_files("infra", "main", &[("main.tf", "output \"x\" { value = 1 }\n")], "first");
    assert_eq!(sha.len(), 40);

    let dir = TestDir::new("clone");
    let dest = dir.path().join("infra");
    let out = git
        .git()
        .args(["clone", "--quiet", &git.url("infra")])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dest.join("main.tf")).unwrap(),
        "output \"x\" { value = 1 }\n"
    );
    let head = git.git().current_dir(&dest).args(["rev-parse", "HEAD"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), sha);

    // A second push is seen by ls-remote.
    let sha2 = git.push_files("infra", "main", &[("vars.tf", "variable \"v\" {}\n")], "second");
    let ls = git.git().args(["ls-remote", &git.url("infra"), "refs/heads/main"]).output().unwrap();
    assert!(String::from_utf8_lossy(&ls.stdout).starts_with(&sha2));
    assert!(git.request_count() > 0);
}

#[tokio::test]
async fn git_server_over_https_requires_its_credentials() {
    let pki = TestDir::new("git-pki");
    let git = GitServer::start_with(GitServerOptions {
        tls_pki: Some(pki.path().join("pki")),
        credentials: Some(("ci".into(), "s3cret-token".into())),
    })
    .await;
    git.create_repo("secure");
    let sha = git.push_files("secure", "main", &[("a.tf", "locals {}\n")], "init");
    assert!(git.base_url().starts_with("https://"));

    let ok = git.git().args(["ls-remote", &git.authed_url("secure")]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&sha));

    // No credentials: 401. Untrusted certificate: the TLS handshake fails.
    let anon = git.git().args(["ls-remote", &git.url("secure")]).output().unwrap();
    assert!(!anon.status.success());
    let anon_err = String::from_utf8_lossy(&anon.stderr);
    assert!(anon_err.contains("Username") || anon_err.contains("401"), "{anon_err}");
    let untrusted = std::process::Command::new("git")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_SSL_CAINFO")
        .args(["ls-remote", &git.authed_url("secure")])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    let err = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(err.contains("certificate") || err.contains("ssl"), "{err}");
}
