//! Publishing a module version from a tag of a git repository: the tag is
//! fetched (that one ref, depth 1) into a scratch bare repository, its
//! commit's tree made into a `.tar.gz` by `git archive`, the archive put in
//! the object store and the version recorded with its commit, tree, SHA-256
//! and size, in one transaction with its audit event.
//!
//! Archives are stored unsealed: a module is source code that every run
//! using it downloads and that the repository already holds in the clear,
//! and Terraform verifies nothing, so integrity is what matters; each
//! download checks the object against the SHA-256 recorded here.
//!
//! A version is never rewritten. Publishing it again from a commit with the
//! same tree answers the recorded version; any other tree is refused.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use diesel_async::AsyncConnection;
use hangar_store::modules::{self as store, ModuleVersionRow, NewModuleVersion};
use hangar_store::audit;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::Address;
use crate::App;

/// Why a publication was refused; each is one line saying what and where.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error("tag {tag:?} does not exist in {repository}")]
    NoSuchTag { repository: String, tag: String },
    #[error("cannot reach {repository}: {detail}")]
    Unreachable { repository: String, detail: String },
    #[error("git timed out after {secs} s on {repository}")]
    Timeout { repository: String, secs: u64 },
    #[error("the archive of tag {tag:?} is larger than {limit} bytes")]
    TooLarge { tag: String, limit: u64 },
    #[error(
        "version {version} of {module} was published from commit {commit} with other content; a version is never rewritten"
    )]
    Rewrite { module: String, version: String, commit: String },
    #[error("git {step} failed in the scratch repository: {detail}")]
    Git { step: &'static str, detail: String },
    #[error("cannot run git")]
    Spawn(#[source] std::io::Error),
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    #[error("object store: {0}")]
    Objects(String),
    #[error(transparent)]
    Store(#[from] hangar_store::StoreError),
}

impl From<diesel::result::Error> for PublishError {
    fn from(e: diesel::result::Error) -> Self {
        PublishError::Store(e.into())
    }
}

/// What to publish.
#[derive(Debug)]
pub(crate) struct Publication<'a> {
    pub(crate) address: &'a Address,
    pub(crate) version: &'a str,
    pub(crate) repository: &'a str,
    pub(crate) tag: &'a str,
    pub(crate) actor: &'a str,
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A git command that never prompts and reaches only the transports a stack may use.
fn git(dir: Option<&Path>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(["-c", "protocol.file.allow=never", "-c", "protocol.ext.allow=never"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The last non-empty line of git's stderr, bounded.
fn last_line(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let status = status.to_string();
    text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or(&status).chars().take(300).collect()
}

/// Runs `cmd` to its end within `timeout`; its stdout, or its stderr's last line.
async fn output(
    mut cmd: tokio::process::Command,
    timeout: Duration,
    repository: &str,
) -> Result<Result<Vec<u8>, String>, PublishError> {
    let child = cmd.spawn().map_err(PublishError::Spawn)?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => {
            let out = r.map_err(PublishError::Spawn)?;
            Ok(if out.status.success() { Ok(out.stdout) } else { Err(last_line(&out.stderr, out.status)) })
        }
        Err(_) => Err(PublishError::Timeout { repository: repository.into(), secs: timeout.as_secs() }),
    }
}

/// The archive of `tag`: commit, tree and the `.tar.gz` bytes.
struct Archive {
    commit: String,
    tree: String,
    bytes: Vec<u8>,
}

async fn archive(repository: &str, tag: &str, limit: u64, timeout: Duration) -> Result<Archive, PublishError> {
    let refname = format!("refs/tags/{tag}");
    let mut ls = git(None);
    ls.args(["ls-remote", "--tags", "--"]).arg(repository).arg(&refname);
    let listed = output(ls, timeout, repository)
        .await?
        .map_err(|detail| PublishError::Unreachable { repository: repository.into(), detail })?;
    let listed = String::from_utf8_lossy(&listed);
    if !listed.lines().filter_map(|l| l.split_once('\t')).any(|(_, r)| r == refname) {
        return Err(PublishError::NoSuchTag { repository: repository.into(), tag: tag.into() });
    }

    let dir = std::env::temp_dir().join(format!("hangar-module-{:016x}", rand::random::<u64>()));
    let scratch = Scratch(dir);
    let mut init = git(None);
    init.args(["init", "--quiet", "--bare"]).arg(&scratch.0);
    output(init, timeout, repository).await?.map_err(|detail| PublishError::Git { step: "init", detail })?;
    let mut fetch = git(Some(&scratch.0));
    fetch.args(["fetch", "--quiet", "--no-tags", "--depth", "1", "--"]).arg(repository).arg(format!("+{refname}:{refname}"));
    output(fetch, timeout, repository)
        .await?
        .map_err(|detail| PublishError::Unreachable { repository: repository.into(), detail })?;
    let mut parse = git(Some(&scratch.0));
    parse.arg("rev-parse").arg(format!("{refname}^{{commit}}")).arg(format!("{refname}^{{tree}}"));
    let parsed = output(parse, timeout, repository).await?.map_err(|detail| PublishError::Git { step: "rev-parse", detail })?;
    let parsed = String::from_utf8_lossy(&parsed);
    let mut lines = parsed.lines().map(str::trim);
    let (Some(commit), Some(tree)) = (lines.next(), lines.next()) else {
        return Err(PublishError::Git { step: "rev-parse", detail: "no commit and tree".into() });
    };
    let (commit, tree) = (commit.to_string(), tree.to_string());

    // Read up to the limit, then stop git: an oversized tree is never held whole.
    let mut arch = git(Some(&scratch.0));
    arch.args(["archive", "--format=tar.gz", "--end-of-options"]).arg(&commit);
    let mut child = arch.spawn().map_err(PublishError::Spawn)?;
    let mut stdout = child.stdout.take().ok_or_else(|| PublishError::Git { step: "archive", detail: "no output".into() })?;
    let read = async {
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = stdout.read(&mut chunk).await.map_err(PublishError::Spawn)?;
            if n == 0 {
                return Ok(Some(bytes));
            }
            if (bytes.len() + n) as u64 > limit {
                return Ok(None);
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    let bytes = match tokio::time::timeout(timeout, read).await {
        Err(_) => return Err(PublishError::Timeout { repository: repository.into(), secs: timeout.as_secs() }),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => return Err(PublishError::TooLarge { tag: tag.into(), limit }),
        Ok(Ok(Some(b))) => b,
    };
    let out = child.wait_with_output().await.map_err(PublishError::Spawn)?;
    if !out.status.success() {
        return Err(PublishError::Git { step: "archive", detail: last_line(&out.stderr, out.status) });
    }
    Ok(Archive { commit, tree, bytes })
}

/// The object key of an archive: content-addressed under its version, so a
/// publication that fails halfway leaves nothing a later one collides with.
fn object_key(address: &Address, version: &str, sha256: &str) -> String {
    format!("modules/{address}/{version}/{sha256}.tar.gz")
}

/// Publishes `p`: see the module documentation.
pub(crate) async fn publish(app: &App, p: &Publication<'_>) -> Result<ModuleVersionRow, PublishError> {
    let module = p.address.to_string();
    // An existing version is answered or refused before anything is fetched
    // only once its tree is known: fetch first, then compare.
    let a = archive(p.repository, p.tag, app.max_module_bytes, app.git_timeout).await?;
    let mut c = app.db.get().await.map_err(|e| PublishError::Unavailable(hangar_types::error_chain(&e)))?;
    let same_or_refused = |existing: ModuleVersionRow| {
        if existing.tree_sha == a.tree {
            tracing::info!(module = %module, version = p.version, commit = %existing.commit_sha, "module version already published with this content");
            Ok(existing)
        } else {
            Err(PublishError::Rewrite { module: module.clone(), version: p.version.into(), commit: existing.commit_sha })
        }
    };
    if let Some(m) = store::find(&mut c, &p.address.namespace, &p.address.name, &p.address.system).await?
        && let Some(existing) = store::version(&mut c, m.id, p.version).await?
    {
        return same_or_refused(existing);
    }
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &a.bytes).as_ref());
    let key = object_key(p.address, p.version, &sha256);
    app.objects.put(&key, &a.bytes).await.map_err(|e| PublishError::Objects(hangar_types::error_chain(&e)))?;
    let size = a.bytes.len() as i64;
    let recorded = c
        .transaction::<_, PublishError, _>(async |c| {
            let m = store::ensure(c, &p.address.namespace, &p.address.name, &p.address.system).await?;
            let new = NewModuleVersion {
                module_id: m.id,
                version: p.version,
                repository: p.repository,
                tag: p.tag,
                commit_sha: &a.commit,
                tree_sha: &a.tree,
                object_key: &key,
                sha256: &sha256,
                size,
                published_by: p.actor,
            };
            let Some(row) = store::insert_version(c, &new).await? else {
                // Published by someone else meanwhile.
                let existing = store::version(c, m.id, p.version).await?;
                return Ok(Err(existing));
            };
            audit::record(
                c,
                p.actor,
                "module.publish",
                &format!("module:{module}"),
                json!({ "version": p.version, "repository": p.repository, "tag": p.tag, "commit": a.commit, "sha256": sha256, "size": size }),
            )
            .await?;
            Ok(Ok(row))
        })
        .await?;
    match recorded {
        Ok(row) => {
            tracing::info!(module = %module, version = p.version, commit = %row.commit_sha, size, by = p.actor, "module version published");
            Ok(row)
        }
        Err(existing) => {
            let existing = existing.ok_or(PublishError::Git { step: "publish", detail: "the version vanished".into() })?;
            if existing.object_key != key {
                // Ours lost the race; its object is not named by any row.
                let _ = app.objects.delete(&key).await;
            }
            same_or_refused(existing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_name_the_module_version_and_content() {
        let a = Address::parse("acme", "files", "hangartest").unwrap();
        assert_eq!(object_key(&a, "1.0.0", "ab"), "modules/acme/files/hangartest/1.0.0/ab.tar.gz");
    }
}
