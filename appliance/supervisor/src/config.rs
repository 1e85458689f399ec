//! The `[supervisor]` section of `hangar.toml` and its validation into a plan:
//! services are data (command, user, dependencies, readiness check, stop policy),
//! checked once at load time so that nothing invalid ever reaches a running child.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hangar_db::DbConfig;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};
use serde::Deserialize;

use crate::SupervisorError;

/// Where `hangar ctl` finds the supervisor unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/lib/hangar/supervisor/control.sock";

/// `[supervisor]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Unix socket `hangar ctl` talks to (mode 0660, owned by the service user).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// One `<service>.log` per service.
    #[serde(default = "default_log_dir")]
    pub log_dir: PathBuf,
    /// Pid files of running children, so that a supervisor killed outright can
    /// clean up after itself when it starts again.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The unprivileged account services run as, unless a service names another.
    /// Required when the supervisor runs as root.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub defaults: ServiceDefaults,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_log_dir() -> PathBuf {
    PathBuf::from("/var/log/hangar")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/hangar/supervisor")
}

/// `[supervisor.defaults]`: policies every service inherits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceDefaults {
    /// Minimum time between two starts after a crash; doubles on every crash.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A child that stayed up this long starts its back-off afresh.
    pub stable_after_secs: u64,
    /// `start_limit_burst` failures within `start_limit_interval_secs` mark the
    /// service FAILED until an operator starts it again.
    pub start_limit_burst: u32,
    pub start_limit_interval_secs: u64,
    /// Time between the stop signal and SIGKILL to the process group.
    pub stop_timeout_secs: u64,
    /// Time a child has to pass its readiness check before it counts as a failed start.
    pub ready_timeout_secs: u64,
    /// Period of the readiness check once a child is ready.
    pub check_interval_ms: u64,
    /// Size at which `<service>.log` is rotated to `<service>.log.1`.
    pub log_max_bytes: u64,
    /// Rotated files kept (`.1` .. `.N`).
    pub log_keep: u32,
}

impl Default for ServiceDefaults {
    fn default() -> Self {
        ServiceDefaults {
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            stable_after_secs: 30,
            start_limit_burst: 5,
            start_limit_interval_secs: 600,
            stop_timeout_secs: 10,
            ready_timeout_secs: 60,
            check_interval_ms: 5_000,
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 5,
        }
    }
}

/// `[[supervisor.service]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// Absolute path of the program; it must stay in the foreground.
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: EnvVars,
    /// Defaults to the user's home directory, or `/`.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Overrides `supervisor.user`; never root.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// When absent the child counts as ready as soon as it runs.
    #[serde(default)]
    pub ready: Option<ReadyConfig>,
    /// Signal sent to the process group to stop it (`TERM`, `INT`, `QUIT`, ...).
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    #[serde(default)]
    pub stop_timeout_secs: Option<u64>,
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
    #[serde(default)]
    pub check_interval_ms: Option<u64>,
}

/// A service's environment. Values may be credentials a program only takes from
/// its environment, so `Debug` shows the names alone.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct EnvVars(pub BTreeMap<String, String>);

impl std::fmt::Debug for EnvVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "<redacted>"))).finish()
    }
}

fn default_heartbeat_age() -> u64 {
    6
}

fn default_stop_signal() -> String {
    "TERM".into()
}

