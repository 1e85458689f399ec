//! The questions, asked through a [`Prompter`] (the terminal or an answers
//! file), and the [`Answers`] the steps run on. Every question has a key: the
//! answers file names it; a missing or invalid key is an error before anything
//! on the host changes.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Component, Path, PathBuf};

use hangar_crypto::SecretString;
use serde::{Deserialize, Serialize};

use crate::error::InstallError;

/// One question: the answers file's key, and what the terminal shows.
#[derive(Debug, Clone, Copy)]
pub struct Question {
    pub key: &'static str,
    pub prompt: &'static str,
}

macro_rules! questions {
    ($($name:ident = $key:literal, $prompt:literal;)*) => {
        $(pub const $name: Question = Question { key: $key, prompt: $prompt };)*
        /// Every key an answers file may hold.
        pub const KEYS: &[&str] = &[$($key),*];
    };
}

questions! {
    Q_EXISTING = "existing_install", "An installation exists here";
    Q_BUNDLE = "bundle", "Appliance bundle file";
    Q_DOWNGRADE = "allow_downgrade", "The bundle is older than the installed release; install it anyway";
    Q_HOSTNAME = "hostname", "Host name workers and browsers use";
    Q_ADDRESSES = "addresses", "IP addresses for the certificates (comma-separated)";
    Q_LISTEN = "listen_address", "Address the services listen on";
    Q_SERVER_PORT = "server_port", "HTTPS port (console, API, workers)";
    Q_BROKER_PORT = "broker_port", "MQTT broker port";
    Q_DATABASE_PORT = "database_port", "PostgreSQL port (loopback)";
    Q_OBJECTS_PORT = "objects_port", "Object store port (TLS)";
    Q_GARAGE_S3_PORT = "garage_s3_port", "Garage's S3 port (loopback, behind TLS)";
    Q_GARAGE_RPC_PORT = "garage_rpc_port", "Garage's RPC port (loopback)";
    Q_GARAGE_ADMIN_PORT = "garage_admin_port", "Garage's admin port (loopback)";
    Q_DATA_DIR = "data_dir", "Data directory";
    Q_ADMIN_EMAIL = "admin_email", "Administrator e-mail";
    Q_ADMIN_PASSWORD = "admin_password", "Administrator password";
    Q_DATABASE = "database", "PostgreSQL";
    Q_DB_URL = "database_url", "External PostgreSQL URL (postgres://role@host:port/database)";
    Q_DB_PASSWORD = "database_password", "Password of that role";
    Q_DB_CA_FILE = "database_ca_file", "CA certificate that signs the database server's certificate";
    Q_OBJECT_STORE = "object_store", "Object store";
    Q_S3_ENDPOINT = "s3_endpoint", "External S3 endpoint URL";
    Q_S3_REGION = "s3_region", "External S3 signing region";
    Q_S3_BUCKET = "s3_bucket", "External S3 bucket";
    Q_S3_ACCESS_KEY = "s3_access_key", "External S3 access key id";
    Q_S3_SECRET_KEY = "s3_secret_key", "External S3 secret key";
    Q_S3_CA_FILE = "s3_ca_file", "CA certificate of the endpoint (empty: the system's roots)";
    Q_S3_PLAIN_HTTP = "s3_danger_plain_http", "Accept a plain-http endpoint (development only)";
    Q_TLS = "tls", "Console TLS certificate";
    Q_TLS_CERT = "tls_cert_file", "Certificate chain (PEM)";
    Q_TLS_KEY = "tls_key_file", "Private key (PEM)";
    Q_TLS_CA = "tls_ca_file", "CA certificate the chain leads to (empty: the chain's own root)";
    Q_BACKUP_SCHEDULE = "backup_schedule", "Scheduled backups (cron, UTC; off for none)";
    Q_BACKUP_RETENTION = "backup_retention", "Backups to keep";
    Q_CONFIRM = "confirm", "Install with these settings";
}

