//! Webhook events in one model for every vendor: pushes to branches and tags,
//! branch deletions, pull/merge requests, pings, and everything else (recorded
//! and ignored). Parsing never panics: a malformed body, a missing field or a
//! field of the wrong type is a [`ParseError`] naming the field.

mod bitbucket;
mod github;
mod gitlab;
mod gitea;
pub(crate) mod json;
mod pulls;

use std::collections::BTreeSet;
use std::fmt;

use crate::paths::{ProjectRoot, Touches, normalize_path, touches};
use crate::Vendor;

/// A repository as a delivery describes it. URLs are absent when the vendor did
/// not send them (Bitbucket's documented examples carry none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// `owner/name`; GitLab `group/subgroup/project`; Bitbucket `PROJECT/slug`.
    pub full_name: String,
    pub http_url: Option<String>,
    pub ssh_url: Option<String>,
    pub web_url: Option<String>,
}

impl Repository {
    /// Whether `url` (a stack's repository URL, HTTP(S), `ssh://` or scp-like
    /// `git@host:path`) names this repository: same host and path, ignoring
    /// scheme, port, credentials, case, a trailing `/` and `.git`.
    pub fn matches_url(&self, url: &str) -> bool {
        let Some(wanted) = url_key(url) else {
            return false;
        };
        [&self.http_url, &self.ssh_url, &self.web_url]
            .into_iter()
            .flatten()
            .filter_map(|u| url_key(u))
            .any(|k| k == wanted)
    }
}

/// `(host, path)`, lowercased, for comparing repository URLs.
fn url_key(url: &str) -> Option<(String, String)> {
    let url = url.trim();
    let (host_part, path) = if let Some((_, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        (authority, path)
    } else {
        // scp-like: [user@]host:path
        let (authority, path) = url.split_once(':')?;
        if authority.contains('/') {
            return None;
        }
        (authority, path)
    };
    let host = host_part.rsplit('@').next()?;
    let host = if host.starts_with('[') {
        host.split(']').next()?.trim_start_matches('[')
    } else {
        host.split(':').next()?
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/');
    if host.is_empty() || path.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), path.to_lowercase()))
}

/// The ref a push moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefTarget {
    Branch(String),
    Tag(String),
}

/// A ref update: a push to a branch or tag, or its deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub repository: Repository,
    /// The full ref, `refs/heads/main` or `refs/tags/v1`.
    pub git_ref: String,
    pub target: RefTarget,
    /// The commit before the push; `None` when the ref was created (or the
    /// vendor does not say).
    pub before: Option<String>,
    /// The commit after the push; `None` when the ref was deleted.
    pub after: Option<String>,
    pub created: bool,
    pub deleted: bool,
    /// Repository paths added, modified or removed by the pushed commits, as far
    /// as the vendor listed them.
    pub changed_paths: BTreeSet<String>,
    /// Whether `changed_paths` is every path the push changed. False when the
    /// vendor truncated its commit list, sends no file lists (Bitbucket Data
    /// Center, older Gitea), or the push created a branch or was forced (its
    /// commit list then is not the diff): the caller must ask git.
    pub paths_complete: bool,
    pub pusher: Option<String>,
}

impl Push {
    pub fn branch(&self) -> Option<&str> {
        match &self.target {
            RefTarget::Branch(b) => Some(b),
            RefTarget::Tag(_) => None,
        }
    }

    pub fn tag(&self) -> Option<&str> {
        match &self.target {
            RefTarget::Tag(t) => Some(t),
            RefTarget::Branch(_) => None,
        }
    }

    /// Whether this push touches `root` ([`Touches::Unknown`]: ask git).
    pub fn touches(&self, root: &ProjectRoot) -> Touches {
        touches(&self.changed_paths, self.paths_complete, root)
    }
}

/// What happened to a pull/merge request, normalized across vendors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrAction {
    Opened,
    /// New commits on the source branch (GitHub `synchronize`, GitLab `update`
    /// with `oldrev`, Gitea `synchronized`, Bitbucket `pr:from_ref_updated`),
    /// or a new target branch (Bitbucket `pr:to_ref_updated`).
    Updated,
    Closed,
    Merged,
    Reopened,
    /// Anything else (labels, reviews, edits of the title): recorded, ignored.
    Other(String),
}

impl PrAction {
    pub fn as_str(&self) -> &str {
        match self {
            PrAction::Opened => "opened",
            PrAction::Updated => "updated",
            PrAction::Closed => "closed",
            PrAction::Merged => "merged",
            PrAction::Reopened => "reopened",
            PrAction::Other(o) => o,
        }
    }
}