/// A readiness check: something the child must answer before it counts as ready
/// and before its dependants start.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ReadyConfig {
    /// `SELECT 1` over TLS. Without fields it uses the `[database]` section.
    Postgres {
        #[serde(default)]
        host: Option<String>,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        password_file: Option<PathBuf>,
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// A signed S3 `HEAD` of the bucket. Fields left out come from `[objects]`.
    S3 {
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        bucket: Option<String>,
        #[serde(default)]
        access_key_file: Option<PathBuf>,
        #[serde(default)]
        secret_key_file: Option<PathBuf>,
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// `GET url`, trusting only `ca_file`, expecting a 2xx answer.
    Https { url: String, ca_file: PathBuf },
    /// A TCP connection to `address` (`host:port`) is accepted.
    Tcp { address: String },
    /// The child keeps its heartbeat row in the `processes` table fresh (what
    /// `hangar drain` and `hangar scheduler` do; they accept no connections).
    /// Uses the `[database]` section.
    Heartbeat {
        /// The row's `kind`: `server`, `drain` or `scheduler`.
        process: String,
        /// A heartbeat older than this does not count.
        #[serde(default = "default_heartbeat_age")]
        max_age_secs: u64,
    },
    /// `command args...` exits 0 (run as the service's user).
    Exec {
        command: PathBuf,
        #[serde(default)]
        args: Vec<String>,
    },
}

/// The object store as the S3 readiness check reaches it (`[objects]` maps onto it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_file: PathBuf,
    pub secret_key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

/// Everything `hangar supervise` reads from the configuration file, re-read on SIGHUP.
#[derive(Debug, Clone)]
pub struct Settings {
    pub supervisor: Option<SupervisorConfig>,
    /// `[database]`, for postgres checks that name no connection of their own.
    pub database: Option<DbConfig>,
    /// `[objects]`, for s3 checks that name no endpoint of their own.
    pub objects: Option<S3Target>,
}

impl S3Target {
    /// The appliance's `[objects]` section as the readiness check uses it. An
    /// `[objects]` without a region (and no engine default) leaves it empty; a
    /// check relying on it then fails with Garage's or MinIO's own answer.
    pub fn from_objects(o: &hangar_objects::ObjectsConfig) -> S3Target {
        S3Target {
            endpoint: o.endpoint.trim_end_matches('/').to_string(),
            region: o.region().unwrap_or_default().to_string(),
            bucket: o.bucket.clone(),
            access_key_file: o.access_key_file.clone(),
            secret_key_file: o.secret_key_file.clone(),
            ca_file: o.ca_file.clone(),
        }
    }
}

impl Settings {
    pub fn new(supervisor: Option<SupervisorConfig>, database: Option<DbConfig>) -> Settings {
        Settings {
            supervisor,
            database,
            objects: None,
        }
    }

    pub fn with_objects(mut self, objects: Option<S3Target>) -> Settings {
        self.objects = objects;
        self
    }
}

/// The account a child runs as, resolved from the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<Gid>,
    pub home: PathBuf,
    /// False when the supervisor already runs as this user: nothing to switch.
    pub switch: bool,
}

/// A readiness check with every setting resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyCheck {
    None,
    Postgres(DbConfig),
    S3(S3Target),
    Https { url: String, ca_file: PathBuf },
    Tcp { address: String },
    Heartbeat { database: DbConfig, process: String, max_age: Duration },
    Exec { command: PathBuf, args: Vec<String> },
}

impl ReadyCheck {
    pub fn kind(&self) -> &'static str {
        match self {
            ReadyCheck::None => "none",
            ReadyCheck::Postgres(_) => "postgres",
            ReadyCheck::S3(_) => "s3",
            ReadyCheck::Https { .. } => "https",
            ReadyCheck::Tcp { .. } => "tcp",
            ReadyCheck::Heartbeat { .. } => "heartbeat",
            ReadyCheck::Exec { .. } => "exec",
        }
    }
}

/// One service, validated and with its policies resolved. Two specs that compare
/// equal describe the same child: a reload leaves such a service untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    pub env: EnvVars,
    pub working_dir: PathBuf,
    pub run_as: RunAs,
    pub depends_on: Vec<String>,
    pub ready: ReadyCheck,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub ready_timeout: Duration,
    pub check_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    pub start_limit_burst: u32,
    pub start_limit_interval: Duration,
    pub log_max_bytes: u64,
    pub log_keep: u32,
}

