//! `POST /webhooks/{gitlab,gitea,forgejo,bitbucket}/{integration}` through
//! `hangar server`, with `hangar drain` running: each vendor's published
//! example delivery (the parsers' fixtures), signed as that vendor signs it,
//! makes its run; the hostile deliveries (no, wrong or malformed signature, a
//! body signed for another, GitLab's signed timestamps more than five minutes
//! off, a replay, 26 MiB, invalid JSON, an unknown integration) are refused
//! with the vendor's status and leave no job and no run; a repository no stack
//! uses is recorded and makes no run.

mod common;
mod vcs_support;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use hangar_testkit::GitServer;
use serde_json::{Value, json};
use vcs_support::*;

const LAB_TOKEN: &str = "gitlab-secret-token";
/// A GitLab signing token: `whsec_` and the base64 of a 32-byte key.
const LAB_SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TEA_SECRET: &str = "gitea-hmac-secret";
const BB_SECRET: &str = "bitbucket-hmac-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn integration(app: &Appliance, admin: &str, name: &str, kind: &str, secret: &str) {
    app.ok(
        admin,
        CREATE_INTEGRATION,
        json!({ "i": { "name": name, "kind": kind, "baseUrl": "https://git.example.test", "webhookSecret": secret } }),
    )
    .await;
}

async fn linked_stack(app: &Appliance, admin: &str, slug: &str, repository: &str, branch: &str, integration: &str) {
    let mut stack = stack_input(slug, repository);
    stack["branch"] = json!(branch);
    app.ok(admin, CREATE_STACK, json!({ "i": stack })).await;
    app.ok(admin, LINK, json!({ "s": slug, "i": integration })).await;
}

/// `headers` with `name` removed.
fn without(headers: &[(String, String)], name: &str) -> Vec<(String, String)> {
    headers.iter().filter(|(k, _)| k != name).cloned().collect()
}

