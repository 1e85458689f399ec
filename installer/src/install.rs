//! The install flow: preflight, bundle, questions, then the provisioning steps
//! and the health gate. Each step inspects what is there and does only what is
//! missing or repairs what is wrong; it never clobbers data. The state file
//! records the steps done, so a re-run after a failure or a kill resumes.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangar_bundle::{Bundle, ExtractOptions, TrustStore};
use hangar_certs::{CaOptions, CertStore, LeafRequest};

use crate::answers::{self, Answers, BundledEngine, Context, DatabaseChoice, ExternalDb, ExternalS3, ObjectStoreChoice, Prompter, ProvidedTls, Q_DOWNGRADE, Q_EXISTING};
use crate::error::InstallError;
use crate::host::{self, Host, Layout, chown, ensure_dir, run, run_with_input, user_ids, write_atomic, write_if_changed};
use crate::render::{self, DB_CA, DB_NAME, DB_PASSWORD, DB_ROLE, GARAGE_RPC_SECRET, MASTER_KEY, OBJECTS_ACCESS_KEY, OBJECTS_SECRET_KEY};
use crate::report::Reporter;
use crate::state::InstallState;
use crate::{health, services, tls};

/// Options of `hangar-install install` beyond the answers.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// More directories of trusted bundle signing keys (besides the release
    /// keys and `<prefix>/etc/hangar/trust`).
    pub trust_dirs: Vec<PathBuf>,
    /// How long the health gate waits.
    pub health_timeout: Duration,
    /// Accept a different bundle of a version this host already has (another
    /// build of it, or the same version with other build metadata): for
    /// development builds, which rebuild one version again and again.
    /// Otherwise refused: a replayed old bundle would swap the binaries.
    pub danger_replace_release: bool,
    /// Whether the database may be an external PostgreSQL (not during a
    /// restore onto a fresh host).
    pub external_database: bool,
    /// Failed preflight checks to report as warnings and go on past.
    pub ignore_preflight: Vec<crate::preflight::Ignorable>,
}

/// What the operator is told at the end.
#[derive(Debug, Clone)]
pub struct Installed {
    pub release: String,
    pub console_url: String,
    pub admin_email: String,
    pub ca_fingerprint: String,
    pub ca_file: PathBuf,
    pub timings: Vec<(String, Duration)>,
}

/// The steps, in order.
pub const STEPS: &[&str] = &[
    "release",
    "service user",
    "directories",
    "certificates",
    "secrets",
    "object store",
    "configuration",
    "database",
    "supervisor",
    "health",
];

struct Opened {
    bundle: Bundle,
    allow_downgrade: bool,
}

/// Trusted bundle signers: the release keys, the prefix's trust directory and
/// any given with `--trust`.
pub fn trust_store(layout: &Layout, extra: &[PathBuf]) -> Result<TrustStore, InstallError> {
    let mut trust = TrustStore::release();
    for dir in std::iter::once(&layout.trust).chain(extra) {
        if dir.is_dir() {
            trust.add_dir(dir).map_err(|source| InstallError::Trust { path: dir.clone(), source })?;
        }
    }
    Ok(trust)
}

