//! VCS integrations, the stacks linked to them, the webhook delivery log and
//! the runs that came from a git server. The API token and the webhook secret
//! are sealed on the way in; only the server's webhook path and the drain open
//! them, never the API.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{stacks, vcs_integrations, vcs_runs, webhook_deliveries};
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

pub async fn delete(conn: &mut AsyncPgConnection, id: i64) -> Result<bool, diesel::result::Error> {
    Ok(diesel::delete(vcs_integrations::table.find(id)).execute(conn).await? == 1)
}

pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<IntegrationRow>, diesel::result::Error> {
    vcs_integrations::table.order(vcs_integrations::name.asc()).select(IntegrationRow::as_select()).load(conn).await
}

pub async fn by_name(conn: &mut AsyncPgConnection, name: &str) -> Result<Option<IntegrationRow>, diesel::result::Error> {
    vcs_integrations::table
        .filter(vcs_integrations::name.eq(name))
        .select(IntegrationRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn by_id(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<IntegrationRow>, diesel::result::Error> {
    vcs_integrations::table.find(id).select(IntegrationRow::as_select()).first(conn).await.optional()
}

/// Which secrets an integration holds, without opening them.
pub async fn has_secrets(conn: &mut AsyncPgConnection, id: i64) -> Result<(bool, bool), diesel::result::Error> {
    vcs_integrations::table
        .find(id)
        .select((vcs_integrations::token_sealed.is_not_null(), vcs_integrations::secret_sealed.is_not_null()))
        .first(conn)
        .await
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
) -> Result<(), diesel::result::Error> {
    diesel::update(stacks::table.find(stack_id))
        .set((stacks::vcs_integration_id.eq(integration), stacks::updated_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await
        .map(|_| ())
}

/// The integration a stack is linked to.
pub async fn integration_of_stack(
    conn: &mut AsyncPgConnection,
    stack_id: i64,
) -> Result<Option<IntegrationRow>, diesel::result::Error> {
    stacks::table
        .inner_join(vcs_integrations::table)
        .filter(stacks::id.eq(stack_id))
        .select(IntegrationRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Slugs of the stacks linked to an integration.
pub async fn linked_stacks(conn: &mut AsyncPgConnection, integration: i64) -> Result<Vec<String>, diesel::result::Error> {
    stacks::table
        .filter(stacks::vcs_integration_id.eq(integration))
        .order(stacks::slug.asc())
        .select(stacks::slug)
        .load(conn)
        .await
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
) -> Result<bool, diesel::result::Error> {
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
) -> Result<Vec<DeliveryRow>, diesel::result::Error> {
    webhook_deliveries::table
        .filter(webhook_deliveries::integration_id.eq(integration))
        .order(webhook_deliveries::id.desc())
        .limit(limit)
        .select(DeliveryRow::as_select())
        .load(conn)
        .await
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
