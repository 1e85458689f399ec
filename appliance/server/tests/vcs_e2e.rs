//! VCS integrations end to end, every part real and separate: `hangar server`
//! with its broker, `hangar drain` (and `hangar scheduler` for polling), a
//! worker host running `hangar-worker run` with Terraform 1.0.3, a git server
//! taking `git push`, the test posting what GitHub sends for each push (signed
//! as GitHub signs), and a status receiver speaking GitHub's commit-status API
//! over HTTPS. No run is moved by the test: the worker takes each one to its
//! end, and the statuses the git server receives follow.

mod common;
mod fleet;
mod vcs_support;


use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use fleet::{CONFIG, Fleet, FleetOptions, SOON};
use hangar_testkit::{GitServer, wait_for};
use serde_json::{Value, json};
use vcs_support::*;

const SECRET: &str = "e2e-webhook-secret";

/// The stack's configuration with another default greeting, so that a plan
/// shows a change.
fn config_saying(greeting: &str) -> String {
    CONFIG.replace("default = \"hello\"", &format!("default = \"{greeting}\""))
}

async fn post_push(fleet: &Fleet, git: &GitServer, delivery: &str, before: &str, after: &str, paths: &[&str]) -> Value {
    let body = serde_json::to_vec(&github_push(&git.url("net"), "org/net", "main", before, after, paths)).unwrap();
    let (status, answer) = post_github(&fleet.app, "ghe", "push", delivery, &body, Some(SECRET)).await;
    assert_eq!(status, 202, "{answer}");
    processed(&fleet.app, &fleet.admin, "ghe", delivery).await
}

async fn post_pr(fleet: &Fleet, git: &GitServer, delivery: &str, action: &str, head: &str) -> Value {
    let body = serde_json::to_vec(&github_pull_request(&git.url("net"), "org/net", action, 7, "feature", head, "main")).unwrap();
    let (status, answer) = post_github(&fleet.app, "ghe", "pull_request", delivery, &body, Some(SECRET)).await;
    assert_eq!(status, 202, "{answer}");
    processed(&fleet.app, &fleet.admin, "ghe", delivery).await
}

fn run_id(delivery: &Value) -> String {
    assert_eq!(delivery["outcome"], "RUNS_CREATED", "{delivery}");
    let ids = delivery["runIds"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{delivery}");
    ids[0].as_str().unwrap().to_string()
}

async fn wait_statuses(receiver: &StatusReceiver, sha: &str, last: &str) -> Vec<String> {
    wait_for(&format!("a {last} status for {sha}"), SOON, || async {
        let s = receiver.states_for(sha);
        (s.last().map(String::as_str) == Some(last)).then_some(s)
    })
    .await
}

/// The appliance with a GitHub integration whose commit statuses go to a
/// receiver (which refuses the first with 503: the drain retries), and stack
/// `net` on a repository holding the Terraform configuration under `infra/`.
/// Returns the repository's first commit.
async fn github_fleet() -> (Fleet, GitServer, StatusReceiver, String) {
    let fleet = Fleet::start().await;
    let git = GitServer::start().await;
    git.create_repo("net");
    let first = git.push_files("net", "main", &[("infra/main.tf", CONFIG), ("README.md", "net\n")], "a stack");
    let receiver = StatusReceiver::start(&fleet.app.dir.path().join("status-pki"), 1).await;
    fleet
        .ok(
            CREATE_INTEGRATION,
            json!({ "i": { "name": "ghe", "kind": "GITHUB", "baseUrl": receiver.base_url, "token": "ghs_status_token",
                            "webhookSecret": SECRET, "caPem": receiver.ca_pem } }),
        )
        .await;
    fleet.create_stack("net", &git.url("net"), "builders", json!({})).await;
    fleet.ok(LINK, json!({ "s": "net", "i": "ghe" })).await;
    (fleet, git, receiver, first)
}

fn no_secret_in_logs(fleet: &Fleet, worker: &hangar_testkit::ChildProcess) {
    let logs = format!("{}{}{}", worker.output(), fleet.app.server_log(), fleet.drain.as_ref().unwrap().output());
    assert!(!logs.contains(SECRET) && !logs.contains("ghs_status_token"), "a secret reached a log");
}

#[tokio::test]
async fn a_pushed_commit_is_planned_and_applied_by_a_worker_and_its_statuses_reach_the_git_server() {
    let (fleet, git, receiver, first) = github_fleet().await;
    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    // A push that touches nothing under the project root: ignored, and the
    // delivery log says why.
    let docs = git.push_files("net", "main", &[("README.md", "more about net\n")], "docs");
    let d = post_push(&fleet, &git, "push-docs", &first, &docs, &["README.md"]).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("changes nothing under infra"), "{d}");

    // A push under the project root: a tracked run at the pushed commit, which
    // the worker plans, waits for confirmation, applies.
    let change = git.push_files("net", "main", &[("infra/main.tf", &config_saying("hi"))], "greet shorter");
    let run = run_id(&post_push(&fleet, &git, "push-change", &docs, &change, &["infra/main.tf"]).await);
    fleet.wait_state(&run, "UNCONFIRMED", &[&worker]).await;
    wait_statuses(&receiver, &change, "pending").await;
    fleet.ok("mutation($id: ID!) { confirmRun(id: $id) { state } }", json!({ "id": run })).await;
    fleet.wait_state(&run, "FINISHED", &[&worker]).await;
    assert_eq!(
        fleet.history(&run).await,
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "UNCONFIRMED", "CONFIRMED", "APPLYING", "FINISHED"]
    );
    assert_eq!(fleet.state_versions("net").await, 1);
    let states = wait_statuses(&receiver, &change, "success").await;
    assert!(states.iter().all(|s| s == "pending" || s == "success"), "{states:?}");
    let reqs = receiver.requests.lock().unwrap().clone();
    let last = reqs.iter().rev().find(|r| r.path.ends_with(&change)).unwrap();
    assert_eq!(last.path, format!("/api/v3/repos/org/net/statuses/{change}"));
    assert_eq!(last.authorization.as_deref(), Some("Bearer ghs_status_token"));
    assert_eq!(last.body["context"], "hangar/net");
    assert_eq!(last.body["target_url"], format!("{}/runs/{run}", fleet.app.url("")));
    no_secret_in_logs(&fleet, &worker);
}

