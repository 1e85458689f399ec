//! GitHub Enterprise Server deliveries: `push`, `pull_request`, `ping`.

use super::json::{Ctx, J};
use super::pulls::{self, repository};
use super::{Event, ParseError, commit_paths, ref_event};

/// GitHub sends at most this many commits in a push; a full list may be cut.
const MAX_PUSH_COMMITS: usize = 2048;

pub(super) fn parse(ctx: &Ctx, root: J) -> Result<Vec<Event>, ParseError> {
    match ctx.event {
        "push" => push(ctx, root).map(|e| vec![e]),
        "pull_request" => pulls::pull_request(ctx, &root, "synchronize").map(|e| vec![e]),
        "ping" => Ok(vec![Event::Ping]),
        other => Ok(vec![Event::Other { event: other.to_string() }]),
    }
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