/// A pull request (GitLab: merge request) event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub action: PrAction,
    /// GitHub/Gitea number, GitLab `iid`, Bitbucket id.
    pub number: u64,
    pub title: Option<String>,
    /// The commit to plan.
    pub head_sha: String,
    /// The source branch (in `head_repository` when that is a fork).
    pub head_ref: String,
    /// The target branch: the stack's tracked branch for a proposed run.
    pub base_ref: String,
    /// The target repository, whose webhook this is.
    pub repository: Repository,
    /// The source repository when the vendor names it (a fork, or the same one).
    pub head_repository: Option<Repository>,
    pub author: Option<String>,
    /// The ref in the target repository that holds the head commit, for fetching
    /// a fork's commit from the stack's own repository.
    pub fetch_ref: String,
}

/// One thing a delivery reports. A delivery may carry several (Bitbucket's
/// `repo:refs_changed` lists every ref of one push).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Commits pushed to a branch, which may have been created by the push.
    Push(Push),
    BranchDeleted(Push),
    /// A tag created, moved or deleted.
    Tag(Push),
    PullRequest(PullRequest),
    /// The vendor checking the hook (GitHub `ping`, Bitbucket `diagnostics:ping`,
    /// a "test delivery" push that moves no ref).
    Ping,
    /// Anything else; recorded and ignored.
    Other { event: String },
}

impl Event {
    /// A short kind for the delivery log and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Push(_) => "push",
            Event::BranchDeleted(_) => "branch_deleted",
            Event::Tag(_) => "tag",
            Event::PullRequest(_) => "pull_request",
            Event::Ping => "ping",
            Event::Other { .. } => "other",
        }
    }
}

fn short(sha: &Option<String>) -> &str {
    match sha {
        Some(s) => &s[..s.len().min(12)],
        None => "(none)",
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Push(p) => {
                let verb = if p.created { "created" } else { "pushed" };
                write!(
                    f,
                    "branch {} {verb} in {}: {} -> {}, ",
                    p.branch().unwrap_or_default(),
                    p.repository.full_name,
                    short(&p.before),
                    short(&p.after)
                )?;
                if p.paths_complete {
                    write!(f, "{} changed paths", p.changed_paths.len())
                } else {
                    write!(f, "{} changed paths listed (not all)", p.changed_paths.len())
                }
            }
            Event::BranchDeleted(p) => {
                write!(f, "branch {} deleted in {}", p.branch().unwrap_or_default(), p.repository.full_name)
            }
            Event::Tag(p) => {
                let verb = if p.deleted {
                    "deleted"
                } else if p.created {
                    "created"
                } else {
                    "moved"
                };
                write!(f, "tag {} {verb} in {}", p.tag().unwrap_or_default(), p.repository.full_name)
            }
            Event::PullRequest(pr) => write!(
                f,
                "pull request #{} {} in {}: {} -> {} at {}",
                pr.number,
                pr.action.as_str(),
                pr.repository.full_name,
                pr.head_ref,
                pr.base_ref,
                &pr.head_sha[..pr.head_sha.len().min(12)]
            ),
            Event::Ping => f.write_str("ping (the git server checking the webhook)"),
            Event::Other { event } => write!(f, "{event} (not acted on)"),
        }
    }
}

/// Why a delivery body could not be read. Every variant names the vendor and
/// event; field errors name the field by its JSON path.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{vendor} {event} delivery is not valid JSON")]
    NotJson {
        vendor: Vendor,
        event: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{vendor} {event} delivery is form-encoded; set the webhook's content type to application/json")]
    FormEncoded { vendor: Vendor, event: String },
    #[error("{vendor} {event} delivery has no field {field}")]
    Missing {
        vendor: Vendor,
        event: String,
        field: String,
    },
    #[error("{vendor} {event} delivery: field {field} is not {expected}")]
    WrongType {
        vendor: Vendor,
        event: String,
        field: String,
        expected: &'static str,
    },
    #[error("{vendor} {event} delivery: field {field} is invalid: {problem}")]
    Invalid {
        vendor: Vendor,
        event: String,
        field: String,
        problem: &'static str,
    },
}