/// A validated configuration: the supervisor's own settings and the services in
/// a dependency order (every service after all of its dependencies).
#[derive(Debug, Clone)]
pub struct Plan {
    pub socket: PathBuf,
    pub log_dir: PathBuf,
    pub state_dir: PathBuf,
    /// Owner of the control socket (the default service user), when switching.
    pub socket_owner: Option<RunAs>,
    pub services: Vec<Arc<ServiceSpec>>,
}

impl Plan {
    pub fn get(&self, name: &str) -> Option<&Arc<ServiceSpec>> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Names of the services that depend on `name` directly.
    pub fn dependants(&self, name: &str) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| s.depends_on.iter().any(|d| d == name))
            .map(|s| s.name.clone())
            .collect()
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> SupervisorError {
    SupervisorError::Config {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Service names become file names (`<log dir>/<name>.log`): keep them plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with('-')
}

/// Parses `TERM`, `SIGTERM`, `term`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    full.parse::<Signal>().ok()
}

fn resolve_user(name: &str, field: &str) -> Result<RunAs, SupervisorError> {
    let user = User::from_name(name)
        .map_err(|e| invalid(field, format!("cannot look up user {name:?}: {e}")))?
        .ok_or_else(|| invalid(field, format!("no such user {name:?}")))?;
    if user.uid.is_root() {
        return Err(invalid(field, format!("user {name:?} is root; services never run as root")));
    }
    let me = Uid::effective();
    if !me.is_root() && me != user.uid {
        return Err(invalid(
            field,
            format!("cannot run services as {name:?}: the supervisor is not running as root or as that user"),
        ));
    }
    let cname = CString::new(name).map_err(|_| invalid(field, "user name contains NUL"))?;
    let groups = if me.is_root() {
        nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| invalid(field, format!("cannot read the groups of {name:?}: {e}")))?
    } else {
        Vec::new()
    };
    Ok(RunAs {
        name: user.name,
        uid: user.uid,
        gid: user.gid,
        groups,
        home: user.dir,
        switch: me != user.uid,
    })
}

/// The account the supervisor itself runs as (when it is not root and no user is named).
fn current_user() -> Result<RunAs, SupervisorError> {
    let uid = Uid::effective();
    if uid.is_root() {
        return Err(invalid(
            "supervisor.user",
            "must name the unprivileged service user when the supervisor runs as root",
        ));
    }
    let user = User::from_uid(uid).ok().flatten();
    Ok(RunAs {
        name: user.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| uid.to_string()),
        uid,
        gid: nix::unistd::Gid::effective(),
        groups: Vec::new(),
        home: user.map(|u| u.dir).unwrap_or_else(|| PathBuf::from("/")),
        switch: false,
    })
}

fn require_absolute(path: &Path, field: impl Into<String>) -> Result<(), SupervisorError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(invalid(field, format!("{} must be an absolute path", path.display())))
    }
}

