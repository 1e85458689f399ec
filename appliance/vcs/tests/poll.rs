//! `git ls-remote` polling against the test kit's real git server (git's own
//! `http-backend`), over HTTP and over HTTPS with basic authentication and a
//! test CA; and the ways it must fail: wrong or missing credentials, an unknown
//! CA, a server that never answers, a hostile URL.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hangar_testkit::git::GitServerOptions;
use hangar_testkit::{GitServer, TestDir};
use hangar_vcs::{Credentials, Event, LsRemote, LsRemoteError, RemoteRefs, Secret, ls_remote, poll_events};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn lists_branches_tags_and_head_over_http_and_turns_changes_into_events() {
    let server = GitServer::start().await;
    let bare = server.create_repo("infra");
    let main1 = server.push_files("infra", "main", &[("network/main.tf", "# v1\n")], "first");
    let feature = server.push_files("infra", "feature/x", &[("README.md", "x\n")], "feature");
    // An annotated tag: the listing maps it to its commit, not the tag object.
    git(&bare, &["-c", "user.name=T", "-c", "user.email=t@example.invalid", "tag", "-a", "v1", "-m", "release", &main1]);
    let tag_object = git(&bare, &["rev-parse", "v1"]);
    assert_ne!(tag_object, main1);

    let url = server.url("infra");
    let first = ls_remote(&LsRemote::new(&url)).await.unwrap();
    assert_eq!(first.head.as_deref(), Some("refs/heads/main"));
    assert_eq!(first.branch("main"), Some(main1.as_str()));
    assert_eq!(first.branch("feature/x"), Some(feature.as_str()));
    assert_eq!(first.tag("v1"), Some(main1.as_str()));
    assert_eq!(first.refs.len(), 3, "{first:?}");

    // Nothing changed: nothing to do.
    let again = ls_remote(&LsRemote::new(&url)).await.unwrap();
    assert!(poll_events(&url, &first, &again).is_empty());

    // A push and a deleted branch show up as the events a webhook would carry.
    let main2 = server.push_files("infra", "main", &[("network/main.tf", "# v2\n")], "second");
    git(&bare, &["branch", "-D", "feature/x"]);
    let second = ls_remote(&LsRemote::new(&url)).await.unwrap();
    let events = poll_events(&url, &first, &second);
    assert_eq!(events.len(), 2, "{events:?}");
    let Event::BranchDeleted(gone) = &events[0] else { panic!("{events:?}") };
    assert_eq!(gone.branch(), Some("feature/x"));
    let Event::Push(push) = &events[1] else { panic!("{events:?}") };
    assert_eq!(push.branch(), Some("main"));
    assert_eq!(push.before.as_deref(), Some(main1.as_str()));
    assert_eq!(push.after.as_deref(), Some(main2.as_str()));
    assert!(!push.paths_complete, "a listing has no file lists: the caller diffs");
    assert!(push.repository.matches_url(&url));

    // The listing survives a round trip through JSON (the poller stores it).
    let stored = serde_json::to_string(&second).unwrap();
    assert_eq!(serde_json::from_str::<RemoteRefs>(&stored).unwrap(), second);
}

#[tokio::test]
async fn https_with_credentials_and_the_test_ca() {
    let pki = TestDir::new("vcs-poll-pki");
    let server = GitServer::start_with(GitServerOptions {
        tls_pki: Some(pki.path().join("pki")),
        credentials: Some(("hangar".into(), "correct-horse-battery".into())),
    })
    .await;
    server.create_repo("app");
    let sha = server.push_files("app", "main", &[("main.tf", "")], "init");
    let url = server.url("app");
    let ca = server.ca_path().unwrap().to_path_buf();
    let creds = |pw: &str| Credentials::Basic { username: "hangar".into(), password: Secret::new(pw) };

    let mut req = LsRemote::new(&url);
    req.ca_file = Some(ca.clone());
    req.credentials = Some(creds("correct-horse-battery"));
    let refs = ls_remote(&req).await.unwrap();
    assert_eq!(refs.branch("main"), Some(sha.as_str()));

    // Wrong password: a clear failure that does not repeat it.
    req.credentials = Some(creds("wrong-password-123"));
    let e = ls_remote(&req).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, LsRemoteError::Failed { .. }), "{text}");
    assert!(text.contains("failed: the server refused the credentials (git: fatal: "), "{text}");
    assert!(!text.contains("wrong-password-123"), "{text}");

    // No credentials: git must not wait for a prompt.
    req.credentials = None;
    let e = ls_remote(&req).await.unwrap_err();
    assert!(e.to_string().contains("failed: the server requires credentials and none are configured"), "{e}");

    // Without the test CA the server's certificate is not trusted.
    let mut untrusted = LsRemote::new(&url);
    untrusted.credentials = Some(creds("correct-horse-battery"));
    let e = ls_remote(&untrusted).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // Credentials are never sent over plain HTTP.
    let mut plain = LsRemote::new(&url.replace("https://", "http://"));
    plain.credentials = Some(creds("correct-horse-battery"));
    assert!(matches!(ls_remote(&plain).await, Err(LsRemoteError::Url { .. })));
}