/// How a prompter failed to get an answer.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{origin}: missing key `{key}` ({prompt})")]
    Missing { origin: String, key: &'static str, prompt: &'static str },
    #[error("{origin}: invalid `{key}`: {problem}")]
    Invalid { origin: String, key: &'static str, problem: String },
    #[error("{prompt}: {problem}")]
    Terminal { prompt: &'static str, problem: String },
}

/// A check of a typed answer: `Err(why)` refuses it.
pub type Check<'a> = &'a dyn Fn(&str) -> Result<(), String>;

/// Where answers come from. The steps never talk to the operator directly.
pub trait Prompter {
    /// Whether a refused answer can be asked again (a terminal) or ends the run (a file).
    fn interactive(&self) -> bool;
    fn input(&mut self, q: Question, default: Option<&str>, check: Check<'_>) -> Result<String, PromptError>;
    /// A secret, typed twice on a terminal.
    fn password(&mut self, q: Question, check: Check<'_>) -> Result<SecretString, PromptError>;
    fn confirm(&mut self, q: Question, default: bool) -> Result<bool, PromptError>;
    /// One of `items` (`(key, label)`): the answers file gives the key.
    fn select(&mut self, q: Question, items: &[(&str, &str)], default: usize) -> Result<usize, PromptError>;
    /// A choice most installations leave at its default: offered on a
    /// terminal, and an answers file may leave it out.
    fn choose(&mut self, q: Question, items: &[(&str, &str)], default: usize) -> Result<usize, PromptError> {
        self.select(q, items, default)
    }
    /// A question most installations leave at its default: asked on a
    /// terminal, and an answers file may leave it out.
    fn optional(&mut self, q: Question, default: &str, check: Check<'_>) -> Result<String, PromptError> {
        self.input(q, Some(default), check)
    }
    /// Text shown between questions (a terminal shows it; a file ignores it).
    fn say(&mut self, text: &str);
}

/// The ports the appliance listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub server: u16,
    pub broker: u16,
    pub database: u16,
    pub objects: u16,
    pub garage_s3: u16,
    pub garage_rpc: u16,
    pub garage_admin: u16,
}

impl Ports {
    /// Every port with what it is for (0: none here, such as an external
    /// database's or Garage's beside MinIO).
    pub fn all(&self, bundled_objects: bool) -> Vec<(&'static str, u16)> {
        let mut v = vec![("server", self.server), ("broker", self.broker), ("database", self.database)];
        if bundled_objects {
            v.extend([
                ("object store", self.objects),
                ("garage s3", self.garage_s3),
                ("garage rpc", self.garage_rpc),
                ("garage admin", self.garage_admin),
            ]);
        }
        v.retain(|(_, port)| *port != 0);
        v
    }
}

/// An S3 endpoint the operator already runs.
#[derive(Debug, Clone)]
pub struct ExternalS3 {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: SecretString,
    pub secret_key: SecretString,
    pub ca_file: Option<PathBuf>,
    pub danger_plain_http: bool,
}

/// A PostgreSQL server the operator already runs, reached over TLS verified
/// against `ca_file` with the host name of the URL.
#[derive(Debug, Clone)]
pub struct ExternalDb {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub password: SecretString,
    pub ca_file: PathBuf,
}

impl ExternalDb {
    /// `role@host:port/database`, for messages and the state file (no secret in it).
    pub fn target(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{}@{host}:{}/{}", self.user, self.port, self.name)
    }
}

#[derive(Debug, Clone)]
pub enum DatabaseChoice {
    /// The PostgreSQL the bundle carries, provisioned and supervised here.
    Bundled,
    External(ExternalDb),
}

/// The object store server a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundledEngine {
    /// Behind the appliance's own TLS front (`hangar tls-proxy`).
    Garage,
    /// Serving TLS itself from the appliance CA's certificate.
    Minio,
}

impl BundledEngine {
    pub fn name(self) -> &'static str {
        match self {
            BundledEngine::Garage => "garage",
            BundledEngine::Minio => "minio",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ObjectStoreChoice {
    /// The object store the bundle carries.
    Bundled(BundledEngine),
    External(ExternalS3),
}

/// A certificate the operator brings for the console, validated.
#[derive(Debug, Clone)]
pub struct ProvidedTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

/// Everything the steps need to know, gathered before anything changes.
#[derive(Debug, Clone)]
pub struct Answers {
    pub bundle: PathBuf,
    pub allow_downgrade: bool,
    pub hostname: String,
    pub addresses: Vec<IpAddr>,
    pub listen: IpAddr,
    pub ports: Ports,
    /// As seen on the appliance (under the prefix).
    pub data_dir: PathBuf,
    pub admin_email: String,
    pub admin_password: SecretString,
    pub database: DatabaseChoice,
    pub objects: ObjectStoreChoice,
    pub tls: Option<ProvidedTls>,
    pub backups: crate::installed::BackupSettings,
}

impl Answers {
    pub fn bundled_objects(&self) -> bool {
        matches!(self.objects, ObjectStoreChoice::Bundled(_))
    }

    pub fn bundled_database(&self) -> bool {
        matches!(self.database, DatabaseChoice::Bundled)
    }

    /// The console's URL.
    pub fn console_url(&self) -> String {
        format!("https://{}:{}", self.hostname, self.ports.server)
    }

    /// Where the installer itself reaches a service listening on `port`.
    pub fn local_addr(&self, port: u16) -> SocketAddr {
        let ip = if self.listen.is_unspecified() {
            if self.listen.is_ipv4() { IpAddr::from([127, 0, 0, 1]) } else { "::1".parse().expect("an address") }
        } else {
            self.listen
        };
        SocketAddr::new(ip, port)
    }

    /// The summary shown before confirming (no secret in it).
    pub fn summary(&self) -> String {
        let objects = match &self.objects {
            ObjectStoreChoice::Bundled(e) => format!("bundled ({})", e.name()),
            ObjectStoreChoice::External(s) => format!("external {} bucket {}", s.endpoint, s.bucket),
        };
        let database = match &self.database {
            DatabaseChoice::Bundled => format!("bundled, port {}", self.ports.database),
            DatabaseChoice::External(d) => format!("external {} (CA {})", d.target(), d.ca_file.display()),
        };
        let tls = match &self.tls {
            None => "generated by the appliance CA".to_string(),
            Some(t) => format!("provided ({})", t.cert_file.display()),
        };
        let addrs: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
        let backups = match &self.backups.schedule {
            Some(cron) => format!("on the schedule {cron:?} (UTC), the newest {} kept", self.backups.retention),
            None => format!("none scheduled, the newest {} kept", self.backups.retention),
        };
        format!(
            "  bundle          {}\n  host name       {}\n  addresses       {}\n  listen on       {}\n  ports           server {}, broker {}, object store {}\n  data directory  {}\n  administrator   {}\n  database        {database}\n  object store    {objects}\n  console TLS     {tls}\n  backups         {backups}\n",
            self.bundle.display(),
            self.hostname,
            addrs.join(", "),
            self.listen,
            self.ports.server,
            self.ports.broker,
            self.ports.objects,
            self.data_dir.display(),
            self.admin_email,
        )
    }
}

pub fn check_hostname(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok { Ok(()) } else { Err(format!("{s:?} is not a valid host name")) }
}

pub fn parse_addresses(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(part.parse::<IpAddr>().map_err(|_| format!("{part:?} is not an IP address"))?);
    }
    if out.is_empty() {
        return Err("give at least one IP address".into());
    }
    Ok(out)
}

pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    }
}