impl Settings {
    /// Validates the configuration into a plan. Nothing is started here, but users
    /// are looked up (a service can only be planned for an account that exists).
    pub fn plan(&self) -> Result<Plan, SupervisorError> {
        let cfg = self
            .supervisor
            .as_ref()
            .ok_or_else(|| invalid("supervisor", "the configuration has no [supervisor] section"))?;
        require_absolute(&cfg.socket, "supervisor.socket")?;
        require_absolute(&cfg.log_dir, "supervisor.log_dir")?;
        require_absolute(&cfg.state_dir, "supervisor.state_dir")?;
        let d = &cfg.defaults;
        for (field, v) in [
            ("supervisor.defaults.backoff_initial_ms", d.backoff_initial_ms),
            ("supervisor.defaults.backoff_max_ms", d.backoff_max_ms),
            ("supervisor.defaults.start_limit_interval_secs", d.start_limit_interval_secs),
            ("supervisor.defaults.ready_timeout_secs", d.ready_timeout_secs),
            ("supervisor.defaults.check_interval_ms", d.check_interval_ms),
            ("supervisor.defaults.log_max_bytes", d.log_max_bytes),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if d.backoff_max_ms < d.backoff_initial_ms {
            return Err(invalid(
                "supervisor.defaults.backoff_max_ms",
                "must not be smaller than backoff_initial_ms",
            ));
        }
        if d.start_limit_burst == 0 {
            return Err(invalid("supervisor.defaults.start_limit_burst", "must be greater than 0"));
        }
        if d.log_keep == 0 || d.log_keep > 100 {
            return Err(invalid("supervisor.defaults.log_keep", "must be between 1 and 100"));
        }

        let default_user = match &cfg.user {
            Some(u) => resolve_user(u, "supervisor.user")?,
            None => current_user()?,
        };

        let mut names = BTreeSet::new();
        for s in &cfg.services {
            if !valid_name(&s.name) {
                return Err(invalid(
                    "supervisor.service.name",
                    format!("{:?} is not a valid service name (a-z, 0-9, '-', '_'; at most 64)", s.name),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid("supervisor.service.name", format!("{:?} is defined twice", s.name)));
            }
        }

        let mut specs = Vec::new();
        for s in &cfg.services {
            specs.push(self.spec(s, d, &default_user)?);
        }
        let ordered = dependency_order(specs)?;
        Ok(Plan {
            socket: cfg.socket.clone(),
            log_dir: cfg.log_dir.clone(),
            state_dir: cfg.state_dir.clone(),
            socket_owner: default_user.switch.then_some(default_user),
            services: ordered.into_iter().map(Arc::new).collect(),
        })
    }

    fn spec(&self, s: &ServiceConfig, d: &ServiceDefaults, default_user: &RunAs) -> Result<ServiceSpec, SupervisorError> {
        let field = |f: &str| format!("supervisor.service[{}].{f}", s.name);
        require_absolute(&s.command, field("command"))?;
        for (k, v) in &s.env.0 {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(invalid(field("env"), format!("{k:?} is not a valid environment variable")));
            }
        }
        if s.args.iter().any(|a| a.contains('\0')) {
            return Err(invalid(field("args"), "arguments must not contain NUL"));
        }
        for dep in &s.depends_on {
            if dep == &s.name {
                return Err(invalid(field("depends_on"), "a service cannot depend on itself"));
            }
            if !self
                .supervisor
                .as_ref()
                .is_some_and(|c| c.services.iter().any(|o| &o.name == dep))
            {
                return Err(invalid(field("depends_on"), format!("no service named {dep:?}")));
            }
        }
        let run_as = match &s.user {
            Some(u) => resolve_user(u, &field("user"))?,
            None => default_user.clone(),
        };
        let working_dir = match &s.working_dir {
            Some(w) => {
                require_absolute(w, field("working_dir"))?;
                w.clone()
            }
            None if run_as.home.is_dir() => run_as.home.clone(),
            None => PathBuf::from("/"),
        };
        let stop_signal = parse_signal(&s.stop_signal)
            .ok_or_else(|| invalid(field("stop_signal"), format!("{:?} is not a signal", s.stop_signal)))?;
        let ready = self.resolve_ready(s.ready.as_ref(), &field("ready"))?;
        let positive = |v: u64, f: &str| {
            if v == 0 {
                Err(invalid(field(f), "must be greater than 0"))
            } else {
                Ok(v)
            }
        };
        Ok(ServiceSpec {
            name: s.name.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            env: s.env.clone(),
            working_dir,
            run_as,
            depends_on: s.depends_on.clone(),
            ready,
            stop_signal,
            stop_timeout: Duration::from_secs(s.stop_timeout_secs.unwrap_or(d.stop_timeout_secs)),
            ready_timeout: Duration::from_secs(positive(
                s.ready_timeout_secs.unwrap_or(d.ready_timeout_secs),
                "ready_timeout_secs",
            )?),
            check_interval: Duration::from_millis(positive(
                s.check_interval_ms.unwrap_or(d.check_interval_ms),
                "check_interval_ms",
            )?),
            backoff_initial: Duration::from_millis(d.backoff_initial_ms),
            backoff_max: Duration::from_millis(d.backoff_max_ms),
            stable_after: Duration::from_secs(d.stable_after_secs),
            start_limit_burst: d.start_limit_burst,
            start_limit_interval: Duration::from_secs(d.start_limit_interval_secs),
            log_max_bytes: d.log_max_bytes,
            log_keep: d.log_keep,
        })
    }

    fn resolve_ready(&self, ready: Option<&ReadyConfig>, field: &str) -> Result<ReadyCheck, SupervisorError> {
        let Some(ready) = ready else {
            return Ok(ReadyCheck::None);
        };
        Ok(match ready {
            ReadyConfig::Postgres {
                host,
                port,
                name,
                user,
                password_file,
                ca_file,
            } => {
                let any = host.is_some()
                    || port.is_some()
                    || name.is_some()
                    || user.is_some()
                    || password_file.is_some()
                    || ca_file.is_some();
                let db = if any {
                    let need = |v: &Option<String>, f: &str| {
                        v.clone()
                            .ok_or_else(|| invalid(format!("{field}.{f}"), "required when the check names its own connection"))
                    };
                    let need_path = |v: &Option<PathBuf>, f: &str| {
                        let p = v
                            .clone()
                            .ok_or_else(|| invalid(format!("{field}.{f}"), "required when the check names its own connection"))?;
                        require_absolute(&p, format!("{field}.{f}"))?;
                        Ok::<_, SupervisorError>(p)
                    };
                    DbConfig {
                        host: need(host, "host")?,
                        port: port.unwrap_or(5432),
                        name: need(name, "name")?,
                        user: need(user, "user")?,
                        password_file: need_path(password_file, "password_file")?,
                        ca_file: need_path(ca_file, "ca_file")?,
                        pool_size: 1,
                    }
                } else {
                    self.database.clone().ok_or_else(|| {
                        invalid(field, "a postgres check without a connection needs the [database] section")
                    })?
                };
                ReadyCheck::Postgres(db)
            }
            ReadyConfig::S3 {
                endpoint,
                region,
                bucket,
                access_key_file,
                secret_key_file,
                ca_file,
            } => {
                let base = self.objects.as_ref();
                let pick = |v: &Option<String>, from: Option<&String>, f: &str| {
                    v.clone().or_else(|| from.cloned()).ok_or_else(|| {
                        invalid(format!("{field}.{f}"), "required (no [objects] section to take it from)")
                    })
                };
                let pick_path = |v: &Option<PathBuf>, from: Option<&PathBuf>, f: &str| {
                    let p = v.clone().or_else(|| from.cloned()).ok_or_else(|| {
                        invalid(format!("{field}.{f}"), "required (no [objects] section to take it from)")
                    })?;
                    require_absolute(&p, format!("{field}.{f}"))?;
                    Ok::<_, SupervisorError>(p)
                };
                let target = S3Target {
                    endpoint: pick(endpoint, base.map(|b| &b.endpoint), "endpoint")?,
                    region: pick(region, base.map(|b| &b.region), "region")?,
                    bucket: pick(bucket, base.map(|b| &b.bucket), "bucket")?,
                    access_key_file: pick_path(access_key_file, base.map(|b| &b.access_key_file), "access_key_file")?,
                    secret_key_file: pick_path(secret_key_file, base.map(|b| &b.secret_key_file), "secret_key_file")?,
                    ca_file: ca_file.clone().or_else(|| base.and_then(|b| b.ca_file.clone())),
                };
                crate::ready::s3_url(&target).map_err(|problem| invalid(format!("{field}.endpoint"), problem))?;
                if target.endpoint.starts_with("https://") && target.ca_file.is_none() {
                    return Err(invalid(format!("{field}.ca_file"), "required for an https endpoint"));
                }
                ReadyCheck::S3(target)
            }
            ReadyConfig::Https { url, ca_file } => {
                if !url.starts_with("https://") {
                    return Err(invalid(format!("{field}.url"), format!("{url:?} is not an https:// URL")));
                }
                require_absolute(ca_file, format!("{field}.ca_file"))?;
                ReadyCheck::Https {
                    url: url.clone(),
                    ca_file: ca_file.clone(),
                }
            }
            ReadyConfig::Tcp { address } => {
                if address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    return Err(invalid(format!("{field}.address"), format!("{address:?} is not host:port")));
                }
                ReadyCheck::Tcp {
                    address: address.clone(),
                }
            }
            ReadyConfig::Heartbeat { process, max_age_secs } => {
                if process.is_empty() || !process.chars().all(|c| c.is_ascii_lowercase()) {
                    return Err(invalid(format!("{field}.process"), format!("{process:?} is not a process kind")));
                }
                if *max_age_secs == 0 {
                    return Err(invalid(format!("{field}.max_age_secs"), "must be greater than 0"));
                }
                let database = self.database.clone().ok_or_else(|| {
                    invalid(field, "a heartbeat check needs the [database] section")
                })?;
                ReadyCheck::Heartbeat {
                    database,
                    process: process.clone(),
                    max_age: Duration::from_secs(*max_age_secs),
                }
            }
            ReadyConfig::Exec { command, args } => {
                require_absolute(command, format!("{field}.command"))?;
                ReadyCheck::Exec {
                    command: command.clone(),
                    args: args.clone(),
                }
            }
        })
    }
}

