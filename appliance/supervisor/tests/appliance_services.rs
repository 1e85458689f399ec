//! The supervisor running the appliance's stateful services for real: PostgreSQL
//! in the foreground as the service user (ready = a query over TLS), Garage
//! behind `hangar tls-proxy` (ready = a signed S3 request through TLS), and a
//! dependant of the database. Each is SIGKILLed in turn and must come back ready;
//! a dependant waits, unkilled, while its database is down.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Sup, children_of, processes_with, wait_gone};
use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_supervisor::protocol::State;
use hangar_testkit::{PgServer, StopMode, free_port};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(60);

fn database_section(db: &hangar_db::DbConfig) -> String {
    format!(
        "[database]\nhost = \"{}\"\nport = {}\nname = \"{}\"\nuser = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
        db.host,
        db.port,
        db.name,
        db.user,
        db.password_file.display(),
        db.ca_file.display()
    )
}

fn write_secret(path: &Path, value: &str) {
    hangar_certs::write_private_file(path, value.as_bytes()).unwrap();
}

fn random_hex(n: usize) -> String {
    let mut s = String::new();
    let mut x = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ 0x5851_f42d_4c95_7f2d;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(char::from_digit((x % 16) as u32, 16).unwrap());
    }
    s
}

#[tokio::test]
async fn postgres_garage_and_the_tls_proxy_come_back_ready_after_sigkill() {
    // PostgreSQL initialised as the test kit does (TLS, scram), then handed over.
    let mut pg = PgServer::start().await;
    pg.stop(StopMode::Fast);
    let mut sup = Sup::new("sv-appliance");
    let db = pg.write_config(sup.path());
    let postgres = hangar_testkit::pg::pg_bin_dir().join("postgres");
    let data = pg.dir().join("data");

    // Garage on loopback, its S3 port reachable only through the proxy's TLS.
    let garage_dir = sup.shared_dir("garage");
    let (rpc, s3_port, admin) = (free_port(), free_port(), free_port());
    let proxy_port = free_port();
    let access_key = format!("GK{}", random_hex(24));
    let secret_key = random_hex(64);
    std::fs::write(
        garage_dir.join("garage.toml"),
        format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            d = garage_dir.display()
        ),
    )
    .unwrap();
    sup.user.chown(&garage_dir);
    let pki_dir = sup.path().join("pki");
    let store = CertStore::open_or_create(&pki_dir, &CaOptions::default()).unwrap();
    store
        .ensure("objects", &LeafRequest::server("objects", &["localhost", "127.0.0.1"]), time::Duration::days(1))
        .unwrap();
    // The proxy runs as the service user and must read its key.
    sup.user.chown(&store.key_path("objects"));
    let secrets = sup.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    write_secret(&secrets.join("s3-access"), &access_key);
    write_secret(&secrets.join("s3-secret"), &secret_key);
    let hangar = hangar_testkit::cargo_bin("hangar");
    let garage_bin = hangar_testkit::garage::garage_bin();

    // A client of the database: ready only while it can query.
    let sl = sup.sleep_bin();
    sup.write_config(
        Some(&database_section(&db)),
        "backoff_initial_ms = 500\nready_timeout_secs = 60",
        &format!(
            "[[supervisor.service]]\nname = \"postgres\"\ncommand = \"{postgres}\"\nargs = [\"-D\", \"{data}\", \"-p\", \"{port}\"]\n\
             stop_signal = \"INT\"\nstop_timeout_secs = 30\nready = {{ kind = \"postgres\" }}\n\
             [[supervisor.service]]\nname = \"client\"\ncommand = \"{sl}\"\nargs = [\"100000\"]\ndepends_on = [\"postgres\"]\n\
             check_interval_ms = 200\nready = {{ kind = \"postgres\" }}\n\
             [[supervisor.service]]\nname = \"garage\"\ncommand = \"{garage_bin}\"\n\
             args = [\"-c\", \"{gd}/garage.toml\", \"server\", \"--single-node\", \"--default-bucket\"]\n\
             env = {{ GARAGE_RPC_SECRET = \"{rpc_secret}\", GARAGE_DEFAULT_ACCESS_KEY = \"{access_key}\", \
             GARAGE_DEFAULT_SECRET_KEY = \"{secret_key}\", GARAGE_DEFAULT_BUCKET = \"hangar\", RUST_LOG = \"garage=warn\" }}\n\
             ready = {{ kind = \"tcp\", address = \"127.0.0.1:{s3_port}\" }}\n\
             [[supervisor.service]]\nname = \"objects-tls\"\ncommand = \"{hangar}\"\n\
             args = [\"tls-proxy\", \"--listen\", \"127.0.0.1:{proxy_port}\", \"--to\", \"127.0.0.1:{s3_port}\", \
             \"--cert\", \"{cert}\", \"--key\", \"{key}\"]\ndepends_on = [\"garage\"]\n\
             ready = {{ kind = \"s3\", endpoint = \"https://localhost:{proxy_port}\", region = \"garage\", bucket = \"hangar\", \
             access_key_file = \"{sec}/s3-access\", secret_key_file = \"{sec}/s3-secret\", ca_file = \"{ca}\" }}\n",
            postgres = postgres.display(),
            data = data.display(),
            port = pg.port,
            garage_bin = garage_bin.display(),
            gd = garage_dir.display(),
            rpc_secret = random_hex(64),
            hangar = hangar.display(),
            cert = store.cert_path("objects").display(),
            key = store.key_path("objects").display(),
            sec = secrets.display(),
            ca = store.ca_cert_path().display(),
        ),
    );
    sup.start().await;
    for name in ["postgres", "client", "garage", "objects-tls"] {
        let s = sup.wait_state(name, State::Ready, LONG).await;
        eprintln!("{name}: {}", s.detail);
    }
    let s = sup.status("objects-tls").await;
    assert!(s.detail.contains("HEAD https://localhost") && s.detail.contains("200"), "{s:?}");
    let s = sup.status("postgres").await;
    assert!(s.detail.contains("SELECT 1") && s.detail.contains("TLS"), "{s:?}");
    // PostgreSQL runs as the service user, not root.
    let pid = s.pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u == sup.user.uid.to_string()), "{uid}");

    // The database goes away: its dependant waits, and is not killed.
    let client_pid = sup.status("client").await.pid;
    let out = sup.ctl(&["stop", "postgres"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let waiting = sup.wait_state("client", State::Waiting, LONG).await;
    assert!(waiting.detail.contains("waiting for postgres"), "{waiting:?}");
    assert_eq!(waiting.pid, client_pid);
    let out = sup.ctl(&["start", "postgres"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = sup.wait_state("client", State::Ready, LONG).await;
    assert_eq!(back.pid, client_pid);

    // SIGKILL each in turn: back and ready; the others keep their processes.
    let mut times = Vec::new();
    for name in ["postgres", "garage", "objects-tls"] {
        let before = sup.status(name).await;
        let others: Vec<_> = sup.statuses().await.into_iter().filter(|s| s.name != name).map(|s| (s.name, s.pid)).collect();
        let t = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(before.pid.unwrap() as i32), Signal::SIGKILL).unwrap();
        let after = hangar_testkit::wait_for(&format!("{name} to come back ready"), LONG, || async {
            let s = sup.status(name).await;
            (s.state == State::Ready && s.pid != before.pid).then_some(s)
        })
        .await;
        times.push((name, t.elapsed()));
        assert_eq!(after.last_exit.unwrap().signal, Some(Signal::SIGKILL as i32));
        for (other, pid) in others {
            assert_eq!(sup.status(&other).await.pid, pid, "{other} was restarted when {name} was killed");
        }
    }
    for (name, t) in &times {
        eprintln!("restart-to-ready after SIGKILL: {name} {:.0} ms", t.as_secs_f64() * 1000.0);
    }
    // The database really works after its crash restart.
    hangar_testkit::pg::wait_ready(&pg.database(), LONG).await;

    let groups: Vec<(String, i32)> = sup
        .statuses()
        .await
        .into_iter()
        .map(|s| (s.name, s.pid.unwrap() as i32))
        .collect();
    let sup_pid = sup.pid();
    assert_eq!(sup.terminate(), Some(0));
    // No postmaster or backend, no Garage, no proxy: every group is gone.
    for (name, pgid) in groups {
        let gone = matches!(
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        assert!(gone, "{name}'s process group {pgid} survived the supervisor");
    }
    wait_gone(&sup.marker(), Duration::from_secs(10)).await;
    assert!(processes_with(&sup.marker()).is_empty());
    assert!(children_of(sup_pid).is_empty());
}
