//! A git server over HTTP or HTTPS: git's own `git http-backend` (the smart HTTP
//! protocol, fetch and push) behind a small CGI bridge, optionally with basic
//! authentication, serving bare repositories that tests create and push to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::TestDir;

/// A running git server. Stops when dropped.
#[derive(Debug)]
pub struct GitServer {
    addr: SocketAddr,
    root: PathBuf,
    tls_ca: Option<PathBuf>,
    credentials: Option<(String, String)>,
    requests: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: TestDir,
}

/// How the server is reached.
#[derive(Debug, Default, Clone)]
pub struct GitServerOptions {
    /// Serve HTTPS with a certificate from this PKI directory's CA (created when
    /// absent); `None` serves plain HTTP.
    pub tls_pki: Option<PathBuf>,
    /// Require these basic-auth credentials.
    pub credentials: Option<(String, String)>,
}

struct Shared {
    root: PathBuf,
    credentials: Option<(String, String)>,
    requests: Arc<AtomicU64>,
}

impl GitServer {
    pub async fn start() -> GitServer {
        Self::start_with(GitServerOptions::default()).await
    }

    pub async fn start_with(opts: GitServerOptions) -> GitServer {
        crate::init();
        let dir = TestDir::new("git");
        let root = dir.subdir("repos");
        let (acceptor, tls_ca) = match &opts.tls_pki {
            None => (None, None),
            Some(pki) => {
                let store = hangar_certs::CertStore::open_or_create(pki, &Default::default())
                    .expect("git server CA");
                store
                    .ensure(
                        "git",
                        &hangar_certs::LeafRequest::server("git", &["localhost", "127.0.0.1"]),
                        time::Duration::days(1),
                    )
                    .expect("git server certificate");
                let cfg = hangar_certs::tls::server_config(
                    hangar_certs::tls::load_certs(&store.cert_path("git")).expect("cert"),
                    hangar_certs::tls::load_key(&store.key_path("git")).expect("key"),
                    hangar_certs::tls::ClientAuth::None,
                )
                .expect("TLS config");
                (
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
                    Some(store.ca_cert_path()),
                )
            }
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind git server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            root: root.clone(),
            credentials: opts.credentials.clone(),
            requests: requests.clone(),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        // Its own thread and runtime: the server keeps serving whatever the test's
        // runtime is doing (blocking calls included).
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("git server runtime");
            rt.block_on(serve(listener, acceptor, shared, stop_rx));
        });
        GitServer {
            addr,
            root,
            tls_ca,
            credentials: opts.credentials,
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir,
        }
    }

    /// `http(s)://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// The URL of repository `name` (without credentials).
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.base_url())
    }

    /// The URL with the server's credentials embedded, for the git CLI.
    pub fn authed_url(&self, name: &str) -> String {
        match &self.credentials {
            None => self.url(name),
            Some((u, p)) => {
                let base = self.base_url();
                let (scheme, rest) = base.split_once("://").expect("scheme");
                format!("{scheme}://{u}:{p}@{rest}/{name}.git")
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate clients must trust when serving HTTPS.
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// How many HTTP requests the server has answered.
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Creates an empty bare repository that accepts pushes.
    pub fn create_repo(&self, name: &str) -> PathBuf {
        let path = self.root.join(format!("{name}.git"));
        git(
            &self.root,
            &[
                "init",
                "--quiet",
                "--bare",
                "-b",
                "main",
                path.to_str().expect("utf-8 path"),
            ],
        );
        git(&path, &["config", "http.receivepack", "true"]);
        path
    }

    /// Commits `files` (path, contents) on `branch` of repository `name` through a
    /// clone over HTTP(S) and pushes it; returns the new commit's SHA.
    pub fn push_files(
        &self,
        name: &str,
        branch: &str,
        files: &[(&str, &str)],
        message: &str,
    ) -> String {
        let work = self
            .dir
            .path()
            .join(format!("work-{name}-{}", rand::random::<u32>()));
        let url = self.authed_url(name);
        run(self
            .git()
            .current_dir(self.dir.path())
            .args(["clone", "--quiet", url.as_str()])
            .arg(&work));
        let has_branch = self
            .git()
            .current_dir(&work)
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("origin/{branch}"),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if has_branch {
            git(
                &work,
                &[
                    "checkout",
                    "--quiet",
                    "-B",
                    branch,
                    &format!("origin/{branch}"),
                ],
            );
        } else {
            git(&work, &["checkout", "--quiet", "--orphan", branch]);
        }
        for (path, contents) in files {
            let p = work.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("create dirs in work tree");
            }
            std::fs::write(&p, contents).expect("write file in work tree");
        }
        git(&work, &["add", "--all"]);
        git(
            &work,
            &[
                "-c",
                "user.name=Hangar Test",
                "-c",
                "user.email=test@hangar.invalid",
                "commit",
                "--quiet",
                "-m",
                message,
            ],
        );
        run(self.git().current_dir(&work).args([
            "push",
            "--quiet",
            "origin",
            &format!("HEAD:refs/heads/{branch}"),
        ]));
        let sha = git(&work, &["rev-parse", "HEAD"]);
        let _ = std::fs::remove_dir_all(&work);
        sha.trim().to_string()
    }

    /// A `git` command set up to talk to this server: it trusts the server's CA
    /// (and only through `GIT_SSL_CAINFO`, which overrides any `http.sslCAInfo`
    /// and whatever the environment had), and never prompts.
    pub fn git(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("git");
        cmd.env("GIT_TERMINAL_PROMPT", "0");
        match &self.tls_ca {
            Some(ca) => cmd.env("GIT_SSL_CAINFO", ca),
            None => cmd.env_remove("GIT_SSL_CAINFO"),
        };
        cmd
    }
    /// A developer's clone of repository `name` under `parent`, for commits
    /// made the way people make them: branches, amends, force pushes.
    pub fn working_copy(&self, name: &str, parent: &Path) -> WorkingCopy<'_> {
        let dir = parent.join(format!("clone-{name}-{:08x}", rand::random::<u32>()));
        let out = self.git().args(["clone", "--quiet", &self.authed_url(name)]).arg(&dir).output().expect("run git clone");
        assert!(out.status.success(), "git clone {name}: {}", String::from_utf8_lossy(&out.stderr));
        WorkingCopy { server: self, dir }
    }
}

