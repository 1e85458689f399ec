//! Who is calling: a worker is its client certificate (chained to the
//! appliance CA by the TLS layer, serial recorded on its row) together with
//! its `hwt_` token, both naming the same worker, which must not be revoked,
//! of an earlier pool generation, or past its certificate's end.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hangar_db::schema::{worker_pools, workers};

use super::WorkerApiError;
use crate::PeerCertificates;

/// The token kind the broker and this API accept from workers.
pub(crate) const WORKER_TOKEN_KIND: &str = "hwt";

/// An authenticated worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Worker {
    pub(crate) id: i64,
    pub(crate) pool_id: i64,
    pub(crate) drained: bool,
}

/// The identity a certificate claims: the worker named by its Subject O
/// (`w<id>`) and its serial, as lowercase hex without leading zero bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertIdentity {
    pub(crate) worker: i64,
    pub(crate) serial: String,
}

pub(crate) fn cert_identity(peer: &PeerCertificates) -> Option<CertIdentity> {
    let leaf = peer.0.iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let orgs: Vec<&str> = cert.subject().iter_organization().filter_map(|o| o.as_str().ok()).collect();
    // Exactly one O, as the broker requires: with several, which names the worker is a guess.
    let [org] = orgs.as_slice() else { return None };
    let digits = org.strip_prefix('w')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    let worker = digits.parse().ok()?;
    Some(CertIdentity { worker, serial: normalize_serial(&hex::encode(cert.raw_serial())) })
}

/// Serials compare as numbers in lowercase hex: DER's leading zero bytes and
/// separators do not matter (as in the broker).
pub(crate) fn normalize_serial(s: &str) -> String {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).map(|c| c.to_ascii_lowercase()).collect();
    let trimmed = hex.trim_start_matches('0');
    let trimmed = if trimmed.len() % 2 == 1 { format!("0{trimmed}") } else { trimmed.to_string() };
    if trimmed.is_empty() { "00".into() } else { trimmed }
}

/// The bearer token of an `Authorization` header.
pub(crate) fn bearer(auth: Option<&str>) -> Option<&str> {
    let auth = auth?;
    auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).map(str::trim)
}

#[derive(Queryable)]
struct Record {
    pool_id: i64,
    pool_generation: i32,
    current_generation: i32,
    cert_serial: String,
    cert_not_after: chrono::DateTime<chrono::Utc>,
    token_hash: Option<String>,
    revoked: bool,
    drained: bool,
}

/// Authenticates a worker call.
pub(crate) async fn worker(
    conn: &mut AsyncPgConnection,
    peer: Option<&PeerCertificates>,
    auth: Option<&str>,
) -> Result<Worker, WorkerApiError> {
    // What needs no database first.
    let id = peer.and_then(cert_identity).ok_or(WorkerApiError::NoCertificate)?;
    let token = bearer(auth).ok_or(WorkerApiError::NoToken)?;
    if hangar_crypto::token_parts(token).is_none_or(|(kind, _)| kind != WORKER_TOKEN_KIND) {
        return Err(WorkerApiError::BadToken);
    }
    let record: Option<Record> = workers::table
        .inner_join(worker_pools::table)
        .filter(workers::id.eq(id.worker))
        .select((
            workers::pool_id,
            workers::pool_generation,
            worker_pools::generation,
            workers::cert_serial,
            workers::cert_not_after,
            workers::token_hash,
            workers::revoked_at.is_not_null(),
            workers::drained,
        ))
        .first(conn)
        .await
        .optional()
        .map_err(WorkerApiError::db)?;
    // An unknown worker and a wrong token look the same from outside.
    let record = record.ok_or(WorkerApiError::BadToken)?;
    let stored = record.token_hash.as_deref().ok_or(WorkerApiError::BadToken)?;
    if !hangar_crypto::token_matches(token, stored) {
        return Err(WorkerApiError::BadToken);
    }
    if normalize_serial(&record.cert_serial) != id.serial {
        return Err(WorkerApiError::CertificateMismatch { worker: id.worker });
    }
    if record.revoked {
        return Err(WorkerApiError::Revoked { worker: id.worker });
    }
    if record.pool_generation != record.current_generation {
        return Err(WorkerApiError::PoolReset { worker: id.worker });
    }
    // rustls checks validity at the handshake; a connection kept open past
    // the certificate's end is refused here.
    if record.cert_not_after <= chrono::Utc::now() {
        return Err(WorkerApiError::Expired { worker: id.worker });
    }
    Ok(Worker { id: id.worker, pool_id: record.pool_id, drained: record.drained })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_as_numbers() {
        assert_eq!(normalize_serial("00A1:b2"), "a1b2");
        assert_eq!(normalize_serial("a1b"), "0a1b");
        assert_eq!(normalize_serial(""), "00");
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(Some("Bearer hwt_x")), Some("hwt_x"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }
}
