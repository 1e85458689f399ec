//! An appliance for API tests: real PostgreSQL, real Garage behind `hangar
//! tls-proxy`, certificates from a test CA, the schema applied and the first
//! admin created with the `hangar` binary, and `hangar server` running as its
//! own process. The client trusts only the test CA.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hangar_certs::{CaOptions, CertStore, LeafRequest};
use hangar_testkit::{ChildProcess, Garage, PgServer, TestDir, cargo_bin, free_port, wait_for};
use serde_json::{Value, json};

pub const ADMIN_EMAIL: &str = "admin@hangar.test";
pub const ADMIN_PASSWORD: &str = "Corr3ct-Horse-Battery";

/// Knobs that differ between tests.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_body_bytes: u64,
    pub handshake_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    pub git_timeout_secs: u64,
    /// PostgreSQL with fsync and synchronous commit, as on an appliance (benchmarks).
    pub durable_db: bool,
    /// Lines added to the `[server]` section.
    pub server_extra: String,
    /// Host the MQTT broker in the server process (on a free loopback port,
    /// with the server's certificate) and point `broker_url` at it.
    pub broker: bool,
    /// The host of `public_url` (what workers are told to reach), `localhost`
    /// unless a test needs the appliance named otherwise: Terraform accepts a
    /// registry host only with a dot in it, so module sources name `127.0.0.1`.
    pub public_host: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body_bytes: 1024 * 1024,
            handshake_timeout_secs: 10,
            shutdown_grace_secs: 20,
            git_timeout_secs: 10,
            durable_db: false,
            server_extra: String::new(),
            broker: false,
            public_host: "localhost",
        }
    }
}

pub struct Appliance {
    pub pg: PgServer,
    pub garage: Garage,
    pub dir: TestDir,
    pub config: PathBuf,
    pub pki: PathBuf,
    pub master_key: PathBuf,
    pub addr: std::net::SocketAddr,
    pub server: Option<ChildProcess>,
    pub client: reqwest::Client,
    /// The hosted broker's port, when `Options::broker` asked for one.
    pub broker_port: Option<u16>,
    /// The host of `public_url`, which [`Appliance::url`] names too.
    pub public_host: &'static str,
    _tls_proxy: ChildProcess,
}

impl Appliance {
    pub async fn start() -> Appliance {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Appliance {
        let pg = PgServer::start_with(hangar_testkit::pg::PgOptions { durable: opts.durable_db, ..Default::default() }).await;
        let garage = Garage::start().await;
        let dir = TestDir::new("server");
        let pki = dir.path().join("pki");
        let store = CertStore::open_or_create(&pki, &CaOptions::default()).expect("test CA");
        for (name, cn) in [("server", "hangar"), ("objects", "objects")] {
            store
                .ensure(name, &LeafRequest::server(cn, &["localhost", "127.0.0.1", PROXIED_HOST]), time::Duration::days(1))
                .expect("issue a certificate");
        }

        // Garage serves no TLS: `hangar tls-proxy` is its TLS front, as on an appliance.
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.args(["tls-proxy", "--listen", "127.0.0.1:0", "--to", &format!("127.0.0.1:{}", garage.s3_port)])
            .arg("--cert")
            .arg(store.cert_path("objects"))
            .arg("--key")
            .arg(store.key_path("objects"))
            .env("HANGAR_LOG", "warn")
            .stdin(Stdio::null());
        let tls_proxy = ChildProcess::spawn(cmd, "tls-proxy", dir.path());
        let objects_addr: String = wait_for("the TLS proxy to listen", Duration::from_secs(20), || {
            let out = tls_proxy.output();
            async move {
                out.lines().find_map(|l| l.strip_prefix("tls-proxy listening on ").map(|a| a.trim().to_string()))
            }
        })
        .await;
        let objects_port = objects_addr.rsplit(':').next().unwrap().to_string();

        let db = pg.write_config(dir.path());
        let secrets = dir.subdir("secrets");
        let (ak, sk) = (secrets.join("objects-access-key"), secrets.join("objects-secret-key"));
        hangar_certs::write_private_file(&ak, garage.access_key.as_bytes()).unwrap();
        hangar_certs::write_private_file(&sk, garage.secret_key.as_bytes()).unwrap();
        let master_key = secrets.join("master.key");
        hangar_crypto::MasterKey::generate().save(&master_key).unwrap();

        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let broker_port = opts.broker.then(free_port);
        let (broker_url, broker_section) = match broker_port {
            None => (String::new(), String::new()),
            Some(port) => (
                format!("broker_url = \"mqtts://localhost:{port}\"\n"),
                format!(
                    "[broker]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\nca_file = \"{ca}\"\n",
                    cert = store.cert_path("server").display(),
                    key = store.key_path("server").display(),
                    ca = store.ca_cert_path().display(),
                ),
            ),
        };
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
ca_file = "{ca}"
pool_size = 12

[drain]
data_dir = "{drain_dir}"

[server]
listen = "{addr}"
public_url = "https://{public_host}:{port}"
cert_file = "{cert}"
key_file = "{key}"
ca_file = "{pki_ca}"
max_body_bytes = {max_body}
handshake_timeout_secs = {handshake}
shutdown_grace_secs = {grace}
git_timeout_secs = {git}
{broker_url}{server_extra}

{broker_section}
[secrets]
master_key_file = "{mk}"

[objects]
engine = "garage"
endpoint = "https://localhost:{objects_port}"
bucket = "{bucket}"
access_key_file = "{ak}"
secret_key_file = "{sk}"
ca_file = "{pki_ca}"
request_timeout_secs = 5
"#,
                pg_port = pg.port,
                drain_dir = dir.path().join("drain").display(),
                pw = db.password_file.display(),
                ca = db.ca_file.display(),
                port = addr.port(),
                public_host = opts.public_host,
                cert = store.cert_path("server").display(),
                key = store.key_path("server").display(),
                max_body = opts.max_body_bytes,
                handshake = opts.handshake_timeout_secs,
                grace = opts.shutdown_grace_secs,
                git = opts.git_timeout_secs,
                server_extra = opts.server_extra,
                mk = master_key.display(),
                bucket = garage.bucket,
                ak = ak.display(),
                sk = sk.display(),
                pki_ca = store.ca_cert_path().display(),
            ),
        )
        .unwrap();

