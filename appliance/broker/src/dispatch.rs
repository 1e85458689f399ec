//! Who hears of work: when runs of a pool become READY, the bridge tells only
//! as many of this broker's connected workers as there are new runs, each on
//! its own topic, instead of the whole pool. A READY run then sets off O(1)
//! claims, not one per pool member, all but one of which would lose.
//!
//! A worker is a candidate when it is connected here and its record does not
//! say busy, drained or revoked (a claim answered with a run marks it busy, an
//! empty answer idle, and heartbeats repeat what the worker says). Among the
//! candidates, those never told come first, then those told longest ago: work
//! goes round the pool, and a worker that died before claiming is passed over
//! the next time the run is announced (the bridge announces runs that stay
//! READY again, and the workers' own poll stays the last net). A worker told
//! moments ago is not excluded: alone in its pool, it must hear of every run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use diesel::sql_types::{Array, BigInt};
use diesel_async::RunQueryDsl;
use hangar_db::{DbError, DbPool};

/// When each worker was last told of work, so that announcements take turns
/// through the pool.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    told: Mutex<HashMap<i64, Instant>>,
}

impl Turns {
    /// Up to `wanted` of `candidates`, the longest untold first. The chosen
    /// are recorded as told now.
    pub(crate) fn choose(&self, candidates: &[i64], wanted: usize, now: Instant) -> Vec<i64> {
        let mut told = self.lock();
        let mut eligible: Vec<(Option<Instant>, i64)> = candidates.iter().map(|w| (told.get(w).copied(), *w)).collect();
        // Never told (None) sorts first, then the oldest; ties by id keep it stable.
        eligible.sort_unstable();
        eligible.truncate(wanted);
        let chosen: Vec<i64> = eligible.into_iter().map(|(_, w)| w).collect();
        for w in &chosen {
            told.insert(*w, now);
        }
        chosen
    }

    /// Forgets workers that are no longer connected, so the map stays the size
    /// of the fleet connected here.
    pub(crate) fn keep_only(&self, connected: &[i64]) {
        let connected: std::collections::HashSet<i64> = connected.iter().copied().collect();
        self.lock().retain(|w, _| connected.contains(w));
    }

    /// Forgets who was told: after a break in listening, anything may have
    /// been missed.
    pub(crate) fn forget_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.told.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Those of `workers` whose record does not rule out work: not busy, not
/// drained, not revoked.
pub(crate) async fn available(db: &DbPool, workers: &[i64]) -> Result<Vec<i64>, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    if workers.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = db.get().await?;
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT id FROM workers WHERE id = ANY($1) AND status NOT IN ('busy', 'drained') \
         AND NOT drained AND revoked_at IS NULL",
    )
    .bind::<Array<BigInt>, _>(workers)
    .load(&mut conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn turns_go_round_the_pool_longest_untold_first() {
        let turns = Turns::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let all = [1, 2, 3, 4];
        assert_eq!(turns.choose(&all, 1, t0), vec![1]);
        assert_eq!(turns.choose(&all, 2, t0 + s(1)), vec![2, 3]);
        // 4 was never told, then 1 is the longest untold.
        assert_eq!(turns.choose(&all, 2, t0 + s(2)), vec![4, 1]);
        assert_eq!(turns.choose(&all, 1, t0 + s(3)), vec![2]);
        assert_eq!(turns.choose(&all, 0, t0 + s(4)), Vec::<i64>::new());
        // More runs than workers: each is told once.
        assert_eq!(turns.choose(&all, 9, t0 + s(5)).len(), 4);
        // A worker alone in its pool hears of every run, however soon after the last.
        assert_eq!(turns.choose(&[7], 1, t0), vec![7]);
        assert_eq!(turns.choose(&[7], 1, t0), vec![7]);
    }

    #[test]
    fn turns_forget_who_left() {
        let turns = Turns::default();
        let t0 = Instant::now();
        assert_eq!(turns.choose(&[1, 2], 2, t0), vec![1, 2]);
        turns.keep_only(&[2]);
        // 1 came back: it counts as never told, so it goes before 2.
        assert_eq!(turns.choose(&[1, 2], 1, t0 + Duration::from_secs(1)), vec![1]);
    }
}
