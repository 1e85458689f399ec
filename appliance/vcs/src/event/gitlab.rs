//! GitLab self-managed deliveries: `Push Hook`, `Tag Push Hook`, `Merge Request
//! Hook` (and the same events through a `System Hook`).

use super::json::{Ctx, J, check_branch};
use super::{Event, ParseError, PrAction, PullRequest, Repository, commit_paths, ref_event};

pub(super) fn parse(ctx: &Ctx, root: J) -> Result<Vec<Event>, ParseError> {
    let kind = root.at("object_kind").opt_str(ctx)?;
    // The header is not covered by any signature: the body's own kind must agree,
    // so a signed push body cannot be replayed as a merge request or vice versa.
    let expected = match ctx.event {
        "Push Hook" => Some("push"),
        "Tag Push Hook" => Some("tag_push"),
        "Merge Request Hook" => Some("merge_request"),
        "System Hook" => {
            // System hooks name the kind in `event_name` (and `object_kind` for
            // merge requests).
            let name = match kind {
                Some(k) => Some(k),
                None => root.at("event_name").opt_str(ctx)?,
            };
            return match name {
                Some("push") => push(ctx, &root).map(|e| vec![e]),
                Some("tag_push") => push(ctx, &root).map(|e| vec![e]),
                Some("merge_request") => merge_request(ctx, &root).map(|e| vec![e]),
                Some(other) => Ok(vec![Event::Other { event: format!("System Hook {other}") }]),
                None => Ok(vec![Event::Other { event: "System Hook".into() }]),
            };
        }
        other => return Ok(vec![Event::Other { event: other.to_string() }]),
    };
    match kind {
        None => return Err(ctx.missing("object_kind")),
        Some(k) if Some(k) != expected => {
            return Err(ctx.invalid("object_kind", "does not match the X-Gitlab-Event header"));
        }
        Some(_) => {}
    }
    match ctx.event {
        "Merge Request Hook" => merge_request(ctx, &root).map(|e| vec![e]),
        _ => push(ctx, &root).map(|e| vec![e]),
    }
}

/// `project` (GitLab 8.5 and later), else the deprecated `repository`.
fn repository(ctx: &Ctx, project: &J, legacy: &J) -> Result<Repository, ParseError> {
    if project.opt_object(ctx)?.is_some() {
        return Ok(Repository {
            full_name: project.at("path_with_namespace").str(ctx)?.to_string(),
            http_url: project.at("git_http_url").opt_text(ctx)?,
            ssh_url: project.at("git_ssh_url").opt_text(ctx)?,
            web_url: project.at("web_url").opt_text(ctx)?,
        });
    }
    legacy.object(ctx).map_err(|_| ctx.missing(&project.path()))?;
    let web_url = legacy.at("homepage").opt_text(ctx)?;
    let full_name = web_url
        .as_deref()
        .and_then(|u| u.split_once("://"))
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path.trim_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ctx.missing(&project.path()))?;
    Ok(Repository {
        full_name,
        http_url: legacy.at("git_http_url").opt_text(ctx)?,
        ssh_url: legacy.at("git_ssh_url").opt_text(ctx)?,
        web_url,
    })
}

fn push(ctx: &Ctx, root: &J) -> Result<Event, ParseError> {
    let ref_j = root.at("ref");
    let git_ref = ref_j.str(ctx)?;
    let before = root.at("before").commit(ctx)?;
    let after = root.at("after").commit(ctx)?;
    let repository = repository(ctx, &root.at("project"), &root.at("repository"))?;
    let commits_j = root.at("commits");
    let commits = commits_j.opt_items(ctx)?;
    let total = root.at("total_commits_count").opt_u64(ctx)?;
    let (paths, listed) = match &commits {
        Some(c) => commit_paths(ctx, c)?,
        None => Default::default(),
    };
    // GitLab lists at most 20 commits and says how many there were.
    let complete = match (&commits, total) {
        (Some(c), Some(t)) => c.len() as u64 == t && listed,
        _ => false,
    };
    let pusher = match root.at("user_username").opt_text(ctx)? {
        Some(u) => Some(u),
        None => root.at("user_name").opt_text(ctx)?,
    };
    ref_event(ctx, &ref_j, git_ref, repository, before, after, paths, complete, pusher)
}

fn merge_request(ctx: &Ctx, root: &J) -> Result<Event, ParseError> {
    let attrs = root.at("object_attributes");
    attrs.object(ctx)?;
    let number = attrs.at("iid").u64(ctx)?;
    let action = match attrs.at("action").opt_str(ctx)? {
        Some("open") => PrAction::Opened,
        Some("reopen") => PrAction::Reopened,
        Some("close") => PrAction::Closed,
        Some("merge") => PrAction::Merged,
        // `oldrev` is there only when the source branch got new commits; other
        // updates (title, labels, assignees) change nothing to plan.
        Some("update") if attrs.at("oldrev").exists() => PrAction::Updated,
        Some(other) => PrAction::Other(other.to_string()),
        None => PrAction::Other("(no action)".to_string()),
    };
    let (source_j, target_j) = (attrs.at("source_branch"), attrs.at("target_branch"));
    let head_ref = source_j.str(ctx)?;
    check_branch(ctx, &source_j, head_ref)?;
    let base_ref = target_j.str(ctx)?;
    check_branch(ctx, &target_j, base_ref)?;
    let head_repository = match attrs.at("source").opt_object(ctx)? {
        Some(s) => Some(Repository {
            full_name: s.at("path_with_namespace").str(ctx)?.to_string(),
            http_url: s.at("git_http_url").opt_text(ctx)?,
            ssh_url: s.at("git_ssh_url").opt_text(ctx)?,
            web_url: s.at("web_url").opt_text(ctx)?,
        }),
        None => None,
    };
    Ok(Event::PullRequest(PullRequest {
        action,
        number,
        title: attrs.at("title").opt_text(ctx)?,
        head_sha: attrs.at("last_commit").at("id").required_commit(ctx)?,
        head_ref: head_ref.to_string(),
        base_ref: base_ref.to_string(),
        repository: repository(ctx, &root.at("project"), &root.at("repository"))?,
        head_repository,
        author: root.at("user").at("username").opt_text(ctx)?,
        fetch_ref: format!("refs/merge-requests/{number}/head"),
    }))
}
