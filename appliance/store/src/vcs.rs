//! VCS integrations, the stacks linked to them, the webhook delivery log, the
//! runs that came from a git server and what polling last saw of a plain-git
//! repository. The API token and the webhook secret
//! are sealed on the way in; only the server's webhook path and the drain open
//! them, never the API.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{runs, stacks, vcs_integrations, vcs_poll_heads, vcs_runs, webhook_deliveries};
use hangar_types::{RunKind, RunState};
use hangar_vcs::{Secret, Vendor};

use crate::StoreError;
use crate::secrets::{Sealed, SecretBox};

/// What an integration talks to: a vendor with webhooks and a status API, or a
/// plain git server that is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Vendor(Vendor),
    PlainGit,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vendor(v) => v.as_str(),
            Kind::PlainGit => "git",
        }
    }

    pub fn vendor(self) -> Option<Vendor> {
        match self {
            Kind::Vendor(v) => Some(v),
            Kind::PlainGit => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = hangar_vcs::UnknownVendor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "git" { Ok(Kind::PlainGit) } else { s.parse().map(Kind::Vendor) }
    }
}

/// An integration without its sealed material.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = vcs_integrations)]
pub struct IntegrationRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub username: Option<String>,
    pub ca_pem: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub space_id: i64,
}

impl IntegrationRow {
    /// The kind; the table's CHECK keeps it one of the known ones.
    pub fn kind(&self) -> Kind {
        self.kind.parse().unwrap_or(Kind::PlainGit)
    }
}

/// The sealed columns of one integration.
#[derive(Clone, Queryable)]
struct SealedColumns {
    token_sealed: Option<Vec<u8>>,
    token_key_id: Option<i64>,
    secret_sealed: Option<Vec<u8>>,
    secret_key_id: Option<i64>,
}

/// An integration's secrets, opened.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    pub token: Option<Secret>,
    pub webhook_secret: Option<Secret>,
}

fn token_context(id: i64) -> String {
    format!("vcs:{id}:token")
}

fn secret_context(id: i64) -> String {
    format!("vcs:{id}:webhook-secret")
}

/// A new integration, secrets in clear (sealed by [`insert`]).
#[derive(Debug, Clone)]
pub struct NewIntegration {
    pub name: String,
    pub kind: Kind,
    pub base_url: String,
    pub username: Option<String>,
    pub token: Option<Secret>,
    pub webhook_secret: Option<Secret>,
    pub ca_pem: Option<String>,
    /// The space the integration belongs to.
    pub space_id: i64,
}

/// Changes; `None` keeps a value, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct IntegrationChanges {
    pub base_url: Option<String>,
    pub username: Option<Option<String>>,
    pub token: Option<Option<Secret>>,
    pub webhook_secret: Option<Option<Secret>>,
    pub ca_pem: Option<Option<String>>,
}

async fn seal_opt(
    secrets: &SecretBox,
    conn: &mut AsyncPgConnection,
    value: Option<&Secret>,
    context: &str,
) -> Result<(Option<Vec<u8>>, Option<i64>), StoreError> {
    match value {
        None => Ok((None, None)),
        Some(v) => {
            let s = secrets.seal(conn, v.expose().as_bytes(), context).await?;
            Ok((Some(s.bytes), Some(s.data_key_id)))
        }
    }
}

/// Inserts an integration and seals its secrets under its id, in the caller's
/// transaction.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
    new: &NewIntegration,
) -> Result<IntegrationRow, StoreError> {
    let row: IntegrationRow = diesel::insert_into(vcs_integrations::table)
        .values((
            vcs_integrations::name.eq(&new.name),
            vcs_integrations::kind.eq(new.kind.as_str()),
            vcs_integrations::base_url.eq(&new.base_url),
            vcs_integrations::username.eq(&new.username),
            vcs_integrations::ca_pem.eq(&new.ca_pem),
            vcs_integrations::space_id.eq(new.space_id),
        ))
        .returning(IntegrationRow::as_returning())
        .get_result(conn)
        .await?;
    let (token_sealed, token_key_id) = seal_opt(secrets, conn, new.token.as_ref(), &token_context(row.id)).await?;
    let (secret_sealed, secret_key_id) =
        seal_opt(secrets, conn, new.webhook_secret.as_ref(), &secret_context(row.id)).await?;
    diesel::update(vcs_integrations::table.find(row.id))
        .set((
            vcs_integrations::token_sealed.eq(token_sealed),
            vcs_integrations::token_key_id.eq(token_key_id),
            vcs_integrations::secret_sealed.eq(secret_sealed),
            vcs_integrations::secret_key_id.eq(secret_key_id),
        ))
        .execute(conn)
        .await?;
    Ok(row)
}

