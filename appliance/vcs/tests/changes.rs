//! Asking git which paths a push changed, against the test kit's real git
//! server: an ordinary push, a force push whose old commit only the cache still
//! holds, a new branch compared with its merge base, and the refusals (a
//! commit the server never had, a hostile commit id or URL, a server that
//! never answers).

use std::time::Duration;

use hangar_testkit::{GitServer, TestDir};
use hangar_vcs::{Base, ChangesError, GitCache, ProjectRoot, Remote};

fn remote(server: &GitServer) -> Remote {
    Remote { url: server.url("infra"), credentials: None, ca_file: None }
}

fn infra() -> ProjectRoot {
    ProjectRoot::new("infra").unwrap()
}

fn paths(d: &hangar_vcs::Diff) -> Vec<&str> {
    d.paths.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn pushes_force_pushes_and_new_branches_are_diffed_with_git() {
    let server = GitServer::start().await;
    server.create_repo("infra");
    let first = server.push_files("infra", "main", &[("infra/main.tf", "# v1\n"), ("README.md", "a\n")], "first");
    let dir = TestDir::new("changes");
    let cache = GitCache::new(dir.path().join("cache"), "git", Duration::from_secs(30));
    let work = server.working_copy("infra", dir.path());

    // An ordinary push outside the root, then one inside it.
    let docs = work.commit(&[("README.md", "b\n")], "change", false);
    work.push("main", true);
    let d = cache.changed_paths(&remote(&server), &Base::Commit(first.clone()), &docs, &infra()).await.unwrap();
    assert!(d.paths.is_empty(), "{d:?}");
    assert_eq!(d.base, first);
    let change = work.commit(&[("infra/main.tf", "# v2\n"), ("infra/sub/x.tf", "# x\n")], "change", false);
    work.push("main", true);
    let d = cache.changed_paths(&remote(&server), &Base::Commit(docs.clone()), &change, &infra()).await.unwrap();
    assert_eq!(paths(&d), ["infra/main.tf", "infra/sub/x.tf"]);
    // Component-wise: `infrastructure/` is not under `infra`.
    let beside = work.commit(&[("infrastructure/y.tf", "# y\n")], "change", false);
    work.push("main", true);
    let d = cache.changed_paths(&remote(&server), &Base::Commit(change.clone()), &beside, &infra()).await.unwrap();
    assert!(d.paths.is_empty(), "{d:?}");

    // A force push replacing the last commit: the old one is gone from every
    // branch of the server, but the cache fetched it before.
    let amended = work.commit(&[("infrastructure/y.tf", "# y2\n")], "change", true);
    work.push("main", true);
    let d = cache.changed_paths(&remote(&server), &Base::Commit(beside.clone()), &amended, &infra()).await.unwrap();
    assert!(d.paths.is_empty(), "the amend touched only infrastructure/: {d:?}");
    let rewritten = work.commit(&[("infra/main.tf", "# v3\n")], "change", true);
    work.push("main", true);
    let d = cache.changed_paths(&remote(&server), &Base::Commit(amended.clone()), &rewritten, &infra()).await.unwrap();
    assert_eq!(paths(&d), ["infra/main.tf"]);

    // A new branch: compared with where it left the default branch.
    work.git(&["checkout", "--quiet", "-b", "release"]);
    let rel = work.commit(&[("docs/notes.md", "n\n")], "change", false);
    work.push("release", true);
    let d = cache.changed_paths(&remote(&server), &Base::NewBranch { known: vec![] }, &rel, &infra()).await.unwrap();
    assert_eq!(d.base, rewritten, "the merge base with main");
    assert!(d.paths.is_empty(), "{d:?}");
    let rel2 = work.commit(&[("infra/main.tf", "# release\n")], "change", false);
    work.push("release2", true);
    let d = cache.changed_paths(&remote(&server), &Base::NewBranch { known: vec![first.clone()] }, &rel2, &infra()).await.unwrap();
    assert_eq!(d.base, first, "the stack's last run comes first");
    assert_eq!(paths(&d), ["infra/main.tf", "infra/sub/x.tf"]);
    // An orphan branch shares no history with anything.
    work.git(&["checkout", "--quiet", "--orphan", "lonely"]);
    let lonely = work.commit(&[("infra/main.tf", "# alone\n")], "change", false);
    work.push("lonely", true);
    let e = cache.changed_paths(&remote(&server), &Base::NewBranch { known: vec![] }, &lonely, &infra()).await.unwrap_err();
    assert!(matches!(e, ChangesError::NoMergeBase { .. }), "{e}");
}

#[tokio::test]
async fn drains_sharing_a_cache_fetch_one_at_a_time_and_all_get_answers() {
    let server = GitServer::start().await;
    server.create_repo("infra");
    let first = server.push_files("infra", "main", &[("infra/main.tf", "# v1\n")], "first");
    let second = server.push_files("infra", "main", &[("infra/main.tf", "# v2\n")], "second");
    let dir = TestDir::new("changes");
    // Two processes' caches over one directory, each asked twice at once.
    let a = GitCache::new(dir.path().join("cache"), "git", Duration::from_secs(30));
    let b = GitCache::new(dir.path().join("cache"), "git", Duration::from_secs(30));
    let (r, base) = (remote(&server), Base::Commit(first.clone()));
    let all = futures_join(vec![
        a.changed_paths(&r, &base, &second, &infra()),
        a.changed_paths(&r, &base, &second, &infra()),
        b.changed_paths(&r, &base, &second, &infra()),
        b.changed_paths(&r, &base, &second, &infra()),
    ])
    .await;
    for d in all {
        assert_eq!(paths(&d.unwrap()), ["infra/main.tf"]);
    }
    let repos = std::fs::read_dir(dir.path().join("cache")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "git")).count();
    assert_eq!(repos, 1, "one bare repository per remote");
}

