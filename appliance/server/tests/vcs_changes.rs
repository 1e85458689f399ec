//! Pushes whose delivery does not say which files changed (Bitbucket Data
//! Center never does; new branches and force pushes neither): `hangar drain`
//! asks git, through its cache of the repository, and acts on the answer. The
//! git server is real and every push is made with `git push`; the deliveries
//! are Bitbucket's published example, pointed at that repository and signed as
//! Bitbucket signs.

mod common;
mod vcs_support;

use std::path::{Path, PathBuf};

use common::*;
use hangar_testkit::GitServer;
use serde_json::{Value, json};
use vcs_support::*;

const SECRET: &str = "bitbucket-webhook-secret";
const ZERO: &str = "0000000000000000000000000000000000000000";

/// A developer's clone of the test repository.
struct Work<'a> {
    git: &'a GitServer,
    dir: PathBuf,
}

impl<'a> Work<'a> {
    fn clone(git: &'a GitServer, parent: &Path) -> Work<'a> {
        let dir = parent.join(format!("clone-{}", rand_suffix()));
        let out = git.git().args(["clone", "--quiet", &git.url("net")]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Work { git, dir }
    }

    fn git(&self, args: &[&str]) -> String {
        let out = self
            .git
            .git()
            .current_dir(&self.dir)
            .args(["-c", "user.name=Dev", "-c", "user.email=dev@example.test"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Commits `files` (amending the last commit when asked) and pushes the
    /// result to `branch`, forced when amending.
    fn push(&self, branch: &str, files: &[(&str, &str)], amend: bool) -> String {
        for (p, c) in files {
            let path = self.dir.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        self.git(&["add", "--all"]);
        if amend {
            self.git(&["commit", "--quiet", "--amend", "-m", "amended"]);
        } else {
            self.git(&["commit", "--quiet", "-m", "change"]);
        }
        let refspec = format!("HEAD:refs/heads/{branch}");
        if amend {
            self.git(&["push", "--quiet", "--force", "origin", &refspec]);
        } else {
            self.git(&["push", "--quiet", "origin", &refspec]);
        }
        self.git(&["rev-parse", "HEAD"])
    }
}

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
    let work = Work::clone(&git, app.dir.path());

    // Outside the project root: ignored, and the log says git decided.
    let docs = work.push("main", &[("README.md", "more\n")], false);
    let d = deliver(&app, &admin, &git, "b-docs", "main", &first, &docs).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    let want = format!("changes nothing under infra (git diff since {}: 0 changed paths under infra)", &first[..12]);
    assert!(detail(&d).contains(&want), "{d}");

    // Inside it: a tracked run, and the log says why.
    let change = work.push("main", &[("infra/main.tf", "# v2\n")], false);
    let d = deliver(&app, &admin, &git, "b-change", "main", &docs, &change).await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    assert!(detail(&d).contains(&format!("git diff since {}: 1 changed path under infra", &docs[..12])), "{d}");

    // Force pushes: the replaced commit is gone from the server's branches but
    // git still compares against it. Rewriting a README change is ignored...
    let notes = work.push("main", &[("README.md", "notes\n")], false);
    let d = deliver(&app, &admin, &git, "b-notes", "main", &change, &notes).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    let reworded = work.push("main", &[("README.md", "better notes\n")], true);
    let d = deliver(&app, &admin, &git, "b-force-docs", "main", &notes, &reworded).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(detail(&d).contains(&format!("git diff since {}: 0 changed paths", &notes[..12])), "{d}");
    // ...rewriting it into a change under the root makes a run.
    let rewritten = work.push("main", &[("infra/main.tf", "# v3\n")], true);
    let d = deliver(&app, &admin, &git, "b-force-infra", "main", &reworded, &rewritten).await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    let runs = runs_of_stack(&app, "net").await;
    assert_eq!(runs.iter().map(|r| r.3.clone()).collect::<Vec<_>>(), [change.clone(), rewritten.clone()]);

    // A new branch with nothing new under the root since it left main: git
    // compares with the merge base.
    work.git(&["checkout", "--quiet", "-b", "release"]);
    let release = work.push("release", &[("CHANGELOG.md", "1.0\n")], false);
    let d = deliver(&app, &admin, &git, "b-release", "release", ZERO, &release).await;
    assert_eq!(d["outcome"], "IGNORED", "{d}");
    assert!(detail(&d).contains(&format!("since its merge base {} (a new branch)", &rewritten[..12])), "{d}");
    // A new branch with no history in common with anything: git cannot
    // tell, so the run is made, and the log says why.
    work.git(&["checkout", "--quiet", "--orphan", "lonely"]);
    let lonely = work.push("lonely", &[("infra/main.tf", "# alone\n")], false);
    let d = deliver(&app, &admin, &git, "b-lonely", "lonely", ZERO, &lonely).await;
    assert_eq!(d["outcome"], "RUNS_CREATED", "{d}");
    assert!(detail(&d).contains("git could not tell what the push changed, so the run is made to be safe"), "{d}");
    assert!(detail(&d).contains("shares no history"), "{d}");
    assert!(runs_of_stack(&app, "rel").await.is_empty());
    assert_eq!(runs_of_stack(&app, "lone").await.len(), 1);
}
