//! Database changes become notifications end to end: run transitions written by
//! `hangar_db::runs` (as the drain and the API write them) reach the right
//! workers — a READY run as many available workers as there are runs, never
//! the whole pool — and the bridge comes back after PostgreSQL restarts,
//! announcing the work that is waiting.

mod common;

use common::{Env, SOON};
use hangar_broker::Notification;
use hangar_db::runs::{self, NewRun};
use hangar_testkit::StopMode;
use hangar_types::{RunKind, RunState};

fn new_run(stack: i64, kind: RunKind) -> NewRun {
    NewRun {
        stack_id: stack,
        kind,
        commit_sha: "c".repeat(40),
        branch: "main".into(),
        command: None,
        triggered_by: "alice@example.com".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_transitions_reach_the_right_workers() {
    let env = Env::start().await;
    let (pool_a, pool_b) = (env.create_pool("a").await, env.create_pool("b").await);
    let a1 = env.create_worker(pool_a).await;
    let a2 = env.create_worker(pool_a).await;
    let b1 = env.create_worker(pool_b).await;
    let (mut c_a1, mut c_a2, mut c_b1) = (env.subscriber(&a1).await, env.subscriber(&a2).await, env.subscriber(&b1).await);
    let stack = env.create_stack("net", pool_a).await;
    let mut db = env.pool.get().await.unwrap();

    // QUEUED -> READY: work for pool A, told to one of its workers on its own topic.
    let tracked = runs::create(&mut db, &new_run(stack, RunKind::Tracked), "alice").await.unwrap();
    let ready = runs::schedule_stack(&mut db, stack, "drain").await.unwrap();
    assert_eq!(ready.iter().map(|r| r.id).collect::<Vec<_>>(), vec![tracked.id]);
    let work = Notification::WorkAvailable { pool: pool_a };
    // Workers are told in turn, the lowest id first.
    c_a1.wait_for(&a1.worker_topic(), &work).await;

    // a1 takes it and plans; the confirmation goes to a1 alone.
    env.sql(&format!("UPDATE runs SET worker_id = {} WHERE id = {}", a1.id, tracked.id)).await;
    for s in [RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Unconfirmed, RunState::Confirmed] {
        runs::transition(&mut db, tracked.id, None, s, "test", "worker").await.unwrap();
    }
    c_a1.wait_for(&a1.worker_topic(), &Notification::RunConfirmed { run: tracked.id }).await;

    // A proposed run stopped while a2 plans it: a2 is told to abandon it.
    // a1 was told of work moments ago, so this one is a2's to hear of.
    let proposed = runs::create(&mut db, &new_run(stack, RunKind::Proposed), "bob").await.unwrap();
    runs::schedule_stack(&mut db, stack, "drain").await.unwrap();
    c_a2.wait_for(&a2.worker_topic(), &work).await;
    env.sql(&format!("UPDATE runs SET worker_id = {} WHERE id = {}", a2.id, proposed.id)).await;
    for s in [RunState::Preparing, RunState::Initializing, RunState::Planning, RunState::Stopped] {
        runs::transition(&mut db, proposed.id, None, s, "test", "worker").await.unwrap();
    }
    c_a2.wait_for(&a2.worker_topic(), &Notification::RunCanceled { run: proposed.id }).await;

    // Canceled before any worker took it: nothing to tell.
    let canceled = runs::create(&mut db, &new_run(stack, RunKind::Proposed), "bob").await.unwrap();
    runs::transition(&mut db, canceled.id, None, RunState::Canceled, "test", "alice").await.unwrap();

    env.barrier(&mut [(&a1, &mut c_a1), (&a2, &mut c_a2), (&b1, &mut c_b1)]).await;
    assert!(c_b1.received().is_empty(), "pool B heard of pool A's runs: {:?}", c_b1.received());
    // Work went to each worker on its own topic, never to the pool topic; the
    // confirmation and the cancellation to their holders alone.
    let (got_a1, got_a2) = (c_a1.received(), c_a2.received());
    for (w, got) in [(&a1, &got_a1), (&a2, &got_a2)] {
        assert!(got.iter().all(|(topic, _)| *topic == w.worker_topic()), "{got:?}");
    }
    assert!(got_a1.contains(&(a1.worker_topic(), Notification::RunConfirmed { run: tracked.id })));
    assert!(got_a2.contains(&(a2.worker_topic(), Notification::RunCanceled { run: proposed.id })));
    assert!(!got_a1.iter().any(|(_, n)| matches!(n, Notification::RunCanceled { .. })), "{got_a1:?}");
    assert!(
        !got_a2.iter().any(|(_, n)| matches!(n, Notification::RunConfirmed { .. })),
        "a2 got a1's confirmation: {got_a2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_run_is_told_to_one_available_worker_not_the_pool() {
    let env = Env::start().await;
    let pool = env.create_pool("crowd").await;
    let mut workers = Vec::new();
    for _ in 0..6 {
        workers.push(env.create_worker(pool).await);
    }
    let mut clients = Vec::new();
    for w in &workers {
        clients.push(env.subscriber(w).await);
    }
    // The first is running something and the second was drained: neither is told.
    env.sql(&format!("UPDATE workers SET status = 'busy' WHERE id = {}", workers[0].id)).await;
    env.sql(&format!("UPDATE workers SET drained = true WHERE id = {}", workers[1].id)).await;
    let stack = env.create_stack("net", pool).await;
    let mut db = env.pool.get().await.unwrap();
    let work = Notification::WorkAvailable { pool };

    // One READY run: one worker hears of it, the first available one.
    runs::create(&mut db, &new_run(stack, RunKind::Proposed), "alice").await.unwrap();
    runs::schedule_stack(&mut db, stack, "drain").await.unwrap();
    clients[2].wait_for(&workers[2].worker_topic(), &work).await;
    // Taken (as a claim would): runs left READY are announced again later.
    env.sql("UPDATE runs SET state = 'PREPARING' WHERE state = 'READY'").await;

    // Two runs READY in one commit: two more, not the one told moments ago.
    for _ in 0..2 {
        runs::create(&mut db, &new_run(stack, RunKind::Proposed), "alice").await.unwrap();
    }
    assert_eq!(runs::schedule_stack(&mut db, stack, "drain").await.unwrap().len(), 2);
    clients[3].wait_for(&workers[3].worker_topic(), &work).await;
    clients[4].wait_for(&workers[4].worker_topic(), &work).await;
    env.sql("UPDATE runs SET state = 'PREPARING' WHERE state = 'READY'").await;

    let mut pairs: Vec<(&common::Worker, &mut common::Client)> = workers.iter().zip(clients.iter_mut()).collect();
    env.barrier(&mut pairs).await;
    let told: Vec<usize> = clients.iter().map(|c| c.received().len()).collect();
    assert_eq!(told, vec![0, 0, 1, 1, 1, 0], "who heard of work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_comes_back_after_postgres_restarts_and_announces_waiting_work() {
    let mut env = Env::start().await;
    let pool = env.create_pool("a").await;
    let w = env.create_worker(pool).await;
    let stack = env.create_stack("net", pool).await;
    let mut c = env.subscriber(&w).await;

    for mode in [StopMode::Fast, StopMode::Immediate] {
        // A run becomes READY while the broker is not listening? It cannot: the
        // database is down. So a run waits READY from before the restart, and
        // the bridge must announce it again once it is back.
        {
            let mut db = env.pool.get().await.unwrap();
            runs::create(&mut db, &new_run(stack, RunKind::Proposed), "alice").await.unwrap();
            runs::schedule_stack(&mut db, stack, "drain").await.unwrap();
        }
        c.wait_for(&w.worker_topic(), &Notification::WorkAvailable { pool }).await;
        c.messages.clear();

        env.pg.restart(mode);
        // The worker stays connected throughout; the bridge reconnects by itself
        // and announces the READY runs again (to the only worker, told moments
        // ago or not: a reconnect announces everything waiting).
        c.wait_for(&w.worker_topic(), &Notification::WorkAvailable { pool }).await;
        hangar_testkit::wait_for("the bridge to listen again", SOON, || async {
            env.broker.status().await.ok().then_some(())
        })
        .await;
        c.messages.clear();
    }

    // New transitions flow as before.
    let mut db = env.pool.get().await.unwrap();
    let run = runs::create(&mut db, &new_run(stack, RunKind::Proposed), "alice").await.unwrap();
    runs::schedule_stack(&mut db, stack, "drain").await.unwrap();
    env.sql(&format!("UPDATE runs SET worker_id = {} WHERE id = {}", w.id, run.id)).await;
    for s in [RunState::Preparing, RunState::Stopped] {
        runs::transition(&mut db, run.id, None, s, "test", "alice").await.unwrap();
    }
    c.wait_for(&w.worker_topic(), &Notification::RunCanceled { run: run.id }).await;
    assert_eq!(env.broker.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_everything() {
    let env = Env::start().await;
    let pool = env.create_pool("a").await;
    let w = env.create_worker(pool).await;
    let mut c = env.subscriber(&w).await;
    let status = env.broker.status().await;
    assert!(status.ok(), "{status:?}");
    assert_eq!(status.connections, 1);

    env.broker.shutdown();
    tokio::time::timeout(SOON, env.broker.wait()).await.expect("the broker stops");
    c.wait_closed().await;
    let refused = tokio::net::TcpStream::connect(env.broker.local_addr()).await;
    assert!(refused.is_err(), "the listener must be closed");
    let status = env.broker.status().await;
    assert!(!status.ok() && !status.listening && !status.router && !status.bridge, "{status:?}");
    assert!(env.broker.publish_to_pool(pool, &Notification::WorkAvailable { pool }).await.is_err());
}
