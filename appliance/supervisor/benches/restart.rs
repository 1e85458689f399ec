//! Supervisor figures, in a release build: restart-to-ready after SIGKILL for
//! each kind of service (no check; PostgreSQL with a query over TLS; Garage with
//! a TCP check; the TLS proxy with a signed S3 request through TLS; `hangar
//! drain` and `hangar scheduler` with their heartbeats), and what `hangar
//! tls-proxy` relays per second.
//!
//! `cargo bench -p hangar-supervisor --bench restart` (root, PostgreSQL 15 and
//! garage installed, as for the tests). Prints a Markdown table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_supervisor::ctl::CtlClient;
use hangar_supervisor::protocol::State;
use hangar_supervisor::{ProxyConfig, TlsProxy};
use hangar_testkit::user::ServiceUser;
use hangar_testkit::{ChildProcess, PgServer, StopMode, TestDir, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUNDS: usize = 15;

fn main() {
    hangar_testkit::init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        restarts().await;
        proxy_throughput().await;
    });
}

fn random_hex(n: usize) -> String {
    let mut x = std::process::id() as u64 ^ 0x2545_f491_4f6c_dd1d ^ Instant::now().elapsed().as_nanos() as u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

async fn restarts() {
    let mut pg = PgServer::start().await;
    hangar_db::migrate::run_pending(&pg.database()).await.unwrap();
    pg.stop(StopMode::Fast);
    let dir = TestDir::new("bench-restart");
    let user = ServiceUser::get();
    let db = pg.write_config(dir.path());
    // The drain and the scheduler read it as the service user.
    user.chown(&db.password_file);
    let hangar = hangar_testkit::cargo_bin("hangar");

    let garage_dir = dir.subdir("garage");
    let (rpc, s3_port, admin, proxy_port) = (free_port(), free_port(), free_port(), free_port());
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
    let store = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default()).unwrap();
    store
        .ensure("objects", &LeafRequest::server("objects", &["localhost"]), time::Duration::days(1))
        .unwrap();
    user.chown(&store.key_path("objects"));
    let (access, secret) = (format!("GK{}", random_hex(24)), random_hex(64));
    hangar_certs::write_private_file(&dir.path().join("s3-access"), access.as_bytes()).unwrap();
    hangar_certs::write_private_file(&dir.path().join("s3-secret"), secret.as_bytes()).unwrap();
    let sleep_bin = dir.path().join("sleep");
    std::fs::copy("/bin/sleep", &sleep_bin).unwrap();

    let config = dir.path().join("hangar.toml");
    let d = dir.path().display();
    // Every kill is of a child that ran stable for a while (stable_after_secs),
    // so each measures a first restart; the start limit is out of the way.
    std::fs::write(
        &config,
        format!(
            "[database]\nhost = \"127.0.0.1\"\nport = {port}\nname = \"hangar\"\nuser = \"hangar\"\n\
             password_file = \"{pw}\"\nca_file = \"{dbca}\"\n\n\
             [supervisor]\nsocket = \"{d}/run/control.sock\"\nlog_dir = \"{d}/log\"\nstate_dir = \"{d}/run\"\nuser = \"{u}\"\n\
             [supervisor.defaults]\nstable_after_secs = 1\nstart_limit_burst = 1000\n\
             [[supervisor.service]]\nname = \"plain\"\ncommand = \"{sleep}\"\nargs = [\"100000\"]\n\
             [[supervisor.service]]\nname = \"postgres\"\ncommand = \"{postgres}\"\nargs = [\"-D\", \"{data}\", \"-p\", \"{port}\"]\n\
             stop_signal = \"INT\"\nready = {{ kind = \"postgres\" }}\n\
             [[supervisor.service]]\nname = \"garage\"\ncommand = \"{garage}\"\n\
             args = [\"-c\", \"{gd}/garage.toml\", \"server\", \"--single-node\", \"--default-bucket\"]\n\
             env = {{ GARAGE_RPC_SECRET = \"{rpc_secret}\", GARAGE_DEFAULT_ACCESS_KEY = \"{access}\", \
             GARAGE_DEFAULT_SECRET_KEY = \"{secret}\", GARAGE_DEFAULT_BUCKET = \"hangar\", RUST_LOG = \"garage=warn\" }}\n\
             ready = {{ kind = \"tcp\", address = \"127.0.0.1:{s3_port}\" }}\n\
             [[supervisor.service]]\nname = \"objects-tls\"\ncommand = \"{hangar}\"\n\
             args = [\"tls-proxy\", \"--listen\", \"127.0.0.1:{proxy_port}\", \"--to\", \"127.0.0.1:{s3_port}\", \
             \"--cert\", \"{cert}\", \"--key\", \"{key}\"]\ndepends_on = [\"garage\"]\n\
             ready = {{ kind = \"s3\", endpoint = \"https://localhost:{proxy_port}\", region = \"garage\", bucket = \"hangar\", \
             access_key_file = \"{d}/s3-access\", secret_key_file = \"{d}/s3-secret\", ca_file = \"{ca}\" }}\n\
             [[supervisor.service]]\nname = \"drain\"\ncommand = \"{hangar}\"\nargs = [\"--config\", \"{config}\", \"drain\"]\n\
             depends_on = [\"postgres\"]\nready = {{ kind = \"heartbeat\", process = \"drain\" }}\n\
             [[supervisor.service]]\nname = \"scheduler\"\ncommand = \"{hangar}\"\nargs = [\"--config\", \"{config}\", \"scheduler\"]\n\
             depends_on = [\"postgres\"]\nready = {{ kind = \"heartbeat\", process = \"scheduler\" }}\n",
            port = pg.port,
            pw = db.password_file.display(),
            dbca = db.ca_file.display(),
            u = user.name,
            sleep = sleep_bin.display(),
            postgres = hangar_testkit::pg::pg_bin_dir().join("postgres").display(),
            data = pg.dir().join("data").display(),
            garage = hangar_testkit::garage::garage_bin().display(),
            gd = garage_dir.display(),
            rpc_secret = random_hex(64),
            hangar = hangar.display(),
            cert = store.cert_path("objects").display(),
            key = store.key_path("objects").display(),
            ca = store.ca_cert_path().display(),
            config = config.display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&hangar);
    cmd.arg("--config").arg(&config).arg("supervise").env("HANGAR_LOG", "warn");
    let sup = Supervised(ChildProcess::spawn(cmd, "supervise", dir.path()));
    let client = CtlClient::new(dir.path().join("run/control.sock"));
    let names = ["plain", "postgres", "garage", "objects-tls", "drain", "scheduler"];
    for n in names {
        wait_ready(&client, n, None).await;
    }

    println!("## restart-to-ready after SIGKILL ({ROUNDS} kills each)\n");
    println!("| service | readiness check | p50 ms | p90 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, check) in [
        ("plain", "none (up 100 ms)"),
        ("postgres", "SELECT 1 over TLS"),
        ("garage", "TCP connect"),
        ("objects-tls", "signed S3 HEAD through TLS"),
        ("drain", "own fresh heartbeat row"),
        ("scheduler", "own fresh heartbeat row"),
    ] {
        let mut times = Vec::new();
        for _ in 0..ROUNDS {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let pid = status(&client, name).await.pid.unwrap();
            let t = Instant::now();
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
            wait_ready(&client, name, Some(pid)).await;
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "| {name} | {check} | {} | {} | {} |",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.9)),
            ms(*times.last().unwrap())
        );
    }
    println!();
    drop(sup);
    drop(pg);
}

