//! Policies, their versions and attachments, every evaluation with its
//! sealed input, and the reviews of runs. Compiling and evaluating Rego is
//! `hangar-policy`'s; this module only keeps what was saved and decided.
//!
//! Attachment: by hand (`stack_policies`), or by label: a policy labelled
//! `autoattach:<label>` applies to every stack carrying `<label>`, and
//! `autoattach:*` to every stack. Spaces, when they come, will scope both.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{policies, policy_evaluations, policy_versions, run_reviews, stack_policies};

use crate::StoreError;
use crate::secrets::Sealed;

/// The label prefix that attaches a policy to stacks by their labels.
pub const AUTOATTACH_PREFIX: &str = "autoattach:";

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = policies)]
pub struct PolicyRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub labels: Vec<String>,
    pub space_id: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = policy_versions)]
pub struct PolicyVersionRow {
    pub id: i64,
    pub policy_id: i64,
    pub version: i32,
    pub body: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// Whether a policy with `labels` applies to a stack with `stack_labels` by label.
pub fn autoattaches(labels: &[String], stack_labels: &[String]) -> bool {
    labels.iter().filter_map(|l| l.strip_prefix(AUTOATTACH_PREFIX)).any(|l| l == "*" || stack_labels.iter().any(|s| s == l))
}

/// A policy as created.
#[derive(Debug, Clone, Copy)]
pub struct NewPolicy<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub description: &'a str,
    pub labels: &'a [String],
    pub space: i64,
}

/// A new policy with its first version.
pub async fn create(
    conn: &mut AsyncPgConnection,
    new: NewPolicy<'_>,
    body: &str,
    actor: &str,
) -> Result<(PolicyRow, PolicyVersionRow), StoreError> {
    let policy: PolicyRow = diesel::insert_into(policies::table)
        .values((
            policies::space_id.eq(new.space),
            policies::name.eq(new.name),
            policies::kind.eq(new.kind),
            policies::description.eq(new.description),
            policies::labels.eq(new.labels),
        ))
        .returning(PolicyRow::as_returning())
        .get_result(conn)
        .await?;
    let version = insert_version(conn, policy.id, 1, body, actor).await?;
    Ok((policy, version))
}

async fn insert_version(
    conn: &mut AsyncPgConnection,
    policy_id: i64,
    version: i32,
    body: &str,
    actor: &str,
) -> Result<PolicyVersionRow, StoreError> {
    Ok(diesel::insert_into(policy_versions::table)
        .values((
            policy_versions::policy_id.eq(policy_id),
            policy_versions::version.eq(version),
            policy_versions::body.eq(body),
            policy_versions::created_by.eq(actor),
        ))
        .returning(PolicyVersionRow::as_returning())
        .get_result(conn)
        .await?)
}

/// Saves `body` as the policy's next version (and new labels or description
/// when given). The policy row is locked, so concurrent saves number in turn.
pub async fn save(
    conn: &mut AsyncPgConnection,
    policy_id: i64,
    body: Option<&str>,
    labels: Option<&[String]>,
    description: Option<&str>,
    actor: &str,
) -> Result<(PolicyRow, Option<PolicyVersionRow>), StoreError> {
    let current: PolicyRow =
        policies::table.find(policy_id).for_update().select(PolicyRow::as_select()).get_result(conn).await?;
    let version = match body {
        Some(body) => {
            let last: Option<i32> = policy_versions::table
                .filter(policy_versions::policy_id.eq(policy_id))
                .select(diesel::dsl::max(policy_versions::version))
                .first(conn)
                .await?;
            Some(insert_version(conn, policy_id, last.unwrap_or(0) + 1, body, actor).await?)
        }
        None => None,
    };
    let row: PolicyRow = diesel::update(policies::table.find(policy_id))
        .set((
            policies::labels.eq(labels.map(<[String]>::to_vec).unwrap_or(current.labels)),
            policies::description.eq(description.map(str::to_string).unwrap_or(current.description)),
            policies::updated_at.eq(diesel::dsl::now),
        ))
        .returning(PolicyRow::as_returning())
        .get_result(conn)
        .await?;
    Ok((row, version))
}

