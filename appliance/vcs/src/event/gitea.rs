//! Gitea and Forgejo deliveries: `push`, `pull_request`, `delete` (and `create`,
//! which always comes with a `push` and is only recorded).

use std::collections::BTreeSet;

use super::json::{Ctx, J};
use super::pulls::{self, repository, user};
use super::{Event, ParseError, commit_paths, ref_event};

pub(super) fn parse(ctx: &Ctx, root: J) -> Result<Vec<Event>, ParseError> {
    match ctx.event {
        "push" => push(ctx, &root).map(|e| vec![e]),
        "pull_request" => pulls::pull_request(ctx, &root, "synchronized").map(|e| vec![e]),
        "delete" => delete(ctx, &root).map(|e| vec![e]),
        other => Ok(vec![Event::Other { event: other.to_string() }]),
    }
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
