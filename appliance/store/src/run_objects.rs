//! The objects a stack's runs leave in the object store — log chunks, the
//! sealed plan and its JSON, a sealed `errored.tfstate` — found before the stack's rows go
//! (the rows cascade away with the stack) and deleted once they are gone.
//!
//! Rows first, then objects: a stack whose deletion failed keeps every log it
//! had, and an object whose deletion failed is logged with its key for an
//! operator, never silently kept.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::runs;
use hangar_objects::ObjectStore;
use hangar_types::worker::Phase;

use crate::StoreError;

#[derive(QueryableByName)]
struct Chunk {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    run_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    phase: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

/// The object key of a run's log chunk. Zero-padded so that keys list in chunk order.
pub fn log_chunk_key(run: i64, phase: Phase, seq: u64) -> String {
    format!("runs/{run}/logs/{}/{seq:08}", phase.as_str())
}

/// Every object key the runs of stack `stack_id` hold.
pub async fn keys_of_stack(conn: &mut AsyncPgConnection, stack_id: i64) -> Result<Vec<String>, StoreError> {
    // The schema does not let these two tables meet in one diesel query.
    let chunks: Vec<Chunk> = diesel::sql_query(
        "SELECT c.run_id, c.phase, c.seq FROM run_log_chunks c JOIN runs r ON r.id = c.run_id WHERE r.stack_id = $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(stack_id)
    .load(conn)
    .await?;
    let mut keys = Vec::with_capacity(chunks.len());
    for Chunk { run_id: run, phase, seq } in chunks {
        match Phase::parse(&phase) {
            Some(p) => keys.push(log_chunk_key(run, p, seq as u64)),
            None => tracing::warn!(run_id = run, %phase, seq, "a log chunk row names no known phase; its object is not deleted"),
        }
    }
    let run_keys: Vec<(Option<String>, Option<String>, Option<String>)> = runs::table
        .filter(runs::stack_id.eq(stack_id))
        .select((runs::plan_key, runs::errored_state_key, runs::plan_json_key))
        .load(conn)
        .await?;
    keys.extend(
        run_keys.into_iter().flat_map(|(plan, errored, plan_json)| plan.into_iter().chain(errored).chain(plan_json)),
    );
    Ok(keys)
}

/// Deletes `keys` (a deleted stack's), going on past failures; returns how
/// many could not be deleted.
pub async fn delete_objects(objects: &ObjectStore, stack: &str, keys: &[String]) -> usize {
    let mut failed = 0;
    for key in keys {
        if let Err(e) = objects.delete(key).await {
            failed += 1;
            tracing::warn!(stack, key = %key, error = %hangar_types::error_chain(&e), "an object of a deleted stack was left in the object store");
        }
    }
    if !keys.is_empty() {
        tracing::info!(stack, objects = keys.len(), failed, "objects of a deleted stack's runs removed");
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_number() {
        assert_eq!(log_chunk_key(7, Phase::Planning, 12), "runs/7/logs/planning/00000012");
        assert!(log_chunk_key(7, Phase::Planning, 9) < log_chunk_key(7, Phase::Planning, 10));
    }
}
