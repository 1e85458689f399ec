//! VCS integrations end to end: `hangar server`, `hangar drain` and `hangar
//! scheduler` as processes, a real git server taking `git push`, the test
//! posting what GitHub would send for each push (signed as GitHub signs), and a
//! status receiver speaking GitHub's commit-status API over HTTPS.
//!
//! The test plays the worker by moving runs with `hangar_db::runs` (the worker
//! API is exercised by the worker's own tests); what is proved here is the path
//! from a push to a run and from a run's states back to the git server.

mod common;
mod vcs_support;

use std::time::Duration;

use common::*;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::runs;
use hangar_testkit::{GitServer, wait_for};
use hangar_types::RunState;
use serde_json::json;
use vcs_support::*;

const SECRET: &str = "e2e-webhook-secret";

async fn push_event(app: &Appliance, git: &GitServer, delivery: &str, before: &str, after: &str, paths: &[&str]) {
    let body = serde_json::to_vec(&github_push(&git.url("infra"), "org/infra", "main", before, after, paths)).unwrap();
    let (status, answer) = post_github(app, "ghe", "push", delivery, &body, Some(SECRET)).await;
    assert_eq!(status, 202, "{answer}");
}

async fn pr_event(app: &Appliance, git: &GitServer, delivery: &str, action: &str, head: &str) {
    let body = serde_json::to_vec(&github_pull_request(&git.url("infra"), "org/infra", action, 7, "feature", head, "main")).unwrap();
    let (status, answer) = post_github(app, "ghe", "pull_request", delivery, &body, Some(SECRET)).await;
    assert_eq!(status, 202, "{answer}");
}

async fn state_of(app: &Appliance, run: i64) -> RunState {
    let mut c = app.pg.database().connect().await.unwrap();
    runs::get(&mut c, run).await.unwrap().unwrap().state()
}

async fn wait_state(app: &Appliance, run: i64, want: RunState) {
    wait_for(&format!("run {run} to be {want:?}"), Duration::from_secs(30), || async {
        (state_of(app, run).await == want).then_some(())
    })
    .await
}

async fn advance(app: &Appliance, run: i64, path: &[RunState]) {
    let mut c = app.pg.database().connect().await.unwrap();
    for to in path {
        runs::transition(&mut c, run, None, *to, "test worker", "worker:1").await.unwrap();
    }
}

async fn wait_statuses(receiver: &StatusReceiver, sha: &str, last: &str) -> Vec<String> {
    wait_for(&format!("a {last} status for {sha}"), Duration::from_secs(60), || async {
        let s = receiver.states_for(sha);
        (s.last().map(String::as_str) == Some(last)).then_some(s)
    })
    .await
}