/// `headers` with `name` set to `value`.
fn with(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut h = without(headers, name);
    h.push((name.into(), value.into()));
    h
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// The refusals every vendor shares, for a delivery `sign` signs: a body
/// signed for another body, invalid JSON, a 26 MiB body (declared), an unknown
/// integration. None may enqueue anything.
async fn common_refusals(app: &Appliance, path: &str, unknown_path: &str, body: &[u8], sign: impl Fn(&str, &[u8]) -> Vec<(String, String)>) {
    let mut tampered = body.to_vec();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b' ' { b'\t' } else { b' ' };
    assert_eq!(post_with(app, path, &sign("x-tampered", body), &tampered).await.0, 401, "{path}: tampered");
    let junk = b"{\"ref\": ";
    assert_eq!(post_with(app, path, &sign("x-json", junk), junk).await.0, 400, "{path}: invalid JSON");
    assert_eq!(post_with(app, path, &sign("x-array", b"[1]"), b"[1]").await.0, 400, "{path}: not an object");
    let big = sign("x-big", b"");
    let refs: Vec<(&str, &str)> = big.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let line = status_for_declared_length(app, path, &refs, 26 * 1024 * 1024).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{path}: {line}");
    assert_eq!(post_with(app, unknown_path, &sign("x-404", body), body).await.0, 404, "{unknown_path}");
}

#[tokio::test]
async fn gitlab_deliveries_are_verified_by_token_and_by_signature_with_its_five_minute_rule() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    integration(&app, &admin, "lab", "GITLAB", LAB_TOKEN).await;
    integration(&app, &admin, "labsig", "GITLAB", LAB_SIGNING).await;
    let push = fixture("gitlab/push.json");
    let repo = push["project"]["git_http_url"].as_str().unwrap().to_string();
    linked_stack(&app, &admin, "diaspora", &repo, "master", "lab").await;
    linked_stack(&app, &admin, "diaspora-signed", &repo, "master", "labsig").await;
    let mr = fixture("gitlab/merge_request.json");
    let target = mr["object_attributes"]["target_branch"].as_str().unwrap();
    linked_stack(&app, &admin, "gitlab-test", mr["project"]["git_http_url"].as_str().unwrap(), target, "labsig").await;
    let _drain = spawn(&app, "drain");
    let body = bytes(&push);

    // The secret token.
    let ok = gitlab_token_headers(LAB_TOKEN, "l-1", "Push Hook");
    assert_eq!(post_with(&app, "/webhooks/gitlab/lab", &without(&ok, "x-gitlab-token"), &body).await.0, 401);
    assert_eq!(post_with(&app, "/webhooks/gitlab/lab", &with(&ok, "x-gitlab-token", "wrong"), &body).await.0, 401);
    // The token of the signing integration is not a token.
    assert_eq!(post_with(&app, "/webhooks/gitlab/labsig", &with(&ok, "x-gitlab-token", LAB_SIGNING), &body).await.0, 401);
    let token_sign = |id: &str, _: &[u8]| gitlab_token_headers(LAB_TOKEN, id, "Push Hook");
    // A token does not cover the body, so a changed body is GitLab's own: only
    // invalid JSON, size and the unknown integration are refused.
    let junk = b"{\"ref\": ";
    assert_eq!(post_with(&app, "/webhooks/gitlab/lab", &token_sign("l-json", junk), junk).await.0, 400);
    let big = token_sign("l-big", b"");
    let refs: Vec<(&str, &str)> = big.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(status_for_declared_length(&app, "/webhooks/gitlab/lab", &refs, 26 * 1024 * 1024).await.starts_with("HTTP/1.1 413"));
    assert_eq!(post_with(&app, "/webhooks/gitlab/nope", &ok, &body).await.0, 404);
    assert_eq!(delivery_jobs(&app).await, 0, "a refused delivery enqueued a job");

    let (status, answer) = post_with(&app, "/webhooks/gitlab/lab", &ok, &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(post_with(&app, "/webhooks/gitlab/lab", &ok, &body).await.0, 200, "a redelivery is a duplicate");
    let d = processed(&app, &admin, "lab", "l-1").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let runs = runs_of_stack(&app, "diaspora").await;
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].1.as_str(), runs[0].3.as_str()), ("tracked", push["after"].as_str().unwrap()));

    // The signing token: `webhook-signature` over id.timestamp.body.
    let t = now();
    let signed = gitlab_signed_headers(LAB_SIGNING, "s-1", t, "Push Hook", &body);
    let path = "/webhooks/gitlab/labsig";
    assert_eq!(post_with(&app, path, &without(&signed, "webhook-signature"), &body).await.0, 401, "unsigned");
    let other_key = gitlab_signed_headers("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "s-1", t, "Push Hook", &body);
    assert_eq!(post_with(&app, path, &other_key, &body).await.0, 401, "another key");
    assert_eq!(post_with(&app, path, &with(&signed, "webhook-signature", "v1,not base64!"), &body).await.0, 400);
    assert_eq!(post_with(&app, path, &with(&signed, "webhook-signature", "v2,AAAA"), &body).await.0, 400);
    // The id and the timestamp are signed: neither can be changed.
    assert_eq!(post_with(&app, path, &with(&signed, "webhook-id", "s-2"), &body).await.0, 401, "another id");
    assert_eq!(post_with(&app, path, &with(&signed, "webhook-timestamp", &(t + 1).to_string()), &body).await.0, 401);
    assert_eq!(post_with(&app, path, &without(&signed, "webhook-timestamp"), &body).await.0, 400);
    assert_eq!(post_with(&app, path, &with(&signed, "webhook-timestamp", "yesterday"), &body).await.0, 400);
    // More than five minutes off either way, though correctly signed: a replay
    // or a clock to fix.
    for (id, at) in [("s-old", t - 6 * 60), ("s-future", t + 6 * 60)] {
        let h = gitlab_signed_headers(LAB_SIGNING, id, at, "Push Hook", &body);
        let (status, answer) = post_with(&app, path, &h, &body).await;
        assert_eq!(status, 401, "{id}: {answer}");
        assert_eq!(answer["error"]["code"], "UNAUTHENTICATED", "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap_or_default().contains("timestamp"), "{answer}");
    }
    common_refusals(&app, path, "/webhooks/gitlab/nothing", &body, |id, b| gitlab_signed_headers(LAB_SIGNING, id, now(), "Push Hook", b)).await;
    assert_eq!(delivery_jobs(&app).await, 1, "a refused delivery enqueued a job");

    // Four minutes old is within the rule; the same delivery replayed is
    // answered but acted on once.
    let fresh = gitlab_signed_headers(LAB_SIGNING, "s-1", t - 4 * 60, "Push Hook", &body);
    assert_eq!(post_with(&app, path, &fresh, &body).await.0, 202);
    assert_eq!(post_with(&app, path, &fresh, &body).await.0, 200);
    assert_eq!(processed(&app, &admin, "labsig", "s-1").await["outcome"], "RUNS_CREATED");
    assert_eq!(runs_of_stack(&app, "diaspora-signed").await.len(), 1);

    // The merge request example: a proposed run at its head.
    let mr_body = bytes(&mr);
    let h = gitlab_signed_headers(LAB_SIGNING, "s-mr", now(), "Merge Request Hook", &mr_body);
    assert_eq!(post_with(&app, path, &h, &mr_body).await.0, 202);
    let d = processed(&app, &admin, "labsig", "s-mr").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let runs = runs_of_stack(&app, "gitlab-test").await;
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].1.as_str(), runs[0].3.as_str()), ("proposed", mr["object_attributes"]["last_commit"]["id"].as_str().unwrap()));

    // A repository no stack uses: recorded, no run.
    let mut elsewhere = push.clone();
    for key in ["git_http_url", "git_ssh_url", "web_url", "url", "http_url", "ssh_url", "homepage"] {
        for obj in ["project", "repository"] {
            if elsewhere[obj].get(key).is_some() {
                elsewhere[obj][key] = json!("https://git.example.test/someone/else.git");
            }
        }
    }
    let b = bytes(&elsewhere);
    assert_eq!(post_with(&app, path, &gitlab_signed_headers(LAB_SIGNING, "s-else", now(), "Push Hook", &b), &b).await.0, 202);
    let d = processed(&app, &admin, "labsig", "s-else").await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("no stack linked to labsig uses this repository"), "{d}");
    assert_eq!(all_runs(&app).await, 3);
}