/// Whether something already listens on `port` (on any address).
pub fn port_free(listen: IpAddr, port: u16) -> Result<(), String> {
    let any = if listen.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { listen };
    for ip in [any, listen] {
        if TcpListener::bind(SocketAddr::new(ip, port)).is_err() {
            return Err(format!("port {port} is already in use"));
        }
    }
    Ok(())
}

pub fn check_absolute(s: &str) -> Result<(), String> {
    let p = Path::new(s);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{s:?} must be an absolute path without `..`"));
    }
    Ok(())
}

pub fn check_email(s: &str) -> Result<(), String> {
    let ok = s.len() <= 254
        && s.split_once('@').is_some_and(|(a, b)| !a.is_empty() && b.contains('.') || b == "localhost")
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok { Ok(()) } else { Err(format!("{s:?} is not an e-mail address")) }
}

/// The parts of an external PostgreSQL URL: host, port, role, database.
/// The password is its own answer (kept out of the URL, which is shown).
pub fn parse_database_url(s: &str) -> Result<(String, u16, String, String), String> {
    let url = url::Url::parse(s).map_err(|e| format!("not a postgres:// URL ({e})"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!("the scheme is {:?}; give postgres://role@host:port/database", url.scheme()));
    }
    // Named before anything that echoes the URL: the error must not show it.
    if url.password().is_some() {
        return Err("the URL holds a password: give it as `database_password`, not in the URL".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{s:?} has parameters; give none (TLS is always on, verified against the CA of `database_ca_file` and the URL's host name)"
        ));
    }
    let decode = |part: &str| url::form_urlencoded::parse(format!("x={part}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default();
    let user = decode(url.username());
    if user.is_empty() {
        return Err(format!("{s:?} names no role; give postgres://role@host:port/database"));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => return Err(format!("{s:?} names no host")),
    };
    let path = url.path().trim_start_matches('/');
    if path.is_empty() || path.contains('/') {
        return Err(format!("{s:?} must name one database after the host: postgres://role@host:port/database"));
    }
    let name = decode(path);
    Ok((host, url.port().unwrap_or(5432), user, name))
}

/// What the questions need from the rest of the installer.
pub struct Context<'a> {
    /// The system's host name, offered as the default.
    pub default_hostname: String,
    /// Ports held by this installation already (their processes may run): not
    /// checked for being free.
    pub own_ports: Vec<u16>,
    /// Whether an external PostgreSQL may be chosen (not for a restore, which
    /// brings back a dump of the bundled one).
    pub external_database: bool,
    /// The bundle's object store engine (`garage`, `minio`), when the bundle was opened.
    pub bundled_engine: &'a dyn Fn() -> Option<String>,
    /// Opens and checks the bundle named in answer to [`Q_BUNDLE`].
    pub check_bundle: &'a mut dyn FnMut(&Path, &mut dyn Prompter) -> Result<(), InstallError>,
    /// Connects to an external PostgreSQL as the appliance will (TLS verified
    /// against the given CA) and checks what the migrations need.
    pub check_database: &'a dyn Fn(&ExternalDb) -> Result<(), String>,
    /// Verifies external S3 credentials with a real signed request.
    pub check_s3: &'a dyn Fn(&ExternalS3) -> Result<(), String>,
    /// Validates a provided certificate for the host name.
    pub check_tls: &'a dyn Fn(&ProvidedTls, &str) -> Result<(), String>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("own_ports", &self.own_ports).finish_non_exhaustive()
    }
}