/// Parses a verified delivery's body. `event` is [`crate::Delivery::event`],
/// the vendor's event header.
pub fn parse(vendor: Vendor, event: &str, body: &[u8]) -> Result<Vec<Event>, ParseError> {
    let ctx = json::Ctx { vendor, event };
    let trimmed = body.trim_ascii_start();
    if trimmed.starts_with(b"payload=") {
        return Err(ParseError::FormEncoded { vendor, event: event.to_string() });
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|source| ParseError::NotJson {
        vendor,
        event: event.to_string(),
        source,
    })?;
    if !value.is_object() {
        return Err(ctx.wrong_type("(body)", "a JSON object"));
    }
    let root = json::J::root(&value);
    match vendor {
        Vendor::Github => github::parse(&ctx, root),
        Vendor::Gitlab => gitlab::parse(&ctx, root),
        Vendor::Gitea => gitea::parse(&ctx, root),
        Vendor::Bitbucket => bitbucket::parse(&ctx, root),
    }
}

/// Collects the added, modified and removed paths of `commits`; the result is
/// complete only if every commit carried all three lists.
fn commit_paths(ctx: &json::Ctx, commits: &[json::J]) -> Result<(BTreeSet<String>, bool), ParseError> {
    let mut paths = BTreeSet::new();
    let mut all_listed = true;
    for c in commits {
        for list in ["added", "modified", "removed"] {
            let l = c.at(list);
            match l.opt_items(ctx)? {
                None => all_listed = false,
                Some(items) => {
                    for item in &items {
                        let p = item.str(ctx)?;
                        if p.contains('\0') {
                            return Err(ctx.invalid(&item.path(), "contains a NUL byte"));
                        }
                        let p = normalize_path(p);
                        if !p.is_empty() {
                            paths.insert(p);
                        }
                    }
                }
            }
        }
    }
    Ok((paths, all_listed))
}

/// Builds the event for a ref update from its parts, validated: a branch push,
/// a branch deletion, a tag event, or (for other refs) an ignored event.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ref_event(
    ctx: &json::Ctx,
    ref_field: &json::J,
    git_ref: &str,
    repository: Repository,
    before: Option<String>,
    after: Option<String>,
    changed_paths: BTreeSet<String>,
    paths_complete: bool,
    pusher: Option<String>,
) -> Result<Event, ParseError> {
    json::check_ref(ctx, ref_field, git_ref)?;
    // No push leaves a ref where it was: this is a "test delivery" button
    // (Gitea sends all-zero ids, older versions the branch head twice).
    if before == after {
        return Ok(Event::Ping);
    }
    let created = before.is_none();
    let deleted = after.is_none();
    let target = if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        RefTarget::Branch(b.to_string())
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        RefTarget::Tag(t.to_string())
    } else {
        return Ok(Event::Other { event: format!("{} to {git_ref}", ctx.event) });
    };
    let push = Push {
        repository,
        git_ref: git_ref.to_string(),
        target,
        before,
        after,
        created,
        deleted,
        // A new branch's commit list is relative to whatever the vendor chose
        // (often nothing): its paths say nothing about what the branch holds.
        paths_complete: paths_complete && !created && !deleted,
        changed_paths,
        pusher,
    };
    Ok(match (&push.target, deleted) {
        (RefTarget::Branch(_), false) => Event::Push(push),
        (RefTarget::Branch(_), true) => Event::BranchDeleted(push),
        (RefTarget::Tag(_), _) => Event::Tag(push),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(urls: &[&str]) -> Repository {
        Repository {
            full_name: "org/app".into(),
            http_url: urls.first().map(|s| s.to_string()),
            ssh_url: urls.get(1).map(|s| s.to_string()),
            web_url: urls.get(2).map(|s| s.to_string()),
        }
    }

    #[test]
    fn repository_urls_match_across_forms() {
        let r = repo(&["https://git.example.com/Org/App.git", "git@git.example.com:org/app.git", "https://git.example.com/org/app"]);
        for same in [
            "https://git.example.com/org/app.git",
            "https://git.example.com/org/app",
            "https://git.example.com/org/app/",
            "http://GIT.example.com:8443/org/app.git",
            "https://user:pw@git.example.com/org/app.git",
            "ssh://git@git.example.com:7999/org/app.git",
            "git@git.example.com:org/app",
        ] {
            assert!(r.matches_url(same), "{same}");
        }
        for other in [
            "https://git.example.com/org/app2.git",
            "https://git.example.com/org/app/sub",
            "https://other.example.com/org/app.git",
            "https://git.example.com/",
            "",
            "not a url",
            "/org/app",
        ] {
            assert!(!r.matches_url(other), "{other}");
        }
        let none = Repository { full_name: "x/y".into(), http_url: None, ssh_url: None, web_url: None };
        assert!(!none.matches_url("https://git.example.com/x/y.git"));
    }
}
