//! What the installer tests share: a real appliance bundle built once per test
//! run by `bundles/build-appliance.sh` from this workspace's binaries, and a
//! site — a temporary prefix with its own free ports and an answers file.

#![allow(dead_code)]

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hangar_testkit::{ChildProcess, TestDir, cargo_bin, free_port, wait_for};

pub const ADMIN_EMAIL: &str = "admin@hangar.test";
pub const ADMIN_PASSWORD: &str = "Install-Passw0rd-Of-Test";

/// target/<profile>, where cargo put this test run's binaries.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    if deps.file_name().is_some_and(|n| n == "deps") { deps.parent().unwrap().to_path_buf() } else { deps.to_path_buf() }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The installer binary (the workspace binaries are built once per run).
/// What every install of the suite passes (see [`Site::install_command`]).
pub const IGNORE_DISK: [&str; 2] = ["--ignore-preflight", "disk"];

pub fn installer() -> PathBuf {
    hangar_testkit::cargo_bin("hangar-install")
}

/// A signed appliance bundle and the directory trusting its key, built once
/// per test run (behind a lock and a stamp) from the binaries of this run.
pub struct Built {
    pub bundle: PathBuf,
    pub trust: PathBuf,
}

pub fn bundle() -> Built {
    bundle_of(None)
}

