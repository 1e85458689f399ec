//! Bitbucket Data Center deliveries: `repo:refs_changed` (one push, any number
//! of refs), the `pr:*` events, and `diagnostics:ping` (the "Test connection"
//! button).

use std::collections::BTreeSet;

use super::json::{Ctx, J, check_branch};
use super::{Event, ParseError, PrAction, PullRequest, Repository, ref_event};

/// One push may move many refs; a delivery listing more than this is not one a
/// git server sends for a push Hangar should act on.
const MAX_REF_CHANGES: usize = 10_000;

pub(super) fn parse(ctx: &Ctx, root: J) -> Result<Vec<Event>, ParseError> {
    let action = match ctx.event {
        "diagnostics:ping" => return Ok(vec![Event::Ping]),
        "repo:refs_changed" => None,
        "pr:opened" => Some(PrAction::Opened),
        "pr:from_ref_updated" | "pr:to_ref_updated" => Some(PrAction::Updated),
        "pr:merged" => Some(PrAction::Merged),
        "pr:declined" | "pr:deleted" => Some(PrAction::Closed),
        other if other.starts_with("pr:") => Some(PrAction::Other(other.to_string())),
        other => return Ok(vec![Event::Other { event: other.to_string() }]),
    };
    // The header is not signed; the body names its own event and must agree.
    match root.at("eventKey").opt_str(ctx)? {
        Some(k) if k == ctx.event => {}
        Some(_) => return Err(ctx.invalid("eventKey", "does not match the X-Event-Key header")),
        None => return Err(ctx.missing("eventKey")),
    }
    match action {
        None => refs_changed(ctx, &root),
        Some(action) => pull_request(ctx, &root, action).map(|e| vec![e]),
    }
}

fn repository(ctx: &Ctx, j: &J) -> Result<Repository, ParseError> {
    j.object(ctx)?;
    let key = j.at("project").at("key").str(ctx)?;
    let slug = j.at("slug").str(ctx)?;
    let mut http_url = None;
    let mut ssh_url = None;
    let links = j.at("links");
    let clone = links.at("clone");
    for c in clone.opt_items(ctx)?.unwrap_or_default() {
        let href = c.at("href").opt_text(ctx)?;
        match c.at("name").opt_str(ctx)? {
            Some("http") | Some("https") => http_url = href,
            Some("ssh") => ssh_url = href,
            _ => {}
        }
    }
    let selfs = links.at("self");
    let web_url = match selfs.opt_items(ctx)?.unwrap_or_default().first() {
        Some(first) => first.at("href").opt_text(ctx)?,
        None => None,
    };
    Ok(Repository { full_name: format!("{key}/{slug}"), http_url, ssh_url, web_url })
}

fn actor(ctx: &Ctx, root: &J) -> Result<Option<String>, ParseError> {
    let a = root.at("actor");
    Ok(match a.at("slug").opt_text(ctx)? {
        Some(s) => Some(s),
        None => a.at("name").opt_text(ctx)?,
    })
}

fn refs_changed(ctx: &Ctx, root: &J) -> Result<Vec<Event>, ParseError> {
    let repository = repository(ctx, &root.at("repository"))?;
    let pusher = actor(ctx, root)?;
    let changes_j = root.at("changes");
    if changes_j.array(ctx)?.len() > MAX_REF_CHANGES {
        return Err(ctx.invalid("changes", "lists more than 10000 refs"));
    }
    let changes = changes_j.items(ctx)?;
    let mut events = Vec::with_capacity(changes.len());
    for c in &changes {
        c.object(ctx)?;
        let r = c.at("ref");
        let (ref_id, ref_id_alt) = (r.at("id"), c.at("refId"));
        let (ref_j, git_ref) = match ref_id.opt_str(ctx)? {
            Some(id) => (&ref_id, id),
            None => (&ref_id_alt, ref_id_alt.str(ctx)?),
        };
        let before = c.at("fromHash").commit(ctx)?;
        let after = c.at("toHash").commit(ctx)?;
        // Bitbucket sends no file lists: every push must be diffed with git.
        events.push(ref_event(
            ctx,
            ref_j,
            git_ref,
            repository.clone(),
            before,
            after,
            BTreeSet::new(),
            false,
            pusher.clone(),
        )?);
    }
    Ok(events)
}

fn pull_request(ctx: &Ctx, root: &J, action: PrAction) -> Result<Event, ParseError> {
    let pr = root.at("pullRequest");
    pr.object(ctx)?;
    let number = pr.at("id").u64(ctx)?;
    let from = pr.at("fromRef");
    let to = pr.at("toRef");
    let head_ref = branch_of(ctx, &from)?;
    let base_ref = branch_of(ctx, &to)?;
    let author = pr.at("author");
    let author = author.at("user");
    let author = match author.at("slug").opt_text(ctx)? {
        Some(s) => Some(s),
        None => author.at("name").opt_text(ctx)?,
    };
    Ok(Event::PullRequest(PullRequest {
        action,
        number,
        title: pr.at("title").opt_text(ctx)?,
        head_sha: from.at("latestCommit").required_commit(ctx)?,
        head_ref,
        base_ref,
        repository: repository(ctx, &to.at("repository"))?,
        head_repository: match from.at("repository").opt_object(ctx)? {
            Some(r) => Some(repository(ctx, r)?),
            None => None,
        },
        author,
        fetch_ref: format!("refs/pull-requests/{number}/from"),
    }))
}

/// The branch of a `fromRef`/`toRef`: `displayId`, or `id` without `refs/heads/`.
fn branch_of(ctx: &Ctx, r: &J) -> Result<String, ParseError> {
    r.object(ctx)?;
    let id = r.at("id");
    let name = match id.opt_str(ctx)? {
        Some(full) => full.strip_prefix("refs/heads/").ok_or_else(|| ctx.invalid(&id.path(), "is not a branch ref"))?,
        None => r.at("displayId").str(ctx)?,
    };
    check_branch(ctx, &id, name)?;
    Ok(name.to_string())
}