/// A clone of a repository of a [`GitServer`]; see [`GitServer::working_copy`].
pub struct WorkingCopy<'a> {
    server: &'a GitServer,
    pub dir: PathBuf,
}

impl std::fmt::Debug for WorkingCopy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkingCopy").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl WorkingCopy<'_> {
    /// Runs git in the clone as a developer; panics when git fails. Returns
    /// its trimmed standard output.
    pub fn git(&self, args: &[&str]) -> String {
        let out = self
            .server
            .git()
            .current_dir(&self.dir)
            .args(["-c", "user.name=Dev", "-c", "user.email=dev@example.test"])
            .args(args)
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes `files`, commits them with `message` (amending the last commit
    /// when asked) and returns the new commit.
    pub fn commit(&self, files: &[(&str, &str)], message: &str, amend: bool) -> String {
        for (path, contents) in files {
            let p = self.dir.join(path);
            std::fs::create_dir_all(p.parent().expect("a file in the clone")).expect("create directories");
            std::fs::write(p, contents).expect("write a file");
        }
        self.git(&["add", "--all"]);
        if amend {
            self.git(&["commit", "--quiet", "--amend", "-m", message]);
        } else {
            self.git(&["commit", "--quiet", "-m", message]);
        }
        self.git(&["rev-parse", "HEAD"])
    }

    /// Pushes `HEAD` to `branch`, forced when asked.
    pub fn push(&self, branch: &str, force: bool) {
        let refspec = format!("HEAD:refs/heads/{branch}");
        if force {
            self.git(&["push", "--quiet", "--force", "origin", &refspec]);
        } else {
            self.git(&["push", "--quiet", "origin", &refspec]);
        }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(std::process::Command::new("git")
        .current_dir(dir)
        .args(args))
}

/// Runs a git command, panicking with its stderr when it fails; returns stdout.
fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run git");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, peer, &shared).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match acceptor {
                Some(a) => {
                    if let Ok(tls) = a.accept(tcp).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                }
            }
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let mut remote_user = None;
    if let Some((user, pass)) = &shared.credentials {
        use base64::Engine;
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        if given.as_deref() != Some(&format!("{user}:{pass}")) {
            let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                "Basic realm=\"git\"".parse().expect("header"),
            );
            return r;
        }
        remote_user = Some(user.clone());
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let content_encoding = header("content-encoding");
    let git_protocol = header("git-protocol");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::BAD_REQUEST, "unreadable body\n"),
    };

    let mut env: HashMap<&str, String> = HashMap::new();
    env.insert("GIT_PROJECT_ROOT", shared.root.display().to_string());
    env.insert("GIT_HTTP_EXPORT_ALL", "1".into());
    env.insert("REQUEST_METHOD", method);
    env.insert("PATH_INFO", path);
    env.insert("QUERY_STRING", query);
    env.insert("CONTENT_LENGTH", body.len().to_string());
    env.insert("REMOTE_ADDR", peer.ip().to_string());
    if let Some(v) = content_type {
        env.insert("CONTENT_TYPE", v);
    }
    if let Some(v) = content_encoding {
        env.insert("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(v) = git_protocol {
        env.insert("GIT_PROTOCOL", v);
    }
    if let Some(u) = remote_user {
        env.insert("REMOTE_USER", u);
    }
    let mut child = match tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("git http-backend: {e}\n"),
            );
        }
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("git http-backend: {e}\n"),
            );
        }
    };
    let _ = writer.await;
    cgi_response(&out.stdout).unwrap_or_else(|| {
        plain(
            StatusCode::BAD_GATEWAY,
            &String::from_utf8_lossy(&out.stderr),
        )
    })
}

/// Turns CGI output (headers, blank line, body) into an HTTP response.
fn cgi_response(out: &[u8]) -> Option<Response<Full<Bytes>>> {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))?;
    let head = std::str::from_utf8(&out[..split.0]).ok()?;
    let body = Bytes::copy_from_slice(&out[split.0 + split.1..]);
    let mut resp = Response::new(Full::new(body));
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.split_whitespace().next()?.parse().ok()?;
            *resp.status_mut() = StatusCode::from_u16(code).ok()?;
        } else {
            resp.headers_mut().append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).ok()?,
                value.parse().ok()?,
            );
        }
    }
    Some(resp)
}