/// As [`bundle`], built as `version` (`bundles/build-appliance.sh --version`)
/// instead of the workspace's: a release the test bundle upgrades to.
pub fn bundle_of(version: Option<&str>) -> Built {
    use nix::fcntl::{Flock, FlockArg};
    installer();
    let dir = profile_dir().join("hangar-install-tests");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let name = match version {
        Some(v) => format!("appliance-{v}.bundle"),
        None => "appliance.bundle".to_string(),
    };
    let built = Built { bundle: dir.join(&name), trust: dir.join("trust") };
    let run_id = std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| format!("pid{}", std::process::id()));
    let stamp = dir.join(format!(".built-{name}-{run_id}"));
    let lock = File::create(dir.join(".lock")).unwrap();
    let _lock = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    if stamp.exists() {
        return built;
    }
    let key = dir.join("dev-key");
    if !key.with_extension("key").exists() {
        check("keygen", Command::new(profile_dir().join("hangar-bundle")).arg("keygen").arg("--out").arg(&key).output().unwrap());
    }
    if !built.trust.join("dev.pub").exists() {
        let _ = fs::remove_dir_all(&built.trust);
        fs::create_dir(&built.trust).unwrap();
        fs::set_permissions(&built.trust, fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(key.with_extension("pub"), built.trust.join("dev.pub")).unwrap();
        fs::set_permissions(built.trust.join("dev.pub"), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _ = fs::remove_file(&built.bundle);
    let mut cmd = Command::new(repo().join("bundles/build-appliance.sh"));
    cmd.arg("--bin-dir")
        .arg(profile_dir())
        .arg("--key")
        .arg(key.with_extension("key"))
        .arg("--out")
        .arg(&built.bundle)
        .args(["--offline", "--compression-level", "1"]);
    if let Some(v) = version {
        cmd.args(["--version", v]);
    }
    check("build-appliance.sh", cmd.output().unwrap());
    for e in fs::read_dir(&dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!(".built-{name}-")) {
            let _ = fs::remove_file(e.path());
        }
    }
    File::create(&stamp).unwrap();
    built
}

/// Another appliance bundle made from the test bundle's release: unpacked,
/// changed by `edit` (given the unpacked tree), rebuilt as `version` created at
/// `created`, and signed by the test key. Written to `dir/name`.
pub fn variant(
    built: &Built,
    dir: &Path,
    name: &str,
    version: &str,
    created: chrono::DateTime<chrono::Utc>,
    edit: impl FnOnce(&Path),
) -> PathBuf {
    use hangar_bundle::{BuildOptions, Bundle, ExtractOptions, Kind, Layout, SigningKey, TrustStore, build_bundle};
    let mut trust = TrustStore::empty();
    trust.add_dir(&built.trust).unwrap();
    let tree = dir.join(format!("{name}.tree"));
    Bundle::open(&built.bundle, &trust).unwrap().extract(&tree, ExtractOptions::default()).unwrap();
    edit(&tree);
    let mut layout = Layout::new();
    layout.add_tree("", &tree).unwrap();
    let key = SigningKey::from_file(&profile_dir().join("hangar-install-tests/dev-key.key")).unwrap();
    let out = dir.join(name);
    build_bundle(
        &layout,
        &out,
        BuildOptions {
            kind: Kind::Appliance,
            version: version.parse().unwrap(),
            platform: hangar_bundle::host_platform(),
            created,
            expires: None,
            compression_level: 1,
            threads: 2,
            signing_keys: std::slice::from_ref(&key),
            progress: None,
        },
    )
    .unwrap();
    fs::remove_dir_all(&tree).unwrap();
    out
}

/// The time the test bundle was built at, give or take: what an older or a
/// newer build of it says.
pub fn created_of(bundle: &Path, trust: &Path) -> chrono::DateTime<chrono::Utc> {
    let mut store = hangar_bundle::TrustStore::empty();
    store.add_dir(trust).unwrap();
    hangar_bundle::Bundle::open(bundle, &store).unwrap().manifest().created
}

/// Every path under `root` with its kind, mode and (for files) content, for
/// telling whether anything changed.
pub fn snapshot(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut paths = Vec::new();
    walk(root, root, &mut paths);
    for rel in paths {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("link {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            format!("dir {:o}", meta.mode())
        } else {
            let digest = ring::digest::digest(&ring::digest::SHA256, &fs::read(&path).unwrap());
            format!("file {:o} {}", meta.mode(), hex::encode(digest))
        };
        out.insert(rel, what);
    }
    out
}

/// `openssl s_client -starttls postgres` offering only the TLS 1.2 suites
/// `ciphers`: whether the handshake succeeded, and what it printed.
pub fn postgres_handshake(port: u16, ca: &Path, ciphers: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect", &format!("127.0.0.1:{port}"), "-tls1_2", "-cipher", ciphers])
        .arg("-CAfile")
        .arg(ca)
        .arg("-verify_return_error")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

pub fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary prefix with its own ports and an answers file.
pub struct Site {
    pub dir: TestDir,
    pub prefix: PathBuf,
    pub answers: PathBuf,
    pub trust: PathBuf,
    pub ports: Ports,
    pub keys: toml::Table,
}

#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub server: u16,
    pub broker: u16,
    pub database: u16,
    pub objects: u16,
    pub garage_s3: u16,
    pub garage_rpc: u16,
    pub garage_admin: u16,
}

impl Site {
    pub fn new(label: &str, built: &Built) -> Site {
        let dir = TestDir::new(label);
        let prefix = dir.path().join("root");
        fs::create_dir(&prefix).unwrap();
        fs::set_permissions(&prefix, fs::Permissions::from_mode(0o755)).unwrap();
        let ports = Ports {
            server: free_port(),
            broker: free_port(),
            database: free_port(),
            objects: free_port(),
            garage_s3: free_port(),
            garage_rpc: free_port(),
            garage_admin: free_port(),
        };
        let keys: toml::Table = toml::from_str(&format!(
            "existing_install = \"upgrade-or-repair\"\n\
             bundle = {bundle:?}\nallow_downgrade = false\nhostname = \"localhost\"\naddresses = [\"127.0.0.1\"]\n\
             listen_address = \"127.0.0.1\"\nserver_port = {}\nbroker_port = {}\ndatabase_port = {}\nobjects_port = {}\n\
             garage_s3_port = {}\ngarage_rpc_port = {}\ngarage_admin_port = {}\ndata_dir = \"/var/lib/hangar\"\n\
             admin_email = \"{ADMIN_EMAIL}\"\nadmin_password = \"{ADMIN_PASSWORD}\"\nobject_store = \"bundled\"\n\
             tls = \"generate\"\nconfirm = true\n",
            ports.server,
            ports.broker,
            ports.database,
            ports.objects,
            ports.garage_s3,
            ports.garage_rpc,
            ports.garage_admin,
            bundle = built.bundle.display().to_string(),
        ))
        .unwrap();
        let answers = dir.path().join("answers.toml");
        let site = Site { prefix, answers, trust: built.trust.clone(), ports, keys, dir };
        site.write_answers();
        site
    }

    pub fn write_answers(&self) {
        fs::write(&self.answers, toml::to_string(&self.keys).unwrap()).unwrap();
        fs::set_permissions(&self.answers, fs::Permissions::from_mode(0o600)).unwrap();
    }

    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) {
        self.keys.insert(key.into(), value.into());
        self.write_answers();
    }

    pub fn remove(&mut self, key: &str) {
        self.keys.remove(key);
        self.write_answers();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.prefix.join(rel)
    }

    /// `hangar-install --prefix <prefix> ARGS`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(installer());
        cmd.arg("--prefix").arg(&self.prefix).args(args);
        cmd
    }

    /// An install from the answers file. The disk check is ignored (and
    /// reported as a warning): machines running the suite may have less free
    /// than an appliance host must; `failures.rs` tests the check itself.
    pub fn install_command(&self) -> Command {
        let mut cmd = self.command(&["--answers"]);
        cmd.arg(&self.answers).arg("--trust").arg(&self.trust).arg("--timings").args(IGNORE_DISK);
        cmd
    }

    pub fn install(&self) -> Output {
        self.install_command().output().unwrap()
    }

    pub fn ca(&self) -> PathBuf {
        self.path("etc/hangar/pki/ca.crt")
    }

    /// Pids of the processes whose command line mentions this site's prefix.
    pub fn processes(&self) -> Vec<(i32, String)> {
        let needle = self.prefix.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&needle) && !cmd.contains("hangar-install") {
                    found.push((pid, cmd));
                }
            }
        }
        found
    }

    /// The executable of the site's upgrade agent, when one runs.
    pub fn agent_exe(&self) -> Option<String> {
        self.agents().first().and_then(|pid| fs::read_link(format!("/proc/{pid}/exe")).ok()).map(|p| p.display().to_string())
    }

    /// Pids of the site's upgrade agents (`hangar-install upgrade-agent`).
    pub fn agents(&self) -> Vec<i32> {
        let needle = self.prefix.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
                let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                if args.iter().any(|a| a == &needle) && args.iter().any(|a| a == "upgrade-agent") {
                    found.push(pid);
                }
            }
        }
        found
    }

    /// Everything under the prefix, relative, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.prefix, &self.prefix, &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        out.push(p.strip_prefix(root).unwrap().display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &p, out);
        }
    }
}

