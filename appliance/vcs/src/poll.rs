//! Plain-git polling, for git servers that cannot reach the appliance: `git
//! ls-remote` on a schedule, and the differences between two listings turned
//! into the same [`Event`]s a webhook would have produced.
//!
//! git runs with none of the host's git configuration (no credential helpers,
//! no system or global config), with only the transports Hangar allows, never
//! prompting, in its own process group that is killed whole at the deadline.
//! Credentials travel in an `http.extraHeader` passed through the environment,
//! never on the command line, where any local user could read them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::event::json::valid_ref_name;
use crate::event::{Event, Push, RefTarget, Repository};
use crate::secret::redact;
use crate::Secret;

/// The transports git may use: no `file`, no `ext` (which runs a command).
const ALLOWED_PROTOCOLS: &str = "http:https:ssh:git";
/// More than this on standard output is not a listing of a repository's
/// branches and tags.
const MAX_OUTPUT: usize = 32 * 1024 * 1024;

/// How git authenticates to an HTTP(S) server.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// User name and password or access token (GitHub: any user, token as
    /// password; GitLab: `oauth2` and the token).
    Basic { username: String, password: Secret },
    /// A bearer token (Bitbucket Data Center HTTP access tokens).
    Bearer(Secret),
}

impl Credentials {
    fn header(&self) -> String {
        match self {
            Credentials::Basic { username, password } => {
                let pair = format!("{username}:{}", password.expose());
                format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
            }
            Credentials::Bearer(token) => format!("Authorization: Bearer {}", token.expose()),
        }
    }

    pub(crate) fn secrets(&self) -> Vec<String> {
        match self {
            Credentials::Basic { username, password } => {
                let pair = format!("{username}:{}", password.expose());
                vec![password.expose().to_string(), base64::engine::general_purpose::STANDARD.encode(pair)]
            }
            Credentials::Bearer(t) => vec![t.expose().to_string()],
        }
    }
}

/// One `git ls-remote` to run.
#[derive(Debug, Clone)]
pub struct LsRemote {
    /// `https://`, `http://`, `ssh://`, `git://` or scp-like `user@host:path`.
    pub url: String,
    pub credentials: Option<Credentials>,
    /// A PEM file of CA certificates to trust for HTTPS (`GIT_SSL_CAINFO`);
    /// `None` uses git's default trust store.
    pub ca_file: Option<PathBuf>,
    /// For the whole command; git and its helpers are killed at the deadline.
    pub timeout: Duration,
    /// The git binary.
    pub git: PathBuf,
}

impl LsRemote {
    /// `url` with no credentials, git's trust store and a 30-second deadline.
    pub fn new(url: &str) -> LsRemote {
        LsRemote {
            url: url.to_string(),
            credentials: None,
            ca_file: None,
            timeout: Duration::from_secs(30),
            git: PathBuf::from("git"),
        }
    }
}

/// Why a listing failed. URLs in messages have their passwords masked.
#[derive(Debug, thiserror::Error)]
pub enum LsRemoteError {
    #[error("repository URL {url} is refused: {problem}")]
    Url { url: String, problem: &'static str },
    #[error("cannot run {git}")]
    Spawn {
        git: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git ls-remote {url} did not finish within {} s and was killed", timeout.as_secs_f64())]
    TimedOut { url: String, timeout: Duration },
    #[error("git ls-remote {url} failed: {message}")]
    Failed { url: String, message: String },
    #[error("git ls-remote {url} printed more than {MAX_OUTPUT} bytes")]
    TooMuchOutput { url: String },
    #[error("git ls-remote {url} printed an unexpected line {line}: {text:?}")]
    BadOutput { url: String, line: usize, text: String },
}

/// A repository's branches and tags at one moment. Serializable, so the caller
/// can keep the last listing between polls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRefs {
    /// What `HEAD` points to (`refs/heads/main`), when the server says.
    pub head: Option<String>,
    /// Full ref name to commit id; an annotated tag maps to the commit it
    /// points to, not to the tag object.
    pub refs: BTreeMap<String, String>,
}

/// A ref that differs between two listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefChange {
    pub git_ref: String,
    /// `None`: the ref is new.
    pub before: Option<String>,
    /// `None`: the ref is gone.
    pub after: Option<String>,
}

impl RemoteRefs {
    pub fn get(&self, git_ref: &str) -> Option<&str> {
        self.refs.get(git_ref).map(String::as_str)
    }