fn err(e: PromptError) -> InstallError {
    InstallError::Prompt(e)
}

fn invalid(q: Question, problem: String) -> InstallError {
    InstallError::Prompt(PromptError::Invalid { origin: "answer".into(), key: q.key, problem })
}

/// Asks every question in order, checking each answer, and returns them.
pub fn ask(p: &mut dyn Prompter, ctx: &mut Context<'_>) -> Result<Answers, InstallError> {
    let bundle = loop {
        let path = PathBuf::from(p.input(Q_BUNDLE, None, &|s| {
            if Path::new(s).is_file() { Ok(()) } else { Err(format!("{s} is not a file")) }
        }).map_err(err)?);
        match (ctx.check_bundle)(&path, p) {
            Ok(()) => break path,
            Err(e) if p.interactive() && !matches!(e, InstallError::Aborted(_)) => {
                p.say(&format!("refused: {}", hangar_types::error_chain(&e)));
            }
            Err(e) => return Err(e),
        }
    };
    let hostname = p.input(Q_HOSTNAME, Some(&ctx.default_hostname), &check_hostname).map_err(err)?;
    let addresses = parse_addresses(&p.input(Q_ADDRESSES, Some("127.0.0.1"), &|s| parse_addresses(s).map(|_| ())).map_err(err)?)
        .map_err(|problem| invalid(Q_ADDRESSES, problem))?;
    let listen: IpAddr = p
        .input(Q_LISTEN, Some("0.0.0.0"), &|s| s.parse::<IpAddr>().map(|_| ()).map_err(|_| format!("{s:?} is not an IP address")))
        .map_err(err)?
        .parse()
        .map_err(|_| invalid(Q_LISTEN, "not an IP address".into()))?;
    let bundled_engine = (ctx.bundled_engine)();
    let store = match &bundled_engine {
        Some(engine) => {
            let label = format!("the bundled one ({engine})");
            let items = [("bundled", label.as_str()), ("external", "an external S3 endpoint")];
            p.select(Q_OBJECT_STORE, &items, 0).map_err(err)?
        }
        None => 1,
    };
    let bundled = store == 0;
    let databases = [("bundled", "the bundled one, on this host"), ("external", "an external PostgreSQL server")];
    let bundled_db = if ctx.external_database {
        p.choose(Q_DATABASE, &databases, 0).map_err(err)? == 0
    } else {
        // Not offered on a terminal; an answers file that asks for it is refused.
        if !p.interactive() && p.choose(Q_DATABASE, &databases, 0).map_err(err)? != 0 {
            return Err(invalid(Q_DATABASE, "a restore brings back a dump of the bundled PostgreSQL: answer \"bundled\"".into()));
        }
        true
    };
    let mut taken: Vec<u16> = Vec::new();
    let port = |p: &mut dyn Prompter, q: Question, default: u16, taken: &mut Vec<u16>| -> Result<u16, InstallError> {
        let own = ctx.own_ports.clone();
        let before = taken.clone();
        let check = move |s: &str| {
            let n = parse_port(s)?;
            if before.contains(&n) {
                return Err(format!("port {n} is already chosen for another service"));
            }
            if !own.contains(&n) {
                port_free(listen, n)?;
            }
            Ok(())
        };
        let n = parse_port(&p.input(q, Some(&default.to_string()), &check).map_err(err)?)
            .map_err(|problem| invalid(q, problem))?;
        taken.push(n);
        Ok(n)
    };
    let server = port(p, Q_SERVER_PORT, 1983, &mut taken)?;
    let broker = port(p, Q_BROKER_PORT, 1984, &mut taken)?;
    let database = if bundled_db { port(p, Q_DATABASE_PORT, 5432, &mut taken)? } else { 0 };
    let engine = if bundled_engine.as_deref() == Some("minio") { BundledEngine::Minio } else { BundledEngine::Garage };
    let (objects, garage_s3, garage_rpc, garage_admin) = if bundled && engine == BundledEngine::Minio {
        (port(p, Q_OBJECTS_PORT, 9000, &mut taken)?, 0, 0, 0)
    } else if bundled {
        (
            port(p, Q_OBJECTS_PORT, 9000, &mut taken)?,
            port(p, Q_GARAGE_S3_PORT, 3900, &mut taken)?,
            port(p, Q_GARAGE_RPC_PORT, 3901, &mut taken)?,
            port(p, Q_GARAGE_ADMIN_PORT, 3903, &mut taken)?,
        )
    } else {
        (0, 0, 0, 0)
    };
    let data_dir = PathBuf::from(p.input(Q_DATA_DIR, Some("/var/lib/hangar"), &check_absolute).map_err(err)?);
    let admin_email = p.input(Q_ADMIN_EMAIL, None, &check_email).map_err(err)?;
    let email = admin_email.clone();
    let admin_password = p
        .password(Q_ADMIN_PASSWORD, &move |pw| hangar_crypto::check_password_strength(pw, &email).map_err(|e| e.to_string()))
        .map_err(err)?;
    let database_choice = if bundled_db { DatabaseChoice::Bundled } else { ask_external_database(p, ctx)? };
    let objects_choice = if bundled {
        ObjectStoreChoice::Bundled(engine)
    } else {
        loop {
            let s3 = ExternalS3 {
                endpoint: p
                    .input(Q_S3_ENDPOINT, None, &|s| {
                        if s.starts_with("https://") || s.starts_with("http://") { Ok(()) } else { Err("must be an https:// URL".into()) }
                    })
                    .map_err(err)?,
                region: p.input(Q_S3_REGION, Some("us-east-1"), &|s| if s.is_empty() { Err("must not be empty".into()) } else { Ok(()) }).map_err(err)?,
                bucket: p.input(Q_S3_BUCKET, Some("hangar"), &|s| if s.is_empty() { Err("must not be empty".into()) } else { Ok(()) }).map_err(err)?,
                access_key: SecretString::new(p.input(Q_S3_ACCESS_KEY, None, &|s| if s.is_empty() { Err("must not be empty".into()) } else { Ok(()) }).map_err(err)?),
                secret_key: p.password(Q_S3_SECRET_KEY, &|s| if s.is_empty() { Err("must not be empty".into()) } else { Ok(()) }).map_err(err)?,
                ca_file: Some(p.input(Q_S3_CA_FILE, Some(""), &|s| {
                    if s.is_empty() || Path::new(s).is_file() { Ok(()) } else { Err(format!("{s} is not a file")) }
                }).map_err(err)?)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
                danger_plain_http: false,
            };
            let s3 = ExternalS3 {
                danger_plain_http: s3.endpoint.starts_with("http://") && p.confirm(Q_S3_PLAIN_HTTP, false).map_err(err)?,
                ..s3
            };
            p.say(&format!("checking {} with a signed request...", s3.endpoint));
            match (ctx.check_s3)(&s3) {
                Ok(()) => break ObjectStoreChoice::External(s3),
                Err(problem) if p.interactive() => p.say(&format!("refused: {problem}")),
                Err(problem) => return Err(InstallError::Objects { endpoint: s3.endpoint, problem }),
            }
        }
    };
    let tls = loop {
        let choice = p
            .select(Q_TLS, &[("generate", "generate one from the appliance CA"), ("provided", "use my own certificate")], 0)
            .map_err(err)?;
        if choice == 0 {
            break None;
        }
        let file = |p: &mut dyn Prompter, q: Question, optional: bool| -> Result<Option<PathBuf>, InstallError> {
            let s = p
                .input(q, if optional { Some("") } else { None }, &move |s: &str| {
                    if (optional && s.is_empty()) || Path::new(s).is_file() { Ok(()) } else { Err(format!("{s} is not a file")) }
                })
                .map_err(err)?;
            Ok((!s.is_empty()).then(|| PathBuf::from(s)))
        };
        let provided = ProvidedTls {
            cert_file: file(p, Q_TLS_CERT, false)?.unwrap_or_default(),
            key_file: file(p, Q_TLS_KEY, false)?.unwrap_or_default(),
            ca_file: file(p, Q_TLS_CA, true)?,
        };
        match (ctx.check_tls)(&provided, &hostname) {
            Ok(()) => break Some(provided),
            Err(problem) if p.interactive() => p.say(&format!("refused: {problem}")),
            Err(problem) => return Err(InstallError::ProvidedTls { path: provided.cert_file, problem }),
        }
    };
    // Scheduled backups dump the bundled PostgreSQL; an external one is
    // backed up by its operator's own means.
    let schedule = if !bundled_db {
        "off".to_string()
    } else {
        p.optional(Q_BACKUP_SCHEDULE, crate::installed::DEFAULT_SCHEDULE, &|s| {
            if s.trim() == "off" { Ok(()) } else { crate::installed::check_schedule(s.trim()).map(|_| ()) }
        })
        .map_err(err)?
    };
    let retention = if !bundled_db {
        crate::installed::DEFAULT_RETENTION.to_string()
    } else {
        p.optional(Q_BACKUP_RETENTION, &crate::installed::DEFAULT_RETENTION.to_string(), &|s| match s.trim().parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(()),
            _ => Err(format!("{s:?} is not a number of backups (1-1000)")),
        })
        .map_err(err)?
    };
    let backups = crate::installed::BackupSettings {
        schedule: Some(schedule.trim().to_string()).filter(|s| s != "off"),
        retention: retention.trim().parse().map_err(|_| invalid(Q_BACKUP_RETENTION, "not a number".into()))?,
    };
    let answers = Answers {
        bundle,
        allow_downgrade: false,
        hostname,
        addresses,
        listen,
        ports: Ports { server, broker, database, objects, garage_s3, garage_rpc, garage_admin },
        data_dir,
        admin_email,
        admin_password,
        database: database_choice,
        objects: objects_choice,
        tls,
        backups,
    };
    p.say(&format!("\nSummary:\n{}", answers.summary()));
    if !p.confirm(Q_CONFIRM, true).map_err(err)? {
        return Err(InstallError::Aborted("not confirmed; nothing was changed".into()));
    }
    Ok(answers)
}