        let mut app = Appliance {
            pg,
            garage,
            config,
            pki,
            master_key,
            addr,
            server: None,
            client: if opts.public_host == PROXIED_HOST {
                // The name resolves nowhere on this host: the tests' own calls go straight to the server.
                client_builder(&store.ca_cert_path()).resolve(PROXIED_HOST, addr).build().unwrap()
            } else {
                client_trusting(&store.ca_cert_path())
            },
            broker_port,
            public_host: opts.public_host,
            _tls_proxy: tls_proxy,
            dir,
        };
        let m = app.hangar(&["migrate"], None);
        assert!(m.status.success(), "migrate: {}", stderr(&m));
        app.create_user(ADMIN_EMAIL, "admin", ADMIN_PASSWORD);
        app.start_server().await;
        app
    }

    /// Runs the `hangar` binary with this appliance's configuration.
    pub fn hangar(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.arg("--config").arg(&self.config).args(args).env("HANGAR_LOG", "warn");
        match stdin {
            None => {
                cmd.stdin(Stdio::null());
                cmd.output().expect("run hangar")
            }
            Some(input) => {
                use std::io::Write;
                let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
                child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
                child.wait_with_output().unwrap()
            }
        }
    }

    /// `hangar admin create-user` with the password in a 0600 file.
    pub fn create_user(&self, email: &str, role: &str, password: &str) {
        let file = self.dir.path().join(format!("pw-{}", rand_suffix()));
        hangar_certs::write_private_file(&file, format!("{password}\n").as_bytes()).unwrap();
        let o = self.hangar(
            &["admin", "create-user", "--email", email, "--role", role, "--password-file", file.to_str().unwrap()],
            None,
        );
        assert!(o.status.success(), "create-user {email}: {}", stderr(&o));
        let _ = std::fs::remove_file(file);
    }

    pub async fn start_server(&mut self) {
        let mut cmd = Command::new(cargo_bin("hangar"));
        cmd.arg("--config").arg(&self.config).arg("server").env("HANGAR_LOG", "info").stdin(Stdio::null());
        let mut server = ChildProcess::spawn(cmd, "server", self.dir.path());
        let url = self.url("/health");
        let client = self.client.clone();
        let up = wait_for("the server to answer /health", Duration::from_secs(30), || {
            let (client, url) = (client.clone(), url.clone());
            let exited = server.try_exited();
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => Some(Ok(())),
                    _ => None,
                }
            }
        })
        .await;
        if let Err(status) = up {
            panic!("hangar server exited ({status}): {}", server.output_tail());
        }
        self.server = Some(server);
    }

    pub fn server(&mut self) -> &mut ChildProcess {
        self.server.as_mut().expect("server running")
    }

    pub fn server_log(&self) -> String {
        self.server.as_ref().map(|s| s.output()).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.public_host, self.addr.port())
    }

    pub fn ca_path(&self) -> PathBuf {
        self.pki.join("ca.crt")
    }

    /// POSTs a GraphQL request; returns the HTTP status and the JSON body.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let mut req = self.client.post(self.url("/graphql")).json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("send GraphQL request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
    }

    /// A GraphQL request that must succeed; returns `data`.
    pub async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let (status, body) = self.gql(Some(token), query, variables).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "{query}: {body}");
        body["data"].clone()
    }

    /// A GraphQL request that must fail; returns the first error's code and message.
    pub async fn err(&self, token: Option<&str>, query: &str, variables: Value) -> (String, String) {
        let (_, body) = self.gql(token, query, variables).await;
        let e = &body["errors"][0];
        assert!(!e.is_null(), "expected an error for {query}: {body}");
        (e["extensions"]["code"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string())
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let data = self
            .ok_anonymous(
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                json!({ "e": email, "p": password }),
            )
            .await;
        data["login"]["token"].as_str().unwrap().to_string()
    }

    pub async fn ok_anonymous(&self, query: &str, variables: Value) -> Value {
        let (status, body) = self.gql(None, query, variables).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "{body}");
        body["data"].clone()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Creates a user through the API and logs in as them.
    pub async fn user_token(&self, admin: &str, email: &str, role: &str) -> String {
        let password = format!("Pw-{}-Str0ng!", rand_suffix());
        self.ok(
            admin,
            "mutation($e: String!, $r: UserRole!, $p: String!) { createUser(email: $e, role: $r, password: $p) { id } }",
            json!({ "e": email, "r": role, "p": password }),
        )
        .await;
        self.login(email, &password).await
    }

    pub async fn ready(&self) -> (u16, Value) {
        let r = self.client.get(self.url("/ready")).send().await.expect("GET /ready");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }
}