pub fn install(host: &Host, prompter: &mut dyn Prompter, reporter: &dyn Reporter, opts: &InstallOptions) -> Result<Installed, InstallError> {
    let started = Instant::now();
    reporter.info("Preflight");
    crate::preflight::run(host, reporter, &opts.ignore_preflight)?;
    // The state file lives at a fixed place; the data directory comes from it
    // (or from the answers).
    let probe = host.layout(Path::new("/var/lib/hangar"));
    let previous = InstallState::load(&probe.state_file)?;
    if let Some(prev) = &previous {
        reporter.check(
            true,
            "existing installation",
            &format!("release {} ({})", prev.release, if prev.is_complete() { "complete" } else { "unfinished" }),
        );
        let choice = prompter.select(
            Q_EXISTING,
            &[("upgrade-or-repair", "upgrade or repair it (data is kept)"), ("abort", "leave it alone")],
            0,
        )?;
        if choice == 1 {
            return Err(InstallError::Aborted("left the existing installation alone; nothing was changed".into()));
        }
    }
    // The newest release on this host: the one the state names, even when
    // unfinished (its migrations may have run), and the one `current` points to.
    let installed_version: Option<semver::Version> = [previous.as_ref().map(|p| p.release.clone()), current_release(&probe)]
        .into_iter()
        .flatten()
        .filter_map(|v| v.parse::<semver::Version>().ok())
        .max_by(|a, b| a.cmp_precedence(b));
    let trust = trust_store(&probe, &opts.trust_dirs)?;
    let opened: RefCell<Option<Opened>> = RefCell::new(None);
    let now = (host.clock)();
    let mut check_bundle = |path: &Path, p: &mut dyn Prompter| -> Result<(), InstallError> {
        let bundle = Bundle::open(path, &trust)?;
        let m = bundle.manifest();
        if m.kind != hangar_bundle::Kind::Appliance {
            return Err(InstallError::Aborted(format!("{} is a {:?} bundle, not an appliance bundle", path.display(), m.kind)));
        }
        let signers: Vec<String> = bundle.trusted_signers().iter().map(|k| k.to_string()).collect();
        reporter.check(true, "bundle", &format!("Hangar {} for {}, signed by {}", m.version, m.platform, signers.join(", ")));
        if m.created > now + chrono::Duration::days(1) {
            return Err(InstallError::Preflight {
                check: "clock",
                problem: format!("the bundle was made at {}, after this host's clock ({now}): set the time", m.created),
            });
        }
        let mut allow_downgrade = false;
        if let Some(installed) = &installed_version
            && m.version.cmp_precedence(installed).is_lt()
        {
            allow_downgrade = p.confirm(Q_DOWNGRADE, false)?;
        }
        bundle.check_policy(&ExtractOptions {
            installed_version: installed_version.clone(),
            allow_downgrade,
            platform: Some(hangar_bundle::host_platform()),
            ..Default::default()
        })?;
        if !opts.danger_replace_release {
            check_not_a_replay(&probe, &bundle)?;
        }
        *opened.borrow_mut() = Some(Opened { bundle, allow_downgrade });
        Ok(())
    };
    let engine = || opened.borrow().as_ref().and_then(|o| bundled_engine(&o.bundle)).map(|e| e.name().to_owned());
    let check_s3 = |s3: &ExternalS3| check_external_s3(s3);
    let check_database = |db: &ExternalDb| check_external_database(db);
    let check_tls = |t: &ProvidedTls, hostname: &str| tls::validate_provided(t, hostname);
    let mut ctx = Context {
        default_hostname: crate::preflight::system_hostname(),
        own_ports: previous.as_ref().map(|p| p.ports.all(p.bundled_objects).into_iter().map(|(_, n)| n).collect()).unwrap_or_default(),
        external_database: opts.external_database,
        bundled_engine: &engine,
        check_bundle: &mut check_bundle,
        check_database: &check_database,
        check_s3: &check_s3,
        check_tls: &check_tls,
    };
    let mut answers = answers::ask(prompter, &mut ctx)?;
    drop(ctx);
    let Opened { bundle, allow_downgrade } = opened.into_inner().ok_or_else(|| InstallError::Aborted("no bundle was chosen".into()))?;
    answers.allow_downgrade = allow_downgrade;

    // From here on the host changes. Ctrl-C stops at the next step boundary.
    crate::signals::catch_interrupt(host);
    let layout = host.layout(&answers.data_dir);
    let release = bundle.manifest().version.to_string();
    let mut state = match previous {
        Some(p) if p.release == release && p.data_dir == answers.data_dir => InstallState {
            hostname: answers.hostname.clone(),
            listen: answers.listen,
            ports: answers.ports,
            bundled_objects: answers.bundled_objects(),
            external_database: external_target(&answers),
            systemd: host.systemd,
            admin_email: answers.admin_email.clone(),
            ready_at: None,
            ..p
        },
        p => InstallState {
            release: release.clone(),
            previous_release: p.as_ref().map(|p| p.release.clone()),
            data_dir: answers.data_dir.clone(),
            service_user: host.service_user.clone(),
            hostname: answers.hostname.clone(),
            listen: answers.listen,
            ports: answers.ports,
            bundled_objects: answers.bundled_objects(),
            external_database: external_target(&answers),
            systemd: host.systemd,
            admin_email: answers.admin_email.clone(),
            completed: Vec::new(),
            started_at: (host.clock)(),
            ready_at: None,
        },
    };
    // Nothing is written before the release step has verified the whole
    // bundle: a refused bundle leaves the host as it was, state file included.
    let mut p = Provision { host, answers: &answers, layout: &layout, reporter, bundle: &bundle, owner: None, config_changed: false };
    let mut timings = Vec::new();
    reporter.info("Provisioning");
    for step in STEPS {
        host.check_interrupt(step)?;
        let t = Instant::now();
        reporter.step_start(step, describe(step));
        let result = match *step {
            "release" => p.release(),
            "service user" => p.service_user(),
            "directories" => p.directories(),
            "certificates" => p.certificates(),
            "secrets" => p.secrets(),
            "object store" => p.object_store(),
            "configuration" => p.configuration(),
            "database" => p.database(),
            "supervisor" => p.supervisor(),
            "health" => health::gate(&answers, &layout, host, opts.health_timeout),
            _ => Ok(String::new()),
        };
        match result {
            Ok(detail) => {
                reporter.step_done(step, &detail, t.elapsed());
                timings.push((step.to_string(), t.elapsed()));
                if *step == "release" {
                    ensure_dir(&layout.etc, 0o755, None)?;
                }
                state.mark(step, &layout.state_file)?;
            }
            Err(e) => {
                reporter.step_failed(step, &hangar_types::error_chain(&e), t.elapsed());
                return Err(e);
            }
        }
    }
    state.ready_at = Some((host.clock)());
    state.save(&layout.state_file)?;
    let ca_file = layout.pki.join("ca.crt");
    let ca_pem = fs::read_to_string(&ca_file).map_err(InstallError::io("read", &ca_file))?;
    timings.push(("total".into(), started.elapsed()));
    Ok(Installed {
        release,
        console_url: answers.console_url(),
        admin_email: answers.admin_email.clone(),
        ca_fingerprint: hangar_certs::fingerprint_sha256(&ca_pem).map_err(InstallError::certs(&ca_file))?,
        ca_file,
        timings,
    })
}