/// A stand-in git that records how it was started and prints a listing: the
/// credentials must reach git through its environment, never its arguments,
/// and the URL must come after `--`.
#[tokio::test]
async fn credentials_travel_in_the_environment_not_the_command_line() {
    let dir = TestDir::new("vcs-poll-argv");
    let record = dir.path().join("record");
    let script = dir.path().join("git");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {r}.args\nenv > {r}.env\nprintf '1111111111111111111111111111111111111111\\trefs/heads/main\\n'\n",
            r = record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut req = LsRemote::new("https://git.example.invalid/org/app.git");
    req.git = script;
    req.credentials = Some(Credentials::Bearer(Secret::new("bitbucket-http-token-xyz")));
    let refs = ls_remote(&req).await.unwrap();
    assert_eq!(refs.branch("main"), Some("1111111111111111111111111111111111111111"));
    let args = std::fs::read_to_string(record.with_extension("args")).unwrap();
    let env = std::fs::read_to_string(record.with_extension("env")).unwrap();
    assert!(!args.contains("bitbucket-http-token-xyz"), "{args}");
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(&args[..4], ["ls-remote", "--symref", "--", "https://git.example.invalid/org/app.git"]);
    assert!(env.contains("GIT_CONFIG_VALUE_1=Authorization: Bearer bitbucket-http-token-xyz"), "{env}");
    assert!(env.contains("GIT_CONFIG_KEY_1=http.extraHeader"));
    assert!(env.contains("GIT_TERMINAL_PROMPT=0"));
    assert!(env.contains("GIT_CONFIG_NOSYSTEM=1"));
    assert!(env.contains("GIT_ALLOW_PROTOCOL=http:https:ssh:git"));
}

#[tokio::test]
async fn a_server_that_never_answers_is_abandoned_at_the_deadline_with_git_killed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            if let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        }
    });
    let url = format!("http://127.0.0.1:{port}/silent.git");
    let mut req = LsRemote::new(&url);
    req.timeout = Duration::from_secs(1);
    let e = ls_remote(&req).await.unwrap_err();
    assert!(matches!(e, LsRemoteError::TimedOut { .. }), "{e}");
    assert_eq!(e.to_string(), format!("git ls-remote {url} did not finish within 1 s and was killed"));
    // git and its HTTP helper are gone: no process still has the URL. (A killed
    // helper is reaped by whoever adopted it; allow that a moment.)
    let needle = format!("127.0.0.1:{port}");
    let survivors = || {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&needle) {
                    found.push(cmdline);
                }
            }
        }
        found
    };
    hangar_testkit::wait_for("git's processes to be gone", Duration::from_secs(10), || {
        let left = survivors();
        async move { left.is_empty().then_some(()) }
    })
    .await;
    held.abort();
}

#[tokio::test]
async fn unknown_repositories_missing_git_and_hostile_urls_fail_clearly() {
    let server = GitServer::start().await;
    let url = server.url("does-not-exist");
    let e = ls_remote(&LsRemote::new(&url)).await.unwrap_err();
    assert!(matches!(e, LsRemoteError::Failed { .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("git ls-remote {url} failed: ")), "{e}");

    let mut req = LsRemote::new(&server.url("x"));
    req.git = "/nonexistent/bin/git".into();
    let e = ls_remote(&req).await.unwrap_err();
    assert_eq!(e.to_string(), "cannot run /nonexistent/bin/git");

    let dir = TestDir::new("vcs-poll-hostile");
    let marker = dir.path().join("pwned");
    let hostile = format!("ext::sh -c touch% {}", marker.display());
    let e = ls_remote(&LsRemote::new(&hostile)).await.unwrap_err();
    assert!(matches!(e, LsRemoteError::Url { .. }), "{e}");
    assert!(!marker.exists());
    let e = ls_remote(&LsRemote::new("--upload-pack=touch /tmp/x")).await.unwrap_err();
    assert!(matches!(e, LsRemoteError::Url { .. }), "{e}");
}
