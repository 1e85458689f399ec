//! Stack dependencies: a stack depends on others (a DAG), and may take some
//! of their outputs as its Terraform variables. Every change of the graph
//! takes one transaction-scoped advisory lock, so two changes made at once
//! cannot close a cycle between them; a change that would close one is
//! refused with the cycle.
//!
//! Where a stack stands with its dependencies is read from their tracked
//! runs: a dependency is *applied* when its newest tracked run finished,
//! *running* while that run has not ended, *stopped* when it failed (or was
//! discarded or canceled), and *never applied* without any. Upstream is read
//! transitively, so a stack two levels below a failed apply says so too.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hangar_db::runs::RunRow;
use hangar_db::schema::{runs, stack_dependencies as deps, stacks};
use hangar_types::{RunKind, RunState};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::stacks::StackRow;

/// At most this many outputs are passed along one dependency.
pub const MAX_OUTPUTS: usize = 50;
/// At most this many dependencies per stack.
pub const MAX_DEPENDENCIES: usize = 50;

/// An output of the dependency passed to the dependent as `TF_VAR_<input>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRef {
    pub output: String,
    pub input: String,
}

/// A name Terraform accepts for an output or a variable.
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// One dependency of a stack: the stack it depends on and the outputs it takes.
#[derive(Debug, Clone)]
pub struct Dependency {
    pub on: StackRow,
    pub outputs: Vec<OutputRef>,
}

/// The dependencies of `stack`, by slug.
pub async fn dependencies_of(conn: &mut AsyncPgConnection, stack: i64) -> Result<Vec<Dependency>, StoreError> {
    let rows: Vec<(serde_json::Value, StackRow)> = deps::table
        .inner_join(stacks::table.on(stacks::id.eq(deps::depends_on_id)))
        .filter(deps::stack_id.eq(stack))
        .order(stacks::slug.asc())
        .select((deps::outputs, StackRow::as_select()))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(outputs, on)| Dependency { on, outputs: serde_json::from_value(outputs).unwrap_or_default() })
        .collect())
}

/// The stacks that depend on `stack` directly, by slug.
pub async fn dependents_of(conn: &mut AsyncPgConnection, stack: i64) -> Result<Vec<StackRow>, StoreError> {
    Ok(deps::table
        .inner_join(stacks::table.on(stacks::id.eq(deps::stack_id)))
        .filter(deps::depends_on_id.eq(stack))
        .order(stacks::slug.asc())
        .select(StackRow::as_select())
        .load(conn)
        .await?)
}

/// Every edge of the graph: (stack, depends on).
async fn edges(conn: &mut AsyncPgConnection) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(deps::table.select((deps::stack_id, deps::depends_on_id)).load(conn).await?)
}

/// Why a dependency was not saved.
#[derive(Debug)]
pub enum Refusal {
    /// The stacks of the cycle it would close, by slug, from the dependent
    /// back to itself.
    Cycle(Vec<String>),
    TooMany,
}

/// Makes `stack` depend on `on`, passing `outputs` (replacing the outputs of
/// an existing dependency).
pub async fn add(
    conn: &mut AsyncPgConnection,
    stack: i64,
    on: i64,
    outputs: &[OutputRef],
) -> Result<Result<(), Refusal>, StoreError> {
    let outputs = serde_json::to_value(outputs).unwrap_or_default();
    conn.transaction::<_, StoreError, _>(async |c| {
        lock_graph(c).await?;
        let all = edges(c).await?;
        if let Some(cycle) = cycle_closed_by(&all, stack, on) {
            let slugs: HashMap<i64, String> =
                stacks::table.filter(stacks::id.eq_any(&cycle)).select((stacks::id, stacks::slug)).load(c).await?.into_iter().collect();
            return Ok(Err(Refusal::Cycle(cycle.iter().map(|id| slugs.get(id).cloned().unwrap_or_else(|| id.to_string())).collect())));
        }
        let existing = all.iter().filter(|(s, o)| *s == stack && *o != on).count();
        if existing >= MAX_DEPENDENCIES {
            return Ok(Err(Refusal::TooMany));
        }
        diesel::insert_into(deps::table)
            .values((deps::stack_id.eq(stack), deps::depends_on_id.eq(on), deps::outputs.eq(&outputs)))
            .on_conflict((deps::stack_id, deps::depends_on_id))
            .do_update()
            .set(deps::outputs.eq(&outputs))
            .execute(c)
            .await?;
        Ok(Ok(()))
    })
    .await
}