    pub fn branch(&self, name: &str) -> Option<&str> {
        self.get(&format!("refs/heads/{name}"))
    }

    pub fn tag(&self, name: &str) -> Option<&str> {
        self.get(&format!("refs/tags/{name}"))
    }

    /// What changed since `previous`, in ref order.
    pub fn changes_since(&self, previous: &RemoteRefs) -> Vec<RefChange> {
        let names: BTreeSet<&String> = self.refs.keys().chain(previous.refs.keys()).collect();
        names
            .into_iter()
            .filter_map(|name| {
                let before = previous.refs.get(name);
                let after = self.refs.get(name);
                (before != after).then(|| RefChange {
                    git_ref: name.clone(),
                    before: before.cloned(),
                    after: after.cloned(),
                })
            })
            .collect()
    }
}

/// The events two listings of the repository at `url` amount to, as a webhook
/// would have sent them: branch pushes, branch deletions and tag events. No
/// file lists come with a listing, so every push has `paths_complete == false`
/// and the caller diffs with git to decide whether a project root was touched.
pub fn poll_events(url: &str, previous: &RemoteRefs, current: &RemoteRefs) -> Vec<Event> {
    let repository = Repository {
        full_name: url_path(url),
        http_url: url.starts_with("http").then(|| url.to_string()),
        ssh_url: (!url.starts_with("http")).then(|| url.to_string()),
        web_url: None,
    };
    current
        .changes_since(previous)
        .into_iter()
        .filter_map(|c| {
            let target = if let Some(b) = c.git_ref.strip_prefix("refs/heads/") {
                RefTarget::Branch(b.to_string())
            } else if let Some(t) = c.git_ref.strip_prefix("refs/tags/") {
                RefTarget::Tag(t.to_string())
            } else {
                return None;
            };
            let push = Push {
                repository: repository.clone(),
                git_ref: c.git_ref,
                created: c.before.is_none(),
                deleted: c.after.is_none(),
                before: c.before,
                after: c.after,
                target,
                changed_paths: BTreeSet::new(),
                paths_complete: false,
                pusher: None,
            };
            Some(match (&push.target, push.deleted) {
                (RefTarget::Branch(_), false) => Event::Push(push),
                (RefTarget::Branch(_), true) => Event::BranchDeleted(push),
                (RefTarget::Tag(_), _) => Event::Tag(push),
            })
        })
        .collect()
}

/// `org/app` from `https://host/org/app.git` or `git@host:org/app.git`.
fn url_path(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map(|(_, p)| p).unwrap_or(""),
        None => url.split_once(':').map(|(_, p)| p).unwrap_or(url),
    };
    let rest = rest.trim_matches('/');
    rest.strip_suffix(".git").unwrap_or(rest).to_string()
}

/// `url` with any password replaced by `***`, for messages.
pub(crate) fn shown_url(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url)
        && u.password().is_some()
    {
        let _ = u.set_password(Some("***"));
        return u.to_string();
    }
    url.chars().take(300).collect()
}

