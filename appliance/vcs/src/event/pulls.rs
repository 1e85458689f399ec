//! The payload shape GitHub defined and Gitea/Forgejo copied: repositories,
//! users and pull requests read alike for both, apart from the action word for
//! new commits on the source branch.

use super::json::{Ctx, J, check_branch};
use super::{Event, ParseError, PrAction, PullRequest, Repository};

/// `full_name`, `clone_url`, `ssh_url`, `html_url`.
pub(super) fn repository(ctx: &Ctx, j: &J) -> Result<Repository, ParseError> {
    j.object(ctx)?;
    Ok(Repository {
        full_name: j.at("full_name").str(ctx)?.to_string(),
        http_url: j.at("clone_url").opt_text(ctx)?,
        ssh_url: j.at("ssh_url").opt_text(ctx)?,
        web_url: j.at("html_url").opt_text(ctx)?,
    })
}

/// A user's `login` (older Gitea payloads name it `username` only).
pub(super) fn user(ctx: &Ctx, j: &J) -> Result<Option<String>, ParseError> {
    Ok(match j.at("login").opt_text(ctx)? {
        Some(l) => Some(l),
        None => j.at("username").opt_text(ctx)?,
    })
}

/// A `pull_request` delivery. `synchronize` is the vendor's action for new
/// commits on the source branch (GitHub `synchronize`, Gitea `synchronized`).
pub(super) fn pull_request(ctx: &Ctx, root: &J, synchronize: &str) -> Result<Event, ParseError> {
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
        a if a == synchronize => PrAction::Updated,
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
        author: user(ctx, &pr.at("user"))?,
        fetch_ref: format!("refs/pull/{number}/head"),
    }))
}
