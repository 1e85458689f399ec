//! A queue consumer process for crash tests: consumes `work` jobs, logging when each
//! one starts and finishes into `processing_log`, so a test can SIGKILL it mid-batch
//! and then prove that no job was lost and none ran twice at the same time.
//!
//! Usage: queue-consumer HOST PORT PASSWORD_FILE CA_FILE NAME LEASE_MS WORK_MS CONCURRENCY

use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use hangar_db::queue::{Consumer, ConsumerConfig, Handlers, JobError, handler_fn};
use hangar_db::{Database, Password};

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 9 {
        eprintln!(
            "usage: queue-consumer HOST PORT PASSWORD_FILE CA_FILE NAME LEASE_MS WORK_MS CONCURRENCY"
        );
        std::process::exit(2);
    }
    hangar_certs::tls::install_default_provider();
    tracing_subscriber::fmt().with_env_filter("info").init();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let password = std::fs::read_to_string(&args[3]).expect("password file");
        let ca = std::fs::read(&args[4]).expect("CA file");
        let db = Database::new(
            &args[1],
            args[2].parse().expect("port"),
            "hangar",
            "hangar",
            Password::new(password.trim()),
            &ca,
            "queue-consumer",
        )
        .expect("database");
        let name = args[5].clone();
        let lease = Duration::from_millis(args[6].parse().expect("lease"));
        let work = Duration::from_millis(args[7].parse().expect("work"));
        let concurrency: usize = args[8].parse().expect("concurrency");
        let pool = db.pool(Some(8)).expect("pool");

        let mut handlers = Handlers::new();
        let (p, consumer_name) = (pool.clone(), name.clone());
        handlers.register(
            "work",
            handler_fn(move |job| {
                let pool = p.clone();
                let me = consumer_name.clone();
                async move {
                    let mut conn = pool.get().await.map_err(|e| JobError::from_error(&e))?;
                    let Id { id } = diesel::sql_query(
                        "INSERT INTO processing_log (job_id, consumer, started_at)
                         VALUES ($1, $2, clock_timestamp()) RETURNING id",
                    )
                    .bind::<BigInt, _>(job.id)
                    .bind::<Text, _>(&me)
                    .get_result(&mut conn)
                    .await
                    .map_err(|e| JobError::from_error(&e))?;
                    drop(conn);
                    tokio::time::sleep(work).await;
                    let mut conn = pool.get().await.map_err(|e| JobError::from_error(&e))?;
                    diesel::sql_query(
                        "UPDATE processing_log SET finished_at = clock_timestamp() WHERE id = $1",
                    )
                    .bind::<BigInt, _>(id)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| JobError::from_error(&e))?;
                    Ok(())
                }
            }),
        );
        let mut cfg = ConsumerConfig::new("default", &name);
        cfg.lease = lease;
        cfg.concurrency = concurrency;
        cfg.batch_size = 50;
        let consumer = Consumer::new(db, pool, cfg, handlers);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal");
            term.recv().await;
            s.cancel();
        });
        consumer.run(shutdown).await.expect("consumer");
    });
}