pub(crate) fn check_url(req: &LsRemote) -> Result<(), LsRemoteError> {
    let url = req.url.as_str();
    let refuse = |problem| LsRemoteError::Url { url: shown_url(url), problem };
    if url.is_empty() || url.starts_with('-') {
        return Err(refuse("is empty or starts with -"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refuse("contains spaces or control characters"));
    }
    let scheme = match url.split_once("://") {
        Some((scheme, _)) => scheme.to_ascii_lowercase(),
        None => {
            // scp-like `[user@]host:path`; anything with `::` is git's
            // `<transport>::<address>` syntax (e.g. `ext::` runs a command).
            let Some((host, _)) = url.split_once(':') else {
                return Err(refuse("is a local path; only network repositories are polled"));
            };
            if url.contains("::") || host.is_empty() || host.contains('/') {
                return Err(refuse("is neither a URL nor user@host:path"));
            }
            "ssh".to_string()
        }
    };
    if !matches!(scheme.as_str(), "https" | "http" | "ssh" | "git") {
        return Err(refuse("uses a transport other than https, http, ssh or git"));
    }
    if req.credentials.is_some() && scheme != "https" {
        return Err(refuse("would send credentials over a transport other than https"));
    }
    Ok(())
}

/// The environment every git command talking to a git server runs with.
pub(crate) fn git_environment(cmd: &mut tokio::process::Command, credentials: Option<&Credentials>, ca_file: Option<&std::path::Path>) {
    cmd.env_clear();
    for keep in ["PATH", "HOME", "SSH_AUTH_SOCK"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    let mut config: Vec<(&str, String)> = vec![("credential.helper", String::new())];
    if let Some(creds) = credentials {
        config.push(("http.extraHeader", creds.header()));
        // The header would follow a redirect to another host.
        config.push(("http.followRedirects", "false".into()));
    }
    cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
    for (i, (k, v)) in config.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k).env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    if let Some(ca) = ca_file {
        cmd.env("GIT_SSL_CAINFO", ca);
    }
}

/// Lists the branches, tags and `HEAD` of a remote repository.
pub async fn ls_remote(req: &LsRemote) -> Result<RemoteRefs, LsRemoteError> {
    check_url(req)?;
    let shown = shown_url(&req.url);
    let mut cmd = tokio::process::Command::new(&req.git);
    git_environment(&mut cmd, req.credentials.as_ref(), req.ca_file.as_deref());
    cmd.args(["ls-remote", "--symref", "--", &req.url, "HEAD", "refs/heads/*", "refs/tags/*"]);
    let ran = match crate::child::run(cmd, req.timeout, MAX_OUTPUT).await {
        Ok(ran) => ran,
        Err(crate::child::RunError::Spawn(source)) => return Err(LsRemoteError::Spawn { git: req.git.clone(), source }),
        Err(crate::child::RunError::TimedOut) => return Err(LsRemoteError::TimedOut { url: shown, timeout: req.timeout }),
    };
    if ran.overflowed {
        return Err(LsRemoteError::TooMuchOutput { url: shown });
    }
    if !ran.status.success() {
        let secrets: Vec<String> = req.credentials.iter().flat_map(Credentials::secrets).collect();
        let secret_refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let message = failure_message(&String::from_utf8_lossy(&ran.stderr), ran.status, req.credentials.is_some());
        return Err(LsRemoteError::Failed { url: shown, message: redact(&message, &secret_refs) });
    }
    parse_listing(&String::from_utf8_lossy(&ran.stdout), &shown)
}

/// git's last `fatal:` or `error:` line (or its last line), on one line. When
/// the server refused to let git in, git's own words ("could not read
/// Username") would send an operator looking for a prompt: say what happened.
fn failure_message(stderr: &str, status: std::process::ExitStatus, had_credentials: bool) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or(lines.last())
        .copied();
    let Some(line) = line else {
        return format!("git exited with {status} and said nothing");
    };
    let line: String = line.chars().take(300).collect();
    let refused = [
        "could not read Username",
        "could not read Password",
        "Authentication failed",
        "returned error: 401",
        "returned error: 403",
    ]
        .iter()
        .any(|m| stderr.contains(m));
    match (refused, had_credentials) {
        (true, true) => format!("the server refused the credentials (git: {line})"),
        (true, false) => format!("the server requires credentials and none are configured (git: {line})"),
        (false, _) => line,
    }
}

