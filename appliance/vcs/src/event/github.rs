//! GitHub Enterprise Server deliveries: `push`, `pull_request`, `ping`.

use super::json::{Ctx, J, check_branch};
use super::{Event, ParseError, PrAction, PullRequest, Repository, commit_paths, ref_event};

/// GitHub sends at most this many commits in a push; a full list may be cut.
const MAX_PUSH_COMMITS: usize = 2048;

pub(super) fn parse(ctx: &Ctx, root: J) -> Result<Vec<Event>, ParseError> {
    match ctx.event {
        "push" => push(ctx, root).map(|e| vec![e]),
        "pull_request" => pull_request(ctx, root).map(|e| vec![e]),
        "ping" => Ok(vec![Event::Ping]),
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

fn push(ctx: &Ctx, root: J) -> Result<Event, ParseError> {
    let ref_j = root.at("ref");
    let git_ref = ref_j.str(ctx)?;
    let before = root.at("before").commit(ctx)?;
    let after = root.at("after").commit(ctx)?;
    let repository = repository(ctx, &root.at("repository"))?;
    let commits_j = root.at("commits");
    let commits = commits_j.opt_items(ctx)?;
    let forced = root.at("forced").opt_bool(ctx)?.unwrap_or(false);
    let (paths, listed) = match &commits {
        Some(c) => commit_paths(ctx, c)?,
        None => Default::default(),
    };
    let complete = commits.as_ref().is_some_and(|c| c.len() < MAX_PUSH_COMMITS) && listed && !forced;
    let pusher = root.at("pusher").at("name").opt_text(ctx)?;
    ref_event(ctx, &ref_j, git_ref, repository, before, after, paths, complete, pusher)
}

fn pull_request(ctx: &Ctx, root: J) -> Result<Event, ParseError> {
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
        "synchronize" => PrAction::Updated,
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
    // A fork deleted after its pull request was opened leaves `head.repo` null.
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
        author: pr.at("user").at("login").opt_text(ctx)?,
        fetch_ref: format!("refs/pull/{number}/head"),
    }))
}
