//! The typed job set against the SQL that also enqueues jobs: the
//! `runs_vcs_status` trigger of the `vcs` migration writes a `vcs.status` job
//! that must be exactly what `hangar_db::jobs::Job` defines (kind, payload and
//! attempts), or the drain would refuse it as malformed.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use hangar_db::jobs::{Job, JobKind, RunRef};
use hangar_db::runs::{self, NewRun};
use hangar_db::schema::{jobs, stacks, vcs_integrations, vcs_runs};
use hangar_db::migrate;
use hangar_testkit::PgServer;
use hangar_types::{RunKind, RunState};

#[tokio::test]
async fn the_status_trigger_enqueues_the_rust_definition_of_its_job() {
    let pg = PgServer::start().await;
    migrate::run_pending(&pg.database()).await.unwrap();
    let pool = pg.database().pool(Some(2)).unwrap();
    let mut c = pool.get().await.unwrap();
    let stack: i64 = diesel::insert_into(stacks::table)
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
    let integration: i64 = diesel::insert_into(vcs_integrations::table)
        .values((
            vcs_integrations::name.eq("forge"),
            vcs_integrations::kind.eq("gitea"),
            vcs_integrations::base_url.eq("https://git.example"),
        ))
        .returning(vcs_integrations::id)
        .get_result(&mut c)
        .await
        .unwrap();
    let new = |kind| NewRun {
        stack_id: stack,
        kind,
        commit_sha: "a".repeat(40),
        branch: "main".into(),
        command: None,
        triggered_by: "test".into(),
    };
    let from_git = runs::create(&mut c, &new(RunKind::Tracked), "test").await.unwrap();
    let plain = runs::create(&mut c, &new(RunKind::Proposed), "test").await.unwrap();
    diesel::insert_into(vcs_runs::table)
        .values((
            vcs_runs::run_id.eq(from_git.id),
            vcs_runs::integration_id.eq(integration),
            vcs_runs::repository.eq("ops/net"),
        ))
        .execute(&mut c)
        .await
        .unwrap();

    runs::transition(&mut c, from_git.id, None, RunState::Canceled, "test", "test").await.unwrap();
    runs::transition(&mut c, plain.id, None, RunState::Canceled, "test", "test").await.unwrap();

    let made: Vec<(String, serde_json::Value, i32)> = jobs::table
        .filter(jobs::kind.eq(JobKind::VcsStatus.as_str()))
        .select((jobs::kind, jobs::payload, jobs::max_attempts))
        .load(&mut c)
        .await
        .unwrap();
    assert_eq!(made.len(), 1, "only the run that came from a git server reports: {made:?}");
    let (kind, payload, attempts) = &made[0];
    let job = Job::parse(kind, payload).unwrap();
    assert_eq!(job, Job::VcsStatus(RunRef { run: from_git.id }));
    assert_eq!(*payload, job.payload(), "the trigger writes the payload as the Rust side does");
    assert_eq!(*attempts, JobKind::VcsStatus.max_attempts());
    assert_eq!(*attempts, job.to_new().max_attempts);
}
