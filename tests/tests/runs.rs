//! Runs in the database: the transition table enforced in one place, every change
//! recorded and announced, and one stack-holding run per stack at a time.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures::StreamExt;
use hangar_db::runs::{self, NewRun, RunChange, TransitionFailure};
use hangar_db::schema::stacks;
use hangar_db::{migrate, queue};
use hangar_testkit::PgServer;
use hangar_types::{RunKind, RunState};

async fn setup() -> (PgServer, hangar_db::DbPool, i64) {
    let pg = PgServer::start().await;
    migrate::run_pending(&pg.database()).await.unwrap();
    let pool = pg.database().pool(Some(4)).unwrap();
    let mut c = pool.get().await.unwrap();
    let id: i64 = diesel::insert_into(stacks::table)
        .values((
            stacks::slug.eq("net"),
            stacks::name.eq("Network"),
            stacks::repository.eq("https://git.example/net.git"),
            stacks::branch.eq("main"),
            stacks::tool_version.eq("1.0.3"),
        ))
        .returning(stacks::id)
        .get_result(&mut c)
        .await
        .unwrap();
    (pg, pool, id)
}

fn new_run(stack: i64, kind: RunKind) -> NewRun {
    NewRun {
        stack_id: stack,
        kind,
        commit_sha: "a".repeat(40),
        branch: "main".into(),
        command: None,
        triggered_by: "alice@example.com".into(),
    }
}

#[tokio::test]
async fn one_tracked_run_per_stack_while_proposed_runs_go_in_parallel() {
    let (_pg, pool, stack) = setup().await;
    let mut c = pool.get().await.unwrap();
    let t1 = runs::create(&mut c, &new_run(stack, RunKind::Tracked), "alice").await.unwrap();
    let t2 = runs::create(&mut c, &new_run(stack, RunKind::Tracked), "alice").await.unwrap();
    let p1 = runs::create(&mut c, &new_run(stack, RunKind::Proposed), "bob").await.unwrap();
    let p2 = runs::create(&mut c, &new_run(stack, RunKind::Proposed), "bob").await.unwrap();
    // Each creation asked the drain to schedule the stack.
    assert_eq!(queue::counts(&mut c).await.unwrap().ready, 4);

    let ready: Vec<i64> = runs::schedule_stack(&mut c, stack, "drain").await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ready, vec![t1.id, p1.id, p2.id]);
    assert!(runs::schedule_stack(&mut c, stack, "drain").await.unwrap().is_empty(), "idempotent");
    assert_eq!(runs::get(&mut c, t2.id).await.unwrap().unwrap().state(), RunState::Queued);

    // t1 goes through its life; t2 waits until it ends.
    for s in [RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Unconfirmed] {
        runs::transition(&mut c, t1.id, None, s, "worker", "worker:1").await.unwrap();
        assert!(runs::schedule_stack(&mut c, stack, "drain").await.unwrap().is_empty());
    }
    runs::transition(&mut c, t1.id, Some(&[RunState::Unconfirmed]), RunState::Discarded, "discarded by alice", "alice")
        .await
        .unwrap();
    let ready = runs::schedule_stack(&mut c, stack, "drain").await.unwrap();
    assert_eq!(ready.iter().map(|r| r.id).collect::<Vec<_>>(), vec![t2.id]);

    let history = runs::events(&mut c, t1.id).await.unwrap();
    let states: Vec<&str> = history.iter().map(|e| e.to_state.as_str()).collect();
    assert_eq!(states, ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "UNCONFIRMED", "DISCARDED"]);
    assert_eq!(history.last().unwrap().cause, "discarded by alice");
    assert_eq!(history.last().unwrap().from_state.as_deref(), Some("UNCONFIRMED"));
}

#[tokio::test]
async fn disallowed_transitions_change_nothing() {
    let (_pg, pool, stack) = setup().await;
    let mut c = pool.get().await.unwrap();
    let run = runs::create(&mut c, &new_run(stack, RunKind::Tracked), "alice").await.unwrap();
    let err = runs::transition(&mut c, run.id, None, RunState::Applying, "skip ahead", "mallory").await.unwrap_err();
    assert!(matches!(err, TransitionFailure::NotAllowed { .. }), "{err}");
    assert_eq!(err.to_string(), format!("run {}: a run cannot go from QUEUED to APPLYING", run.id));
    // Allowed by the table but not from the states the caller accepts.
    let err = runs::transition(&mut c, run.id, Some(&[RunState::Unconfirmed]), RunState::Failed, "x", "y").await.unwrap_err();
    assert!(matches!(err, TransitionFailure::NotAllowed { .. }));
    assert!(matches!(
        runs::transition(&mut c, 999_999, None, RunState::Ready, "x", "y").await.unwrap_err(),
        TransitionFailure::NotFound(999_999)
    ));
    assert_eq!(runs::get(&mut c, run.id).await.unwrap().unwrap().state(), RunState::Queued);
    assert_eq!(runs::events(&mut c, run.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn every_transition_is_announced_after_commit() {
    let (pg, pool, stack) = setup().await;
    let mut listener = pg.database().connect().await.unwrap();
    diesel::sql_query(format!("LISTEN {}", runs::RUNS_CHANNEL)).execute(&mut listener).await.unwrap();
    let mut c = pool.get().await.unwrap();
    let run = runs::create(&mut c, &new_run(stack, RunKind::Tracked), "alice").await.unwrap();
    runs::schedule_stack(&mut c, stack, "drain").await.unwrap();
    let mut stream = std::pin::pin!(listener.notifications_stream());
    let mut got = Vec::new();
    while got.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
        got.push(serde_json::from_str::<RunChange>(&n.payload).unwrap());
    }
    assert_eq!(got[0].to, RunState::Queued);
    assert_eq!(got[0].from, None);
    assert_eq!((got[1].run, got[1].from, got[1].to), (run.id, Some(RunState::Queued), RunState::Ready));
}
