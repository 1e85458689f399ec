//! The broker as operators run it: inside `hangar server` (the real binary, its
//! own process), configured by `[broker]`, reported by `/ready`, notifying
//! workers of runs written to PostgreSQL, and stopped with the server.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, SOON, Seed, mosquitto, mosquitto_worker_args, worker_options};
use hangar_broker::Notification;
use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_db::runs::{self, NewRun};
use hangar_testkit::{ChildProcess, Garage, PgServer, TestDir, cargo_bin, free_port, wait_for};
use hangar_types::RunKind;
use nix::sys::signal::Signal;
use serde_json::Value;

struct Appliance {
    pg: PgServer,
    _garage: Garage,
    _tls_proxy: ChildProcess,
    dir: TestDir,
    pki: CertStore,
    config: PathBuf,
    https: std::net::SocketAddr,
    mqtt: u16,
    client: reqwest::Client,
}

impl Appliance {
    async fn start() -> Appliance {
        let pg = PgServer::start().await;
        let garage = Garage::start().await;
        let dir = TestDir::new("broker-server");
        let pki = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default()).unwrap();
        for name in ["server", "objects", "broker"] {
            pki.ensure(name, &LeafRequest::server(name, &["localhost", "127.0.0.1"]), time::Duration::days(1)).unwrap();
        }
        // Garage serves no TLS; `hangar tls-proxy` is its TLS front, as on an appliance.
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.args(["tls-proxy", "--listen", "127.0.0.1:0", "--to", &format!("127.0.0.1:{}", garage.s3_port)])
            .arg("--cert")
            .arg(pki.cert_path("objects"))
            .arg("--key")
            .arg(pki.key_path("objects"))
            .env("HANGAR_LOG", "warn")
            .stdin(Stdio::null());
        let tls_proxy = ChildProcess::spawn(cmd, "tls-proxy", dir.path());
        let objects: String = wait_for("the TLS proxy to listen", SOON, || {
            let out = tls_proxy.output();
            async move { out.lines().find_map(|l| l.strip_prefix("tls-proxy listening on ").map(|a| a.trim().to_string())) }
        })
        .await;
        let objects_port = objects.rsplit(':').next().unwrap().to_string();

