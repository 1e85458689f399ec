//! Resolving the head of a stack's tracked branch with `git ls-remote`, bounded
//! by a timeout, never prompting, and only over the transports a stack may use.

use std::process::Stdio;
use std::time::Duration;

/// Why a branch could not be resolved; each says where.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("git ls-remote {repository} timed out after {secs} s")]
    Timeout { repository: String, secs: u64 },
    #[error("git ls-remote {repository} failed: {stderr}")]
    Failed { repository: String, stderr: String },
    #[error("branch {branch:?} does not exist in {repository}")]
    NoSuchBranch { repository: String, branch: String },
    #[error("cannot run git")]
    Spawn(#[source] std::io::Error),
}

/// Accepted repository URLs: https, http, ssh and scp-like `user@host:path`.
/// Anything else (`file://`, `ext::`, an option-looking string) is refused, since
/// git would otherwise read local paths or run commands.
pub fn valid_repository(url: &str) -> bool {
    if url.is_empty() || url.len() > 2048 || url.starts_with('-') || url.chars().any(|c| c.is_control() || c == ' ') {
        return false;
    }
    for scheme in ["https://", "http://", "ssh://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            return !rest.is_empty() && !rest.starts_with('/');
        }
    }
    // scp-like syntax: user@host:path, no "::" (git's transport helper syntax).
    match url.split_once('@') {
        Some((user, rest)) => {
            !user.is_empty()
                && !url.contains("::")
                && rest.split_once(':').is_some_and(|(host, path)| !host.is_empty() && !path.is_empty() && !host.contains('/'))
        }
        None => false,
    }
}

/// A branch name git would accept (a subset of `git check-ref-format`).
pub fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 255
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("@{")
        && b.chars().all(|c| !c.is_control() && !" ~^:?*[\\".contains(c))
}

/// The commit `refs/heads/<branch>` points to in `repository`.
pub async fn resolve_branch(repository: &str, branch: &str, timeout: Duration) -> Result<String, ResolveError> {
    let refname = format!("refs/heads/{branch}");
    let child = tokio::process::Command::new("git")
        .args(["-c", "protocol.file.allow=never", "-c", "protocol.ext.allow=never", "ls-remote", "--"])
        .arg(repository)
        .arg(&refname)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(ResolveError::Spawn)?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(ResolveError::Spawn)?,
        Err(_) => return Err(ResolveError::Timeout { repository: repository.into(), secs: timeout.as_secs() }),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let status = out.status.to_string();
        let line = stderr.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or(&status);
        return Err(ResolveError::Failed { repository: repository.into(), stderr: line.chars().take(300).collect() });
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, r)| *r == refname)
        .map(|(sha, _)| sha.to_string())
        .ok_or_else(|| ResolveError::NoSuchBranch { repository: repository.into(), branch: branch.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        for ok in ["https://git.example/net.git", "http://10.0.0.5:3000/a/b", "ssh://git@host/x.git", "git@host:team/net.git"] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "",
            "--upload-pack=touch /tmp/x",
            "file:///etc",
            "/srv/repo.git",
            "ext::sh -c touch% /tmp/pwned",
            "user@host::x",
            "https:// x",
            "https://",
            "git@:x",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }

    #[test]
    fn branches() {
        for ok in ["main", "release/1.2", "feature-x_y"] {
            assert!(valid_branch(ok), "{ok}");
        }
        for bad in ["", "-x", "a..b", "a b", "x.lock", "a//b", "/a", "a/", "a:b", "a\nb", "@{x"] {
            assert!(!valid_branch(bad), "{bad}");
        }
    }
}
