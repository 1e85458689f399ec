//! Workers see their own pool's and their own notifications, nothing else: two
//! pools, peers in the same pool, subscriptions reaching outside the tenant, and
//! publishing — with rumqttc and with Debian's mosquitto clients.

mod common;

use std::time::Duration;

use common::{Client, Env, mosquitto, mosquitto_args};
use hangar_broker::Notification;
use hangar_testkit::{ChildProcess, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_gets_its_pool_and_its_own_messages_only() {
    let env = Env::start().await;
    let (pool_a, pool_b) = (env.create_pool("a").await, env.create_pool("b").await);
    let a1 = env.create_worker(pool_a).await;
    let a2 = env.create_worker(pool_a).await;
    let b1 = env.create_worker(pool_b).await;
    let (mut c_a1, mut c_a2, mut c_b1) = (env.subscriber(&a1).await, env.subscriber(&a2).await, env.subscriber(&b1).await);
    assert_eq!(env.broker.connections(), 3);

    let work_a = Notification::WorkAvailable { pool: pool_a };
    let work_b = Notification::WorkAvailable { pool: pool_b };
    assert_eq!(env.broker.publish_to_pool(pool_a, &work_a).await.unwrap(), 2);
    assert_eq!(env.broker.publish_to_pool(pool_b, &work_b).await.unwrap(), 1);
    assert_eq!(env.broker.publish_to_worker(a1.id, &Notification::RunConfirmed { run: 7 }).await.unwrap(), 1);
    assert_eq!(env.broker.publish_to_worker(b1.id, &Notification::RunCanceled { run: 8 }).await.unwrap(), 1);
    // A pool nobody of which is connected, and a worker that is not connected.
    assert_eq!(env.broker.publish_to_pool(pool_b + 100, &work_b).await.unwrap(), 0);
    assert_eq!(env.broker.publish_to_worker(b1.id + 100, &work_b).await.unwrap(), 0);

    env.barrier(&mut [(&a1, &mut c_a1), (&a2, &mut c_a2), (&b1, &mut c_b1)]).await;
    let mut got_a1 = c_a1.received();
    got_a1.sort_by_key(|(t, _)| t.clone());
    assert_eq!(
        got_a1,
        vec![(a1.pool_topic(), work_a.clone()), (a1.worker_topic(), Notification::RunConfirmed { run: 7 })]
    );
    assert_eq!(c_a2.received(), vec![(a2.pool_topic(), work_a)], "a pool peer's own message must not reach a2");
    let mut got_b1 = c_b1.received();
    got_b1.sort_by_key(|(t, _)| t.clone());
    assert_eq!(
        got_b1,
        vec![(b1.pool_topic(), work_b.clone()), (b1.worker_topic(), Notification::RunCanceled { run: 8 })]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_outside_the_own_topics_ends_the_connection() {
    let env = Env::start().await;
    let (pool_a, pool_b) = (env.create_pool("a").await, env.create_pool("b").await);
    let a1 = env.create_worker(pool_a).await;
    let b1 = env.create_worker(pool_b).await;
    let mut victim = env.subscriber(&b1).await;

    let other_worker = b1.worker_topic();
    let other_pool = b1.pool_topic();
    let own_other = format!("/tenants/{}/other", a1.name());
    let attempts = [
        other_worker.as_str(),
        other_pool.as_str(),
        "#",
        "+/#",
        "/tenants/#",
        "/tenants/+/pool",
        "/tenants/+/worker",
        "$SYS/#",
        "$share/g/tenants/+/pool",
        "/hangar/probe",
        own_other.as_str(),
    ];
    for filter in attempts {
        let mut c = Client::connect(env.options(&a1)).await.expect("a1 connects");
        let err = c.subscribe(&[filter]).await.expect_err(&format!("subscribing to {filter:?} must be refused"));
        assert!(!err.is_empty());
        // Nothing was delivered before the broker closed the connection.
        assert!(c.received().is_empty(), "{filter}: {:?}", c.received());
    }
    // The victim's messages went to the victim only, and a1 is still welcome
    // on its own topics.
    env.broker.publish_to_worker(b1.id, &Notification::RunConfirmed { run: 1 }).await.unwrap();
    env.broker.publish_to_pool(pool_b, &Notification::WorkAvailable { pool: pool_b }).await.unwrap();
    let mut good = env.subscriber(&a1).await;
    env.barrier(&mut [(&a1, &mut good), (&b1, &mut victim)]).await;
    assert!(good.received().is_empty(), "{:?}", good.received());
    assert_eq!(victim.received().len(), 2);
    // Own wildcards stay inside the tenant.
    let mut wild = Client::connect(env.options(&a1)).await.unwrap();
    wild.subscribe(&[&format!("/tenants/{}/#", a1.name())]).await.expect("own wildcard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_hears_the_topics_it_subscribed_to_until_it_unsubscribes_and_its_pings_are_answered() {
    let env = Env::start().await;
    let pool = env.create_pool("a").await;
    let w = env.create_worker(pool).await;
    let mut opts = env.options(&w);
    // Pings every second; the broker closes a connection silent for 1.5 s.
    opts.set_keep_alive(Duration::from_secs(1));
    let mut c = Client::connect(opts).await.expect("connect");
    let work = Notification::WorkAvailable { pool };
    let mark = |run| Notification::RunCanceled { run };

    // Its own topic only: the pool's notifications are not written to it. A
    // connection's notifications keep their order, so the pool's would have
    // arrived before the marker.
    c.subscribe(&[&w.worker_topic()]).await.unwrap();
    assert_eq!(env.broker.publish_to_pool(pool, &work).await.unwrap(), 1);
    env.broker.publish_to_worker(w.id, &mark(1)).await.unwrap();
    c.wait_for(&w.worker_topic(), &mark(1)).await;
    assert_eq!(c.received(), vec![(w.worker_topic(), mark(1))]);

    // The tenant's wildcard brings the pool's too.
    c.subscribe(&[&format!("{}#", hangar_broker::wire::tenant_prefix(w.id))]).await.unwrap();
    env.broker.publish_to_pool(pool, &work).await.unwrap();
    c.wait_for(&w.pool_topic(), &work).await;

    // Unsubscribed from the wildcard and the own topic, subscribed to the pool:
    // only the pool's arrive, after several pings.
    c.client.unsubscribe(format!("{}#", hangar_broker::wire::tenant_prefix(w.id))).await.unwrap();
    c.client.unsubscribe(w.worker_topic()).await.unwrap();
    c.subscribe(&[&w.pool_topic()]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.broker.publish_to_worker(w.id, &mark(2)).await.unwrap();
    let last = Notification::WorkAvailable { pool: pool + 1000 };
    env.broker.publish_to_pool(pool, &last).await.unwrap();
    c.wait_for(&w.pool_topic(), &last).await;
    assert!(
        !c.received().iter().any(|(_, n)| *n == mark(2)),
        "a notification on a topic it left arrived: {:?}",
        c.received()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishing_worker_is_disconnected_and_delivers_nothing() {
    let env = Env::start().await;
    let pool = env.create_pool("a").await;
    let a1 = env.create_worker(pool).await;
    let a2 = env.create_worker(pool).await;
    let mut listener = env.subscriber(&a2).await;
    let forged = hangar_broker::wire::to_json(&Notification::RunConfirmed { run: 666 });

    for topic in [a2.worker_topic(), a2.pool_topic(), a1.worker_topic(), "/hangar/probe".to_string()] {
        let mut c = env.subscriber(&a1).await;
        c.client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, forged.clone()).await.unwrap();
        let why = c.wait_closed().await;
        assert!(!why.is_empty());
        assert!(c.received().is_empty(), "{topic}: {:?}", c.received());
    }
    // With mosquitto_pub as well; QoS 1 makes it wait for an acknowledgement
    // that never comes.
    let mut args = mosquitto_args(&env, &a1);
    args.extend(["-t".into(), a2.worker_topic(), "-m".into(), forged.clone(), "-q".into(), "1".into()]);
    let out = mosquitto("mosquitto_pub", &args);
    assert!(!out.status.success(), "mosquitto_pub must fail: {}", String::from_utf8_lossy(&out.stdout));

    env.barrier(&mut [(&a2, &mut listener)]).await;
    assert!(listener.received().is_empty(), "forged messages arrived: {:?}", listener.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_receives_its_notifications_and_nothing_more() {
    let env = Env::start().await;
    let (pool_a, pool_b) = (env.create_pool("a").await, env.create_pool("b").await);
    let a1 = env.create_worker(pool_a).await;
    let b1 = env.create_worker(pool_b).await;

    let mut args = mosquitto_args(&env, &a1);
    args.extend(["-t".into(), a1.pool_topic(), "-t".into(), a1.worker_topic(), "-v".into(), "-k".into(), "10".into()]);
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args(&args);
    let sub = ChildProcess::spawn(cmd, "mosquitto_sub", env.dir.path());
    wait_for("mosquitto_sub to connect", common::SOON, || async { (env.broker.connections() == 1).then_some(()) }).await;
    // Subscriptions follow the CONNACK; resend until the first message shows.
    let work_a = Notification::WorkAvailable { pool: pool_a };
    wait_for("mosquitto_sub to receive its pool's notification", common::SOON, || async {
        env.broker.publish_to_pool(pool_a, &work_a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        sub.output().contains(&format!("{} {}", a1.pool_topic(), hangar_broker::wire::to_json(&work_a))).then_some(())
    })
    .await;
    env.broker.publish_to_pool(pool_b, &Notification::WorkAvailable { pool: pool_b }).await.unwrap();
    env.broker.publish_to_worker(b1.id, &Notification::RunCanceled { run: 4 }).await.unwrap();
    env.broker.publish_to_worker(a1.id, &Notification::RunConfirmed { run: 5 }).await.unwrap();
    let mine = format!("{} {}", a1.worker_topic(), hangar_broker::wire::to_json(&Notification::RunConfirmed { run: 5 }));
    wait_for("mosquitto_sub to receive its own message", common::SOON, || async { sub.output().contains(&mine).then_some(()) })
        .await;
    let out = sub.output();
    assert!(!out.contains("run_canceled") && !out.contains(&format!("\"pool\":{pool_b}")), "{out}");

    // mosquitto_sub on everything is cut off: it never sees a message.
    let mut args = mosquitto_args(&env, &a1);
    args.extend(["-t".into(), "#".into(), "-C".into(), "1".into(), "-W".into(), "5".into(), "-v".into()]);
    let greedy = tokio::task::spawn_blocking(move || mosquitto("mosquitto_sub", &args));
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.broker.publish_to_pool(pool_b, &Notification::WorkAvailable { pool: pool_b }).await.unwrap();
    let out = greedy.await.unwrap();
    assert!(!out.status.success(), "subscribing to # must fail");
    assert!(out.stdout.is_empty(), "got {}", String::from_utf8_lossy(&out.stdout));
}