/// Orders services so that each comes after its dependencies, refusing cycles.
fn dependency_order(specs: Vec<ServiceSpec>) -> Result<Vec<ServiceSpec>, SupervisorError> {
    let mut remaining = specs;
    let mut done: Vec<ServiceSpec> = Vec::new();
    while !remaining.is_empty() {
        let before = remaining.len();
        let (ready, blocked): (Vec<_>, Vec<_>) = remaining
            .into_iter()
            .partition(|s| s.depends_on.iter().all(|d| done.iter().any(|x| &x.name == d)));
        done.extend(ready);
        remaining = blocked;
        if remaining.len() == before {
            let names: Vec<_> = remaining.iter().map(|s| s.name.as_str()).collect();
            return Err(invalid(
                "supervisor.service.depends_on",
                format!("dependency cycle among {}", names.join(", ")),
            ));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[supervisor]` of the shipped example plans, in dependency order.
    #[test]
    fn shipped_example_plans_in_dependency_order() {
        let text = include_str!("../../config/hangar.example.toml");
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut sup: SupervisorConfig = table["supervisor"].clone().try_into().unwrap();
        let database: DbConfig = table["database"].clone().try_into().unwrap();
        // The example's `hangar` account need not exist here.
        sup.user = Some(hangar_testkit::user::ServiceUser::get().name);
        let plan = Settings::new(Some(sup), Some(database)).plan().unwrap();
        let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["postgres", "objects", "server", "drain", "scheduler"]);
        for (i, s) in plan.services.iter().enumerate() {
            for d in &s.depends_on {
                assert!(names[..i].contains(&d.as_str()), "{} before its dependency {d}", s.name);
            }
        }
        assert_eq!(plan.get("postgres").unwrap().stop_signal, Signal::SIGINT);
        assert_eq!(plan.get("drain").unwrap().ready.kind(), "heartbeat");
        assert_eq!(plan.dependants("postgres"), ["server", "drain", "scheduler"]);
    }

    #[test]
    fn environment_values_stay_out_of_debug_output() {
        let cfg: ServiceConfig = toml::from_str(
            "name = \"s\"\ncommand = \"/bin/true\"\nenv = { API_TOKEN = \"hunter2-secret\" }\n",
        )
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(shown.contains("API_TOKEN") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!(parse_signal("term"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("KILLME"), None);
    }
}