/// The SHA-256 of a bundle's manifest, which names everything in it: what the
/// release directory's marker records.
pub(crate) fn manifest_digest(bundle: &Bundle) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bundle.manifest_bytes()))
}

/// Where the digest of the bundle a release was unpacked from is kept.
pub(crate) fn marker_path(l: &Layout, version: &str) -> PathBuf {
    l.releases.join(format!(".{version}.manifest-sha256"))
}

/// Refuses a bundle of a version this host has (the same, or equal but for
/// build metadata, `1.0.0+x` for `1.0.0`) unless it is the very bundle that
/// release was unpacked from: a validly signed old bundle of that version
/// would otherwise replace its binaries without a word.
fn check_not_a_replay(l: &Layout, bundle: &Bundle) -> Result<(), InstallError> {
    let version = &bundle.manifest().version;
    let Ok(entries) = fs::read_dir(&l.releases) else { return Ok(()) };
    let digest = manifest_digest(bundle);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(installed) = name.parse::<semver::Version>() else { continue };
        if !installed.cmp_precedence(version).is_eq() || !entry.path().is_dir() {
            continue;
        }
        let recorded = fs::read_to_string(marker_path(l, &name)).unwrap_or_default();
        if installed == *version && recorded.trim() == digest {
            continue;
        }
        return Err(InstallError::Replay { bundle: bundle.path().to_path_buf(), version: version.to_string(), installed: name });
    }
    Ok(())
}

/// The object store server a bundle carries (`embedded/<engine>/<engine>`);
/// MinIO when it carries both.
pub fn bundled_engine(bundle: &Bundle) -> Option<BundledEngine> {
    let has = |e: &str| bundle.manifest().entries.iter().any(|x| x.path() == format!("embedded/{e}/{e}"));
    [BundledEngine::Minio, BundledEngine::Garage].into_iter().find(|e| has(e.name()))
}

/// The external database's `role@host:port/database`, for the state file.
fn external_target(answers: &Answers) -> Option<String> {
    match &answers.database {
        DatabaseChoice::Bundled => None,
        DatabaseChoice::External(d) => Some(d.target()),
    }
}

fn describe(step: &str) -> &'static str {
    match step {
        "release" => "verifying and unpacking the bundle",
        "service user" => "the unprivileged account services run as",
        "directories" => "configuration, data and log directories",
        "certificates" => "the appliance CA and service certificates",
        "secrets" => "database password, master key, object store keys",
        "object store" => "the object store's configuration",
        "configuration" => "hangar.toml",
        "database" => "PostgreSQL cluster, role, schema and the administrator",
        "supervisor" => "starting the appliance",
        "health" => "waiting for every service to be ready",
        _ => "",
    }
}

/// Connects to an external PostgreSQL as the appliance's processes will
/// (TLS, the server's certificate verified against the given CA and the URL's
/// host name, password authentication), then checks that the role may create
/// the schema's tables there, so that the migrations do not fail half-way.
pub fn check_external_database(db: &ExternalDb) -> Result<(), String> {
    use diesel::sql_types::Bool;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Allowed {
        #[diesel(sql_type = Bool)]
        allowed: bool,
    }
    let ca = fs::read(&db.ca_file).map_err(|e| format!("cannot read the CA certificate {}: {e}", db.ca_file.display()))?;
    let settings = hangar_db::Database::new(
        &db.host,
        db.port,
        &db.name,
        &db.user,
        hangar_db::Password::new(db.password.expose()),
        &ca,
        "hangar-install",
    )
    .map_err(|e| format!("the CA certificate {}: {}", db.ca_file.display(), hangar_types::error_chain(&e)))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut conn = settings.connect().await.map_err(|e| match e {
            // The target is in the message already.
            hangar_db::DbError::Connect { source, .. } => source.to_string(),
            other => hangar_types::error_chain(&other),
        })?;
        let rows: Vec<Allowed> = diesel::sql_query("SELECT has_schema_privilege(current_user, 'public', 'CREATE') AS allowed")
            .load(&mut conn)
            .await
            .map_err(|e| format!("cannot query: {e}"))?;
        if rows.iter().any(|r| r.allowed) {
            Ok(())
        } else {
            Err(format!("role {} may not create tables in the schema public of database {} (grant it CREATE, or make it the owner)", db.user, db.name))
        }
    })
}

