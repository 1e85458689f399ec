//! Joining a pool: one-time join tokens (made by an admin, stored hashed) and
//! `POST /api/v1/workers/join`, which consumes one, signs the worker's CSR with
//! the appliance CA and records the worker — all or nothing.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hangar_crypto::SecretString;
use hangar_db::schema::{join_tokens, worker_pools, workers};
use hangar_types::worker::{JoinRequest, JoinResponse};
use serde_json::json;

use super::auth::WORKER_TOKEN_KIND;
use super::{WorkerApiError, json as reply_json, parse_json};
use crate::App;
use hangar_store::audit;

/// The token kind: `hjt_<id>_<secret>`.
pub const KIND: &str = "hjt";

/// Longest a join token may live.
pub const MAX_TTL_MINUTES: i64 = 7 * 24 * 60;

/// Why a join token was not made.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    #[error("worker pool {pool} does not exist")]
    NoSuchPool { pool: String },
    #[error("the lifetime must be between 1 and {MAX_TTL_MINUTES} minutes, not {ttl_minutes}")]
    BadTtl { ttl_minutes: i64 },
    #[error("database query")]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Store(#[from] hangar_store::StoreError),
}

/// A join token just made: the token itself is shown this once.
#[derive(Debug)]
pub struct NewJoinToken {
    pub token: SecretString,
    pub pool_id: i64,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Makes a join token for `pool` valid for `ttl_minutes`, audited under `actor`.
pub async fn create_join_token(
    conn: &mut AsyncPgConnection,
    pool: &str,
    ttl_minutes: i64,
    actor: &str,
) -> Result<NewJoinToken, JoinTokenError> {
    if !(1..=MAX_TTL_MINUTES).contains(&ttl_minutes) {
        return Err(JoinTokenError::BadTtl { ttl_minutes });
    }
    let (pool, actor) = (pool.to_string(), actor.to_string());
    conn.transaction::<_, JoinTokenError, _>(async move |c| {
        let pool_id: i64 = worker_pools::table
            .filter(worker_pools::name.eq(&pool))
            .select(worker_pools::id)
            .first(c)
            .await
            .optional()?
            .ok_or_else(|| JoinTokenError::NoSuchPool { pool: pool.clone() })?;
        let issued = hangar_crypto::new_token(KIND);
        let expires_at = chrono::Utc::now() + chrono::Duration::minutes(ttl_minutes);
        diesel::insert_into(join_tokens::table)
            .values((
                join_tokens::token_id.eq(&issued.id),
                join_tokens::token_hash.eq(&issued.hash),
                join_tokens::pool_id.eq(pool_id),
                join_tokens::created_by.eq(&actor),
                join_tokens::expires_at.eq(expires_at),
            ))
            .execute(c)
            .await?;
        audit::record(
            c,
            &actor,
            "join_token.create",
            &format!("worker_pool:{pool}"),
            json!({ "token_id": issued.id, "expires_at": expires_at.to_rfc3339() }),
        )
        .await?;
        Ok(NewJoinToken { token: issued.token, pool_id, expires_at })
    })
    .await
}

/// Why a join inside the transaction failed: the request's fault or ours.
enum Refused {
    Api(WorkerApiError),
    Db(diesel::result::Error),
    Store(hangar_store::StoreError),
}

impl From<hangar_store::StoreError> for Refused {
    fn from(e: hangar_store::StoreError) -> Self {
        Refused::Store(e)
    }
}

impl From<diesel::result::Error> for Refused {
    fn from(e: diesel::result::Error) -> Self {
        Refused::Db(e)
    }
}

/// `POST /api/v1/workers/join`.
pub(crate) async fn join(app: &App, body: &[u8]) -> Result<warp::reply::Response, WorkerApiError> {
    let req: JoinRequest = parse_json(body)?;
    let Some((KIND, token_id)) = hangar_crypto::token_parts(&req.token) else {
        return Err(WorkerApiError::BadJoinToken);
    };
    let token_id = token_id.to_string();
    let name: String = req.name.trim().chars().filter(|c| !c.is_control()).take(100).collect();
    if name.is_empty() {
        return Err(WorkerApiError::Malformed("name must not be empty".into()));
    }
    if req.csr_pem.len() > 64 * 1024 {
        return Err(WorkerApiError::Malformed("csr_pem is larger than 64 KiB".into()));
    }
    if asks_for_ca(&req.csr_pem) {
        return Err(WorkerApiError::Malformed("the CSR is refused: it asks for a CA certificate".into()));
    }
    let metadata = json!({
        "hostname": bounded(&req.host.hostname),
        "os": bounded(&req.host.os),
        "arch": bounded(&req.host.arch),
        "version": bounded(&req.host.version),
    });
    let hash = hangar_crypto::hash_token(&req.token);
    let settings = &app.workers;
    let mut conn = app.db.get().await.map_err(WorkerApiError::db)?;
    let csr_pem = req.csr_pem.clone();
    let result = conn
        .transaction::<_, Refused, _>(async move |c| {
            // Consumes the token. Concurrent joins with one token serialize on
            // its row; the loser sees `used_at` set and gets nothing.
            let consumed: Option<(i64, i64)> = diesel::update(
                join_tokens::table
                    .filter(join_tokens::token_id.eq(&token_id))
                    .filter(join_tokens::token_hash.eq(&hash))
                    .filter(join_tokens::used_at.is_null())
                    .filter(join_tokens::expires_at.gt(diesel::dsl::now)),
            )
            .set(join_tokens::used_at.eq(diesel::dsl::now))
            .returning((join_tokens::id, join_tokens::pool_id))
            .get_result(c)
            .await
            .optional()?;
            let (token_row, pool_id) = consumed.ok_or(Refused::Api(WorkerApiError::BadJoinToken))?;
            let (pool_name, generation): (String, i32) = worker_pools::table
                .find(pool_id)
                .select((worker_pools::name, worker_pools::generation))
                .first(c)
                .await?;
            // The serial is unknown until the CSR is signed, which needs the id.
            let placeholder = format!("joining-{}", hangar_crypto::new_token("j").id);
            let worker_id: i64 = diesel::insert_into(workers::table)
                .values((
                    workers::pool_id.eq(pool_id),
                    workers::name.eq(&name),
                    workers::pool_generation.eq(generation),
                    workers::cert_serial.eq(&placeholder),
                    workers::cert_not_after.eq(diesel::dsl::now),
                    workers::metadata.eq(&metadata),
                ))
                .returning(workers::id)
                .get_result(c)
                .await?;
            let tenant = hangar_types::worker::worker_tenant(worker_id);
            let policy = hangar_certs::CsrPolicy {
                common_name: format!("worker {tenant}"),
                organization: Some(tenant),
                names: vec![],
                usage: hangar_certs::Usage::Client,
                validity: settings.cert_validity,
            };
            let issued = settings
                .ca
                .sign_csr(&csr_pem, &policy)
                .map_err(|e| Refused::Api(WorkerApiError::Malformed(format!("the CSR is refused: {e}"))))?;
            let not_after = chrono::DateTime::from_timestamp(issued.not_after.unix_timestamp(), 0)
                .ok_or(Refused::Api(WorkerApiError::Internal))?;
            let token = hangar_crypto::new_token(WORKER_TOKEN_KIND);
            diesel::update(workers::table.find(worker_id))
                .set((
                    workers::cert_serial.eq(&issued.serial_hex),
                    workers::cert_not_after.eq(not_after),
                    workers::token_hash.eq(&token.hash),
                ))
                .execute(c)
                .await?;
            diesel::update(join_tokens::table.find(token_row))
                .set(join_tokens::worker_id.eq(worker_id))
                .execute(c)
                .await?;
            audit::record(
                c,
                &format!("worker:{worker_id}"),
                "worker.join",
                &format!("worker_pool:{pool_name}"),
                json!({ "worker": worker_id, "name": name, "serial": issued.serial_hex }),
            )
            .await?;
            Ok(JoinResponse {
                worker_id,
                pool_id,
                pool_name,
                certificate_pem: issued.cert_pem,
                ca_pem: settings.ca.cert_pem().to_string(),
                worker_token: token.token.expose().to_string(),
                server_url: settings.public_url.clone(),
                broker_url: settings.broker_url.clone(),
            })
        })
        .await;
    match result {
        Ok(resp) => {
            tracing::info!(worker = resp.worker_id, pool = %resp.pool_name, "worker joined");
            Ok(reply_json(warp::http::StatusCode::OK, &resp))
        }
        Err(Refused::Api(e)) => Err(e),
        Err(Refused::Db(e)) => Err(WorkerApiError::db(e)),
        Err(Refused::Store(e)) => Err(WorkerApiError::db(e)),
    }
}

fn bounded(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Whether a CSR requests CA status. The CA would not grant it anyway (it
/// chooses every extension itself), but such a request is no worker's and is
/// refused outright. A CSR that does not parse is left to the signer's refusal.
fn asks_for_ca(csr_pem: &str) -> bool {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()) else { return false };
    let Ok((_, csr)) = X509CertificationRequest::from_der(&pem.contents) else { return false };
    csr.requested_extensions().is_some_and(|mut exts| {
        exts.any(|e| matches!(e, ParsedExtension::BasicConstraints(bc) if bc.ca))
    })
}
