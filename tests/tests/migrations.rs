//! Migrations apply from an empty database and from every earlier version, are
//! idempotent, and match what the code's schema expects.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use hangar_db::migrate;
use hangar_db::schema::*;
use hangar_testkit::PgServer;

#[tokio::test]
async fn from_empty_then_nothing_left_to_do() {
    let pg = PgServer::start().await;
    let db = pg.database();
    let known = migrate::known_versions();
    assert!(!known.is_empty());

    let applied = migrate::run_pending(&db).await.unwrap();
    assert_eq!(applied, known);
    assert_eq!(migrate::applied_versions(&db).await.unwrap(), known);
    assert!(migrate::run_pending(&db).await.unwrap().is_empty(), "second run must apply nothing");

    // Every table and column the code names exists.
    let mut conn = db.connect().await.unwrap();
    users::table.select(users::all_columns).limit(0).load::<(i64, String, String, String, String, bool, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>(&mut conn).await.unwrap();
    api_keys::table.select(api_keys::all_columns).limit(0).execute(&mut conn).await.unwrap();
    worker_pools::table.select(worker_pools::all_columns).limit(0).execute(&mut conn).await.unwrap();
    workers::table.select(workers::all_columns).limit(0).execute(&mut conn).await.unwrap();
    stacks::table.select(stacks::all_columns).limit(0).execute(&mut conn).await.unwrap();
    runs::table.select(runs::all_columns).limit(0).execute(&mut conn).await.unwrap();
    run_events::table.select(run_events::all_columns).limit(0).execute(&mut conn).await.unwrap();
    jobs::table.select(jobs::all_columns).limit(0).execute(&mut conn).await.unwrap();
    job_keys::table.select(job_keys::all_columns).limit(0).execute(&mut conn).await.unwrap();
    audit_events::table.select(audit_events::all_columns).limit(0).execute(&mut conn).await.unwrap();
    policies::table.select(policies::all_columns).limit(0).execute(&mut conn).await.unwrap();
    policy_versions::table.select(policy_versions::all_columns).limit(0).execute(&mut conn).await.unwrap();
    stack_policies::table.select(stack_policies::all_columns).limit(0).execute(&mut conn).await.unwrap();
    policy_evaluations::table.select(policy_evaluations::all_columns).limit(0).execute(&mut conn).await.unwrap();
    run_reviews::table.select(run_reviews::all_columns).limit(0).execute(&mut conn).await.unwrap();
    modules::table.select(modules::all_columns).limit(0).execute(&mut conn).await.unwrap();
    module_versions::table.select(module_versions::all_columns).limit(0).execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn from_every_earlier_version() {
    let pg = PgServer::start().await;
    let known = migrate::known_versions();
    for (i, version) in known.iter().enumerate() {
        let db = pg.create_database(&format!("from_{i}")).await;
        let first = migrate::run_up_to(&db, Some(version)).await.unwrap();
        assert_eq!(first, known[..=i].to_vec());
        let rest = migrate::run_pending(&db).await.unwrap();
        assert_eq!(rest, known[i + 1..].to_vec());
        assert_eq!(migrate::applied_versions(&db).await.unwrap(), known);
    }
}

#[tokio::test]
async fn every_step_can_be_applied_twice() {
    let pg = PgServer::start().await;
    let db = pg.create_database("twice").await;
    let mut conn = db.connect().await.unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut steps: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    steps.sort();
    assert_eq!(steps.len(), migrate::known_versions().len());
    for step in steps {
        let sql = std::fs::read_to_string(step.join("up.sql")).unwrap();
        for round in 0..2 {
            let sql = sql.clone();
            conn.transaction::<_, diesel::result::Error, _>(async move |c| c.batch_execute(&sql).await)
                .await
            .unwrap_or_else(|e| panic!("{} failed on application {}: {e}", step.display(), round + 1));
        }
    }
}

#[tokio::test]
async fn concurrent_migrators_do_not_race() {
    let pg = PgServer::start().await;
    let db = pg.database();
    let (a, b, c) = tokio::join!(
        migrate::run_pending(&db),
        migrate::run_pending(&db),
        migrate::run_pending(&db)
    );
    let mut total: Vec<String> = [a.unwrap(), b.unwrap(), c.unwrap()].concat();
    total.sort();
    assert_eq!(total, migrate::known_versions(), "each step applied exactly once");
}
