//! Which paths a push changed, asked of git when the delivery cannot say (new
//! branches, force pushes, Bitbucket Data Center pushes, polled pushes): each
//! repository is fetched into a bare cache of its own, and `git diff
//! --name-only` between the commits decides.
//!
//! git runs as for polling: none of the host's git configuration, only the
//! allowed transports, never prompting, credentials through the environment,
//! each command in its own process group killed whole at the deadline.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::paths::ProjectRoot;
use crate::poll::{Credentials, LsRemote, LsRemoteError, check_url, git_environment, shown_url};
use crate::secret::redact;

/// More output than this from one git command is not a list of paths.
const MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// The ref the cache keeps the remote's default branch under.
const REMOTE_HEAD: &str = "refs/hangar/remote-head";

/// The repository to fetch from and how.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    pub credentials: Option<Credentials>,
    /// CA certificates to trust for HTTPS; `None` uses git's trust store.
    pub ca_file: Option<PathBuf>,
}

/// What the pushed commit is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The commit the branch pointed to before the push.
    Commit(String),
    /// A branch the push created: the merge base of the pushed commit with the
    /// first of these commits that has one, else with the remote's default
    /// branch.
    NewBranch { known: Vec<String> },
}

/// What git said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// The commit compared with (the merge base, for a new branch).
    pub base: String,
    /// Paths under the project root that differ between `base` and the pushed
    /// commit.
    pub paths: BTreeSet<String>,
}

