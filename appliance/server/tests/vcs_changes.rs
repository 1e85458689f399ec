//! Pushes whose delivery does not say which files changed (Bitbucket Data
//! Center never does; new branches and force pushes neither): `hangar drain`
//! asks git, through its cache of the repository, and acts on the answer. The
//! git server is real and every push is made with `git push`; the deliveries
//! are Bitbucket's published example, pointed at that repository and signed as
//! Bitbucket signs.

mod common;
mod vcs_support;


use common::*;
use hangar_testkit::{GitServer, WorkingCopy};
use serde_json::{Value, json};
use vcs_support::*;

const SECRET: &str = "bitbucket-webhook-secret";
const ZERO: &str = "0000000000000000000000000000000000000000";

async fn deliver(app: &Appliance, admin: &str, git: &GitServer, id: &str, branch: &str, from: &str, to: &str) -> Value {
    let body = serde_json::to_vec(&bitbucket_push(&git.url("net"), &format!("refs/heads/{branch}"), from, to)).unwrap();
    let (status, answer) =
        post_with(app, "/webhooks/bitbucket/bb", &bitbucket_headers(SECRET, id, "repo:refs_changed", &body), &body).await;
    assert_eq!(status, 202, "{answer}");
    processed(app, admin, "bb", id).await
}

fn detail(d: &Value) -> &str {
    d["detail"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn pushes_without_a_file_list_are_decided_with_git() {
    let app = Appliance::start().await;
    let git = GitServer::start().await;
    git.create_repo("net");
    let first = git.push_files("net", "main", &[("infra/main.tf", "# v1\n"), ("README.md", "net\n")], "first");
    let admin = app.admin_token().await;
    app.ok(
        &admin,
        CREATE_INTEGRATION,
        json!({ "i": { "name": "bb", "kind": "BITBUCKET", "baseUrl": "https://bitbucket.example.test", "webhookSecret": SECRET } }),
    )
    .await;
    for (slug, branch) in [("net", "main"), ("rel", "release"), ("lone", "lonely")] {
        let mut stack = stack_input(slug, &git.url("net"));
        stack["projectRoot"] = json!("infra");
        stack["branch"] = json!(branch);
        app.ok(&admin, CREATE_STACK, json!({ "i": stack })).await;
        app.ok(&admin, LINK, json!({ "s": slug, "i": "bb" })).await;
    }
    let _drain = spawn(&app, "drain");
    let work = git.working_copy("net", app.dir.path());

    // Outside the project root: ignored, and the log says git decided.
    let docs = commit_and_push(&work, "main", &[("README.md", "more\n")], false);
    let d = deliver(&app, &admin, &git, "b-docs", "main", &first, &docs).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    let want = format!("changes nothing under infra (git diff since {}: 0 changed paths under infra)", &first[..12]);
    assert!(detail(&d).contains(&want), "{d}");

    // Inside it: a tracked run, and the log says why.
    let change = commit_and_push(&work, "main", &[("infra/main.tf", "# v2\n")], false);
    let d = deliver(&app, &admin, &git, "b-change", "main", &docs, &change).await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    assert!(detail(&d).contains(&format!("git diff since {}: 1 changed path under infra", &docs[..12])), "{d}");

    // Force pushes: the replaced commit is gone from the server's branches but
    // git still compares against it. Rewriting a README change is ignored...
    let notes = commit_and_push(&work, "main", &[("README.md", "notes\n")], false);
    let d = deliver(&app, &admin, &git, "b-notes", "main", &change, &notes).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    let reworded = commit_and_push(&work, "main", &[("README.md", "better notes\n")], true);
    let d = deliver(&app, &admin, &git, "b-force-docs", "main", &notes, &reworded).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(detail(&d).contains(&format!("git diff since {}: 0 changed paths", &notes[..12])), "{d}");
    // ...rewriting it into a change under the root makes a run.
    let rewritten = commit_and_push(&work, "main", &[("infra/main.tf", "# v3\n")], true);
    let d = deliver(&app, &admin, &git, "b-force-infra", "main", &reworded, &rewritten).await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let runs = runs_of_stack(&app, "net").await;
    assert_eq!(runs.iter().map(|r| r.3.clone()).collect::<Vec<_>>(), [change.clone(), rewritten.clone()]);

    // A new branch with nothing new under the root since it left main: git
    // compares with the merge base.
    work.git(&["checkout", "--quiet", "-b", "release"]);
    let release = commit_and_push(&work, "release", &[("CHANGELOG.md", "1.0\n")], false);
    let d = deliver(&app, &admin, &git, "b-release", "release", ZERO, &release).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(detail(&d).contains(&format!("since its merge base {} (a new branch)", &rewritten[..12])), "{d}");
    // A new branch with no history in common with anything: git cannot
    // tell, so the run is made, and the log says why.
    work.git(&["checkout", "--quiet", "--orphan", "lonely"]);
    let lonely = commit_and_push(&work, "lonely", &[("infra/main.tf", "# alone\n")], false);
    let d = deliver(&app, &admin, &git, "b-lonely", "lonely", ZERO, &lonely).await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    assert!(detail(&d).contains("git could not tell what the push changed, so the run is made to be safe"), "{d}");
    assert!(detail(&d).contains("shares no history"), "{d}");
    assert!(runs_of_stack(&app, "rel").await.is_empty());
    assert_eq!(runs_of_stack(&app, "lone").await.len(), 1);
}

/// Commits `files` (amending the last commit when asked) and pushes the
/// result to `branch`, forced when amending; returns the commit.
fn commit_and_push(work: &WorkingCopy, branch: &str, files: &[(&str, &str)], amend: bool) -> String {
    let commit = work.commit(files, if amend { "amended" } else { "change" }, amend);
    work.push(branch, amend);
    commit
}