/// Serializes every change of the graph (an edge added, a stack deleted)
/// until the transaction ends.
pub async fn lock_graph(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('hangar.stack_dependencies'))").execute(conn).await?;
    Ok(())
}

/// Removes the dependency of `stack` on `on`; whether there was one.
pub async fn remove(conn: &mut AsyncPgConnection, stack: i64, on: i64) -> Result<bool, StoreError> {
    let n = diesel::delete(deps::table.filter(deps::stack_id.eq(stack)).filter(deps::depends_on_id.eq(on))).execute(conn).await?;
    Ok(n == 1)
}

/// The cycle that the edge `stack → on` would close: `[stack, on, …, stack]`
/// when `on` already depends on `stack`, directly or not (the shortest such
/// path); `None` when the graph stays acyclic.
pub fn cycle_closed_by(edges: &[(i64, i64)], stack: i64, on: i64) -> Option<Vec<i64>> {
    if stack == on {
        return Some(vec![stack, stack]);
    }
    let mut out: HashMap<i64, Vec<i64>> = HashMap::new();
    for (s, o) in edges {
        out.entry(*s).or_default().push(*o);
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    // Breadth first from `on` along "depends on" to find `stack`.
    let mut came_from: HashMap<i64, i64> = HashMap::new();
    let mut queue = VecDeque::from([on]);
    let mut seen = BTreeSet::from([on]);
    while let Some(n) = queue.pop_front() {
        if n == stack {
            let mut path = vec![stack];
            let mut at = stack;
            while at != on {
                at = came_from[&at];
                path.push(at);
            }
            path.push(stack);
            path.reverse();
            return Some(path);
        }
        for next in out.get(&n).into_iter().flatten() {
            if seen.insert(*next) {
                came_from.insert(*next, n);
                queue.push_back(*next);
            }
        }
    }
    None
}

/// Where a stack's dependency (or one further upstream) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Its newest tracked run finished, at that time.
    Applied { run: i64, at: DateTime<Utc> },
    /// Its newest tracked run has not ended.
    Running { run: i64, state: RunState },
    /// Its newest tracked run ended without applying.
    Stopped { run: i64, state: RunState, reason: Option<String> },
    /// It never had a tracked run.
    NeverApplied,
}

impl Standing {
    fn of(run: Option<&RunRow>) -> Standing {
        match run {
            None => Standing::NeverApplied,
            Some(r) if r.state() == RunState::Finished => Standing::Applied { run: r.id, at: r.updated_at },
            Some(r) if !r.state().is_terminal() => Standing::Running { run: r.id, state: r.state() },
            Some(r) => Standing::Stopped { run: r.id, state: r.state(), reason: r.failure_reason.clone() },
        }
    }
}

/// The newest tracked run of each of `stacks`.
async fn newest_tracked(conn: &mut AsyncPgConnection, stacks: &[i64]) -> Result<HashMap<i64, RunRow>, StoreError> {
    let rows: Vec<RunRow> = runs::table
        .filter(runs::stack_id.eq_any(stacks))
        .filter(runs::kind.eq(RunKind::Tracked.as_str()))
        .distinct_on(runs::stack_id)
        .order((runs::stack_id, runs::id.desc()))
        .select(RunRow::as_select())
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.stack_id, r)).collect())
}