/// A client that trusts only `ca` (not the system's roots).
pub fn client_trusting(ca: &Path) -> reqwest::Client {
    client_builder(ca).build().unwrap()
}

/// A name the appliance's certificate carries besides `localhost` and
/// `127.0.0.1`, and that resolves nowhere on the host: a worker reaches an
/// appliance so named only through a proxy that resolves it (Terraform's Go
/// HTTP client never proxies loopback names or addresses).
pub const PROXIED_HOST: &str = "hangar.test";

fn client_builder(ca: &Path) -> reqwest::ClientBuilder {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .https_only(true)
        .timeout(Duration::from_secs(30))
        // The server may answer a refused request before reading its body and
        // then close the connection; a pooled connection reused at that moment
        // fails the next request with no answer. Each request gets its own.
        .pool_max_idle_per_host(0)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A minimal stack input.
pub fn stack_input(slug: &str, repository: &str) -> Value {
    json!({
        "slug": slug,
        "name": format!("Stack {slug}"),
        "repository": repository,
        "branch": "main",
        "tool": "OPENTOFU",
        "toolVersion": "1.9.0",
    })
}

pub const CREATE_STACK: &str =
    "mutation($i: StackInput!) { createStack(input: $i) { id slug name tool toolVersion labels workerPool { name } } }";

/// The console as a person signed in through its login form: a session
/// cookie, and requests from the console's own origin.
#[allow(dead_code)]
pub struct ConsoleSession {
    pub client: reqwest::Client,
    pub origin: String,
    pub cookie: String,
}

#[allow(dead_code)]
impl ConsoleSession {
    /// As the administrator.
    pub async fn login(app: &Appliance) -> ConsoleSession {
        Self::login_as(app, ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    pub async fn login_as(app: &Appliance, email: &str, password: &str) -> ConsoleSession {
        let cert = reqwest::Certificate::from_pem(&std::fs::read(app.ca_path()).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let origin = app.url("").trim_end_matches('/').to_string();
        let r = client
            .post(format!("{origin}/login"))
            .header("origin", &origin)
            .form(&[("email", email), ("password", password), ("next", "/stacks")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
        ConsoleSession { client, origin, cookie }
    }

    pub async fn get(&self, path: &str) -> String {
        let r = self.client.get(format!("{}{path}", self.origin)).header("cookie", &self.cookie).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.unwrap()
    }

    /// Posts a form from the console's own origin; returns the status.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> u16 {
        let r = self
            .client
            .post(format!("{}{path}", self.origin))
            .header("cookie", &self.cookie)
            .header("origin", &self.origin)
            .form(form)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    }

    /// The CSRF token a page's forms carry.
    pub async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string()
    }
}

/// A tools bundle 1.0.0 at `path` holding `bytes` random bytes in one file
/// (so that it is as large), signed by `key`.
#[allow(dead_code)]
pub fn random_bundle(path: &std::path::Path, bytes: u64, key: hangar_bundle::SigningKey) {
    use std::io::{Read, Write};
    let source = path.with_extension("payload");
    let mut out = std::fs::File::create(&source).unwrap();
    std::io::copy(&mut std::fs::File::open("/dev/urandom").unwrap().take(bytes), &mut out).unwrap();
    out.flush().unwrap();
    drop(out);
    let mut layout = hangar_bundle::Layout::new();
    layout.add_file("payload.bin", &source, Some(0o644)).unwrap();
    hangar_bundle::build_bundle(
        &layout,
        path,
        hangar_bundle::BuildOptions {
            kind: hangar_bundle::Kind::Tools,
            version: "1.0.0".parse().unwrap(),
            platform: hangar_bundle::host_platform(),
            created: chrono::Utc::now(),
            expires: None,
            compression_level: 1,
            threads: 2,
            signing_keys: &[key],
            progress: None,
        },
    )
    .unwrap();
    std::fs::remove_file(&source).unwrap();
}

/// `n` bytes of printable text that gzip cannot shrink much (a fixed
/// xorshift sequence, the same every time).
pub fn incompressible(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}