impl Drop for Site {
    /// Whatever the test did, nothing of the site keeps running.
    fn drop(&mut self) {
        // A failed test keeps its files (and logs) for reading; either way no
        // process of the site outlives the test.
        if !std::thread::panicking() && self.path("etc/hangar/install-state.json").exists() {
            let _ = self.command(&["uninstall"]).output();
        }
        for pid in self.agents().into_iter().chain(self.processes().into_iter().map(|(pid, _)| pid)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One line, the installer's error line.
pub fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}\nstdout: {}", String::from_utf8_lossy(&out.stdout));
    lines[0].to_string()
}

/// A reqwest client trusting only `ca`.
pub fn client(ca: &Path) -> reqwest::Client {
    let roots = hangar_certs::tls::roots_from_pem(&fs::read(ca).unwrap()).unwrap();
    let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
    reqwest::Client::builder().use_preconfigured_tls(cfg).timeout(Duration::from_secs(20)).build().unwrap()
}

/// Rewrites a release tree's `share/hangar/release.toml` (a variant bundle's
/// description must name its own version).
pub fn set_release_info(tree: &Path, version: &str, min_upgrade_from: &str) {
    let path = tree.join("share/hangar/release.toml");
    fs::write(&path, format!("format = 1\nversion = \"{version}\"\nmin_upgrade_from = \"{min_upgrade_from}\"\n")).unwrap();
}

/// `hangar-install --prefix <prefix> upgrade --bundle FILE --trust <trust> ARGS`.
pub fn upgrade(site: &Site, bundle: &Path, args: &[&str]) -> Output {
    let mut cmd = site.command(&["upgrade", "--bundle"]);
    cmd.arg(bundle).arg("--trust").arg(&site.trust).args(args);
    cmd.output().unwrap()
}

/// Standard output and error of a command, for assertion messages.
pub fn both(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The appliance's GraphQL API, logged in as the administrator.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub async fn login(site: &Site) -> Api {
        let http = client(&site.ca());
        let base = format!("https://localhost:{}", site.ports.server);
        let r: serde_json::Value = http
            .post(format!("{base}/graphql"))
            .json(&serde_json::json!({
                "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
                "variables": { "e": ADMIN_EMAIL, "p": ADMIN_PASSWORD },
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["data"]["login"]["token"].as_str().unwrap_or_else(|| panic!("login: {r}")).to_string();
        Api { http, base, token }
    }

    /// The whole answer to `query`.
    pub async fn gql(&self, query: &str, variables: serde_json::Value) -> serde_json::Value {
        self.http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The data of `query`, which must not fail.
    pub async fn ok(&self, query: &str, variables: serde_json::Value) -> serde_json::Value {
        let r = self.gql(query, variables).await;
        assert!(r.get("errors").is_none(), "{query}: {r}");
        r["data"].clone()
    }
}

/// One row of the console's System page: a supervised service.
#[derive(Debug)]
pub struct ServiceRow {
    pub name: String,
    pub state: String,
    pub pid: String,
}

/// A console page as a browser gets it: signed in through the console's
/// login form with the administrator's password, then `path` with the
/// session cookie.
pub async fn console_page(site: &Site, path: &str) -> String {
    let roots = hangar_certs::tls::roots_from_pem(&fs::read(site.ca()).unwrap()).unwrap();
    let cfg = hangar_certs::tls::client_config(roots, None).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", site.ports.server);
    let r = http
        .post(format!("{base}/login"))
        .header("origin", &base)
        .form(&[("email", ADMIN_EMAIL), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "console sign-in: {}", r.text().await.unwrap_or_default());
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("__Host-"), "{cookie}");
    let r = http.get(format!("{base}{path}")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The services the console's System page lists.
pub async fn console_services(site: &Site) -> Vec<ServiceRow> {
    let page = console_page(site, "/admin/system").await;
    let services = page
        .split_once("<h2>Services</h2>")
        .and_then(|(_, rest)| rest.split_once("<h2>Certificates</h2>"))
        .map(|(services, _)| services)
        .unwrap_or_else(|| panic!("no Services section on the System page:\n{page}"));
    let between = |text: &str, start: &str, end: &str| -> String {
        let from = text.find(start).map(|i| i + start.len()).unwrap_or_else(|| panic!("{start:?} in {text}"));
        text[from..].split_once(end).map(|(v, _)| v.trim().to_string()).unwrap_or_default()
    };
    services
        .split("<td class=\"primary-cell\">")
        .skip(1)
        .map(|row| ServiceRow {
            name: between(row, "", "</td>"),
            state: between(row, "<span class=\"badge ", "</span>").split_once("\">").map(|(_, t)| t.to_string()).unwrap_or_default(),
            pid: between(row, "<td class=\"num mono small\">", "</td>"),
        })
        .collect()
}

/// `hangar ARGS --json` (the client) against the site with API key `key`.
pub fn hangar_client(site: &Site, key: &str, args: &[&str]) -> Output {
    Command::new(profile_dir().join("hangar"))
        .args(args)
        .args(["--json", "--server", &format!("https://localhost:{}", site.ports.server), "--ca-file"])
        .arg(site.ca())
        .env("HANGAR_API_KEY", key)
        .env("XDG_STATE_HOME", site.dir.path().join("client-state"))
        .env("HANGAR_CLIENT_CONFIG", site.dir.path().join("no-client.toml"))
        .output()
        .unwrap()
}

/// A new administrator API key.
pub async fn admin_key(api: &Api, name: &str) -> String {
    api.ok("mutation($n: String!) { createApiKey(name: $n, role: ADMIN) { key } }", serde_json::json!({ "n": name })).await["createApiKey"]["key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the appliance's `/ready` answers 200.
pub async fn wait_ready(site: &Site) {
    let http = client(&site.ca());
    let url = format!("https://localhost:{}/ready", site.ports.server);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{url} not ready within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The installation's PostgreSQL, through the installer's own tools.
pub fn cluster(site: &Site) -> hangar_install::pgtool::Cluster {
    let host = hangar_install::host::Host::detect(&site.prefix, "hangar", true);
    let inst = hangar_install::installed::Installation::load(&host).unwrap();
    inst.cluster().unwrap()
}

/// The installation's state file.
pub fn state(site: &Site) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(site.path("etc/hangar/install-state.json")).unwrap()).unwrap()
}

/// The release `current` points to.
pub fn current(site: &Site) -> String {
    fs::read_link(site.path("opt/hangar/current")).unwrap().file_name().unwrap().to_string_lossy().into_owned()
}

/// The upgrade records, oldest first.
pub fn records(site: &Site) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = fs::read_dir(site.path("var/lib/hangar/upgrades"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| serde_json::from_str(&fs::read_to_string(e.path()).unwrap()).unwrap())
        .collect();
    out.sort_by_key(|r: &serde_json::Value| (r["started_at"].as_str().unwrap_or_default().to_string(), r["id"].as_str().unwrap_or_default().to_string()));
    out
}

/// `hangar ctl ARGS` of the installation.
pub fn ctl(site: &Site, args: &[&str]) -> Output {
    Command::new(site.path("opt/hangar/current/bin/hangar"))
        .arg("--config")
        .arg(site.path("etc/hangar/hangar.toml"))
        .arg("ctl")
        .args(args)
        .output()
        .unwrap()
}

/// Runs `cmd` and sends it `signal` `after` its output shows a line with
/// `at` (so: into that step, not before it). Returns its exit code (`None`
/// when the signal ended it) and everything it printed.
pub fn signal_at(mut cmd: Command, at: &str, after: Duration, signal: nix::sys::signal::Signal) -> (Option<i32>, String) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(at) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{seen}");
    }
    assert!(seen.contains(at), "the run never reached {at:?}:\n{seen}");
    std::thread::sleep(after);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    for line in lines {
        seen.push_str(&line.unwrap_or_default());
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), seen + &stderr)
}

// ---- a worker host and runs, for the tests that apply Terraform ----

pub const SOON: Duration = Duration::from_secs(240);

/// Joins a worker host to `pool` of the appliance `site` (`hangar-worker
/// join`), tuned for tests; returns its configuration directory.
pub async fn join_worker(site: &Site, api: &Api, files: &TestDir, pool: &str) -> PathBuf {
    let token = api.ok("mutation($p: String!) { createJoinToken(pool: $p) { token } }", serde_json::json!({ "p": pool })).await["createJoinToken"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = files.subdir("worker");
    let out = Command::new(cargo_bin("hangar-worker"))
        .args(["join", "--server", &api.base, "--token", &token, "--name", "w1", "--config-dir"])
        .arg(&dir)
        .arg("--ca")
        .arg(site.ca())
        .env("HANGAR_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check("hangar-worker join", out);
    let path = dir.join("worker.toml");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("/var/lib/hangar-worker/work", &files.subdir("work").display().to_string())
        .replace("/var/cache/hangar-worker", &files.subdir("cache").display().to_string())
        .replace("heartbeat_secs = 10\n", "heartbeat_secs = 1\n")
        .replace("poll_secs = 30\n", "poll_secs = 2\n")
        .replace("stop_grace_secs = 10\n", "stop_grace_secs = 2\n");
    std::fs::write(&path, toml).unwrap();
    dir
}

pub fn run_worker(config_dir: &Path, files: &TestDir) -> ChildProcess {
    let mut cmd = Command::new(cargo_bin("hangar-worker"));
    cmd.args(["run", "--config-dir"]).arg(config_dir).env("HANGAR_LOG", "info").stdin(Stdio::null());
    ChildProcess::spawn(cmd, "worker", files.path())
}

pub async fn run_state(api: &Api, id: &str) -> serde_json::Value {
    api.ok("query($id: ID!) { run(id: $id) { state failureReason } }", serde_json::json!({ "id": id })).await["run"].clone()
}

pub async fn wait_state(api: &Api, id: &str, want: &str, worker: &ChildProcess) {
    wait_for(&format!("run {id} to be {want}"), SOON, || async {
        let r = run_state(api, id).await;
        let state = r["state"].as_str().unwrap_or_default().to_string();
        assert!(
            !["FAILED", "DISCARDED", "CANCELED", "STOPPED"].contains(&state.as_str()) || state == want,
            "run {id} ended {state}: {r}\n{}",
            worker.output_tail()
        );
        (state == want).then_some(())
    })
    .await;
}

/// Triggers a tracked run of `stack` and takes it to FINISHED; returns its id.
pub async fn apply(api: &Api, stack: &str, worker: &ChildProcess) -> String {
    let id = api.ok("mutation($s: String!) { triggerRun(stack: $s) { id } }", serde_json::json!({ "s": stack })).await["triggerRun"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_state(api, &id, "UNCONFIRMED", worker).await;
    api.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", serde_json::json!({ "id": id })).await;
    wait_state(api, &id, "FINISHED", worker).await;
    id
}