/// The standing of each direct dependency of `stack`, by its id.
pub async fn standings(conn: &mut AsyncPgConnection, stack: i64) -> Result<BTreeMap<i64, Standing>, StoreError> {
    let ids: Vec<i64> = deps::table.filter(deps::stack_id.eq(stack)).select(deps::depends_on_id).load(conn).await?;
    let newest = newest_tracked(conn, &ids).await?;
    Ok(ids.into_iter().map(|id| (id, Standing::of(newest.get(&id)))).collect())
}

/// Why a stack's chain is held, read upstream through all its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// An upstream stack is applying (or waiting to): this stack's run
    /// follows it.
    Waiting { on: String, run: i64, state: RunState },
    /// An upstream stack's last apply did not finish: the chain stopped there.
    Stopped { at: String, run: i64, state: RunState, reason: Option<String> },
    /// A direct dependency was never applied.
    NeverApplied { on: String },
}

impl Held {
    /// One line, as the console and the API say it.
    pub fn message(&self) -> String {
        // A veiled hold names no run (its run is 0).
        let its = |run: &i64| if *run == 0 { "its run".to_string() } else { format!("its run {run}") };
        match self {
            Held::Waiting { on, run, state } => format!("waiting on {on}: {} is {}", its(run), state.as_str()),
            Held::Stopped { at, run, state, reason: Some(r) } => {
                format!("the chain stopped at {at}: {} ended {} ({r})", its(run), state.as_str())
            }
            Held::Stopped { at, run, state, reason: None } => format!("the chain stopped at {at}: {} ended {}", its(run), state.as_str()),
            Held::NeverApplied { on } => format!("dependency {on} was never applied"),
        }
    }

    /// The upstream stack and its run.
    pub fn upstream(&self) -> (&str, Option<i64>) {
        match self {
            Held::Waiting { on, run, .. } => (on, Some(*run)),
            Held::Stopped { at, run, .. } => (at, Some(*run)),
            Held::NeverApplied { on } => (on, None),
        }
    }

    /// The same hold as told to someone who cannot see the upstream stack:
    /// neither its name nor its run, only that something upstream holds it.
    pub fn veiled(self) -> Held {
        const UNSEEN: &str = "a stack of a space you cannot see";
        match self {
            Held::Waiting { state, .. } => Held::Waiting { on: UNSEEN.into(), run: 0, state },
            Held::Stopped { state, .. } => Held::Stopped { at: UNSEEN.into(), run: 0, state, reason: None },
            Held::NeverApplied { .. } => Held::NeverApplied { on: UNSEEN.into() },
        }
    }

    /// Whether this hold was veiled.
    pub fn is_veiled(&self) -> bool {
        self.upstream().1 == Some(0)
    }
}

/// The hold of `stack`, veiled unless `sees` the upstream stack's space.
pub async fn held_as_seen(
    conn: &mut AsyncPgConnection,
    stack: i64,
    sees: impl Fn(i64) -> bool,
) -> Result<Option<Held>, StoreError> {
    let Some(h) = held(conn, stack).await? else { return Ok(None) };
    let upstream = crate::stacks::stack_by_slug(conn, h.upstream().0).await?;
    Ok(Some(if upstream.is_some_and(|s| sees(s.space_id)) { h } else { h.veiled() }))
}