fn parse_listing(text: &str, shown: &str) -> Result<RemoteRefs, LsRemoteError> {
    let bad = |line: usize, text: &str| LsRemoteError::BadOutput {
        url: shown.to_string(),
        line,
        text: text.chars().take(200).collect(),
    };
    let mut refs = RemoteRefs::default();
    let mut peeled = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        let (left, name) = line.split_once('\t').ok_or_else(|| bad(n, line))?;
        if let Some(target) = left.strip_prefix("ref: ") {
            if name == "HEAD" && valid_ref_name(target) && target.starts_with("refs/") {
                refs.head = Some(target.to_string());
            }
            continue;
        }
        let sha_ok = (left.len() == 40 || left.len() == 64) && left.bytes().all(|b| b.is_ascii_hexdigit());
        if !sha_ok {
            return Err(bad(n, line));
        }
        let sha = left.to_ascii_lowercase();
        if name == "HEAD" {
            continue;
        }
        if let Some(tag) = name.strip_suffix("^{}") {
            peeled.insert(tag.to_string(), sha);
            continue;
        }
        // A name git itself would refuse cannot be acted on safely; skip it
        // rather than lose every other ref of the repository.
        if !name.starts_with("refs/") || !valid_ref_name(name) {
            tracing::debug!(url = shown, line = n, "skipping a ref with an invalid name");
            continue;
        }
        refs.refs.insert(name.to_string(), sha);
    }
    for (tag, commit) in peeled {
        if let Some(v) = refs.refs.get_mut(&tag) {
            *v = commit;
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";

    #[test]
    fn listings_parse_with_head_and_peeled_tags() {
        let text = format!(
            "ref: refs/heads/main\tHEAD\n{A}\tHEAD\n{A}\trefs/heads/main\n{B}\trefs/heads/feature/x\n{C}\trefs/tags/v1\n{A}\trefs/tags/v1^{{}}\n{B}\trefs/heads/bad..name\n"
        );
        let r = parse_listing(&text, "u").unwrap();
        assert_eq!(r.head.as_deref(), Some("refs/heads/main"));
        assert_eq!(r.branch("main"), Some(A));
        assert_eq!(r.branch("feature/x"), Some(B));
        assert_eq!(r.tag("v1"), Some(A), "annotated tag maps to its commit");
        assert_eq!(r.refs.len(), 3, "the invalid ref name is skipped");
        for garbage in ["no tab here", "zzzz\trefs/heads/main", &format!("{A}x\trefs/heads/main")] {
            let e = parse_listing(garbage, "https://h/r.git").unwrap_err();
            assert!(e.to_string().starts_with("git ls-remote https://h/r.git printed an unexpected line 1"), "{e}");
        }
    }

    #[test]
    fn changes_become_events() {
        let mut old = RemoteRefs::default();
        old.refs.insert("refs/heads/main".into(), A.into());
        old.refs.insert("refs/heads/gone".into(), A.into());
        old.refs.insert("refs/tags/v1".into(), A.into());
        let mut new = RemoteRefs::default();
        new.refs.insert("refs/heads/main".into(), B.into());
        new.refs.insert("refs/heads/new".into(), C.into());
        new.refs.insert("refs/tags/v1".into(), A.into());
        new.refs.insert("refs/notes/x".into(), C.into());
        let changes = new.changes_since(&old);
        assert_eq!(changes.len(), 4);
        let events = poll_events("https://git.example.com/org/app.git", &old, &new);
        assert_eq!(events.len(), 3, "refs/notes is not a branch or a tag: {events:?}");
        let Event::BranchDeleted(gone) = &events[0] else { panic!("{:?}", events[0]) };
        assert_eq!((gone.branch(), gone.after.as_deref()), (Some("gone"), None));
        let Event::Push(main) = &events[1] else { panic!("{:?}", events[1]) };
        assert_eq!((main.before.as_deref(), main.after.as_deref()), (Some(A), Some(B)));
        assert!(!main.paths_complete && !main.created);
        assert_eq!(main.repository.full_name, "org/app");
        assert!(main.repository.matches_url("git@git.example.com:org/app.git"));
        let Event::Push(created) = &events[2] else { panic!("{:?}", events[2]) };
        assert!(created.created && created.before.is_none());
        assert!(poll_events("u", &new, &new).is_empty());
    }

    #[test]
    fn hostile_urls_are_refused_before_git_runs() {
        let refused = [
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "-uhelp",
            "--upload-pack=touch /tmp/x",
            "file:///etc",
            "/srv/git/repo.git",
            "fd::17",
            "https://host/repo .git",
            "https://host/repo\n.git",
            "",
        ];
        for url in refused {
            let e = check_url(&LsRemote::new(url)).unwrap_err();
            assert!(e.to_string().starts_with("repository URL"), "{url}: {e}");
        }
        for ok in ["https://h/r.git", "http://h/r.git", "ssh://git@h:7999/r.git", "git@h:org/r.git", "git://h/r.git"] {
            check_url(&LsRemote::new(ok)).unwrap();
        }
        let mut with_creds = LsRemote::new("http://h/r.git");
        with_creds.credentials = Some(Credentials::Bearer(Secret::new("tok")));
        let e = check_url(&with_creds).unwrap_err();
        assert!(e.to_string().contains("credentials over a transport other than https"), "{e}");
        let mut pw = LsRemote::new("http://user:hunter22@h/r.git");
        pw.credentials = Some(Credentials::Bearer(Secret::new("tok")));
        let e = check_url(&pw).unwrap_err().to_string();
        assert!(!e.contains("hunter22") && e.contains("user:***@h"), "{e}");
    }
}