/// Applies `changes` to integration `id`, sealing new secrets.
pub async fn update(
    conn: &mut AsyncPgConnection,
    secrets: &SecretBox,
    id: i64,
    changes: &IntegrationChanges,
) -> Result<IntegrationRow, StoreError> {
    if let Some(token) = &changes.token {
        let (sealed, key) = seal_opt(secrets, conn, token.as_ref(), &token_context(id)).await?;
        diesel::update(vcs_integrations::table.find(id))
            .set((vcs_integrations::token_sealed.eq(sealed), vcs_integrations::token_key_id.eq(key)))
            .execute(conn)
            .await?;
    }
    if let Some(secret) = &changes.webhook_secret {
        let (sealed, key) = seal_opt(secrets, conn, secret.as_ref(), &secret_context(id)).await?;
        diesel::update(vcs_integrations::table.find(id))
            .set((vcs_integrations::secret_sealed.eq(sealed), vcs_integrations::secret_key_id.eq(key)))
            .execute(conn)
            .await?;
    }
    Ok(diesel::update(vcs_integrations::table.find(id))
        .set((
            changes.base_url.as_ref().map(|v| vcs_integrations::base_url.eq(v)),
            changes.username.as_ref().map(|v| vcs_integrations::username.eq(v)),
            changes.ca_pem.as_ref().map(|v| vcs_integrations::ca_pem.eq(v)),
            vcs_integrations::updated_at.eq(diesel::dsl::now),
        ))
        .returning(IntegrationRow::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn delete(conn: &mut AsyncPgConnection, id: i64) -> Result<bool, StoreError> {
    Ok(diesel::delete(vcs_integrations::table.find(id)).execute(conn).await? == 1)
}

pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<IntegrationRow>, StoreError> {
    Ok(vcs_integrations::table.order(vcs_integrations::name.asc()).select(IntegrationRow::as_select()).load(conn).await?)
}

pub async fn by_name(conn: &mut AsyncPgConnection, name: &str) -> Result<Option<IntegrationRow>, StoreError> {
    Ok(vcs_integrations::table
        .filter(vcs_integrations::name.eq(name))
        .select(IntegrationRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn by_id(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<IntegrationRow>, StoreError> {
    Ok(vcs_integrations::table.find(id).select(IntegrationRow::as_select()).first(conn).await.optional()?)
}

/// Which secrets an integration holds, without opening them.
pub async fn has_secrets(conn: &mut AsyncPgConnection, id: i64) -> Result<(bool, bool), StoreError> {
    Ok(vcs_integrations::table
        .find(id)
        .select((vcs_integrations::token_sealed.is_not_null(), vcs_integrations::secret_sealed.is_not_null()))
        .first(conn)
        .await?)
}

/// Opens an integration's token and webhook secret.
pub async fn open(conn: &mut AsyncPgConnection, secrets: &SecretBox, id: i64) -> Result<Opened, StoreError> {
    let cols: SealedColumns = vcs_integrations::table
        .find(id)
        .select((
            vcs_integrations::token_sealed,
            vcs_integrations::token_key_id,
            vcs_integrations::secret_sealed,
            vcs_integrations::secret_key_id,
        ))
        .first(conn)
        .await?;
    let mut out = Opened::default();
    if let (Some(bytes), Some(data_key_id)) = (cols.token_sealed, cols.token_key_id) {
        let plain = secrets.open(conn, &Sealed { data_key_id, bytes }, &token_context(id)).await?;
        out.token = Some(Secret::new(String::from_utf8_lossy(&plain).into_owned()));
    }
    if let (Some(bytes), Some(data_key_id)) = (cols.secret_sealed, cols.secret_key_id) {
        let plain = secrets.open(conn, &Sealed { data_key_id, bytes }, &secret_context(id)).await?;
        out.webhook_secret = Some(Secret::new(String::from_utf8_lossy(&plain).into_owned()));
    }
    Ok(out)
}

/// Links stack `stack_id` to integration `integration` (or unlinks it).
pub async fn link_stack(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
    integration: Option<i64>,
) -> Result<(), StoreError> {
    Ok(diesel::update(stacks::table.find(stack_id))
        .set((stacks::vcs_integration_id.eq(integration), stacks::updated_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await
        .map(|_| ())?)
}

/// The integration a stack is linked to.
pub async fn integration_of_stack(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
) -> Result<Option<IntegrationRow>, StoreError> {
    Ok(stacks::table
        .inner_join(vcs_integrations::table)
        .filter(stacks::id.eq(stack_id))
        .select(IntegrationRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Slugs of the stacks linked to an integration.
pub async fn linked_stacks(conn: &mut AsyncPgConnection, integration: i64) -> Result<Vec<String>, StoreError> {
    Ok(stacks::table
        .filter(stacks::vcs_integration_id.eq(integration))
        .order(stacks::slug.asc())
        .select(stacks::slug)
        .load(conn)
        .await?)
}

/// One accepted webhook delivery and what became of it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries)]
pub struct DeliveryRow {
    pub id: i64,
    pub integration_id: i64,
    pub delivery_id: String,
    pub event: String,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub detail: Option<String>,
    pub run_ids: Vec<i64>,
    pub error: Option<String>,
}

/// Records a delivery as queued; a redelivery of the same id changes nothing.
/// Returns whether the row is new.
pub async fn record_delivery(
    conn: &mut AsyncPgConnection,
    integration: i64,
    delivery_id: &str,
    event: &str,
) -> Result<bool, StoreError> {
    let n = diesel::insert_into(webhook_deliveries::table)
        .values((
            webhook_deliveries::integration_id.eq(integration),
            webhook_deliveries::delivery_id.eq(delivery_id),
            webhook_deliveries::event.eq(event),
        ))
        .on_conflict((webhook_deliveries::integration_id, webhook_deliveries::delivery_id))
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Newest first.
pub async fn deliveries(
    conn: &mut AsyncPgConnection,
    integration: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    Ok(webhook_deliveries::table
        .filter(webhook_deliveries::integration_id.eq(integration))
        .order(webhook_deliveries::id.desc())
        .limit(limit)
        .select(DeliveryRow::as_select())
        .load(conn)
        .await?)
}

/// A run that came from a git server.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = vcs_runs)]
pub struct VcsRunRow {
    pub run_id: i64,
    pub integration_id: i64,
    pub repository: String,
    pub pull_request: Option<i64>,
    pub reported: Option<String>,
}

/// The columns of a linked stack the drain looks at.
#[derive(Debug, Clone, Queryable)]
pub struct LinkedStack {
    pub id: i64,
    pub slug: String,
    pub repository: String,
    pub branch: String,
    pub project_root: String,
    pub name: String,
    pub labels: Vec<String>,
}

/// The stacks linked to `integration`, by id. With `lock`, their rows are
/// locked for the caller's transaction: deliveries and polls acting on the
/// same stacks then serialize, so that "cancel the older proposed run" and
/// "one run per commit" hold.
///
/// Only stacks of the integration's space or a space below it: a link made
/// before would never let one team's git server start another team's runs.
pub async fn stacks_of(conn: &mut AsyncPgConnection, integration: i64, lock: bool) -> Result<Vec<LinkedStack>, StoreError> {
    let space: i64 = vcs_integrations::table.find(integration).select(vcs_integrations::space_id).first(conn).await?;
    let within = crate::spaces::descendants(conn, space).await?;
    let q = stacks::table
        .filter(stacks::vcs_integration_id.eq(integration))
        .filter(stacks::space_id.eq_any(within))
        .order(stacks::id.asc())
        .select((stacks::id, stacks::slug, stacks::repository, stacks::branch, stacks::project_root, stacks::name, stacks::labels));
    Ok(if lock { q.for_update().load(conn).await? } else { q.load(conn).await? })
}

/// Records where run `run` came from, in the caller's transaction.
pub async fn record_origin(
    conn: &mut AsyncPgConnection,
    run: i64,
    integration: i64,
    repository: &str,
    pull_request: Option<i64>,
) -> Result<(), StoreError> {
    diesel::insert_into(vcs_runs::table)
        .values((
            vcs_runs::run_id.eq(run),
            vcs_runs::integration_id.eq(integration),
            vcs_runs::repository.eq(repository),
            vcs_runs::pull_request.eq(pull_request),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Live proposed runs of `stack` for pull request `number` of `repository`.
pub async fn live_proposed_runs(
    conn: &mut AsyncPgConnection,
    integration: i64,
    repository: &str,
    number: i64,
    stack: i64,
) -> Result<Vec<i64>, StoreError> {
    let terminal: Vec<&str> = RunState::ALL.into_iter().filter(|s| s.is_terminal()).map(|s| s.as_str()).collect();
    Ok(vcs_runs::table
        .inner_join(runs::table)
        .filter(vcs_runs::integration_id.eq(integration))
        .filter(vcs_runs::repository.eq(repository))
        .filter(vcs_runs::pull_request.eq(number))
        .filter(runs::stack_id.eq(stack))
        .filter(runs::kind.eq(RunKind::Proposed.as_str()))
        .filter(runs::state.ne_all(terminal))
        .select(runs::id)
        .load(conn)
        .await?)
}

/// The origin of run `run`, locked for the caller's transaction, so two
/// reports for one run cannot overtake each other.
pub async fn lock_origin(conn: &mut AsyncPgConnection, run: i64) -> Result<Option<VcsRunRow>, StoreError> {
    Ok(vcs_runs::table.find(run).for_update().select(VcsRunRow::as_select()).first(conn).await.optional()?)
}

/// Remembers the commit state last reported for run `run`.
pub async fn mark_reported(conn: &mut AsyncPgConnection, run: i64, reported: &str) -> Result<(), StoreError> {
    diesel::update(vcs_runs::table.find(run)).set(vcs_runs::reported.eq(reported)).execute(conn).await?;
    Ok(())
}

/// The delivery's row, locked, created when missing; `None` when it was
/// already processed (a job delivered again after a crash).
pub async fn lock_delivery(
    conn: &mut AsyncPgConnection,
    integration: i64,
    delivery: &str,
    event: &str,
) -> Result<Option<i64>, StoreError> {
    record_delivery(conn, integration, delivery, event).await?;
    let (id, processed): (i64, Option<DateTime<Utc>>) = webhook_deliveries::table
        .filter(webhook_deliveries::integration_id.eq(integration))
        .filter(webhook_deliveries::delivery_id.eq(delivery))
        .for_update()
        .select((webhook_deliveries::id, webhook_deliveries::processed_at))
        .first(conn)
        .await?;
    Ok(processed.is_none().then_some(id))
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    RunsCreated,
    Ignored,
    Failed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::RunsCreated => "runs_created",
            DeliveryOutcome::Ignored => "ignored",
            DeliveryOutcome::Failed => "failed",
        }
    }
}

/// Writes what became of delivery row `row`: one line per event in `detail`,
/// the runs it made, the error that made it unreadable.
pub async fn finish_delivery(
    conn: &mut AsyncPgConnection,
    row: i64,
    outcome: DeliveryOutcome,
    detail: Option<String>,
    run_ids: &[i64],
    error: Option<String>,
) -> Result<(), StoreError> {
    diesel::update(webhook_deliveries::table.find(row))
        .set((
            webhook_deliveries::outcome.eq(outcome.as_str()),
            webhook_deliveries::detail.eq(detail),
            webhook_deliveries::run_ids.eq(run_ids),
            webhook_deliveries::error.eq(error),
            webhook_deliveries::processed_at.eq(Utc::now()),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Every (plain-git integration, repository) a linked stack uses: what polling lists.
pub async fn poll_targets(conn: &mut AsyncPgConnection) -> Result<Vec<(i64, String)>, StoreError> {
    Ok(stacks::table
        .inner_join(vcs_integrations::table)
        .filter(vcs_integrations::kind.eq(Kind::PlainGit.as_str()))
        .select((vcs_integrations::id, stacks::repository))
        .distinct()
        .load(conn)
        .await?)
}

/// What the last poll of `repository` saw (a `hangar_vcs::RemoteRefs` as
/// JSON) and when; with `lock`, the row is locked for the caller's
/// transaction, so that two drains polling at once act on one change once.
pub async fn poll_heads(
    conn: &mut AsyncPgConnection,
    integration: i64,
    repository: &str,
    lock: bool,
) -> Result<Option<(serde_json::Value, DateTime<Utc>)>, StoreError> {
    let q = vcs_poll_heads::table
        .find((integration, repository))
        .select((vcs_poll_heads::refs, vcs_poll_heads::polled_at));
    Ok(if lock { q.for_update().first(conn).await.optional()? } else { q.first(conn).await.optional()? })
}

/// Stores what a poll of `repository` saw, now.
pub async fn store_poll_heads(
    conn: &mut AsyncPgConnection,
    integration: i64,
    repository: &str,
    refs: &serde_json::Value,
) -> Result<(), StoreError> {
    diesel::insert_into(vcs_poll_heads::table)
        .values((
            vcs_poll_heads::integration_id.eq(integration),
            vcs_poll_heads::repository.eq(repository),
            vcs_poll_heads::refs.eq(refs),
            vcs_poll_heads::polled_at.eq(Utc::now()),
        ))
        .on_conflict((vcs_poll_heads::integration_id, vcs_poll_heads::repository))
        .do_update()
        .set((vcs_poll_heads::refs.eq(refs), vcs_poll_heads::polled_at.eq(Utc::now())))
        .execute(conn)
        .await?;
    Ok(())
}