#[tokio::test]
async fn pushes_and_pull_requests_make_runs_whose_statuses_reach_the_git_server() {
    let app = Appliance::start().await;
    let git = GitServer::start().await;
    git.create_repo("infra");
    let first = git.push_files("infra", "main", &[("stack/main.tf", "terraform {}\n"), ("README.md", "infra\n")], "first");
    // The git server refuses the first status with 503: the drain retries.
    let receiver = StatusReceiver::start(&app.dir.path().join("status-pki"), 1).await;

    let admin = app.admin_token().await;
    app.ok(
        &admin,
        CREATE_INTEGRATION,
        json!({ "i": { "name": "ghe", "kind": "GITHUB", "baseUrl": receiver.base_url, "token": "ghs_status_token",
                        "webhookSecret": SECRET, "caPem": receiver.ca_pem } }),
    )
    .await;
    let mut stack = stack_input("net", &git.url("infra"));
    stack["projectRoot"] = json!("stack");
    app.ok(&admin, CREATE_STACK, json!({ "i": stack })).await;
    app.ok(&admin, LINK, json!({ "s": "net", "i": "ghe" })).await;
    let _drain = spawn(&app, "drain");

    // A push under the project root: a tracked run at the pushed commit.
    let second = git.push_files("infra", "main", &[("stack/main.tf", "terraform { }\n")], "second");
    push_event(&app, &git, "push-1", &first, &second, &["stack/main.tf"]).await;
    let d = processed(&app, &admin, "ghe", "push-1").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let run: i64 = d["runIds"][0].as_str().unwrap().parse().unwrap();
    let all = runs_of_stack(&app, "net").await;
    assert_eq!(all, vec![(run, "tracked".to_string(), all[0].2.clone(), second.clone())]);

    // Its states go back to the git server as commit statuses, the run never
    // waiting for them.
    wait_state(&app, run, RunState::Ready).await;
    advance(&app, run, &[RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Finished]).await;
    let states = wait_statuses(&receiver, &second, "success").await;
    assert!(states.iter().all(|s| s == "pending" || s == "success"), "{states:?}");
    let reqs = receiver.requests.lock().unwrap().clone();
    let last = reqs.iter().rev().find(|r| r.path.ends_with(&second)).unwrap();
    assert_eq!(last.path, format!("/api/v3/repos/org/infra/statuses/{second}"));
    assert_eq!(last.authorization.as_deref(), Some("Bearer ghs_status_token"));
    assert_eq!(last.body["context"], "hangar/net");
    assert_eq!(last.body["target_url"], format!("{}/runs/{run}", app.url("")));

    // A push that touches nothing under the project root: ignored, and the
    // delivery log says why.
    let third = git.push_files("infra", "main", &[("README.md", "more\n")], "docs");
    push_event(&app, &git, "push-2", &second, &third, &["README.md"]).await;
    let d = processed(&app, &admin, "ghe", "push-2").await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("changes nothing under stack"), "{d}");

    // A pull request: a proposed run at its head; a newer push to it cancels
    // the older run and plans the new head.
    let f1 = git.push_files("infra", "feature", &[("stack/extra.tf", "# one\n")], "feature 1");
    pr_event(&app, &git, "pr-1", "opened", &f1).await;
    let d = processed(&app, &admin, "ghe", "pr-1").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let p1: i64 = d["runIds"][0].as_str().unwrap().parse().unwrap();
    let f2 = git.push_files("infra", "feature", &[("stack/extra.tf", "# two\n")], "feature 2");
    pr_event(&app, &git, "pr-2", "synchronize", &f2).await;
    let d = processed(&app, &admin, "ghe", "pr-2").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let p2: i64 = d["runIds"][0].as_str().unwrap().parse().unwrap();
    assert!(d["detail"].as_str().unwrap().contains(&format!("proposed run {p1} canceled")), "{d}");
    assert_eq!(state_of(&app, p1).await, RunState::Canceled);
    let proposed: Vec<_> = runs_of_stack(&app, "net").await.into_iter().filter(|r| r.1 == "proposed").collect();
    assert_eq!(proposed.iter().map(|r| (r.0, r.3.clone())).collect::<Vec<_>>(), vec![(p1, f1.clone()), (p2, f2.clone())]);
    // The canceled run's commit ends as "error" (GitHub's word for stopped).
    wait_statuses(&receiver, &f1, "error").await;
    // A failing plan shows as a failure on the pull request's head.
    wait_state(&app, p2, RunState::Ready).await;
    advance(&app, p2, &[RunState::Preparing, RunState::Failed]).await;
    wait_statuses(&receiver, &f2, "failure").await;

    // The same pull request event again (a new delivery id): no second run.
    pr_event(&app, &git, "pr-3", "synchronize", &f2).await;
    let d = processed(&app, &admin, "ghe", "pr-3").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "a failed run does not block a new plan: {d}");
    let again = runs_of_stack(&app, "net").await.len();
    pr_event(&app, &git, "pr-4", "synchronize", &f2).await;
    let d = processed(&app, &admin, "ghe", "pr-4").await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("already plans"), "{d}");
    assert_eq!(runs_of_stack(&app, "net").await.len(), again);
}

#[tokio::test]
async fn polling_picks_up_a_push_without_any_webhook() {
    let app = Appliance::start().await;
    let git = GitServer::start().await;
    git.create_repo("infra");
    git.push_files("infra", "main", &[("main.tf", "terraform {}\n")], "first");
    // The shortest interval the configuration allows.
    let mut cfg = std::fs::read_to_string(&app.config).unwrap();
    cfg.push_str("\n[vcs]\npoll_interval_secs = 10\nls_remote_timeout_secs = 5\n");
    std::fs::write(&app.config, cfg).unwrap();

    let admin = app.admin_token().await;
    let created = app
        .ok(&admin, CREATE_INTEGRATION, json!({ "i": { "name": "plain", "kind": "GIT", "baseUrl": git.base_url() } }))
        .await;
    assert!(created["createVcsIntegration"]["webhookPath"].is_null());
    app.ok(&admin, CREATE_STACK, json!({ "i": stack_input("polled", &git.url("infra")) })).await;
    app.ok(&admin, LINK, json!({ "s": "polled", "i": "plain" })).await;
    let _drain = spawn(&app, "drain");
    let _scheduler = spawn(&app, "scheduler");

    // The first listing is the baseline: what was there before makes no run.
    wait_for("the first poll", Duration::from_secs(60), || async {
        let mut c = app.pg.database().connect().await.unwrap();
        let n: i64 = hangar_db::schema::vcs_poll_heads::table.count().get_result(&mut c).await.unwrap();
        (n > 0).then_some(())
    })
    .await;
    assert!(runs_of_stack(&app, "polled").await.is_empty());

    let pushed = git.push_files("infra", "main", &[("main.tf", "terraform { }\n")], "second");
    let found = wait_for("a run at the pushed commit", Duration::from_secs(60), || async {
        runs_of_stack(&app, "polled").await.into_iter().find(|r| r.3 == pushed)
    })
    .await;
    assert_eq!(found.1, "tracked");
    let log = app.ok(&admin, DELIVERIES, json!({ "i": "plain" })).await;
    let d = &log["webhookDeliveries"][0];
    assert_eq!(d["event"], "poll", "{log}");
    assert_eq!(d["outcome"], "RUNS_CREATED", "{log}");
    assert_eq!(runs_of_stack(&app, "polled").await.len(), 1, "one push, one run");
}