#[tokio::test]
async fn gitea_forgejo_and_bitbucket_deliveries_are_verified_as_each_signs() {
    let app = Appliance::start().await;
    let admin = app.admin_token().await;
    integration(&app, &admin, "tea", "GITEA", TEA_SECRET).await;
    integration(&app, &admin, "bb", "BITBUCKET", BB_SECRET).await;
    let push = fixture("gitea/push-with-files.json");
    linked_stack(&app, &admin, "webhooks", push["repository"]["clone_url"].as_str().unwrap(), "main", "tea").await;
    // Bitbucket pushes carry no file list: the drain asks git, so the
    // repository is a real one.
    let git = GitServer::start().await;
    git.create_repo("net");
    let first = git.push_files("net", "master", &[("main.tf", "# v1\n")], "first");
    let second = git.push_files("net", "master", &[("main.tf", "# v2\n")], "second");
    linked_stack(&app, &admin, "net", &git.url("net"), "master", "bb").await;
    let _drain = spawn(&app, "drain");

    // Gitea: hex HMAC-SHA256 of the body in X-Gitea-Signature.
    let body = bytes(&push);
    let path = "/webhooks/gitea/tea";
    let ok = gitea_headers(TEA_SECRET, "t-1", "push", &body, false);
    assert_eq!(post_with(&app, path, &without(&ok, "x-gitea-signature"), &body).await.0, 401);
    assert_eq!(post_with(&app, path, &gitea_headers("not-it", "t-1", "push", &body, false), &body).await.0, 401);
    assert_eq!(post_with(&app, path, &with(&ok, "x-gitea-signature", "zz"), &body).await.0, 400);
    // GitHub's prefix is not Gitea's format.
    let prefixed = format!("sha256={}", hex_hmac(TEA_SECRET, &body));
    assert_eq!(post_with(&app, path, &with(&ok, "x-gitea-signature", &prefixed), &body).await.0, 400);
    assert_eq!(post_with(&app, path, &without(&ok, "x-gitea-delivery"), &body).await.0, 400);
    common_refusals(&app, path, "/webhooks/gitea/nope", &body, |id, b| gitea_headers(TEA_SECRET, id, "push", b, false)).await;
    // Forgejo signs with its own headers; a wrong Forgejo signature is not
    // rescued by a right Gitea one.
    let mut mixed = gitea_headers(TEA_SECRET, "f-x", "push", &body, true);
    mixed = with(&mixed, "x-forgejo-signature", &hex_hmac("not-it", &body));
    assert_eq!(post_with(&app, "/webhooks/forgejo/tea", &mixed, &body).await.0, 401);
    assert_eq!(delivery_jobs(&app).await, 0, "a refused delivery enqueued a job");

    assert_eq!(post_with(&app, path, &ok, &body).await.0, 202);
    assert_eq!(post_with(&app, path, &ok, &body).await.0, 200, "a redelivery is a duplicate");
    let d = processed(&app, &admin, "tea", "t-1").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let sync = bytes(&fixture("gitea/pull_request-synchronized.json"));
    let forgejo = gitea_headers(TEA_SECRET, "f-1", "pull_request", &sync, true);
    assert_eq!(post_with(&app, "/webhooks/forgejo/tea", &forgejo, &sync).await.0, 202);
    assert_eq!(processed(&app, &admin, "tea", "f-1").await["outcome"], "RUNS_CREATED");
    let runs: Vec<(String, String)> = runs_of_stack(&app, "webhooks").await.into_iter().map(|r| (r.1, r.3)).collect();
    let head = push["after"].as_str().unwrap().to_string();
    assert_eq!(runs, [("tracked".to_string(), head.clone()), ("proposed".to_string(), head)]);

    // Bitbucket Data Center: `sha256=` and the hex HMAC in X-Hub-Signature.
    let path = "/webhooks/bitbucket/bb";
    let body = bytes(&bitbucket_push(&git.url("net"), "refs/heads/master", &first, &second));
    let ok = bitbucket_headers(BB_SECRET, "b-1", "repo:refs_changed", &body);
    assert_eq!(post_with(&app, path, &without(&ok, "x-hub-signature"), &body).await.0, 401);
    assert_eq!(post_with(&app, path, &bitbucket_headers("not-it", "b-1", "repo:refs_changed", &body), &body).await.0, 401);
    // Only SHA-256 is accepted, and GitHub's header is not Bitbucket's.
    let sha1 = format!("sha1={}", "0".repeat(40));
    assert_eq!(post_with(&app, path, &with(&ok, "x-hub-signature", &sha1), &body).await.0, 400);
    let github_style = with(&without(&ok, "x-hub-signature"), "x-hub-signature-256", &format!("sha256={}", hex_hmac(BB_SECRET, &body)));
    assert_eq!(post_with(&app, path, &github_style, &body).await.0, 401);
    assert_eq!(post_with(&app, path, &without(&ok, "x-request-id"), &body).await.0, 400);
    common_refusals(&app, path, "/webhooks/bitbucket/nope", &body, |id, b| bitbucket_headers(BB_SECRET, id, "repo:refs_changed", b)).await;
    // The event is the header's; a ping is recorded and ignored.
    let ping = bitbucket_headers(BB_SECRET, "b-mismatch", "diagnostics:ping", &body);
    assert_eq!(post_with(&app, path, &ping, &body).await.0, 202);
    assert_eq!(processed(&app, &admin, "bb", "b-mismatch").await["outcome"], "IGNORED");
    // The header is not signed, so the body's own eventKey must agree with it.
    let fake = with(&ok, "x-event-key", "pr:opened");
    let fake = with(&fake, "x-request-id", "b-wrong-event");
    let fake = with(&fake, "x-hub-signature", &format!("sha256={}", hex_hmac(BB_SECRET, &body)));
    assert_eq!(post_with(&app, path, &fake, &body).await.0, 202);
    let d = processed(&app, &admin, "bb", "b-wrong-event").await;
    assert_eq!(d["outcome"], "FAILED", "{d}");
    assert!(d["error"].as_str().unwrap().contains("eventKey"), "{d}");

    assert_eq!(post_with(&app, path, &ok, &body).await.0, 202);
    assert_eq!(post_with(&app, path, &ok, &body).await.0, 200, "a redelivery is a duplicate");
    let d = processed(&app, &admin, "bb", "b-1").await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let runs = runs_of_stack(&app, "net").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].3, second);

    // A repository no stack uses: recorded, no run.
    let other = bytes(&bitbucket_push("https://git.example.test/scm/other/repo.git", "refs/heads/master", &first, &second));
    assert_eq!(post_with(&app, path, &bitbucket_headers(BB_SECRET, "b-else", "repo:refs_changed", &other), &other).await.0, 202);
    assert_eq!(processed(&app, &admin, "bb", "b-else").await["outcome"], "IGNORED");
    assert_eq!(all_runs(&app).await, 3, "the Gitea push and pull request and the Bitbucket push made runs");
}