/// The supervisor, stopped with SIGTERM when dropped (also when the bench
/// panics), so that it stops its services rather than orphaning them.
struct Supervised(ChildProcess);

impl Drop for Supervised {
    fn drop(&mut self) {
        self.0.terminate(Duration::from_secs(60));
    }
}

async fn status(client: &CtlClient, name: &str) -> hangar_supervisor::protocol::ServiceStatus {
    client.status().await.unwrap().0.into_iter().find(|s| s.name == name).unwrap()
}

/// Until `name` is ready with a pid other than `old`; polls every 2 ms.
async fn wait_ready(client: &CtlClient, name: &str, old: Option<u32>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // The control socket appears shortly after the supervisor starts.
        let s = client.status().await.ok().and_then(|(all, _)| all.into_iter().find(|s| s.name == name));
        if let Some(s) = &s
            && s.state == State::Ready
            && s.pid.is_some()
            && s.pid != old
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} not ready: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A sink that discards what it reads, and a source that writes `n` bytes.
async fn sink_and_source() -> (String, String) {
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = (sink.local_addr().unwrap().to_string(), source.local_addr().unwrap().to_string());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_le_bytes()).await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = source.accept().await {
            tokio::spawn(async move {
                let mut want = [0u8; 8];
                if s.read_exact(&mut want).await.is_err() {
                    return;
                }
                let mut left = u64::from_le_bytes(want);
                let buf = vec![0x5au8; 256 * 1024];
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    (a, b)
}

async fn tls_connect(port: u16, ca: &Path) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let roots = hangar_certs::tls::roots_from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn proxy_throughput() {
    let dir = TestDir::new("bench-proxy");
    let store = CertStore::open_or_create(&dir.path().join("pki"), &CaOptions::default()).unwrap();
    store
        .ensure("objects", &LeafRequest::server("objects", &["localhost"]), time::Duration::days(1))
        .unwrap();
    let ca: PathBuf = store.ca_cert_path();
    let (sink, source) = sink_and_source().await;
    let start = |to: String| {
        TlsProxy::start(ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            to,
            store.cert_path("objects"),
            store.key_path("objects"),
        ))
    };
    let up = start(sink.clone()).await.unwrap();
    let down = start(source.clone()).await.unwrap();
    const BYTES: u64 = 1024 * 1024 * 1024;
    let chunk = vec![0xa5u8; 256 * 1024];

    println!("## hangar tls-proxy (in-process, loopback, one connection, 1 GiB)\n");
    println!("| direction | through the proxy (TLS) MiB/s | plain TCP, no proxy MiB/s |");
    println!("|---|---|---|");
    // Upload: client -> proxy -> sink.
    let mut rates = Vec::new();
    for tls in [true, false] {
        let t = Instant::now();
        let total = if tls {
            let mut s = tls_connect(up.local_addr().port(), &ca).await;
            let mut sent = 0;
            while sent < BYTES {
                s.write_all(&chunk).await.unwrap();
                sent += chunk.len() as u64;
            }
            s.shutdown().await.unwrap();
            let mut n = [0u8; 8];
            s.read_exact(&mut n).await.unwrap();
            u64::from_le_bytes(n)
        } else {
            let mut s = tokio::net::TcpStream::connect(&sink).await.unwrap();
            let mut sent = 0;
            while sent < BYTES {
                s.write_all(&chunk).await.unwrap();
                sent += chunk.len() as u64;
            }
            s.shutdown().await.unwrap();
            let mut n = [0u8; 8];
            s.read_exact(&mut n).await.unwrap();
            u64::from_le_bytes(n)
        };
        assert_eq!(total, BYTES);
        rates.push(BYTES as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64());
    }
    println!("| upload | {:.0} | {:.0} |", rates[0], rates[1]);
    // Download: source -> proxy -> client.
    let mut rates = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for tls in [true, false] {
        let t = Instant::now();
        let mut got = 0u64;
        if tls {
            let mut s = tls_connect(down.local_addr().port(), &ca).await;
            s.write_all(&BYTES.to_le_bytes()).await.unwrap();
            while got < BYTES {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got += n as u64;
            }
        } else {
            let mut s = tokio::net::TcpStream::connect(&source).await.unwrap();
            s.write_all(&BYTES.to_le_bytes()).await.unwrap();
            while got < BYTES {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got += n as u64;
            }
        }
        rates.push(BYTES as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64());
    }
    println!("| download | {:.0} | {:.0} |", rates[0], rates[1]);

    // New connections: TCP connect + TLS handshake + a byte relayed each way.
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let mut s = tls_connect(down.local_addr().port(), &ca).await;
        s.write_all(&1u64.to_le_bytes()).await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "\nNew TLS connection through the proxy, first byte back (200 in a row): p50 {:.2} ms, p99 {:.2} ms\n",
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0
    );
    up.shutdown();
    down.shutdown();
    up.wait().await;
    down.wait().await;
}