        let db = pg.write_config(dir.path());
        let secrets = dir.subdir("secrets");
        let (ak, sk, mk) = (secrets.join("ak"), secrets.join("sk"), secrets.join("master.key"));
        hangar_certs::write_private_file(&ak, garage.access_key.as_bytes()).unwrap();
        hangar_certs::write_private_file(&sk, garage.secret_key.as_bytes()).unwrap();
        hangar_crypto::MasterKey::generate().save(&mk).unwrap();
        let https: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mqtt = free_port();
        let config = dir.path().join("hangar.toml");
        std::fs::write(
            &config,
            format!(
                r#"[database]
host = "127.0.0.1"
port = {pg_port}
name = "hangar"
user = "hangar"
password_file = "{pw}"
ca_file = "{db_ca}"

[server]
listen = "{https}"
public_url = "https://localhost:{https_port}"
cert_file = "{server_cert}"
key_file = "{server_key}"
ca_file = "{ca}"

[secrets]
master_key_file = "{mk}"

[objects]
engine = "garage"
endpoint = "https://localhost:{objects_port}"
bucket = "{bucket}"
access_key_file = "{ak}"
secret_key_file = "{sk}"
ca_file = "{ca}"

[broker]
listen = "127.0.0.1:{mqtt}"
cert_file = "{broker_cert}"
key_file = "{broker_key}"
ca_file = "{ca}"
"#,
                pg_port = pg.port,
                pw = db.password_file.display(),
                db_ca = db.ca_file.display(),
                https_port = https.port(),
                server_cert = pki.cert_path("server").display(),
                server_key = pki.key_path("server").display(),
                ca = pki.ca_cert_path().display(),
                mk = mk.display(),
                bucket = garage.bucket,
                ak = ak.display(),
                sk = sk.display(),
                broker_cert = pki.cert_path("broker").display(),
                broker_key = pki.key_path("broker").display(),
            ),
        )
        .unwrap();
        let client = {
            let cert = reqwest::Certificate::from_pem(&std::fs::read(pki.ca_cert_path()).unwrap()).unwrap();
            reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert)
                .https_only(true)
                .timeout(SOON)
                .build()
                .unwrap()
        };
        let app = Appliance { pg, _garage: garage, _tls_proxy: tls_proxy, dir, pki, config, https, mqtt, client };
        let out = app.hangar().arg("migrate").output().unwrap();
        assert!(out.status.success(), "hangar migrate: {}", String::from_utf8_lossy(&out.stderr));
        app
    }

    fn hangar(&self) -> Command {
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.arg("--config").arg(&self.config).env("HANGAR_LOG", "info").stdin(Stdio::null());
        cmd
    }

    fn server(&self) -> ChildProcess {
        let mut cmd = self.hangar();
        cmd.arg("server");
        ChildProcess::spawn(cmd, "server", self.dir.path())
    }

    async fn ready(&self) -> Option<(u16, Value)> {
        let r = self.client.get(format!("https://localhost:{}/ready", self.https.port())).send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    fn seed<'a>(&'a self, db: &'a hangar_db::DbPool) -> Seed<'a> {
        Seed { db, pki: &self.pki, dir: &self.dir }
    }

    fn ca(&self) -> PathBuf {
        self.pki.ca_cert_path()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangar_server_runs_the_broker_reports_it_and_stops_it() {
    let app = Appliance::start().await;
    let mut server = app.server();
    let app_ref = &app;
    let body = wait_for("/ready to report the broker ready", Duration::from_secs(60), || {
        let exited = server.try_exited();
        let app = app_ref;
        async move {
            if let Some(status) = exited {
                panic!("hangar server exited ({status})");
            }
            app.ready().await.filter(|(status, _)| *status == 200).map(|(_, body)| body)
        }
    })
    .await;
    assert_eq!(body["components"]["broker"]["status"], "ok", "{body}");

    let db = app.pg.database().pool(Some(2)).unwrap();
    let seed = app.seed(&db);
    let (pool_a, pool_b) = (seed.create_pool("a").await, seed.create_pool("b").await);
    let a1 = seed.create_worker(pool_a).await;
    let b1 = seed.create_worker(pool_b).await;
    let mut c_a1 = Client::connect(worker_options(app.mqtt, &app.ca(), &a1)).await.expect("a1 connects");
    c_a1.subscribe(&[&format!("/tenants/{}/#", a1.name())]).await.unwrap();
    let mut c_b1 = Client::connect(worker_options(app.mqtt, &app.ca(), &b1)).await.expect("b1 connects");
    c_b1.subscribe(&[&b1.pool_topic(), &b1.worker_topic()]).await.unwrap();
    // A second worker of pool A listens with Debian's client.
    let a2 = seed.create_worker(pool_a).await;
    let mut args = mosquitto_worker_args(app.mqtt, &app.ca(), &a2);
    args.extend(["-t".into(), format!("/tenants/{}/#", a2.name()), "-v".into()]);
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args(&args);
    let sub = ChildProcess::spawn(cmd, "mosquitto_sub", app.dir.path());

    // Runs of pool A become READY in PostgreSQL: the server's bridge tells one
    // of pool A's workers per run, on its own topic, taking turns (so both
    // clients hear of one), and nobody in pool B.
    let stack = seed.create_stack("net", pool_a).await;
    let mut conn = db.get().await.unwrap();
    let work = Notification::WorkAvailable { pool: pool_a };
    let line = format!("/tenants/{}/worker {}", a2.name(), hangar_broker::wire::to_json(&work));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sub.output().contains(&line) {
        assert!(std::time::Instant::now() < deadline, "mosquitto_sub never heard of the READY run: {}", sub.output_tail());
        // mosquitto_sub subscribes after its CONNACK: schedule another run
        // until one is announced after it listens.
        let new = NewRun {
            stack_id: stack,
            kind: RunKind::Proposed,
            commit_sha: "d".repeat(40),
            branch: "main".into(),
            command: None,
            triggered_by: "alice".into(),
        };
        runs::create(&mut conn, &new, "alice").await.unwrap();
        runs::schedule_stack(&mut conn, stack, "drain").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c_a1.wait_for(&a1.worker_topic(), &work).await;
    assert!(c_b1.received().is_empty(), "pool B heard of pool A: {:?}", c_b1.received());

    // A hostile client does not disturb the server either.
    let wrong = {
        let mut w = b1.clone();
        w.token = format!("hwt_{}_{}", "a".repeat(12), "b".repeat(40));
        w
    };
    let mut bad = mosquitto_worker_args(app.mqtt, &app.ca(), &wrong);
    bad.extend(["-t".into(), "#".into(), "-C".into(), "1".into(), "-W".into(), "5".into()]);
    let out = mosquitto("mosquitto_sub", &bad);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad user name or password"));
    let (status, body) = app.ready().await.unwrap();
    assert_eq!(status, 200, "{body}");
    // `/ready` counts the workers connected to this server's broker (a1, b1
    // and a2), not the refused client: behind a balancer, how the fleet is spread.
    assert_eq!(body["components"]["broker"]["connections"], 3, "{body}");

    // SIGTERM stops the server and the broker with it.
    server.signal(Signal::SIGTERM);
    let status = server.wait_timeout(Duration::from_secs(60)).expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}: {}", server.output_tail());
    c_a1.wait_closed().await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", app.mqtt)).await.is_err(), "the broker port is closed");
    let log = server.output();
    assert!(!log.contains(&a1.token) && !log.contains(&a2.token), "a token reached the log");
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_key_others_can_read_stops_the_server_with_one_line() {
    let app = Appliance::start().await;
    let key = app.pki.key_path("broker");
    make_world_readable(&key);
    let mut server = app.server();
    let status = server.wait_timeout(Duration::from_secs(60)).expect("the server must refuse to start");
    assert_eq!(status.code(), Some(1), "{}", server.output_tail());
    let out = server.output();
    let err: Vec<&str> = out.lines().filter(|l| l.starts_with("hangar: error:")).collect();
    assert_eq!(err.len(), 1, "{out}");
    assert!(err[0].contains(&key.display().to_string()) && err[0].contains("0600"), "{}", err[0]);
}

fn make_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}