/// The external PostgreSQL: its URL, the role's password and the CA, then a
/// real connection before anything on the host changes.
fn ask_external_database(p: &mut dyn Prompter, ctx: &Context<'_>) -> Result<DatabaseChoice, InstallError> {
    loop {
        let url = p.input(Q_DB_URL, None, &|s| parse_database_url(s).map(|_| ())).map_err(err)?;
        let (host, port, user, name) = parse_database_url(&url).map_err(|problem| invalid(Q_DB_URL, problem))?;
        let password = p.password(Q_DB_PASSWORD, &|s| if s.is_empty() { Err("must not be empty".into()) } else { Ok(()) }).map_err(err)?;
        let ca_file = PathBuf::from(
            p.input(Q_DB_CA_FILE, None, &|s| if Path::new(s).is_file() { Ok(()) } else { Err(format!("{s} is not a file")) })
                .map_err(err)?,
        );
        let db = ExternalDb { host, port, name, user, password, ca_file };
        p.say(&format!("connecting to {} over TLS...", db.target()));
        match (ctx.check_database)(&db) {
            Ok(()) => return Ok(DatabaseChoice::External(db)),
            Err(problem) if p.interactive() => p.say(&format!("refused: {problem}")),
            Err(problem) => return Err(InstallError::Database { target: db.target(), problem }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(host: &str, port: u16, user: &str, name: &str) -> (String, u16, String, String) {
        (host.into(), port, user.into(), name.into())
    }

    #[test]
    fn database_urls_give_host_port_role_and_database() {
        assert_eq!(parse_database_url("postgres://hangar@db.example/hangar").unwrap(), parts("db.example", 5432, "hangar", "hangar"));
        assert_eq!(parse_database_url("postgresql://app@10.0.0.5:6432/prod").unwrap(), parts("10.0.0.5", 6432, "app", "prod"));
        assert_eq!(parse_database_url("postgres://app@[::1]:5433/prod").unwrap(), parts("::1", 5433, "app", "prod"));
        assert_eq!(parse_database_url("postgres://hangar%40corp@db.example/my%20db").unwrap(), parts("db.example", 5432, "hangar@corp", "my db"));
    }

    #[test]
    fn malformed_database_urls_are_refused_without_echoing_a_password() {
        for (url, expected) in [
            ("db.example:5432/hangar", "the scheme is \"db.example\""),
            ("hangar@db.example/hangar", "not a postgres:// URL"),
            ("https://hangar@db.example/hangar", "the scheme is \"https\""),
            ("postgres://db.example/hangar", "names no role"),
            ("postgres://hangar@/hangar", "not a postgres:// URL"),
            ("postgres://hangar@db.example", "must name one database"),
            ("postgres://hangar@db.example/a/b", "must name one database"),
            ("postgres://hangar@db.example/hangar?sslmode=require", "has parameters"),
            ("postgres://hangar@db.example:99999/hangar", "not a postgres:// URL"),
        ] {
            let problem = parse_database_url(url).unwrap_err();
            assert!(problem.contains(expected), "{url}: {problem}");
        }
        let problem = parse_database_url("postgres://hangar:s3cret-value@db.example/hangar").unwrap_err();
        assert!(problem.contains("give it as `database_password`") && !problem.contains("s3cret-value"), "{problem}");
    }

    #[test]
    fn an_external_target_names_role_host_port_and_database() {
        let db = ExternalDb {
            host: "::1".into(),
            port: 5433,
            name: "prod".into(),
            user: "app".into(),
            password: SecretString::new("x".to_string()),
            ca_file: "/ca.pem".into(),
        };
        assert_eq!(db.target(), "app@[::1]:5433/prod");
        assert!(!format!("{db:?}").contains("\"x\""), "{db:?}");
    }
}
