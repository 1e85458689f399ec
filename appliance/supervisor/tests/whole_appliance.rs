//! The whole appliance under the supervisor — PostgreSQL, Garage behind `hangar
//! tls-proxy`, `hangar server`, `hangar drain`, `hangar scheduler` — with requests
//! and jobs flowing: server, drain and scheduler are SIGKILLed in turn and come
//! back ready; PostgreSQL is restarted in fast mode (`ctl restart`) and in
//! immediate mode (SIGQUIT to the postmaster); server, drain and scheduler
//! recover by themselves within 10 s of the database being ready again; no
//! request hangs for 5 s; every run created along the way is promoted exactly once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Sup, children_of};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::runs::{self, NewRun};
use hangar_db::schema::{processes, run_events, runs as runs_t, stacks};
use hangar_db::{DbPool, migrate};
use hangar_supervisor::protocol::State;
use hangar_testkit::pg::PgOptions;
use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_testkit::{PgServer, StopMode, free_port, wait_for};
use hangar_types::{RunKind, RunState};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(60);
/// The bound: back to work within this long after the database is ready.
const RECOVERY: Duration = Duration::from_secs(10);

fn database_section(db: &hangar_db::DbConfig) -> String {
    format!(
        "[database]\nhost = \"{}\"\nport = {}\nname = \"{}\"\nuser = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\npool_size = 4\n",
        db.host,
        db.port,
        db.name,
        db.user,
        db.password_file.display(),
        db.ca_file.display()
    )
}