#[tokio::test]
async fn pull_requests_are_planned_by_a_worker_and_a_newer_push_cancels_the_older_plan() {
    let (fleet, git, receiver, _) = github_fleet().await;

    // Before any worker is up, so that nothing here races one: a proposed run
    // at the pull request's head; a newer push to it cancels the older run,
    // and the same head announced again makes no second run.
    let feature = git.working_copy("net", fleet.files.path());
    feature.git(&["checkout", "--quiet", "-b", "feature", "origin/main"]);
    let f1 = feature.commit(&[("infra/main.tf", &config_saying("bonjour"))], "french", false);
    feature.push("feature", false);
    let p1 = run_id(&post_pr(&fleet, &git, "pr-1", "opened", &f1).await);
    let f2 = feature.commit(&[("infra/main.tf", &config_saying("hola"))], "spanish", false);
    feature.push("feature", false);
    let d = post_pr(&fleet, &git, "pr-2", "synchronize", &f2).await;
    let p2 = run_id(&d);
    assert!(d["detail"].as_str().unwrap().contains(&format!("proposed run {p1} canceled")), "{d}");
    assert_eq!(fleet.run(&p1).await.0, "CANCELED");
    let d = post_pr(&fleet, &git, "pr-2-again", "synchronize", &f2).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("already plans"), "{d}");
    // The canceled run's commit ends as "error" (GitHub's word for it).
    wait_statuses(&receiver, &f1, "error").await;

    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.wait_workers("builders", "idle", 1).await;

    // The proposed run plans on the worker and finishes without applying.
    fleet.wait_state(&p2, "FINISHED", &[&worker]).await;
    assert_eq!(fleet.history(&p2).await, ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "FINISHED"]);
    let states = wait_statuses(&receiver, &f2, "success").await;
    assert!(states.iter().all(|s| s == "pending" || s == "success"), "{states:?}");
    assert_eq!(fleet.state_versions("net").await, 0, "a proposed run wrote state");

    // A pull request whose configuration Terraform refuses: its plan fails on
    // the worker and the pull request's head shows a failure.
    let broken = feature.commit(&[("infra/main.tf", "output \"x\" {\n  value = \n")], "broken", false);
    feature.push("feature", false);
    let p3 = run_id(&post_pr(&fleet, &git, "pr-3", "synchronize", &broken).await);
    wait_for(&format!("run {p3} to fail"), SOON, || async { (fleet.run(&p3).await.0 == "FAILED").then_some(()) }).await;
    wait_statuses(&receiver, &broken, "failure").await;
    no_secret_in_logs(&fleet, &worker);
}

