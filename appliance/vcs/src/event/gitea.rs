//! Gitea and Forgejo deliveries: `push`, `pull_request`, `delete` (and `create`,
//! which always comes with a `push` and is only recorded).

use std::collections::BTreeSet;

use super::json::{Ctx, J, check_branch};
use super::{Event, ParseError, PrAction, PullRequest, Repository, commit_paths, ref_event};

pub(super) fn parse(ctx: &Ctx, root: J) -> Result<Vec<Event>, ParseError> {
    match ctx.event {
        "push" => push(ctx, &root).map(|e| vec![e]),
        "pull_request" => pull_request(ctx, &root).map(|e| vec![e]),
        "delete" => delete(ctx, &root).map(|e| vec![e]),
        other => Ok(vec![Event::Other { event: other.to_string() }]),
    }
}

fn repository(ctx: &Ctx, j: &J) -> Result<Repository, ParseError> {
    j.object(ctx)?;
    Ok(Repository {
        full_name: j.at("full_name").str(ctx)?.to_string(),
        http_url: j.at("clone_url").opt_text(ctx)?,
        ssh_url: j.at("ssh_url").opt_text(ctx)?,
        web_url: j.at("html_url").opt_text(ctx)?,
    })
}

fn user(ctx: &Ctx, j: &J) -> Result<Option<String>, ParseError> {
    Ok(match j.at("login").opt_text(ctx)? {
        Some(l) => Some(l),
        None => j.at("username").opt_text(ctx)?,
    })
}

fn push(ctx: &Ctx, root: &J) -> Result<Event, ParseError> {
    let ref_j = root.at("ref");
    let git_ref = ref_j.str(ctx)?;
    let before = root.at("before").commit(ctx)?;
    let after = root.at("after").commit(ctx)?;
    let repository = repository(ctx, &root.at("repository"))?;
    let commits_j = root.at("commits");
    let commits = commits_j.opt_items(ctx)?;
    // Gitea cuts the list to its feed limit (5 by default) and, since 1.17, says
    // how many there were; without that count the list cannot be trusted whole.
    let total = root.at("total_commits").opt_u64(ctx)?;
    let (paths, listed) = match &commits {
        Some(c) => commit_paths(ctx, c)?,
        None => Default::default(),
    };
    let complete = match (&commits, total) {
        (Some(c), Some(t)) => c.len() as u64 == t && listed,
        _ => false,
    };
    let pusher = user(ctx, &root.at("pusher"))?;
    ref_event(ctx, &ref_j, git_ref, repository, before, after, paths, complete, pusher)
}

/// A branch or tag deleted in the web interface or by a push. The payload
/// names the ref without its prefix and carries no commit ids.
fn delete(ctx: &Ctx, root: &J) -> Result<Event, ParseError> {
    let ref_j = root.at("ref");
    let name = ref_j.str(ctx)?;
    let prefix = match root.at("ref_type").str(ctx)? {
        "branch" => "refs/heads/",
        "tag" => "refs/tags/",
        other => return Ok(Event::Other { event: format!("delete of a {other}") }),
    };
    let git_ref = if name.starts_with("refs/") { name.to_string() } else { format!("{prefix}{name}") };
    let repository = repository(ctx, &root.at("repository"))?;
    let pusher = user(ctx, &root.at("sender"))?;
    // No commit ids: "before" is unknown rather than absent, so build the
    // deletion directly instead of through `ref_event`'s created/deleted logic.
    super::json::check_ref(ctx, &ref_j, &git_ref)?;
    let Some(short) = git_ref.strip_prefix(prefix).map(str::to_string) else {
        return Err(ctx.invalid("ref", "does not match ref_type"));
    };
    let is_branch = prefix == "refs/heads/";
    let push = super::Push {
        repository,
        target: if is_branch { super::RefTarget::Branch(short) } else { super::RefTarget::Tag(short) },
        git_ref,
        before: None,
        after: None,
        created: false,
        deleted: true,
        changed_paths: BTreeSet::new(),
        paths_complete: false,
        pusher,
    };
    Ok(if is_branch { Event::BranchDeleted(push) } else { Event::Tag(push) })
}

fn pull_request(ctx: &Ctx, root: &J) -> Result<Event, ParseError> {
    let action = root.at("action").str(ctx)?;
    let pr = root.at("pull_request");
    pr.object(ctx)?;
    let number = match root.at("number").opt_u64(ctx)? {
        Some(n) => n,
        None => pr.at("number").u64(ctx)?,
    };
    let merged = pr.at("merged").opt_bool(ctx)?.unwrap_or(false);
    let action = match action {
        "opened" => PrAction::Opened,
        "synchronized" => PrAction::Updated,
        "reopened" => PrAction::Reopened,
        "closed" if merged => PrAction::Merged,
        "closed" => PrAction::Closed,
        other => PrAction::Other(other.to_string()),
    };
    let head = pr.at("head");
    let base = pr.at("base");
    let (head_ref_j, base_ref_j) = (head.at("ref"), base.at("ref"));
    let head_ref = head_ref_j.str(ctx)?;
    check_branch(ctx, &head_ref_j, head_ref)?;
    let base_ref = base_ref_j.str(ctx)?;
    check_branch(ctx, &base_ref_j, base_ref)?;
    let head_repository = match head.at("repo").opt_object(ctx)? {
        Some(r) => Some(repository(ctx, r)?),
        None => None,
    };
    Ok(Event::PullRequest(PullRequest {
        action,
        number,
        title: pr.at("title").opt_text(ctx)?,
        head_sha: head.at("sha").required_commit(ctx)?,
        head_ref: head_ref.to_string(),
        base_ref: base_ref.to_string(),
        repository: repository(ctx, &root.at("repository"))?,
        head_repository,
        author: user(ctx, &pr.at("user"))?,
        fetch_ref: format!("refs/pull/{number}/head"),
    }))
}