/// Creates a stack and a tracked run on it (`runs::create` enqueues the run's
/// schedule job). Errors (database down) are for the caller to retry with
/// another `n`: a failure may come after the stack was committed.
async fn create_run(pool: &DbPool, n: usize) -> Result<i64, String> {
    let mut c = pool.get().await.map_err(|e| e.to_string())?;
    let slug = format!("stack-{n}-{}", std::process::id());
    let stack: i64 = diesel::insert_into(stacks::table)
        .values((
            stacks::slug.eq(&slug),
            stacks::name.eq(&slug),
            stacks::repository.eq("https://git.example/infra.git"),
            stacks::branch.eq("main"),
            stacks::tool_version.eq("1.0.3"),
        ))
        .returning(stacks::id)
        .get_result(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    let new = NewRun {
        stack_id: stack,
        kind: RunKind::Tracked,
        commit_sha: "c0ffee".repeat(6) + "abcd",
        branch: "main".into(),
        command: None,
        triggered_by: "test".into(),
    };
    runs::create(&mut c, &new, "test").await.map(|r| r.id).map_err(|e| e.to_string())
}

async fn state(pool: &DbPool, run: i64) -> Option<RunState> {
    let mut c = pool.get().await.ok()?;
    runs::get(&mut c, run).await.ok()?.map(|r| r.state())
}

/// A fresh heartbeat of `kind` written after `since`.
async fn beat_since(pool: &DbPool, kind: &str, since: DateTime<Utc>) -> bool {
    let Ok(mut c) = pool.get().await else { return false };
    processes::table
        .filter(processes::kind.eq(kind))
        .filter(processes::last_seen_at.gt(since))
        .count()
        .get_result::<i64>(&mut c)
        .await
        .is_ok_and(|n| n > 0)
}

fn random_hex(n: usize) -> String {
    let mut x = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15 ^ Instant::now().elapsed().as_nanos() as u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect()
}

/// Requests to the server while everything else happens: `/ready` and a
/// GraphQL query, one every 20 ms; returns the longest a request took and how
/// many got an answer.
fn request_flow(url: String, ca: std::path::PathBuf, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(Duration, usize)> {
    tokio::spawn(async move {
        let roots = hangar_certs::tls::roots_from_pem(&std::fs::read(&ca).unwrap()).unwrap();
        let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
        // Longer than the bound, so a hang is seen as one rather than cut short.
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let (mut longest, mut answered, mut i) = (Duration::ZERO, 0, 0u64);
        while !AtomicBool::load(&stop, Ordering::Relaxed) {
            i += 1;
            let t = Instant::now();
            let sent = if i % 2 == 0 {
                client.get(format!("{url}/ready")).send().await
            } else {
                client
                    .post(format!("{url}/graphql"))
                    .json(&serde_json::json!({ "query": "{ __typename }" }))
                    .send()
                    .await
            };
            longest = longest.max(t.elapsed());
            if sent.is_ok() {
                answered += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (longest, answered)
    })
}

#[tokio::test]
async fn the_whole_appliance_survives_sigkill_and_database_restarts_without_losing_work() {
    // Durable commits: with synchronous_commit off (the test kit's default, for
    // speed) an immediate shutdown may lose transactions the client saw committed.
    let mut pg = PgServer::start_with(PgOptions {
        durable: true,
        ..PgOptions::default()
    })
    .await;
    migrate::run_pending(&pg.database()).await.unwrap();
    pg.stop(StopMode::Fast);
    let mut sup = Sup::new("sv-appliance-all");
    let user = sup.user.clone();
    let db = pg.write_config(sup.path());
    let hangar = hangar_testkit::cargo_bin("hangar");
    let config = sup.config.display().to_string();

    // Certificates, secrets and Garage's configuration, readable by the service user.
    let pki = sup.path().join("pki");
    let store = CertStore::open_or_create(&pki, &CaOptions::default()).unwrap();
    for (name, cn) in [("server", "hangar"), ("objects", "objects")] {
        store
            .ensure(name, &LeafRequest::server(cn, &["localhost", "127.0.0.1"]), time::Duration::days(1))
            .unwrap();
        user.chown(&store.key_path(name));
    }
    // The server signs joining workers' certificates with the CA key (next to ca.crt).
    user.chown(&pki.join("ca.key"));
    let secrets = sup.dir.subdir("secrets");
    let (access, secret) = (format!("GK{}", random_hex(24)), random_hex(64));
    let (ak, sk, mk) = (secrets.join("objects-access-key"), secrets.join("objects-secret-key"), secrets.join("master.key"));
    hangar_certs::write_private_file(&ak, access.as_bytes()).unwrap();
    hangar_certs::write_private_file(&sk, secret.as_bytes()).unwrap();
    hangar_crypto::MasterKey::generate().save(&mk).unwrap();
    for f in [&ak, &sk, &mk, &db.password_file] {
        user.chown(f);
    }
    let garage_dir = sup.shared_dir("garage");
    let (rpc, s3_port, admin, objects_port, server_port) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let broker_port = free_port();
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
    user.chown(&garage_dir);

    let sections = format!(
        "{db}\n[server]\nlisten = \"127.0.0.1:{server_port}\"\npublic_url = \"https://localhost:{server_port}\"\n\
         cert_file = \"{cert}\"\nkey_file = \"{key}\"\nca_file = \"{ca}\"\nshutdown_grace_secs = 2\n\
         [secrets]\nmaster_key_file = \"{mk}\"\n\
         [broker]\nlisten = \"127.0.0.1:{broker_port}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nca_file = \"{ca}\"\n\
         [objects]\nengine = \"garage\"\nendpoint = \"https://localhost:{objects_port}\"\nbucket = \"hangar\"\n\
         access_key_file = \"{ak}\"\nsecret_key_file = \"{sk}\"\nca_file = \"{ca}\"\nrequest_timeout_secs = 5\n",
        db = database_section(&db),
        cert = store.cert_path("server").display(),
        key = store.key_path("server").display(),
        ca = store.ca_cert_path().display(),
        mk = mk.display(),
        ak = ak.display(),
        sk = sk.display(),
    );
    sup.write_config(
        Some(&sections),
        "backoff_initial_ms = 500\nready_timeout_secs = 60\nstart_limit_burst = 20",
        &format!(
            "[[supervisor.service]]\nname = \"postgres\"\ncommand = \"{postgres}\"\nargs = [\"-D\", \"{data}\", \"-p\", \"{port}\"]\n\
             stop_signal = \"INT\"\nstop_timeout_secs = 30\nready = {{ kind = \"postgres\" }}\n\
             [[supervisor.service]]\nname = \"garage\"\ncommand = \"{garage}\"\n\
             args = [\"-c\", \"{gd}/garage.toml\", \"server\", \"--single-node\", \"--default-bucket\"]\n\
             env = {{ GARAGE_RPC_SECRET = \"{rpc_secret}\", GARAGE_DEFAULT_ACCESS_KEY = \"{access}\", \
             GARAGE_DEFAULT_SECRET_KEY = \"{secret}\", GARAGE_DEFAULT_BUCKET = \"hangar\", RUST_LOG = \"garage=warn\" }}\n\
             ready = {{ kind = \"tcp\", address = \"127.0.0.1:{s3_port}\" }}\n\
             [[supervisor.service]]\nname = \"objects-tls\"\ncommand = \"{hangar}\"\n\
             args = [\"tls-proxy\", \"--listen\", \"127.0.0.1:{objects_port}\", \"--to\", \"127.0.0.1:{s3_port}\", \
             \"--cert\", \"{ocert}\", \"--key\", \"{okey}\"]\ndepends_on = [\"garage\"]\n\
             ready = {{ kind = \"s3\" }}\n\
             [[supervisor.service]]\nname = \"server\"\ncommand = \"{hangar}\"\nargs = [\"--config\", \"{config}\", \"server\"]\n\
             depends_on = [\"postgres\", \"objects-tls\"]\ncheck_interval_ms = 500\n\
             ready = {{ kind = \"https\", url = \"https://localhost:{server_port}/ready\", ca_file = \"{ca}\" }}\n\
             [[supervisor.service]]\nname = \"drain\"\ncommand = \"{hangar}\"\nargs = [\"--config\", \"{config}\", \"drain\"]\n\
             depends_on = [\"postgres\"]\ncheck_interval_ms = 500\nready = {{ kind = \"heartbeat\", process = \"drain\" }}\n\
             [[supervisor.service]]\nname = \"scheduler\"\ncommand = \"{hangar}\"\nargs = [\"--config\", \"{config}\", \"scheduler\"]\n\
             depends_on = [\"postgres\"]\ncheck_interval_ms = 500\nready = {{ kind = \"heartbeat\", process = \"scheduler\" }}\n",
            postgres = hangar_testkit::pg::pg_bin_dir().join("postgres").display(),
            data = pg.dir().join("data").display(),
            port = pg.port,
            garage = hangar_testkit::garage::garage_bin().display(),
            gd = garage_dir.display(),
            rpc_secret = random_hex(64),
            hangar = hangar.display(),
            ocert = store.cert_path("objects").display(),
            okey = store.key_path("objects").display(),
            ca = store.ca_cert_path().display(),
        ),
    );
    sup.start().await;
    for name in ["postgres", "garage", "objects-tls", "server", "drain", "scheduler"] {
        sup.wait_state(name, State::Ready, LONG).await;
    }
    // The object store's check took its endpoint, keys and CA from [objects].
    let s = sup.status("objects-tls").await;
    assert!(s.detail.contains(&format!("HEAD https://localhost:{objects_port}/hangar")), "{s:?}");
    let pool = pg.database().pool(Some(4)).unwrap();

    // Work flows for the whole test: a new run every 50 ms, retried while the
    // database is away.
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (pool, stop, created) = (pool.clone(), stop.clone(), created.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut attempt = 0;
            while !AtomicBool::load(&stop, Ordering::Relaxed) {
                attempt += 1;
                match tokio::time::timeout(Duration::from_secs(15), create_run(&pool, attempt)).await {
                    Ok(Ok(id)) => {
                        ids.push(id);
                        created.store(ids.len(), Ordering::Relaxed);
                    }
                    Ok(Err(_)) => {}
                    Err(_) => panic!("creating a run hung for 15 s"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };
    let progress = |at_least: usize| {
        let created = created.clone();
        async move {
            wait_for("runs being created", LONG, || async {
                (AtomicUsize::load(&created, Ordering::Relaxed) >= at_least).then_some(())
            })
            .await
        }
    };
    let server_url = format!("https://localhost:{server_port}");
    let requests = request_flow(server_url.clone(), store.ca_cert_path(), stop.clone());
    let ready_client = {
        let roots = hangar_certs::tls::roots_from_pem(&std::fs::read(store.ca_cert_path()).unwrap()).unwrap();
        let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    progress(5).await;

    let mut times = BTreeMap::new();
    for name in ["server", "drain", "scheduler"] {
        let before = sup.status(name).await;
        let t = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(before.pid.unwrap() as i32), Signal::SIGKILL).unwrap();
        wait_for(&format!("{name} back and ready"), LONG, || async {
            let s = sup.status(name).await;
            (s.state == State::Ready && s.pid != before.pid).then_some(())
        })
        .await;
        times.insert(format!("{name} after SIGKILL"), t.elapsed());
        let n = AtomicUsize::load(&created, Ordering::Relaxed);
        progress(n + 5).await;
    }

    // The broker lives in the server process: it came back with it, ready and
    // answering TLS on its port.
    wait_for("the broker ready in /ready after the server's SIGKILL", LONG, || async {
        let r = ready_client.get(format!("{server_url}/ready")).send().await.ok()?;
        let body: serde_json::Value = r.json().await.ok()?;
        (body["components"]["broker"]["status"] == "ok").then_some(())
    })
    .await;
    let broker_tls = {
        let roots = hangar_certs::tls::roots_from_pem(&std::fs::read(store.ca_cert_path()).unwrap()).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(hangar_certs::tls::client_config(roots, None).unwrap()))
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await.unwrap();
    broker_tls
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a TLS handshake with the broker, trusting only the appliance CA");

    // PostgreSQL: fast (the supervisor's stop signal, SIGINT), then immediate
    // (SIGQUIT to the postmaster, which exits; the supervisor starts it again).
    for mode in ["fast", "immediate"] {
        let before = sup.status("postgres").await;
        if mode == "fast" {
            let out = sup.ctl(&["restart", "postgres"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        } else {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(before.pid.unwrap() as i32), Signal::SIGQUIT).unwrap();
            wait_for("postgres back", LONG, || async {
                let s = sup.status("postgres").await;
                (s.state == State::Ready && s.pid != before.pid).then_some(())
            })
            .await;
        }
        let db_ready = Utc::now();
        let t = Instant::now();
        // The drain is back at work: a run created now gets promoted.
        let attempt = AtomicUsize::new(1_000_000 * if mode == "fast" { 1 } else { 2 });
        let run = wait_for("a run to be created after the restart", RECOVERY, || async {
            create_run(&pool, attempt.fetch_add(1, Ordering::Relaxed)).await.ok()
        })
        .await;
        wait_for(&format!("the drain to promote run {run} after a {mode} restart"), RECOVERY, || async {
            (state(&pool, run).await == Some(RunState::Ready)).then_some(())
        })
        .await;
        times.insert(format!("drain working after postgres {mode} restart"), t.elapsed());
        wait_for(&format!("a scheduler heartbeat after a {mode} restart"), RECOVERY, || async {
            beat_since(&pool, "scheduler", db_ready).await.then_some(())
        })
        .await;
        times.insert(format!("scheduler working after postgres {mode} restart"), t.elapsed());
        wait_for(&format!("the server's /ready after a {mode} restart"), RECOVERY, || async {
            let r = ready_client.get(format!("{server_url}/ready")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        times.insert(format!("server ready after postgres {mode} restart"), t.elapsed());
        for name in ["server", "drain", "scheduler"] {
            sup.wait_state(name, State::Ready, RECOVERY).await;
        }
    }
    let n = AtomicUsize::load(&created, Ordering::Relaxed);
    progress(n + 5).await;
    stop.store(true, Ordering::Relaxed);
    let ids = producer.await.unwrap();
    assert!(ids.len() > 20, "too little work flowed: {}", ids.len());
    let (longest, answered) = requests.await.unwrap();
    eprintln!("requests answered: {answered}; longest request: {:.0} ms", longest.as_secs_f64() * 1000.0);
    assert!(answered > 50, "too few requests answered: {answered}");
    assert!(longest < Duration::from_secs(5), "a request hung for {longest:?}");

    // Every run ever created is promoted, exactly once.
    wait_for("every run to be promoted", LONG, || async {
        let mut c = pool.get().await.ok()?;
        let queued: i64 = runs_t::table
            .filter(runs_t::state.eq("QUEUED"))
            .count()
            .get_result(&mut c)
            .await
            .ok()?;
        (queued == 0).then_some(())
    })
    .await;
    let mut c = pool.get().await.unwrap();
    let all: Vec<i64> = runs_t::table.select(runs_t::id).load(&mut c).await.unwrap();
    assert!(ids.iter().all(|id| all.contains(id)), "a created run is missing");
    let readies: Vec<(i64, i64)> = run_events::table
        .filter(run_events::to_state.eq("READY"))
        .group_by(run_events::run_id)
        .select((run_events::run_id, diesel::dsl::count_star()))
        .load(&mut c)
        .await
        .unwrap();
    assert_eq!(readies.len(), all.len(), "every run became READY");
    let twice: Vec<_> = readies.iter().filter(|(_, n)| *n != 1).collect();
    assert!(twice.is_empty(), "runs promoted more than once: {twice:?}");
    let dead = hangar_db::queue::counts(&mut c).await.unwrap().dead;
    assert_eq!(dead, 0, "jobs died");
    drop(c);
    drop(pool);

    for (what, t) in &times {
        eprintln!("{what}: {:.0} ms", t.as_secs_f64() * 1000.0);
    }
    let sup_pid = sup.pid();
    assert_eq!(sup.terminate(), Some(0));
    assert!(children_of(sup_pid).is_empty());
}
