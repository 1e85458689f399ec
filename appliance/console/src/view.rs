//! Small pieces every page shows the same way: times (relative, absolute on
//! hover), state badges, and who is looking.

use chrono::{DateTime, Utc};
use hangar_store::access::Op;
use hangar_types::{Role, RunState};

/// A moment, shown relative ("5 min ago") with the absolute time on hover.
#[derive(Debug, Clone)]
pub(crate) struct When {
    pub(crate) iso: String,
    pub(crate) abs: String,
    pub(crate) rel: String,
}

impl When {
    pub(crate) fn at(t: DateTime<Utc>) -> When {
        When::relative_to(t, Utc::now())
    }

    pub(crate) fn relative_to(t: DateTime<Utc>, now: DateTime<Utc>) -> When {
        let secs = (now - t).num_seconds();
        let (n, future) = if secs < 0 { (-secs, true) } else { (secs, false) };
        let amount = match n {
            0..=44 => None,
            45..=5399 => Some(format!("{} min", ((n + 30) / 60).max(1))),
            5400..=129_599 => Some(format!("{} h", (n + 1800) / 3600)),
            _ => Some(format!("{} days", (n + 43_200) / 86_400)),
        };
        let rel = match (amount, future) {
            (None, _) => "just now".to_string(),
            (Some(a), false) => format!("{a} ago"),
            (Some(a), true) => format!("in {a}"),
        };
        When { iso: t.to_rfc3339(), abs: t.format("%Y-%m-%d %H:%M:%S UTC").to_string(), rel }
    }
}

/// A duration as "1 min 12 s".
pub(crate) fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The badge class of a run state: ok, run, wait, bad or idle.
pub(crate) fn state_class(s: RunState) -> &'static str {
    match s {
        RunState::Finished => "ok",
        RunState::Failed => "bad",
        RunState::Unconfirmed => "wait",
        RunState::Preparing | RunState::Initializing | RunState::Planning | RunState::Confirmed | RunState::Applying => "run",
        RunState::Queued | RunState::Ready | RunState::Discarded | RunState::Canceled | RunState::Stopped => "idle",
    }
}

/// A run state as a badge.
#[derive(Debug, Clone)]
pub(crate) struct Badge {
    pub(crate) text: String,
    pub(crate) class: &'static str,
}

impl Badge {
    pub(crate) fn run(s: RunState) -> Badge {
        Badge { text: s.as_str().to_string(), class: state_class(s) }
    }

    pub(crate) fn of(text: &str, class: &'static str) -> Badge {
        Badge { text: text.to_string(), class }
    }

    /// A policy's decision (`pass`, `deny`, `approve`, `trigger`, `track`, …, or `error`).
    pub(crate) fn policy(result: &str) -> Badge {
        let class = match result {
            "pass" | "approve" | "trigger" | "track" | "propose" => "ok",
            "ignore" => "idle",
            "warn" | "undecided" => "wait",
            _ => "bad",
        };
        Badge::of(result, class)
    }
}

/// Who is looking at a page, and what the page's forms post back.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub(crate) email: String,
    /// The role the page's controls are shown for: the role in the root on
    /// most pages, the role in the stack's space on a stack's or a run's.
    pub(crate) role: Role,
    pub(crate) access: std::sync::Arc<hangar_store::spaces::SpaceAccess>,
    pub(crate) csrf: String,
}

/// What a viewer may do is the API's role table, asked for each control shown.
impl Viewer {
    pub(crate) fn may(&self, op: Op) -> bool {
        op.allowed(self.role)
    }

    /// The viewer as the pages of something in `space` show it: with the
    /// role held there.
    pub(crate) fn in_space(&self, space: i64) -> Viewer {
        Viewer { role: self.access.role_in(space), ..self.clone() }
    }

    /// Whether anything of `space` may be seen.
    pub(crate) fn sees(&self, space: i64) -> bool {
        self.access.sees(space)
    }

    /// The spaces whose things a list may show; `None` for all of them.
    pub(crate) fn scope(&self) -> Option<Vec<i64>> {
        if self.access.sees_everything() { None } else { Some(self.access.seen_spaces()) }
    }

    /// Whether the viewer may create stacks somewhere.
    pub(crate) fn writes_somewhere(&self) -> bool {
        Op::Write.allowed(self.access.best())
    }

    /// Whether the viewer is an admin of some space: the policy workbench
    /// replays the decisions about the stacks of those spaces.
    pub(crate) fn admin_somewhere(&self) -> bool {
        Op::ManagePolicies.allowed(self.access.best())
    }

    /// Stacks, variables, contexts and runs.
    pub(crate) fn can_write(&self) -> bool {
        self.may(Op::Write)
    }

    /// The Administration section (users, keys, audit, jobs, System).
    pub(crate) fn is_admin(&self) -> bool {
        self.may(Op::ListUsers)
    }

    /// Whether the viewer may list the git servers of some space.
    pub(crate) fn can_list_vcs(&self) -> bool {
        Op::ListVcs.allowed(self.access.best())
    }

    pub(crate) fn can_manage_state(&self) -> bool {
        self.may(Op::ManageState)
    }

    pub(crate) fn role_name(&self) -> &'static str {
        self.role.as_str()
    }
}

/// The frame around every page: title, navigation, assets.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) title: String,
    /// Which navigation entry is the current page.
    pub(crate) section: &'static str,
    pub(crate) viewer: Option<Viewer>,
    pub(crate) css: &'static str,
    pub(crate) js: &'static str,
    pub(crate) icon: &'static str,
    /// A message from the action that led here.
    pub(crate) flash: Option<Flash>,
    /// Refresh this often without JavaScript (a run still working).
    pub(crate) refresh_secs: Option<u32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Flash {
    pub(crate) class: &'static str,
    pub(crate) text: String,
}

impl Frame {
    pub(crate) fn new(title: impl Into<String>, section: &'static str, viewer: Option<Viewer>) -> Frame {
        let a = crate::assets::paths();
        Frame { title: title.into(), section, viewer, css: a.css, js: a.js, icon: a.icon, flash: None, refresh_secs: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = Utc::now();
        let rel = |s: i64| When::relative_to(now - chrono::Duration::seconds(s), now).rel;
        assert_eq!(rel(3), "just now");
        assert_eq!(rel(60), "1 min ago");
        assert_eq!(rel(50 * 60), "50 min ago");
        assert_eq!(rel(3 * 3600), "3 h ago");
        assert_eq!(rel(3 * 86_400), "3 days ago");
        assert_eq!(rel(-600), "in 10 min");
        assert!(When::relative_to(now, now).abs.ends_with("UTC"));
        assert_eq!(duration(72), "1 min 12 s");
    }
}