#[tokio::test]
async fn polling_picks_up_a_push_within_its_interval_and_the_worker_runs_it() {
    let mut fleet = Fleet::start_with(FleetOptions::default()).await;
    let git = GitServer::start().await;
    git.create_repo("net");
    git.push_files("net", "main", &[("infra/main.tf", CONFIG)], "a stack");
    // The shortest interval the configuration allows; the drain restarts to
    // read it and the scheduler starts with it.
    fleet.drain = None;
    let mut cfg = std::fs::read_to_string(&fleet.app.config).unwrap();
    cfg.push_str("\n[vcs]\npoll_interval_secs = 10\nls_remote_timeout_secs = 5\n");
    std::fs::write(&fleet.app.config, cfg).unwrap();

    let created = fleet
        .ok(CREATE_INTEGRATION, json!({ "i": { "name": "plain", "kind": "GIT", "baseUrl": git.base_url() } }))
        .await;
    assert!(created["createVcsIntegration"]["webhookPath"].is_null());
    fleet.create_stack("polled", &git.url("net"), "builders", json!({ "autodeploy": true })).await;
    fleet.ok(LINK, json!({ "s": "polled", "i": "plain" })).await;
    let config = fleet.join_worker("builders", "host-a").await;
    let worker = fleet.run_worker(&config, "host-a");
    fleet.drain = Some(fleet.spawn_hangar("drain"));
    fleet.scheduler = Some(fleet.spawn_hangar("scheduler"));
    fleet.wait_workers("builders", "idle", 1).await;

    // The first listing is the baseline: what was there before makes no run.
    wait_for("the first poll", SOON, || async {
        let mut c = fleet.app.pg.database().connect().await.unwrap();
        let n: i64 = hangar_db::schema::vcs_poll_heads::table.count().get_result(&mut c).await.unwrap();
        (n > 0).then_some(())
    })
    .await;
    assert!(runs_of_stack(&fleet.app, "polled").await.is_empty());

    // A polled push carries no file list: git decides, and one outside the
    // project root is only recorded.
    let docs = git.push_files("net", "main", &[("README.md", "net\n")], "docs");
    let ignored = wait_for("the poll to find the README push", SOON, || async {
        let log = fleet.ok(DELIVERIES, json!({ "i": "plain" })).await;
        log["webhookDeliveries"].as_array().unwrap().iter().find(|d| d["event"] == "poll").cloned()
    })
    .await;
    assert_eq!(ignored["outcome"], "IGNORED", "{ignored}");
    assert!(ignored["detail"].as_str().unwrap().contains("changes nothing under infra (git diff since"), "{ignored}");
    assert!(ignored["deliveryId"].as_str().unwrap().contains(&docs[..12]), "{ignored}");
    assert!(runs_of_stack(&fleet.app, "polled").await.is_empty());

    let pushed = git.push_files("net", "main", &[("infra/main.tf", &config_saying("hi"))], "greet shorter");
    let found = wait_for("a run at the pushed commit", SOON, || async {
        runs_of_stack(&fleet.app, "polled").await.into_iter().find(|r| r.3 == pushed)
    })
    .await;
    assert_eq!(found.1, "tracked");
    let id = found.0.to_string();
    // Autodeploy: the worker plans and applies without waiting.
    fleet.wait_state(&id, "FINISHED", &[&worker]).await;
    let history = fleet.history(&id).await;
    assert!(history.iter().any(|s| s == "APPLYING") && !history.iter().any(|s| s == "UNCONFIRMED"), "{history:?}");
    assert_eq!(fleet.state_versions("polled").await, 1);
    let log = fleet.ok(DELIVERIES, json!({ "i": "plain" })).await;
    let d = log["webhookDeliveries"].as_array().unwrap().iter().find(|d| d["outcome"] == "RUNS_CREATED").unwrap();
    assert_eq!(d["event"], "poll", "{log}");
    assert!(d["detail"].as_str().unwrap().contains("1 changed path under infra"), "{log}");
    assert_eq!(runs_of_stack(&fleet.app, "polled").await.len(), 1, "one push, one run");
}