/// A real signed request to an external S3 endpoint with the given credentials.
pub fn check_external_s3(s3: &ExternalS3) -> Result<(), String> {
    let dir = tempfile::Builder::new().prefix("hangar-install-s3-").tempdir().map_err(|e| e.to_string())?;
    let ak = dir.path().join("ak");
    let sk = dir.path().join("sk");
    hangar_certs::write_private_file(&ak, s3.access_key.expose().as_bytes()).map_err(|e| e.to_string())?;
    hangar_certs::write_private_file(&sk, s3.secret_key.expose().as_bytes()).map_err(|e| e.to_string())?;
    let cfg = hangar_objects::ObjectsConfig {
        engine: hangar_objects::Engine::External,
        endpoint: s3.endpoint.clone(),
        region: Some(s3.region.clone()),
        bucket: s3.bucket.clone(),
        access_key_file: ak,
        secret_key_file: sk,
        ca_file: s3.ca_file.clone(),
        danger_plain_http: s3.danger_plain_http,
        request_timeout_secs: 15,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = hangar_objects::ObjectStore::connect(&cfg).await.map_err(|e| hangar_types::error_chain(&e))?;
        store.health().await.map_err(|e| hangar_types::error_chain(&e))
    })
}

/// The provisioning steps over one set of answers.
struct Provision<'a> {
    host: &'a Host,
    answers: &'a Answers,
    layout: &'a Layout,
    reporter: &'a dyn Reporter,
    bundle: &'a Bundle,
    /// The service user's uid and gid, once it exists.
    owner: Option<(u32, u32)>,
    config_changed: bool,
}