/// Awaits every future, concurrently, in order.
async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn what_git_cannot_answer_is_an_error_naming_it() {
    let server = GitServer::start().await;
    server.create_repo("infra");
    let first = server.push_files("infra", "main", &[("infra/main.tf", "# v1\n")], "first");
    let dir = TestDir::new("changes");
    let cache = GitCache::new(dir.path().join("cache"), "git", Duration::from_secs(30));

    // A commit the server never had.
    let ghost = "0123456789abcdef0123456789abcdef01234567";
    let e = cache.changed_paths(&remote(&server), &Base::Commit(ghost.into()), &first, &infra()).await.unwrap_err();
    assert!(matches!(e, ChangesError::MissingCommit { ref sha, .. } if sha == ghost), "{e}");
    assert!(e.to_string().contains(&server.url("infra")), "{e}");

    // Commit ids and URLs that would be options or local paths to git.
    for bad in ["--upload-pack=touch /tmp/x", "HEAD", "main", "0123"] {
        let e = cache.changed_paths(&remote(&server), &Base::Commit(first.clone()), bad, &infra()).await.unwrap_err();
        assert!(matches!(e, ChangesError::BadCommit { .. }), "{bad}: {e}");
        let e = cache.changed_paths(&remote(&server), &Base::Commit(bad.into()), &first, &infra()).await.unwrap_err();
        assert!(matches!(e, ChangesError::BadCommit { .. }), "{bad}: {e}");
    }
    for url in ["file:///etc", "/srv/git/infra.git", "ext::sh -c touch% /tmp/x", "-uhelp"] {
        let r = Remote { url: url.into(), credentials: None, ca_file: None };
        let e = cache.changed_paths(&r, &Base::Commit(first.clone()), &first, &infra()).await.unwrap_err();
        assert!(matches!(e, ChangesError::Url(_)), "{url}: {e}");
    }

    // A server that accepts the connection and never answers: killed at the
    // deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let r = Remote { url: format!("http://{}/infra.git", silent.local_addr().unwrap()), credentials: None, ca_file: None };
    let quick = GitCache::new(dir.path().join("quick"), "git", Duration::from_secs(2));
    let e = quick.changed_paths(&r, &Base::Commit(first.clone()), &first, &infra()).await.unwrap_err();
    assert!(matches!(e, ChangesError::TimedOut { .. }), "{e}");
    drop(silent);
}
