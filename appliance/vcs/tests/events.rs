//! Event parsing against the vendors' own published example payloads
//! (`tests/fixtures/`, sources in `SOURCES.md`), and against everything a hostile
//! or broken sender can put in a body: truncation, garbage, wrong types, missing
//! fields, deep nesting. Parsing must never panic and must name the field.

use std::panic::{AssertUnwindSafe, catch_unwind};

use hangar_vcs::{Event, ParseError, PrAction, ProjectRoot, RefTarget, Touches, Vendor, parse};
use serde_json::{Value, json};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn one(vendor: Vendor, event: &str, path: &str) -> Event {
    let mut events = parse(vendor, event, &fixture(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(events.len(), 1, "{path}: {events:?}");
    events.remove(0)
}

/// Every fixture with the event header its vendor sends with it.
const FIXTURES: &[(Vendor, &str, &str)] = &[
    (Vendor::Github, "push", "github/push-tag-created.json"),
    (Vendor::Github, "push", "github/push-new-branch.json"),
    (Vendor::Github, "push", "github/push-tag-deleted.json"),
    (Vendor::Github, "pull_request", "github/pull_request-opened.json"),
    (Vendor::Github, "pull_request", "github/pull_request-synchronize.json"),
    (Vendor::Github, "ping", "github/ping.json"),
    (Vendor::Gitlab, "Push Hook", "gitlab/push.json"),
    (Vendor::Gitlab, "Tag Push Hook", "gitlab/tag_push.json"),
    (Vendor::Gitlab, "Merge Request Hook", "gitlab/merge_request.json"),
    (Vendor::Gitea, "push", "gitea/push.json"),
    (Vendor::Gitea, "push", "gitea/push-with-files.json"),
    (Vendor::Gitea, "pull_request", "gitea/pull_request-synchronized.json"),
    (Vendor::Bitbucket, "repo:refs_changed", "bitbucket/repo-refs_changed.json"),
    (Vendor::Bitbucket, "pr:opened", "bitbucket/pr-opened.json"),
    (Vendor::Bitbucket, "pr:merged", "bitbucket/pr-merged.json"),
];

// ---- GitHub ----

#[test]
fn github_documented_push_creating_a_tag() {
    let Event::Tag(p) = one(Vendor::Github, "push", "github/push-tag-created.json") else { panic!() };
    assert_eq!(p.target, RefTarget::Tag("simple-tag".into()));
    assert_eq!(p.git_ref, "refs/tags/simple-tag");
    assert!(p.created && !p.deleted);
    assert_eq!(p.before, None);
    assert_eq!(p.after.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    assert_eq!(p.repository.full_name, "Codertocat/Hello-World");
    assert_eq!(p.repository.http_url.as_deref(), Some("https://octocoders.github.io/Codertocat/Hello-World.git"));
    assert_eq!(p.repository.ssh_url.as_deref(), Some("git@octocoders.github.io:Codertocat/Hello-World.git"));
    assert_eq!(p.repository.web_url.as_deref(), Some("https://octocoders.github.io/Codertocat/Hello-World"));
    assert_eq!(p.pusher.as_deref(), Some("Codertocat"));
    assert!(p.repository.matches_url("https://octocoders.github.io/codertocat/hello-world"));
}

#[test]
fn github_push_creating_a_branch_lists_paths_but_not_completely() {
    let Event::Push(p) = one(Vendor::Github, "push", "github/push-new-branch.json") else { panic!() };
    assert_eq!(p.branch(), Some("master"));
    assert!(p.created);
    assert_eq!(p.after.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    assert_eq!(p.changed_paths.iter().collect::<Vec<_>>(), ["README.md"]);
    // A new branch's commit list is not its diff: the caller must ask git.
    assert!(!p.paths_complete);
    assert_eq!(p.touches(&ProjectRoot::new("infra").unwrap()), Touches::Unknown);
    assert_eq!(p.touches(&ProjectRoot::new("").unwrap()), Touches::Yes);
    assert_eq!(p.touches(&ProjectRoot::new("README.md").unwrap()), Touches::Yes);
}

#[test]
fn github_push_deleting_a_tag() {
    let Event::Tag(p) = one(Vendor::Github, "push", "github/push-tag-deleted.json") else { panic!() };
    assert!(p.deleted && !p.created);
    assert_eq!(p.before.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    assert_eq!(p.after, None);
    assert_eq!(p.tag(), Some("simple-tag"));
}

#[test]
fn github_documented_pull_request_opened() {
    let Event::PullRequest(pr) = one(Vendor::Github, "pull_request", "github/pull_request-opened.json") else { panic!() };
    assert_eq!(pr.action, PrAction::Opened);
    assert_eq!(pr.number, 2);
    assert_eq!(pr.head_sha, "14977a7b5485400124827221a04bfb474bcd72d1");
    assert_eq!(pr.head_ref, "changes");
    assert_eq!(pr.base_ref, "master");
    assert_eq!(pr.author.as_deref(), Some("Codertocat"));
    assert_eq!(pr.title.as_deref(), Some("Update the README with new information."));
    assert_eq!(pr.repository.full_name, "Codertocat/Hello-World");
    assert_eq!(pr.head_repository.as_ref().unwrap().full_name, "Codertocat/Hello-World");
    assert_eq!(pr.fetch_ref, "refs/pull/2/head");
}

#[test]
fn github_pull_request_synchronize_is_an_update() {
    let Event::PullRequest(pr) = one(Vendor::Github, "pull_request", "github/pull_request-synchronize.json") else { panic!() };
    assert_eq!(pr.action, PrAction::Updated);
    assert_eq!(pr.head_sha, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
    assert_eq!((pr.head_ref.as_str(), pr.base_ref.as_str()), ("changes", "master"));
}

#[test]
fn github_pull_request_actions_normalize() {
    let mut v: Value = serde_json::from_slice(&fixture("github/pull_request-opened.json")).unwrap();
    for (action, merged, want) in [
        ("closed", true, PrAction::Merged),
        ("closed", false, PrAction::Closed),
        ("reopened", false, PrAction::Reopened),
        ("labeled", false, PrAction::Other("labeled".into())),
    ] {
        v["action"] = json!(action);
        v["pull_request"]["merged"] = json!(merged);
        let events = parse(Vendor::Github, "pull_request", &serde_json::to_vec(&v).unwrap()).unwrap();
        let Event::PullRequest(pr) = &events[0] else { panic!() };
        assert_eq!(pr.action, want, "{action} merged={merged}");
    }
    // A deleted fork leaves head.repo null: still a pull request.
    v["pull_request"]["head"]["repo"] = Value::Null;
    let events = parse(Vendor::Github, "pull_request", &serde_json::to_vec(&v).unwrap()).unwrap();
    let Event::PullRequest(pr) = &events[0] else { panic!() };
    assert!(pr.head_repository.is_none());
}

#[test]
fn github_push_to_an_existing_branch_has_complete_paths_unless_forced_or_cut() {
    let mut v: Value = serde_json::from_slice(&fixture("github/push-new-branch.json")).unwrap();
    v["created"] = json!(false);
    v["before"] = json!("1111111111111111111111111111111111111111");
    v["commits"][0]["modified"] = json!(["infra/prod/main.tf", "./docs//x.md"]);
    v["commits"][0]["removed"] = json!(["old.tf"]);
    let body = serde_json::to_vec(&v).unwrap();
    let Event::Push(p) = &parse(Vendor::Github, "push", &body).unwrap()[0] else { panic!() };
    assert!(p.paths_complete);
    assert_eq!(p.changed_paths.iter().map(String::as_str).collect::<Vec<_>>(), ["README.md", "docs/x.md", "infra/prod/main.tf", "old.tf"]);
    assert_eq!(p.touches(&ProjectRoot::new("infra/prod").unwrap()), Touches::Yes);
    assert_eq!(p.touches(&ProjectRoot::new("infra/staging").unwrap()), Touches::No);
    assert_eq!(p.touches(&ProjectRoot::new("docs").unwrap()), Touches::Yes);

    let mut forced = v.clone();
    forced["forced"] = json!(true);
    let Event::Push(p) = &parse(Vendor::Github, "push", &serde_json::to_vec(&forced).unwrap()).unwrap()[0] else { panic!() };
    assert!(!p.paths_complete, "a forced push's commit list is not the diff");
    assert_eq!(p.touches(&ProjectRoot::new("infra/staging").unwrap()), Touches::Unknown);

    let mut full = v.clone();
    full["commits"] = Value::Array(vec![v["commits"][0].clone(); 2048]);
    let Event::Push(p) = &parse(Vendor::Github, "push", &serde_json::to_vec(&full).unwrap()).unwrap()[0] else { panic!() };
    assert!(!p.paths_complete, "GitHub stops at 2048 commits");

    let mut no_lists = v.clone();
    no_lists["commits"][0].as_object_mut().unwrap().remove("added");
    let Event::Push(p) = &parse(Vendor::Github, "push", &serde_json::to_vec(&no_lists).unwrap()).unwrap()[0] else { panic!() };
    assert!(!p.paths_complete);
}

#[test]
fn github_ping_and_other_events() {
    assert_eq!(one(Vendor::Github, "ping", "github/ping.json"), Event::Ping);
    let events = parse(Vendor::Github, "issues", br#"{"action":"opened"}"#).unwrap();
    assert_eq!(events, [Event::Other { event: "issues".into() }]);
    assert_eq!(events[0].to_string(), "issues (not acted on)");
}

#[test]
fn pushes_to_refs_that_are_neither_branches_nor_tags_are_ignored() {
    let mut v: Value = serde_json::from_slice(&fixture("github/push-new-branch.json")).unwrap();
    v["ref"] = json!("refs/notes/commits");
    let events = parse(Vendor::Github, "push", &serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(events, [Event::Other { event: "push to refs/notes/commits".into() }]);
}

// ---- GitLab ----

#[test]
fn gitlab_documented_push_is_cut_at_twenty_and_says_so() {
    let Event::Push(p) = one(Vendor::Gitlab, "Push Hook", "gitlab/push.json") else { panic!() };
    assert_eq!(p.branch(), Some("master"));
    assert_eq!(p.before.as_deref(), Some("95790bf891e76fee5e1747ab589903a6a1f80f22"));
    assert_eq!(p.after.as_deref(), Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7"));
    assert!(!p.created && !p.deleted);
    assert_eq!(p.repository.full_name, "mike/diaspora");
    assert_eq!(p.repository.http_url.as_deref(), Some("http://example.com/mike/diaspora.git"));
    assert_eq!(p.repository.ssh_url.as_deref(), Some("git@example.com:mike/diaspora.git"));
    assert_eq!(p.repository.web_url.as_deref(), Some("http://example.com/mike/diaspora"));
    assert_eq!(p.pusher.as_deref(), Some("jsmith"));
    assert_eq!(p.changed_paths.iter().map(String::as_str).collect::<Vec<_>>(), ["CHANGELOG", "app/controller/application.rb"]);
    // Two commits listed, total_commits_count 4.
    assert!(!p.paths_complete);
    assert_eq!(p.touches(&ProjectRoot::new("app").unwrap()), Touches::Yes);
    assert_eq!(p.touches(&ProjectRoot::new("infra").unwrap()), Touches::Unknown);
    assert!(p.repository.matches_url("ssh://git@example.com/mike/diaspora.git"));
    assert_eq!(
        Event::Push(p).to_string(),
        "branch master pushed in mike/diaspora: 95790bf891e7 -> da1560886d4f, 2 changed paths listed (not all)"
    );

    let mut v: Value = serde_json::from_slice(&fixture("gitlab/push.json")).unwrap();
    v["total_commits_count"] = json!(2);
    let Event::Push(p) = &parse(Vendor::Gitlab, "Push Hook", &serde_json::to_vec(&v).unwrap()).unwrap()[0] else { panic!() };
    assert!(p.paths_complete);
    assert_eq!(p.touches(&ProjectRoot::new("infra").unwrap()), Touches::No);
}

#[test]
fn gitlab_documented_tag_push() {
    let Event::Tag(p) = one(Vendor::Gitlab, "Tag Push Hook", "gitlab/tag_push.json") else { panic!() };
    assert_eq!(p.tag(), Some("v1.0.0"));
    assert!(p.created);
    assert_eq!(p.after.as_deref(), Some("82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"));
    assert_eq!(p.repository.full_name, "jsmith/example");
    assert_eq!(p.pusher.as_deref(), Some("John Smith"));
}

#[test]
fn gitlab_branch_deletion() {
    let mut v: Value = serde_json::from_slice(&fixture("gitlab/push.json")).unwrap();
    v["after"] = json!("0000000000000000000000000000000000000000");
    v["commits"] = json!([]);
    v["total_commits_count"] = json!(0);
    let events = parse(Vendor::Gitlab, "Push Hook", &serde_json::to_vec(&v).unwrap()).unwrap();
    let Event::BranchDeleted(p) = &events[0] else { panic!("{events:?}") };
    assert_eq!(p.branch(), Some("master"));
    assert_eq!(events[0].to_string(), "branch master deleted in mike/diaspora");
}

#[test]
fn gitlab_documented_merge_request_opened() {
    let Event::PullRequest(pr) = one(Vendor::Gitlab, "Merge Request Hook", "gitlab/merge_request.json") else { panic!() };
    assert_eq!(pr.action, PrAction::Opened);
    assert_eq!(pr.number, 1);
    assert_eq!(pr.head_sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert_eq!(pr.head_ref, "ms-viewport");
    assert_eq!(pr.base_ref, "master");
    assert_eq!(pr.author.as_deref(), Some("root"));
    assert_eq!(pr.title.as_deref(), Some("MS-Viewport"));
    assert_eq!(pr.repository.full_name, "gitlabhq/gitlab-test");
    assert_eq!(pr.head_repository.as_ref().unwrap().full_name, "awesome_space/awesome_project");
    assert_eq!(pr.fetch_ref, "refs/merge-requests/1/head");
}

#[test]
fn gitlab_update_is_new_commits_only_with_oldrev() {
    let mut v: Value = serde_json::from_slice(&fixture("gitlab/merge_request.json")).unwrap();
    let action = |v: &Value| {
        let events = parse(Vendor::Gitlab, "Merge Request Hook", &serde_json::to_vec(v).unwrap()).unwrap();
        let Event::PullRequest(pr) = &events[0] else { panic!() };
        pr.action.clone()
    };
    v["object_attributes"]["action"] = json!("update");
    assert_eq!(action(&v), PrAction::Other("update".into()), "a title change is not new code");
    v["object_attributes"]["oldrev"] = json!("95790bf891e76fee5e1747ab589903a6a1f80f22");
    assert_eq!(action(&v), PrAction::Updated);
    for (a, want) in [("merge", PrAction::Merged), ("close", PrAction::Closed), ("reopen", PrAction::Reopened), ("approved", PrAction::Other("approved".into()))] {
        v["object_attributes"]["action"] = json!(a);
        assert_eq!(action(&v), want);
    }
}

#[test]
fn gitlab_body_kind_must_match_the_unsigned_header() {
    let body = fixture("gitlab/push.json");
    let e = parse(Vendor::Gitlab, "Merge Request Hook", &body).unwrap_err();
    assert_eq!(e.to_string(), "gitlab Merge Request Hook delivery: field object_kind is invalid: does not match the X-Gitlab-Event header");
    let e = parse(Vendor::Gitlab, "Tag Push Hook", &body).unwrap_err();
    assert!(matches!(e, ParseError::Invalid { .. }), "{e}");
    // Through a system hook the body names its own kind.
    let Event::Push(_) = &parse(Vendor::Gitlab, "System Hook", &body).unwrap()[0] else { panic!() };
    let events = parse(Vendor::Gitlab, "Pipeline Hook", br#"{"object_kind":"pipeline"}"#).unwrap();
    assert_eq!(events, [Event::Other { event: "Pipeline Hook".into() }]);
}

// ---- Gitea ----

#[test]
fn gitea_documented_push_has_no_file_lists() {
    let Event::Push(p) = one(Vendor::Gitea, "push", "gitea/push.json") else { panic!() };
    assert_eq!(p.branch(), Some("develop"));
    assert_eq!(p.before.as_deref(), Some("28e1879d029cb852e4844d9c718537df08844e03"));
    assert_eq!(p.after.as_deref(), Some("bffeb74224043ba2feb48d137756c8a9331c449a"));
    assert_eq!(p.repository.full_name, "gitea/webhooks");
    assert_eq!(p.repository.http_url.as_deref(), Some("http://localhost:3000/gitea/webhooks.git"));
    assert_eq!(p.repository.ssh_url.as_deref(), Some("ssh://gitea@localhost:2222/gitea/webhooks.git"));
    assert_eq!(p.repository.web_url.as_deref(), Some("http://localhost:3000/gitea/webhooks"));
    assert_eq!(p.pusher.as_deref(), Some("gitea"));
    assert!(p.changed_paths.is_empty());
    assert!(!p.paths_complete, "the example has no added/modified/removed");
    assert_eq!(p.touches(&ProjectRoot::new("infra").unwrap()), Touches::Unknown);
}

#[test]
fn gitea_push_with_file_lists_and_a_total() {
    let Event::Push(p) = one(Vendor::Gitea, "push", "gitea/push-with-files.json") else { panic!() };
    assert_eq!(p.branch(), Some("main"));
    assert!(p.paths_complete);
    assert_eq!(p.changed_paths.iter().map(String::as_str).collect::<Vec<_>>(), ["README.md", "infra/network/main.tf", "network.tf"]);
    assert_eq!(p.touches(&ProjectRoot::new("infra").unwrap()), Touches::Yes);
    assert_eq!(p.touches(&ProjectRoot::new("modules").unwrap()), Touches::No);
}

#[test]
fn gitea_pull_request_synchronized_is_an_update() {
    let Event::PullRequest(pr) = one(Vendor::Gitea, "pull_request", "gitea/pull_request-synchronized.json") else { panic!() };
    assert_eq!(pr.action, PrAction::Updated);
    assert_eq!(pr.number, 3);
    assert_eq!(pr.head_sha, "bffeb74224043ba2feb48d137756c8a9331c449a");
    assert_eq!((pr.head_ref.as_str(), pr.base_ref.as_str()), ("network-module", "main"));
    assert_eq!(pr.author.as_deref(), Some("gitea"));
    assert_eq!(pr.repository.full_name, "gitea/webhooks");
    assert_eq!(pr.fetch_ref, "refs/pull/3/head");
}

#[test]
fn gitea_delete_event_is_a_branch_deletion() {
    let body = json!({
        "ref": "feature/x", "ref_type": "branch", "pusher_type": "user",
        "repository": {"full_name": "gitea/webhooks", "clone_url": "http://localhost:3000/gitea/webhooks.git"},
        "sender": {"login": "gitea"}
    });
    let events = parse(Vendor::Gitea, "delete", &serde_json::to_vec(&body).unwrap()).unwrap();
    let Event::BranchDeleted(p) = &events[0] else { panic!("{events:?}") };
    assert_eq!(p.git_ref, "refs/heads/feature/x");
    let events = parse(Vendor::Gitea, "create", &serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(events, [Event::Other { event: "create".into() }]);
}

// ---- Bitbucket Data Center ----

#[test]
fn bitbucket_documented_push_needs_git_for_paths() {
    let Event::Push(p) = one(Vendor::Bitbucket, "repo:refs_changed", "bitbucket/repo-refs_changed.json") else { panic!() };
    assert_eq!(p.branch(), Some("master"));
    assert_eq!(p.before.as_deref(), Some("ecddabb624f6f5ba43816f5926e580a5f680a932"));
    assert_eq!(p.after.as_deref(), Some("178864a7d521b6f5e720b386b2c2b0ef8563e0dc"));
    assert_eq!(p.repository.full_name, "PROJ/repository");
    assert_eq!(p.repository.http_url, None, "the documented example has no links");
    assert_eq!(p.pusher.as_deref(), Some("admin"));
    assert!(!p.paths_complete);
    assert_eq!(p.touches(&ProjectRoot::new("infra").unwrap()), Touches::Unknown);
}

#[test]
fn bitbucket_push_of_several_refs_with_clone_links() {
    let mut v: Value = serde_json::from_slice(&fixture("bitbucket/repo-refs_changed.json")).unwrap();
    v["repository"]["links"] = json!({
        "clone": [
            {"href": "ssh://git@bitbucket.example.com:7999/proj/repository.git", "name": "ssh"},
            {"href": "https://bitbucket.example.com/scm/proj/repository.git", "name": "http"}
        ],
        "self": [{"href": "https://bitbucket.example.com/projects/PROJ/repos/repository/browse"}]
    });
    let first = v["changes"][0].clone();
    let mut tag = first.clone();
    tag["ref"] = json!({"id": "refs/tags/v2", "displayId": "v2", "type": "TAG"});
    tag["refId"] = json!("refs/tags/v2");
    tag["fromHash"] = json!("0000000000000000000000000000000000000000");
    tag["type"] = json!("ADD");
    let mut gone = first.clone();
    gone["ref"] = json!({"id": "refs/heads/old", "displayId": "old", "type": "BRANCH"});
    gone["toHash"] = json!("0000000000000000000000000000000000000000");
    gone["type"] = json!("DELETE");
    v["changes"] = json!([first, tag, gone]);
    let events = parse(Vendor::Bitbucket, "repo:refs_changed", &serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(events.iter().map(Event::kind).collect::<Vec<_>>(), ["push", "tag", "branch_deleted"]);
    let Event::Push(p) = &events[0] else { panic!() };
    assert_eq!(p.repository.http_url.as_deref(), Some("https://bitbucket.example.com/scm/proj/repository.git"));
    assert!(p.repository.matches_url("https://bitbucket.example.com/scm/PROJ/repository.git"));
    assert!(p.repository.matches_url("ssh://git@bitbucket.example.com:7999/proj/repository.git"));
}

#[test]
fn bitbucket_documented_pull_requests() {
    let Event::PullRequest(pr) = one(Vendor::Bitbucket, "pr:opened", "bitbucket/pr-opened.json") else { panic!() };
    assert_eq!(pr.action, PrAction::Opened);
    assert_eq!(pr.number, 1);
    assert_eq!(pr.head_sha, "ef8755f06ee4b28c96a847a95cb8ec8ed6ddd1ca");
    assert_eq!((pr.head_ref.as_str(), pr.base_ref.as_str()), ("a-branch", "master"));
    assert_eq!(pr.repository.full_name, "PROJ/repository");
    assert_eq!(pr.author.as_deref(), Some("admin"));
    assert_eq!(pr.title.as_deref(), Some("a new file added"));
    assert_eq!(pr.fetch_ref, "refs/pull-requests/1/from");

    let Event::PullRequest(pr) = one(Vendor::Bitbucket, "pr:merged", "bitbucket/pr-merged.json") else { panic!() };
    assert_eq!(pr.action, PrAction::Merged);
    assert_eq!(pr.number, 9);
    assert_eq!(pr.head_ref, "admin/file-1505781548644");

    let mut v: Value = serde_json::from_slice(&fixture("bitbucket/pr-opened.json")).unwrap();
    for (key, want) in [
        ("pr:from_ref_updated", PrAction::Updated),
        ("pr:declined", PrAction::Closed),
        ("pr:deleted", PrAction::Closed),
        ("pr:modified", PrAction::Other("pr:modified".into())),
    ] {
        v["eventKey"] = json!(key);
        let events = parse(Vendor::Bitbucket, key, &serde_json::to_vec(&v).unwrap()).unwrap();
        let Event::PullRequest(pr) = &events[0] else { panic!() };
        assert_eq!(pr.action, want, "{key}");
    }
    // The header is unsigned; the body's eventKey must agree with it.
    let e = parse(Vendor::Bitbucket, "pr:merged", &fixture("bitbucket/pr-opened.json")).unwrap_err();
    assert_eq!(e.to_string(), "bitbucket pr:merged delivery: field eventKey is invalid: does not match the X-Event-Key header");
    assert_eq!(parse(Vendor::Bitbucket, "diagnostics:ping", b"{\"test\": true}").unwrap(), [Event::Ping]);
}

// ---- hostile and broken bodies ----

fn no_panic(vendor: Vendor, event: &str, body: &[u8]) -> Result<Vec<Event>, ParseError> {
    catch_unwind(AssertUnwindSafe(|| parse(vendor, event, body)))
        .unwrap_or_else(|_| panic!("parse panicked on a {}-byte {vendor} {event} body", body.len()))
}

fn check_error(e: &ParseError, vendor: Vendor) {
    let s = e.to_string();
    assert!(s.starts_with(&format!("{vendor} ")), "{s}");
    assert!(!s.contains('\n'), "one line: {s}");
}

#[test]
fn truncated_bodies_are_errors_never_panics() {
    for (vendor, event, path) in FIXTURES {
        let body = fixture(path);
        // Every cut near both ends, and every 7th byte in between.
        // (A cut that only drops trailing whitespace leaves the whole document.)
        let end = body.trim_ascii_end().len();
        let cuts = (0..end).filter(|&i| i < 300 || i + 300 > end || i % 7 == 0);
        for cut in cuts {
            match no_panic(*vendor, event, &body[..cut]) {
                Err(e) => check_error(&e, *vendor),
                Ok(events) => panic!("{path} cut at {cut} parsed: {events:?}"),
            }
        }
    }
}

/// A small deterministic generator, so a failure is reproducible.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_and_mutated_bodies_are_errors_or_events_never_panics() {
    let mut rng = XorShift(0x5eed_cafe_f00d_1234);
    for (vendor, event, path) in FIXTURES {
        let body = fixture(path);
        for _ in 0..300 {
            let mut b = body.clone();
            for _ in 0..1 + rng.next() % 8 {
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
            if let Err(e) = no_panic(*vendor, event, &b) {
                check_error(&e, *vendor);
            }
        }
        for len in [0usize, 1, 2, 17, 1000] {
            let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let e = no_panic(*vendor, event, &noise).unwrap_err();
            check_error(&e, *vendor);
        }
    }
}

/// Each leaf of each fixture replaced by a value of another type, and each key
/// removed: the result is an event or an error naming a field, never a panic.
#[test]
fn every_field_of_the_wrong_type_or_missing_is_handled() {
    fn leaves(v: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let mut p = path.clone();
                    p.push(k.clone());
                    out.push(p.clone());
                    leaves(c, p, out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate().take(2) {
                    let mut p = path.clone();
                    p.push(i.to_string());
                    leaves(c, p, out);
                }
            }
            _ => {}
        }
    }
    fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
        path.iter().fold(v, |v, k| match v {
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            other => &mut other[k.as_str()],
        })
    }
    let mut errors_naming_fields = 0;
    for (vendor, event, path) in FIXTURES {
        let original: Value = serde_json::from_slice(&fixture(path)).unwrap();
        let mut paths = Vec::new();
        leaves(&original, vec![], &mut paths);
        for p in &paths {
            for replacement in [json!(12345), json!("text"), json!(true), json!([1]), json!({"k": 1}), Value::Null] {
                let mut v = original.clone();
                *at(&mut v, p) = replacement;
                if let Err(e) = no_panic(*vendor, event, &serde_json::to_vec(&v).unwrap()) {
                    check_error(&e, *vendor);
                    if matches!(e, ParseError::Missing { .. } | ParseError::WrongType { .. } | ParseError::Invalid { .. }) {
                        errors_naming_fields += 1;
                    }
                }
            }
            let mut v = original.clone();
            let (last, parent) = p.split_last().unwrap();
            if let Value::Object(m) = at(&mut v, parent) {
                m.remove(last);
            }
            if let Err(e) = no_panic(*vendor, event, &serde_json::to_vec(&v).unwrap()) {
                check_error(&e, *vendor);
            }
        }
    }
    assert!(errors_naming_fields > 100, "mutations of required fields must fail: {errors_naming_fields}");
}

#[test]
fn errors_name_the_field() {
    let mut v: Value = serde_json::from_slice(&fixture("github/pull_request-opened.json")).unwrap();
    v["pull_request"]["head"].as_object_mut().unwrap().remove("sha");
    let e = parse(Vendor::Github, "pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "github pull_request delivery has no field pull_request.head.sha");

    v["pull_request"]["head"]["sha"] = json!(42);
    let e = parse(Vendor::Github, "pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "github pull_request delivery: field pull_request.head.sha is not a string");

    v["pull_request"]["head"]["sha"] = json!("$(reboot)");
    let e = parse(Vendor::Github, "pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "github pull_request delivery: field pull_request.head.sha is invalid: is not a commit id of 40 or 64 hexadecimal digits"
    );

    let mut v: Value = serde_json::from_slice(&fixture("gitlab/push.json")).unwrap();
    v["commits"][1]["modified"] = json!("app/x.rb");
    let e = parse(Vendor::Gitlab, "Push Hook", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "gitlab Push Hook delivery: field commits[1].modified is not an array");

    let mut v: Value = serde_json::from_slice(&fixture("bitbucket/repo-refs_changed.json")).unwrap();
    v["changes"][0]["toHash"] = json!(null);
    let e = parse(Vendor::Bitbucket, "repo:refs_changed", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "bitbucket repo:refs_changed delivery has no field changes[0].toHash");

    let mut v: Value = serde_json::from_slice(&fixture("gitea/pull_request-synchronized.json")).unwrap();
    v["number"] = json!(-3);
    let e = parse(Vendor::Gitea, "pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "gitea pull_request delivery: field number is not a non-negative integer");
}

#[test]
fn hostile_ref_names_and_shapes_are_refused() {
    let mut v: Value = serde_json::from_slice(&fixture("github/push-new-branch.json")).unwrap();
    for bad in ["refs/heads/--upload-pack=evil", "refs/heads/a..b", "refs/heads/x y", "main", "refs/heads/a\nb", "refs/heads/.git"] {
        v["ref"] = json!(bad);
        let e = parse(Vendor::Github, "push", &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "github push delivery: field ref is invalid: is not a valid git ref", "{bad:?}");
    }
    let mut v: Value = serde_json::from_slice(&fixture("github/pull_request-opened.json")).unwrap();
    v["pull_request"]["base"]["ref"] = json!("-x");
    let e = parse(Vendor::Github, "pull_request", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "github pull_request delivery: field pull_request.base.ref is invalid: is not a valid branch name");

    let mut v: Value = serde_json::from_slice(&fixture("github/push-new-branch.json")).unwrap();
    v["before"] = json!("0000000000000000000000000000000000000000");
    v["after"] = json!("0000000000000000000000000000000000000000");
    // A push that moves no ref is a "test delivery" button: a ping.
    assert_eq!(parse(Vendor::Github, "push", &serde_json::to_vec(&v).unwrap()).unwrap(), vec![Event::Ping]);
}

#[test]
fn non_json_bodies_are_told_apart() {
    let e = parse(Vendor::Github, "push", b"payload=%7B%22ref%22%3A%22x%22%7D").unwrap_err();
    assert_eq!(e.to_string(), "github push delivery is form-encoded; set the webhook's content type to application/json");
    let e = parse(Vendor::Github, "push", b"{\"ref\": ").unwrap_err();
    assert_eq!(e.to_string(), "github push delivery is not valid JSON");
    assert!(std::error::Error::source(&e).is_some(), "serde's position is in the cause");
    let e = parse(Vendor::Gitea, "push", b"[1,2,3]").unwrap_err();
    assert_eq!(e.to_string(), "gitea push delivery: field (body) is not a JSON object");
    // Nesting deeper than serde_json's recursion limit is an error, not a stack overflow.
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let e = no_panic(Vendor::Github, "push", deep.as_bytes()).unwrap_err();
    assert!(matches!(e, ParseError::NotJson { .. }), "{e}");
    let e = no_panic(Vendor::Github, "push", b"\xff\xfe{}").unwrap_err();
    assert!(matches!(e, ParseError::NotJson { .. }), "{e}");
}

#[test]
fn every_event_has_a_one_line_description() {
    for (vendor, event, path) in FIXTURES {
        for e in parse(*vendor, event, &fixture(path)).unwrap() {
            let line = e.to_string();
            assert!(!line.is_empty() && !line.contains('\n'), "{path}: {line:?}");
        }
    }
    let Event::PullRequest(pr) = one(Vendor::Github, "pull_request", "github/pull_request-opened.json") else { panic!() };
    assert_eq!(
        Event::PullRequest(pr).to_string(),
        "pull request #2 opened in Codertocat/Hello-World: changes -> master at 14977a7b5485"
    );
}