impl Provision<'_> {
    /// Verifies the whole bundle while unpacking it, then points `current` at
    /// it. Directories made for it are removed again when the bundle is
    /// refused: until this step completes, the host is as it was.
    fn release(&mut self) -> Result<String, InstallError> {
        let missing: Vec<PathBuf> = self.layout.releases.ancestors().take_while(|d| !d.exists()).map(Path::to_path_buf).collect();
        let result = self.unpack();
        if result.is_err() {
            // Deepest first; only empty ones (remove_dir refuses the others).
            for dir in &missing {
                let _ = fs::remove_dir(dir);
            }
        }
        result
    }

    fn unpack(&mut self) -> Result<String, InstallError> {
        let l = self.layout;
        let version = self.bundle.manifest().version.to_string();
        ensure_dir(&l.releases, 0o755, None)?;
        let dest = l.releases.join(&version);
        // The manifest's hash tells a rebuilt bundle of the same version (a
        // development build) from the one unpacked already.
        let digest = manifest_digest(self.bundle);
        let marker = marker_path(l, &version);
        let recorded = fs::read_to_string(&marker).ok();
        let same = dest.is_dir() && recorded.as_deref().is_some_and(|m| m.trim() == digest);
        let mut detail = if same {
            format!("release {version} already unpacked")
        } else {
            // Staging directories of an extraction that was killed.
            for entry in fs::read_dir(&l.releases).map_err(InstallError::io("read", &l.releases))?.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') && entry.path().is_dir() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
            let reporter = self.reporter;
            let mut progress = |p: hangar_bundle::Progress| reporter.progress(p.done, p.total);
            let installed = current_release(l).and_then(|v| v.parse().ok()).filter(|v: &semver::Version| v.to_string() != version);
            let into = if dest.is_dir() { l.releases.join(format!(".{version}.incoming")) } else { dest.clone() };
            if into == dest {
                // Recorded first: killed after the rename, the next run still
                // knows which bundle the release came from.
                write_atomic(&marker, format!("{digest}\n").as_bytes(), 0o644, None)?;
            }
            let extracted = self.bundle.extract(
                &into,
                ExtractOptions {
                    installed_version: installed,
                    allow_downgrade: self.answers.allow_downgrade,
                    platform: Some(hangar_bundle::host_platform()),
                    progress: Some(&mut progress),
                    ..Default::default()
                },
            );
            let summary = match extracted {
                Ok(summary) => summary,
                Err(e) => {
                    if into == dest {
                        match &recorded {
                            Some(text) => write_atomic(&marker, text.as_bytes(), 0o644, None)?,
                            None => {
                                let _ = fs::remove_file(&marker);
                            }
                        }
                    }
                    return Err(e.into());
                }
            };
            if into != dest {
                // Same version, other contents: the services stop before their
                // binaries are swapped.
                services::stop(self.host, l)?;
                let old = l.releases.join(format!(".{version}.old"));
                fs::rename(&dest, &old).map_err(InstallError::io("move aside", &dest))?;
                fs::rename(&into, &dest).map_err(InstallError::io("rename into place", &dest))?;
                let _ = fs::remove_dir_all(&old);
            }
            write_atomic(&marker, format!("{digest}\n").as_bytes(), 0o644, None)?;
            format!("verified and unpacked {} files ({} MiB) into {}", summary.files, summary.bytes >> 20, dest.display())
        };
        let target = PathBuf::from("releases").join(&version);
        if fs::read_link(&l.current).ok().as_deref() != Some(target.as_path()) {
            // An upgrade: the running services keep the old binaries until the
            // supervisor is started again on the new ones.
            if l.current.symlink_metadata().is_ok() {
                services::stop(self.host, l)?;
            }
            let tmp = l.opt.join(format!(".current.tmp-{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp).map_err(InstallError::io("create the link", &tmp))?;
            fs::rename(&tmp, &l.current).map_err(InstallError::io("switch", &l.current))?;
            detail += &format!("; current -> {}", target.display());
        }
        Ok(detail)
    }

    fn service_user(&mut self) -> Result<String, InstallError> {
        let user = &self.host.service_user;
        let detail = match user_ids(user)? {
            Some(_) => format!("{user} exists"),
            None => {
                let mut cmd = Command::new("useradd");
                cmd.args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", "--home-dir"])
                    .arg(&self.layout.data)
                    .arg(user);
                match run(&mut cmd, "(create the service user)") {
                    Ok(_) => format!("created {user}"),
                    // Another installation created it meanwhile (exit 9: exists).
                    Err(_) if user_ids(user)?.is_some() => format!("{user} exists"),
                    Err(e) => return Err(e),
                }
            }
        };
        self.owner = user_ids(user)?;
        if self.owner.is_some_and(|(uid, _)| uid == 0) {
            return Err(InstallError::User { user: user.clone(), problem: "is root; services never run as root".into() });
        }
        Ok(detail)
    }

    fn owner(&self) -> Option<(u32, u32)> {
        self.owner.or_else(|| user_ids(&self.host.service_user).ok().flatten())
    }

    fn directories(&mut self) -> Result<String, InstallError> {
        let l = self.layout;
        let svc = self.owner();
        ensure_dir(&l.etc, 0o755, None)?;
        ensure_dir(&l.pki, 0o755, None)?;
        ensure_dir(&l.trust, 0o755, None)?;
        // Owned by the service user, who reads the secrets; closed to others.
        ensure_dir(&l.secrets, 0o700, svc)?;
        ensure_dir(&l.data, 0o755, None)?;
        ensure_dir(&l.pg_run, 0o700, svc)?;
        ensure_dir(&l.supervisor, 0o750, svc)?;
        ensure_dir(&l.drain, 0o700, svc)?;
        ensure_dir(&l.logs, 0o750, svc)?;
        // Backups are made by root (upgrades) and by the service user (the
        // scheduled ones); the lock keeps them from overlapping.
        ensure_dir(&l.data.join("backups"), 0o700, svc)?;
        ensure_dir(&l.data.join("upgrades"), 0o755, None)?;
        // Uploaded bundles, staged by the server (the service user).
        ensure_dir(&l.data.join("bundles"), 0o700, svc)?;
        // Tool binaries and the provider mirror, which tools bundles add to:
        // seeded from this release, kept across releases.
        let version = self.bundle.manifest().version.to_string();
        let seeded = crate::tools::seed(l, &l.releases.join(&version), &version, svc)?;
        let lock = l.data.join("lifecycle.lock");
        if !lock.exists() {
            write_atomic(&lock, b"", 0o644, None)?;
        }
        match self.answers.objects {
            ObjectStoreChoice::Bundled(BundledEngine::Garage) => {
                ensure_dir(&l.objects, 0o700, svc)?;
                ensure_dir(&l.objects.join("meta"), 0o700, svc)?;
                ensure_dir(&l.objects.join("data"), 0o700, svc)?;
            }
            ObjectStoreChoice::Bundled(BundledEngine::Minio) => ensure_dir(&crate::minio::data_dir(l), 0o700, svc)?,
            ObjectStoreChoice::External(_) => {}
        }
        Ok(format!(
            "{}, {}, {}; tools area {} ({} file(s) copied from the release, {} in place)",
            l.etc.display(),
            l.data.display(),
            l.logs.display(),
            l.tools.display(),
            seeded.copied,
            seeded.unchanged
        ))
    }

    fn certificates(&mut self) -> Result<String, InstallError> {
        let l = self.layout;
        let svc = self.owner();
        let store = CertStore::open_or_create(&l.pki, &CaOptions::default()).map_err(InstallError::certs(&l.pki))?;
        let mut names: Vec<String> = vec![self.answers.hostname.clone(), "localhost".into(), "127.0.0.1".into()];
        for a in &self.answers.addresses {
            names.push(a.to_string());
        }
        if !self.answers.listen.is_unspecified() {
            names.push(self.answers.listen.to_string());
        }
        names.dedup();
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|n| seen.insert(n.clone()));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut leaves = vec![("broker", refs.clone()), ("objects", refs.clone())];
        if self.answers.bundled_database() {
            leaves.push(("db", vec!["localhost", "127.0.0.1"]));
        }
        if self.answers.tls.is_none() {
            leaves.push(("server", refs.clone()));
        }
        let mut issued = Vec::new();
        for (name, names) in &leaves {
            let outcome = store
                .ensure(name, &LeafRequest::server(&self.answers.hostname, names), time::Duration::days(30))
                .map_err(InstallError::certs(store.cert_path(name)))?;
            if outcome != hangar_certs::EnsureOutcome::Unchanged {
                issued.push(*name);
            }
            chown(&store.key_path(name), svc)?;
        }
        if matches!(self.answers.objects, ObjectStoreChoice::Bundled(BundledEngine::Minio))
            && crate::minio::prepare_certs(l, svc)?
        {
            issued.push("minio (certs dir)");
        }
        // The server signs the certificates of joining workers.
        chown(&l.pki.join("ca.key"), svc)?;
        if let Some(provided) = &self.answers.tls {
            let (cert, key) = render::server_cert(self.answers, l);
            let chain = fs::read(&provided.cert_file).map_err(InstallError::io("read", &provided.cert_file))?;
            let key_pem = fs::read(&provided.key_file).map_err(InstallError::io("read", &provided.key_file))?;
            write_if_changed(&cert, &chain, 0o644, None)?;
            write_if_changed(&key, &key_pem, 0o600, svc)?;
            issued.push("console (provided)");
        }
        Ok(if issued.is_empty() {
            format!("CA {} and certificates in place", &store.ca().fingerprint()[..11])
        } else {
            format!("issued {}", issued.join(", "))
        })
    }

    fn secrets(&mut self) -> Result<String, InstallError> {
        let l = self.layout;
        let svc = self.owner();
        let mut made = Vec::new();
        // The operator's credentials or CA for an external engine, changed
        // since the last run: the services read them at start, so they restart.
        let mut changed = false;
        let mut ensure = |name: &str, make: &dyn Fn() -> Vec<u8>| -> Result<(), InstallError> {
            let path = l.secret(name);
            if !path.exists() {
                write_atomic(&path, &make(), 0o600, svc)?;
                made.push(name.to_string());
            } else {
                fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(InstallError::io("chmod", &path))?;
                chown(&path, svc)?;
            }
            Ok(())
        };
        match &self.answers.database {
            DatabaseChoice::Bundled => ensure(DB_PASSWORD, &|| random_hex(24).into_bytes())?,
            DatabaseChoice::External(d) => {
                // The operator's role and CA: what they answered now is what counts.
                changed |= write_if_changed(&l.secret(DB_PASSWORD), d.password.expose().as_bytes(), 0o600, svc)?;
                let pem = fs::read(&d.ca_file).map_err(InstallError::io("read", &d.ca_file))?;
                changed |= write_if_changed(&l.pki.join(DB_CA), &pem, 0o644, None)?;
            }
        }
        ensure(MASTER_KEY, &|| {
            // The master key's own format, written by its own code to a
            // temporary file, so that the atomic write above stays the only one.
            let dir = tempfile::tempdir().expect("a temporary directory");
            let p = dir.path().join("k");
            hangar_crypto::MasterKey::generate().save(&p).expect("save a master key");
            fs::read(&p).expect("read the master key back")
        })?;
        match &self.answers.objects {
            ObjectStoreChoice::Bundled(engine) => {
                // Garage's key id format; MinIO takes it as its root user.
                ensure(OBJECTS_ACCESS_KEY, &|| format!("GK{}", random_hex(12)).into_bytes())?;
                ensure(OBJECTS_SECRET_KEY, &|| random_hex(32).into_bytes())?;
                if *engine == BundledEngine::Garage {
                    ensure(GARAGE_RPC_SECRET, &|| random_hex(32).into_bytes())?;
                }
            }
            ObjectStoreChoice::External(x) => {
                // The operator's credentials: what they answered now is what counts.
                changed |= write_if_changed(&l.secret(OBJECTS_ACCESS_KEY), x.access_key.expose().as_bytes(), 0o600, svc)?;
                changed |= write_if_changed(&l.secret(OBJECTS_SECRET_KEY), x.secret_key.expose().as_bytes(), 0o600, svc)?;
                if let Some(ca) = &x.ca_file {
                    let pem = fs::read(ca).map_err(InstallError::io("read", ca))?;
                    changed |= write_if_changed(&l.pki.join("objects-ca.crt"), &pem, 0o644, None)?;
                }
            }
        }
        self.config_changed |= changed;
        let mut detail = if made.is_empty() { "every secret in place (kept)".to_string() } else { format!("created {}", made.join(", ")) };
        if changed {
            detail += "; an external engine's credentials or CA changed";
        }
        Ok(detail)
    }

    fn object_store(&mut self) -> Result<String, InstallError> {
        match &self.answers.objects {
            ObjectStoreChoice::Bundled(BundledEngine::Minio) => Ok(format!(
                "MinIO on {} with TLS from {}",
                crate::minio::address(self.answers),
                crate::minio::certs_dir(self.layout).display()
            )),
            ObjectStoreChoice::Bundled(BundledEngine::Garage) => {
                let text = render::garage_toml(self.answers, self.layout);
                let changed = write_if_changed(&self.layout.garage_config, text.as_bytes(), 0o644, None)?;
                self.config_changed |= changed;
                Ok(format!(
                    "Garage on 127.0.0.1:{} behind TLS on {}{}",
                    self.answers.ports.garage_s3,
                    self.answers.ports.objects,
                    if changed { "" } else { " (unchanged)" }
                ))
            }
            ObjectStoreChoice::External(x) => Ok(format!("external endpoint {} (verified)", x.endpoint)),
        }
    }

    fn configuration(&mut self) -> Result<String, InstallError> {
        let text = render::hangar_toml(self.answers, self.layout, &self.host.service_user);
        hangar_config::Config::from_toml(&text, &self.layout.config).map_err(InstallError::Config)?;
        let changed = write_if_changed(&self.layout.config, text.as_bytes(), 0o644, None)?;
        self.config_changed |= changed;
        self.config_changed |= self.answers.backups.save(&crate::installed::backup_settings_path(self.layout))?;
        Ok(format!("{}{}", self.layout.config.display(), if changed { "" } else { " (unchanged)" }))
    }

    /// A command of the embedded PostgreSQL, as the service user.
    fn pg(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.layout.pg_bin(name));
        cmd.env_clear()
            .env("LD_LIBRARY_PATH", self.layout.pg_lib())
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .current_dir(&self.layout.data);
        if let Some((uid, gid)) = self.owner() {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn database(&mut self) -> Result<String, InstallError> {
        if let DatabaseChoice::External(d) = &self.answers.database {
            // Not ours to provision: the schema and the administrator only.
            let done = self.schema_and_administrator()?;
            return Ok(format!("external {}: {}", d.target(), done.join("; ")));
        }
        let l = self.layout;
        let svc = self.owner();
        let mut done = Vec::new();
        if !l.postgres.join("PG_VERSION").is_file() {
            if l.postgres.exists() {
                // Not a cluster, and never one we made (ours appear only
                // complete, by rename): refuse rather than guess.
                if fs::read_dir(&l.postgres).map(|mut d| d.next().is_some()).unwrap_or(true) {
                    return Err(InstallError::Aborted(format!(
                        "{} exists but holds no PostgreSQL cluster; move it away and run the installer again",
                        l.postgres.display()
                    )));
                }
                fs::remove_dir(&l.postgres).map_err(InstallError::io("remove", &l.postgres))?;
            }
            // initdb writes into a temporary directory renamed into place
            // once complete: a killed initdb leaves only that to clear.
            let tmp = l.data.join(".postgres.init");
            if tmp.exists() {
                // An installer killed during initdb leaves initdb running on
                // its own: let it end before its directory goes.
                host::wait_until_unused(&tmp, Duration::from_secs(60));
                host::remove_dir_settled(&tmp, Duration::from_secs(10))?;
            }
            ensure_dir(&tmp, 0o700, svc)?;
            run(
                self.pg("initdb")
                    .arg("-D")
                    .arg(&tmp)
                    .args(["-U", "postgres", "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"]),
                "(initdb)",
            )?;
            let conf = tmp.join("postgresql.conf");
            let mut text = fs::read_to_string(&conf).map_err(InstallError::io("read", &conf))?;
            text.push_str("\n# Hangar's settings.\ninclude 'hangar.conf'\n");
            write_atomic(&conf, text.as_bytes(), 0o600, svc)?;
            write_atomic(&tmp.join("hangar.conf"), render::postgres_conf(self.answers, l).as_bytes(), 0o600, svc)?;
            fs::rename(&tmp, &l.postgres).map_err(InstallError::io("rename into place", &l.postgres))?;
            done.push("initialised the cluster");
        }
        let mut reload = false;
        reload |= write_if_changed(&l.postgres.join("hangar.conf"), render::postgres_conf(self.answers, l).as_bytes(), 0o600, svc)?;
        reload |= write_if_changed(&l.postgres.join("pg_hba.conf"), render::pg_hba().as_bytes(), 0o600, svc)?;
        reload |= write_if_changed(&l.postgres.join("pg_ident.conf"), render::pg_ident(&self.host.service_user).as_bytes(), 0o600, svc)?;

        // Running already: under the supervisor (a repair), or left by an
        // installer that was killed (then it is stopped again at the end).
        let supervised = services::running(self.host, l);
        let running = run(self.pg("pg_ctl").arg("status").arg("-D").arg(&l.postgres), "status").is_ok();
        let temporary = !running;
        if running {
            if reload {
                run(self.pg("pg_ctl").arg("reload").arg("-D").arg(&l.postgres), "reload")?;
            }
        } else {
            run(
                self.pg("pg_ctl")
                    .arg("start")
                    .arg("-D")
                    .arg(&l.postgres)
                    .arg("-l")
                    .arg(l.logs.join("postgres-install.log"))
                    .args(["-w", "-t", "120"]),
                "start",
            )?;
        }
        let result = self.database_contents();
        if temporary || (running && !supervised) {
            let stopped = run(self.pg("pg_ctl").arg("stop").arg("-D").arg(&l.postgres).args(["-m", "fast", "-w", "-t", "120"]), "stop");
            if result.is_ok() {
                stopped?;
            }
        }
        done.extend(result?);
        Ok(done.join("; "))
    }

    /// The role, the database, the schema and the administrator.
    fn database_contents(&self) -> Result<Vec<&'static str>, InstallError> {
        let l = self.layout;
        let password = fs::read_to_string(l.secret(DB_PASSWORD)).map_err(InstallError::io("read", l.secret(DB_PASSWORD)))?;
        let password = password.trim();
        if !password.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(InstallError::Aborted(format!("{} holds unexpected characters", l.secret(DB_PASSWORD).display())));
        }
        // Through standard input: the password never appears on a command line.
        let sql = format!(
            "SELECT 'CREATE ROLE {DB_ROLE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_ROLE}') \\gexec\n\
             ALTER ROLE {DB_ROLE} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}';\n\
             SELECT 'CREATE DATABASE {DB_NAME} OWNER {DB_ROLE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DB_NAME}') \\gexec\n"
        );
        run_with_input(
            self.pg("psql")
                .arg("-h")
                .arg(&l.pg_run)
                .arg("-p")
                .arg(self.answers.ports.database.to_string())
                .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAtX"]),
            "(create the role and the database)",
            Some(sql.as_bytes()),
        )?;
        let mut done = vec!["role and database in place"];
        done.extend(self.schema_and_administrator()?);
        Ok(done)
    }

    /// `hangar migrate` and the administrator, through the configuration
    /// written already (the bundled database or the external one).
    fn schema_and_administrator(&self) -> Result<Vec<&'static str>, InstallError> {
        let l = self.layout;
        let hangar = |args: &[&str]| {
            let mut cmd = Command::new(l.bin("hangar"));
            cmd.env_clear().env("PATH", "/usr/bin:/bin").arg("--config").arg(&l.config).args(args);
            cmd
        };
        run(&mut hangar(&["migrate"]), "migrate")?;
        let mut create = hangar(&["admin", "create-user", "--email", &self.answers.admin_email, "--role", "admin", "--name", "Administrator", "--password-stdin", "--update"]);
        run_with_input(&mut create, "admin create-user", Some(self.answers.admin_password.expose().as_bytes()))?;
        Ok(vec!["schema migrated", "administrator set"])
    }

    fn supervisor(&mut self) -> Result<String, InstallError> {
        let started = services::start(self.host, self.layout, self.config_changed)?;
        if matches!(self.answers.objects, ObjectStoreChoice::Bundled(BundledEngine::Minio)) {
            // MinIO starts with no bucket: made here, once it answers.
            let bucket = crate::minio::ensure_bucket(self.answers, self.layout, Duration::from_secs(120))?;
            return Ok(format!("{started}; {bucket}"));
        }
        Ok(started)
    }
}

/// The release `current` points to.
pub fn current_release(l: &Layout) -> Option<String> {
    fs::read_link(&l.current).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Makes `cmd` a detached process: its own process group, no terminal input,
/// output appended to `log`.
pub fn detach(cmd: &mut Command, log: &Path) -> Result<std::process::Child, InstallError> {
    // The log directory is the service user's: root follows no link there.
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(log)
        .map_err(InstallError::io("open", log))?;
    let err = out.try_clone().map_err(InstallError::io("open", log))?;
    cmd.process_group(0).stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().map_err(|source| InstallError::Spawn { program: PathBuf::from(cmd.get_program()), source })
}

pub use host::under;