pub async fn by_name(conn: &mut AsyncPgConnection, name: &str) -> Result<Option<PolicyRow>, StoreError> {
    Ok(policies::table.filter(policies::name.eq(name)).select(PolicyRow::as_select()).first(conn).await.optional()?)
}

/// Every policy, by name.
pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<PolicyRow>, StoreError> {
    Ok(policies::table.order(policies::name.asc()).select(PolicyRow::as_select()).load(conn).await?)
}

/// A policy's versions, newest first.
pub async fn versions(conn: &mut AsyncPgConnection, policy_id: i64) -> Result<Vec<PolicyVersionRow>, StoreError> {
    Ok(policy_versions::table
        .filter(policy_versions::policy_id.eq(policy_id))
        .order(policy_versions::version.desc())
        .select(PolicyVersionRow::as_select())
        .load(conn)
        .await?)
}

/// Attaches a policy to a stack by hand; `false` when it already was.
pub async fn attach(conn: &mut AsyncPgConnection, stack_id: i64, policy_id: i64) -> Result<bool, StoreError> {
    let n = diesel::insert_into(stack_policies::table)
        .values((stack_policies::stack_id.eq(stack_id), stack_policies::policy_id.eq(policy_id)))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Detaches a hand-attached policy; `false` when it was not attached by hand.
pub async fn detach(conn: &mut AsyncPgConnection, stack_id: i64, policy_id: i64) -> Result<bool, StoreError> {
    let n = diesel::delete(
        stack_policies::table.filter(stack_policies::stack_id.eq(stack_id)).filter(stack_policies::policy_id.eq(policy_id)),
    )
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// The ids of the stacks a policy is attached to by hand.
pub async fn attached_stack_ids(conn: &mut AsyncPgConnection, policy_id: i64) -> Result<Vec<i64>, StoreError> {
    Ok(stack_policies::table
        .filter(stack_policies::policy_id.eq(policy_id))
        .order(stack_policies::stack_id.asc())
        .select(stack_policies::stack_id)
        .load(conn)
        .await?)
}

/// The policies of `kind` that apply to a stack (by hand or by its labels),
/// each with its latest version, by name. Only policies of the stack's space
/// or a space above it apply: a team's policy never reaches a sibling's stacks.
pub async fn applying_to(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
    stack_labels: &[String],
    kind: &str,
) -> Result<Vec<(PolicyRow, PolicyVersionRow)>, StoreError> {
    let by_hand: HashSet<i64> = stack_policies::table
        .filter(stack_policies::stack_id.eq(stack_id))
        .select(stack_policies::policy_id)
        .load::<i64>(conn)
        .await?
        .into_iter()
        .collect();
    let candidates: Vec<PolicyRow> = policies::table
        .filter(policies::kind.eq(kind))
        .order(policies::name.asc())
        .select(PolicyRow::as_select())
        .load(conn)
        .await?;
    let space: Option<i64> =
        hangar_db::schema::stacks::table.find(stack_id).select(hangar_db::schema::stacks::space_id).first(conn).await.optional()?;
    let above = match space {
        Some(s) => crate::spaces::ancestors(conn, s).await?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for p in candidates
        .into_iter()
        .filter(|p| above.contains(&p.space_id))
        .filter(|p| by_hand.contains(&p.id) || autoattaches(&p.labels, stack_labels))
    {
        let latest: Option<PolicyVersionRow> = policy_versions::table
            .filter(policy_versions::policy_id.eq(p.id))
            .order(policy_versions::version.desc())
            .select(PolicyVersionRow::as_select())
            .first(conn)
            .await
            .optional()?;
        if let Some(v) = latest {
            out.push((p, v));
        }
    }
    Ok(out)
}

/// Largest input kept (sealed) with an evaluation, for replay. Beyond it the
/// decision is still recorded, its input only measured.
pub const MAX_RECORDED_INPUT: usize = 8 * 1024 * 1024;

/// The context an evaluation's input is sealed under: it opens only as that run's.
pub fn input_context(run: i64) -> String {
    format!("run:{run}:policy-input")
}

/// The context of a recorded input: its run's, or for a push that made no
/// run, its stack's.
pub fn recorded_input_context(e: &EvaluationRow) -> String {
    match (e.run_id, e.stack_id) {
        (Some(run), _) => input_context(run),
        (None, Some(stack)) => push_input_context(stack),
        (None, None) => "policy-input".to_string(),
    }
}

/// The context a push policy's input is sealed under when the push made no
/// run: it opens only as that stack's.
pub fn push_input_context(stack: i64) -> String {
    format!("stack:{stack}:push-policy-input")
}

/// An evaluation to record.
#[derive(Debug, Clone)]
pub struct NewEvaluation {
    /// The run decided about; `None` only for a push that made no run.
    pub run_id: Option<i64>,
    /// The stack decided about, for push policies.
    pub stack_id: Option<i64>,
    pub policy_id: i64,
    pub policy_version_id: i64,
    pub policy_name: String,
    pub policy_version: i32,
    pub kind: String,
    pub result: String,
    /// `[{"level", "text"}]`
    pub messages: serde_json::Value,
    pub error: Option<String>,
    pub duration_us: i64,
    pub input_bytes: i64,
    /// `None` when the input was over the size kept.
    pub input: Option<Sealed>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = policy_evaluations)]
pub struct EvaluationRow {
    pub id: i64,
    pub run_id: Option<i64>,
    pub stack_id: Option<i64>,
    pub policy_id: Option<i64>,
    pub policy_name: String,
    pub policy_version: i32,
    pub kind: String,
    pub result: String,
    pub messages: serde_json::Value,
    pub error: Option<String>,
    pub duration_us: i64,
    pub input_bytes: i64,
    pub created_at: DateTime<Utc>,
}

pub async fn record_evaluation(conn: &mut AsyncPgConnection, e: &NewEvaluation) -> Result<EvaluationRow, StoreError> {
    Ok(diesel::insert_into(policy_evaluations::table)
        .values((
            policy_evaluations::run_id.eq(e.run_id),
            policy_evaluations::stack_id.eq(e.stack_id),
            policy_evaluations::policy_id.eq(e.policy_id),
            policy_evaluations::policy_version_id.eq(e.policy_version_id),
            policy_evaluations::policy_name.eq(&e.policy_name),
            policy_evaluations::policy_version.eq(e.policy_version),
            policy_evaluations::kind.eq(&e.kind),
            policy_evaluations::result.eq(&e.result),
            policy_evaluations::messages.eq(&e.messages),
            policy_evaluations::error.eq(&e.error),
            policy_evaluations::duration_us.eq(e.duration_us),
            policy_evaluations::input_bytes.eq(e.input_bytes),
            policy_evaluations::input_sealed.eq(e.input.as_ref().map(|s| s.bytes.as_slice())),
            policy_evaluations::input_data_key.eq(e.input.as_ref().map(|s| s.data_key_id)),
        ))
        .returning(EvaluationRow::as_returning())
        .get_result(conn)
        .await?)
}

/// A run's evaluations, oldest first.
pub async fn evaluations_of_run(conn: &mut AsyncPgConnection, run: i64) -> Result<Vec<EvaluationRow>, StoreError> {
    Ok(policy_evaluations::table
        .filter(policy_evaluations::run_id.eq(run))
        .order(policy_evaluations::id.asc())
        .select(EvaluationRow::as_select())
        .load(conn)
        .await?)
}

/// A stack's latest push decisions that made no run, newest first.
pub async fn push_evaluations_of_stack(conn: &mut AsyncPgConnection, stack: i64, limit: i64) -> Result<Vec<EvaluationRow>, StoreError> {
    Ok(policy_evaluations::table
        .filter(policy_evaluations::stack_id.eq(stack))
        .filter(policy_evaluations::run_id.is_null())
        .order(policy_evaluations::id.desc())
        .limit(limit)
        .select(EvaluationRow::as_select())
        .load(conn)
        .await?)
}

/// A recorded evaluation with its sealed input, for replay.
#[derive(Debug, Clone)]
pub struct RecordedInput {
    pub evaluation: EvaluationRow,
    pub input: Option<Sealed>,
}

/// The newest `limit` evaluations of `kind`, newest first, with their inputs;
/// with `within`, only those about stacks of these spaces.
pub async fn recorded_inputs(
    conn: &mut AsyncPgConnection,
    kind: &str,
    limit: i64,
    within: Option<&[i64]>,
) -> Result<Vec<RecordedInput>, StoreError> {
    use hangar_db::schema::{runs, stacks};
    let mut q = policy_evaluations::table
        .filter(policy_evaluations::kind.eq(kind))
        .order(policy_evaluations::id.desc())
        .limit(limit)
        .select((EvaluationRow::as_select(), policy_evaluations::input_sealed, policy_evaluations::input_data_key))
        .into_boxed();
    if let Some(spaces) = within {
        let in_spaces: Vec<i64> = stacks::table.filter(stacks::space_id.eq_any(spaces)).select(stacks::id).load(conn).await?;
        let their_runs: Vec<i64> = runs::table.filter(runs::stack_id.eq_any(&in_spaces)).select(runs::id).load(conn).await?;
        q = q.filter(policy_evaluations::stack_id.eq_any(in_spaces).or(policy_evaluations::run_id.eq_any(their_runs)));
    }
    let rows: Vec<(EvaluationRow, Option<Vec<u8>>, Option<i64>)> = q.load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(evaluation, bytes, key)| RecordedInput {
            evaluation,
            input: bytes.zip(key).map(|(bytes, data_key_id)| Sealed { data_key_id, bytes }),
        })
        .collect())
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = run_reviews)]
pub struct ReviewRow {
    pub id: i64,
    pub run_id: i64,
    pub user_id: i64,
    pub reviewer: String,
    pub role: String,
    pub decision: String,
    pub note: String,
    pub created_at: DateTime<Utc>,
}