/// Whether anything upstream of `stack` holds it, the nearest first: what
/// its page shows. `None` when every stack upstream is applied.
pub async fn held(conn: &mut AsyncPgConnection, stack: i64) -> Result<Option<Held>, StoreError> {
    let all = edges(conn).await?;
    if !all.iter().any(|(s, _)| *s == stack) {
        return Ok(None);
    }
    // Upstream, nearest first.
    let mut order = Vec::new();
    let mut seen = BTreeSet::from([stack]);
    let mut queue = VecDeque::from([stack]);
    while let Some(n) = queue.pop_front() {
        let mut ups: Vec<i64> = all.iter().filter(|(s, _)| *s == n).map(|(_, o)| *o).collect();
        ups.sort_unstable();
        for up in ups {
            if seen.insert(up) {
                order.push(up);
                queue.push_back(up);
            }
        }
    }
    let newest = newest_tracked(conn, &order).await?;
    let slugs: HashMap<i64, String> =
        stacks::table.filter(stacks::id.eq_any(&order)).select((stacks::id, stacks::slug)).load(conn).await?.into_iter().collect();
    let slug = |id: i64| slugs.get(&id).cloned().unwrap_or_else(|| id.to_string());
    let direct: BTreeSet<i64> = all.iter().filter(|(s, _)| *s == stack).map(|(_, o)| *o).collect();
    let mut found: Option<Held> = None;
    for id in order {
        match Standing::of(newest.get(&id)) {
            Standing::Running { run, state } => return Ok(Some(Held::Waiting { on: slug(id), run, state })),
            Standing::Stopped { run, state, reason } if found.is_none() => {
                found = Some(Held::Stopped { at: slug(id), run, state, reason })
            }
            Standing::NeverApplied if found.is_none() && direct.contains(&id) => found = Some(Held::NeverApplied { on: slug(id) }),
            _ => {}
        }
    }
    Ok(found)
}

/// Locks the stack's row for the rest of the transaction: deciding whether
/// to start a dependent's run is done under it, once.
pub async fn lock_stack(conn: &mut AsyncPgConnection, stack: i64) -> Result<Option<StackRow>, StoreError> {
    Ok(stacks::table.find(stack).for_update().select(StackRow::as_select()).first(conn).await.optional()?)
}

/// Whether `stack` had a tracked run created after `at`.
pub async fn tracked_run_since(conn: &mut AsyncPgConnection, stack: i64, at: DateTime<Utc>) -> Result<Option<i64>, StoreError> {
    Ok(runs::table
        .filter(runs::stack_id.eq(stack))
        .filter(runs::kind.eq(RunKind::Tracked.as_str()))
        .filter(runs::created_at.gt(at))
        .select(runs::id)
        .first(conn)
        .await
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_veiled_hold_names_neither_the_stack_nor_its_run() {
        let h = Held::Stopped { at: "network".into(), run: 42, state: RunState::Failed, reason: Some("quota".into()) }.veiled();
        assert!(h.is_veiled());
        assert_eq!(h.message(), "the chain stopped at a stack of a space you cannot see: its run ended FAILED");
        let w = Held::Waiting { on: "dns".into(), run: 7, state: RunState::Applying };
        assert!(!w.is_veiled());
        assert_eq!(w.veiled().message(), "waiting on a stack of a space you cannot see: its run is APPLYING");
    }

    #[test]
    fn an_edge_that_closes_a_cycle_names_it() {
        // app → cluster → network, app → dns → network.
        let edges = [(4, 2), (2, 1), (4, 3), (3, 1)];
        assert_eq!(cycle_closed_by(&edges, 1, 4), Some(vec![1, 4, 2, 1]));
        assert_eq!(cycle_closed_by(&edges, 2, 4), Some(vec![2, 4, 2]));
        assert_eq!(cycle_closed_by(&edges, 3, 3), Some(vec![3, 3]));
        // A diamond is no cycle; neither is an edge that is there already.
        assert_eq!(cycle_closed_by(&edges, 4, 1), None);
        assert_eq!(cycle_closed_by(&edges, 2, 1), None);
        assert_eq!(cycle_closed_by(&[], 1, 2), None);
    }

    #[test]
    fn identifiers_are_terraforms() {
        for ok in ["subnet", "_x", "a-b_c9"] {
            assert!(valid_identifier(ok), "{ok}");
        }
        for bad in ["", "9a", "a b", "a.b", "a=b", &"a".repeat(129), "ü"] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }
}