/// Why git could not tell.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("commit id {sha:?} is not a hexadecimal object id")]
    BadCommit { sha: String },
    #[error(transparent)]
    Url(LsRemoteError),
    #[error("cannot prepare the git cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {git}")]
    Spawn {
        git: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git {what} for {url} did not finish within {} s and was killed", timeout.as_secs_f64())]
    TimedOut { what: &'static str, url: String, timeout: Duration },
    #[error("git {what} for {url} failed: {message}")]
    Failed { what: &'static str, url: String, message: String },
    #[error("commit {sha} is not in {url} (a force push may have removed it)")]
    MissingCommit { sha: String, url: String },
    #[error("the new branch's commit {after} shares no history with the stack's last run or the default branch of {url}")]
    NoMergeBase { after: String, url: String },
}

/// Bare repositories, one per remote URL, under one directory.
#[derive(Debug)]
pub struct GitCache {
    dir: PathBuf,
    git: PathBuf,
    timeout: Duration,
    /// One fetch at a time per repository in this process.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

fn valid_sha(sha: &str) -> Result<(), ChangesError> {
    if (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ChangesError::BadCommit { sha: sha.chars().take(80).collect() })
    }
}

/// A git command's outcome.
struct Ran {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

impl GitCache {
    /// A cache under `dir` (created when first used); `git` is the binary and
    /// `timeout` bounds each git command.
    pub fn new(dir: impl Into<PathBuf>, git: impl Into<PathBuf>, timeout: Duration) -> GitCache {
        GitCache { dir: dir.into(), git: git.into(), timeout, locks: Mutex::default() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The paths under `root` that differ between `base` and `after` in
    /// `remote`, fetching what the cache lacks.
    pub async fn changed_paths(&self, remote: &Remote, base: &Base, after: &str, root: &ProjectRoot) -> Result<Diff, ChangesError> {
        valid_sha(after)?;
        let known: &[String] = match base {
            Base::Commit(b) => std::slice::from_ref(b),
            Base::NewBranch { known } => known,
        };
        for k in known {
            valid_sha(k)?;
        }
        let mut probe = LsRemote::new(&remote.url);
        probe.credentials = remote.credentials.clone();
        check_url(&probe).map_err(ChangesError::Url)?;
        let repo = self.repository(&remote.url)?;
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(repo.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        // And one at a time across the drains sharing the data directory.
        let _file = self.lock_file(&repo).await?;

        let mut wanted: Vec<&str> = vec![after];
        wanted.extend(known.iter().map(String::as_str));
        let new_branch = matches!(base, Base::NewBranch { .. });
        if new_branch || !self.has_all(&repo, &wanted).await? {
            // Every branch: a force-pushed-away commit stays in the cache's
            // objects once it was fetched, and later diffs find it there.
            let mut args = vec!["fetch", "--quiet", "--no-tags", "--prune", "--no-write-fetch-head", "--", &remote.url];
            args.push("+refs/heads/*:refs/heads/*");
            self.checked(remote, &repo, "fetch", &args).await?;
            if new_branch {
                // The default branch, where a new branch usually starts; a
                // server without a HEAD simply has none.
                let head = format!("+HEAD:{REMOTE_HEAD}");
                let args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", &remote.url, &head];
                let _ = self.run(remote, &repo, "fetch", &args).await?;
            }
        }
        // A commit no branch holds any more may still be served by id.
        for sha in &wanted {
            if !self.has(&repo, sha).await? {
                let args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--", &remote.url, sha];
                let _ = self.run(remote, &repo, "fetch", &args).await?;
            }
        }
        let shown = shown_url(&remote.url);
        if !self.has(&repo, after).await? {
            return Err(ChangesError::MissingCommit { sha: after.to_string(), url: shown });
        }
        let base_sha = match base {
            Base::Commit(b) => {
                if !self.has(&repo, b).await? {
                    return Err(ChangesError::MissingCommit { sha: b.clone(), url: shown });
                }
                b.clone()
            }
            Base::NewBranch { known } => {
                let mut candidates: Vec<String> = known.clone();
                candidates.push(REMOTE_HEAD.to_string());
                let mut found = None;
                for c in &candidates {
                    let r = self.run(remote, &repo, "merge-base", &["merge-base", after, c]).await?;
                    if r.ok {
                        let sha = String::from_utf8_lossy(&r.stdout).trim().to_string();
                        if valid_sha(&sha).is_ok() {
                            found = Some(sha);
                            break;
                        }
                    }
                }
                found.ok_or_else(|| ChangesError::NoMergeBase { after: after.to_string(), url: shown.clone() })?
            }
        };
        let pathspec = if root.is_whole_repository() { ".".to_string() } else { root.as_str().to_string() };
        let args = ["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--no-textconv", &base_sha, after, "--", &pathspec];
        let out = self.checked(remote, &repo, "diff", &args).await?;
        let paths = out
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        Ok(Diff { base: base_sha, paths })
    }

    /// The bare repository for `url`, created when missing. Named by a hash of
    /// the URL, so no part of a URL becomes a path.
    fn repository(&self, url: &str) -> Result<PathBuf, ChangesError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
        let name = format!("{}.git", &hex::encode(digest.as_ref())[..32]);
        let path = self.dir.join(name);
        if path.join("HEAD").is_file() {
            return Ok(path);
        }
        let cache = |source| ChangesError::Cache { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(cache)?;
        // Built aside and renamed, so a half-made repository is never used.
        let staging = self.dir.join(format!(".new-{}-{}", std::process::id(), rand_suffix()));
        let made = std::process::Command::new(&self.git)
            .args(["init", "--quiet", "--bare"])
            .arg(&staging)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ChangesError::Spawn { git: self.git.clone(), source })?;
        if !made.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(ChangesError::Failed {
                what: "init",
                url: shown_url(url),
                message: String::from_utf8_lossy(&made.stderr).trim().chars().take(300).collect(),
            });
        }
        if let Err(e) = std::fs::rename(&staging, &path) {
            let _ = std::fs::remove_dir_all(&staging);
            // Another drain made it meanwhile.
            if !path.join("HEAD").is_file() {
                return Err(cache(e));
            }
        }
        Ok(path)
    }

    /// An exclusive lock on `<repository>.lock`, waited for up to the git
    /// timeout; released when dropped.
    async fn lock_file(&self, repo: &Path) -> Result<Flock<std::fs::File>, ChangesError> {
        let path = repo.with_extension("lock");
        let cache = |source| ChangesError::Cache { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(cache)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(held) => return Ok(held),
                Err((f, Errno::EWOULDBLOCK)) if tokio::time::Instant::now() < deadline => {
                    file = f;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(ChangesError::TimedOut { what: "cache lock", url: path.display().to_string(), timeout: self.timeout });
                }
                Err((_, e)) => return Err(cache(std::io::Error::from(e))),
            }
        }
    }

    async fn has(&self, repo: &Path, sha: &str) -> Result<bool, ChangesError> {
        let spec = format!("{sha}^{{commit}}");
        let local = Remote { url: String::new(), credentials: None, ca_file: None };
        Ok(self.run(&local, repo, "cat-file", &["cat-file", "-e", &spec]).await?.ok)
    }

    async fn has_all(&self, repo: &Path, shas: &[&str]) -> Result<bool, ChangesError> {
        for s in shas {
            if !self.has(repo, s).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn checked(&self, remote: &Remote, repo: &Path, what: &'static str, args: &[&str]) -> Result<Vec<u8>, ChangesError> {
        let r = self.run(remote, repo, what, args).await?;
        if !r.ok {
            let secrets: Vec<String> = remote.credentials.iter().flat_map(Credentials::secrets).collect();
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let line = r
                .stderr
                .lines()
                .map(str::trim)
                .rfind(|l| l.starts_with("fatal:") || l.starts_with("error:"))
                .or_else(|| r.stderr.lines().map(str::trim).rfind(|l| !l.is_empty()))
                .unwrap_or("git said nothing")
                .chars()
                .take(300)
                .collect::<String>();
            return Err(ChangesError::Failed { what, url: shown_url(&remote.url), message: redact(&line, &refs) });
        }
        Ok(r.stdout)
    }

    async fn run(&self, remote: &Remote, repo: &Path, what: &'static str, args: &[&str]) -> Result<Ran, ChangesError> {
        let mut cmd = tokio::process::Command::new(&self.git);
        git_environment(&mut cmd, remote.credentials.as_ref(), remote.ca_file.as_deref());
        cmd.env("GIT_DIR", repo)
            .env("GIT_LITERAL_PATHSPECS", "1")
            .current_dir(repo)
            .args(["-c", "gc.auto=0", "-c", "core.hooksPath=/dev/null"])
            .args(args);
        match crate::child::run(cmd, self.timeout, MAX_OUTPUT).await {
            Err(crate::child::RunError::TimedOut) => {
                Err(ChangesError::TimedOut { what, url: shown_url(&remote.url), timeout: self.timeout })
            }
            Err(crate::child::RunError::Spawn(source)) => Err(ChangesError::Spawn { git: self.git.clone(), source }),
            Ok(c) => Ok(Ran { ok: c.status.success(), stdout: c.stdout, stderr: String::from_utf8_lossy(&c.stderr).into_owned() }),
        }
    }
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}