/// Records a user's review of a run, replacing the user's earlier one.
pub async fn review(
    conn: &mut AsyncPgConnection,
    run: i64,
    user_id: i64,
    reviewer: &str,
    role: &str,
    decision: &str,
    note: &str,
) -> Result<ReviewRow, StoreError> {
    Ok(diesel::insert_into(run_reviews::table)
        .values((
            run_reviews::run_id.eq(run),
            run_reviews::user_id.eq(user_id),
            run_reviews::reviewer.eq(reviewer),
            run_reviews::role.eq(role),
            run_reviews::decision.eq(decision),
            run_reviews::note.eq(note),
        ))
        .on_conflict((run_reviews::run_id, run_reviews::user_id))
        .do_update()
        .set((
            run_reviews::reviewer.eq(reviewer),
            run_reviews::role.eq(role),
            run_reviews::decision.eq(decision),
            run_reviews::note.eq(note),
            run_reviews::created_at.eq(diesel::dsl::now),
        ))
        .returning(ReviewRow::as_returning())
        .get_result(conn)
        .await?)
}

/// A run's reviews, oldest first.
pub async fn reviews_of_run(conn: &mut AsyncPgConnection, run: i64) -> Result<Vec<ReviewRow>, StoreError> {
    Ok(run_reviews::table
        .filter(run_reviews::run_id.eq(run))
        .order(run_reviews::created_at.asc())
        .select(ReviewRow::as_select())
        .load(conn)
        .await?)
}

/// The author of a run, when Hangar knows one: the user who triggered it by
/// hand (a run's `triggered_by` is the caller's email, perhaps followed by the
/// API key it used). Runs started by a push or a schedule have none.
pub async fn author_of(conn: &mut AsyncPgConnection, triggered_by: &str) -> Result<Option<String>, StoreError> {
    use hangar_db::schema::users;
    let email = triggered_by.split(" (API key ").next().unwrap_or_default();
    Ok(users::table.filter(users::email.eq(email)).select(users::email).first(conn).await.optional()?)
}

#[cfg(test)]
mod tests {
    use super::autoattaches;

    #[test]
    fn autoattach_labels_match_stack_labels_or_every_stack() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(autoattaches(&s(&["autoattach:production"]), &s(&["production", "net"])));
        assert!(!autoattaches(&s(&["autoattach:production"]), &s(&["staging"])));
        assert!(!autoattaches(&s(&["production"]), &s(&["production"])), "a plain label attaches nothing");
        assert!(autoattaches(&s(&["autoattach:*"]), &s(&[])));
    }
}
