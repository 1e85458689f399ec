//! Who may connect: a worker presenting its own certificate AND its own
//! credentials, checked against Postgres (exists, not revoked, of its pool's
//! current generation, token matching in constant time, the certificate the one
//! recorded for it). Lookups are cached for a few seconds; every change to a
//! worker or a pool reset clears its entries at once (NOTIFY, see the bridge).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::sql_types::{Array, BigInt, Bool, Int4, Nullable, Text};
use diesel_async::RunQueryDsl;
use hangar_db::{DbError, DbPool};
use rumqttd::protocol::ConnectReturnCode;

use crate::tls::{PeerCert, normalize_serial};
use crate::wire;

/// How long a lookup is reused. Changes notified by the database clear entries
/// sooner; this bounds staleness when a notification is lost.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(5);

/// Kind prefix of worker tokens (`hangar_crypto::new_token("hwt")`).
pub const WORKER_TOKEN_KIND: &str = "hwt";

/// A worker as the database describes it.
#[derive(Clone, PartialEq, Eq, diesel::QueryableByName)]
pub(crate) struct WorkerRecord {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub pool_id: i64,
    #[diesel(sql_type = Int4)]
    pub pool_generation: i32,
    #[diesel(sql_type = Int4)]
    pub current_generation: i32,
    #[diesel(sql_type = Text)]
    pub cert_serial: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub token_hash: Option<String>,
    #[diesel(sql_type = Bool)]
    pub revoked: bool,
}

impl fmt::Debug for WorkerRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerRecord")
            .field("id", &self.id)
            .field("pool_id", &self.pool_id)
            .field("pool_generation", &self.pool_generation)
            .field("current_generation", &self.current_generation)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// What a connection was admitted on. It stays valid only while the worker's
/// record still matches it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub worker: i64,
    pub pool: i64,
    generation: i32,
    token_hash: String,
    cert_serial: String,
}

impl fmt::Debug for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted").field("worker", &self.worker).field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl Admitted {
    /// Why `now` (the worker's current record, if it still exists) no longer
    /// admits this connection, if it does not.
    pub(crate) fn revoked_by(&self, now: Option<&WorkerRecord>) -> Option<Refusal> {
        let Some(r) = now else { return Some(Refusal::UnknownWorker) };
        if r.revoked {
            return Some(Refusal::Revoked);
        }
        if r.pool_id != self.pool || r.pool_generation != self.generation || r.current_generation != self.generation {
            return Some(Refusal::PoolReset);
        }
        if r.token_hash.as_deref() != Some(self.token_hash.as_str()) {
            return Some(Refusal::TokenChanged);
        }
        if normalize_serial(&r.cert_serial) != self.cert_serial {
            return Some(Refusal::CertificateReplaced);
        }
        None
    }
}

/// Why a client was refused. The client learns only the MQTT return code; the
/// log line says which of these it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The certificate's Subject O is not a worker tenant name.
    NotAWorkerCertificate,
    /// No username or password.
    Anonymous,
    /// The username is not the tenant of the certificate.
    UsernameMismatch,
    /// The client id is not the username.
    ClientIdMismatch,
    /// keep_alive 0 would let a dead connection hold its slot forever.
    ZeroKeepAlive,
    UnknownWorker,
    Revoked,
    /// The worker belongs to an older generation of its pool (the pool was reset).
    PoolReset,
    /// The worker has no token yet.
    NoToken,
    BadToken,
    /// The token was rotated while connected.
    TokenChanged,
    /// The certificate is not the one recorded for the worker.
    CertificateMismatch,
    /// A newer certificate was recorded while connected.
    CertificateReplaced,
    /// The database could not be asked; refusing is the only safe answer.
    Unavailable,
    /// Every connection slot is taken.
    Full,
}

impl Refusal {
    pub(crate) fn code(self) -> ConnectReturnCode {
        match self {
            Refusal::Anonymous | Refusal::NoToken | Refusal::BadToken | Refusal::TokenChanged => {
                ConnectReturnCode::BadUserNamePassword
            }
            // As Mosquitto does for a keep-alive it will not accept.
            Refusal::ClientIdMismatch | Refusal::ZeroKeepAlive => ConnectReturnCode::ClientIdentifierNotValid,
            Refusal::Unavailable | Refusal::Full => ConnectReturnCode::ServiceUnavailable,
            Refusal::NotAWorkerCertificate
            | Refusal::UsernameMismatch
            | Refusal::UnknownWorker
            | Refusal::Revoked
            | Refusal::PoolReset
            | Refusal::CertificateMismatch
            | Refusal::CertificateReplaced => ConnectReturnCode::NotAuthorized,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAWorkerCertificate => "the client certificate does not name a worker (Subject O must be w<id>)",
            Refusal::Anonymous => "no username or password",
            Refusal::UsernameMismatch => "the username is not the worker named by the certificate",
            Refusal::ClientIdMismatch => "the client id is not the username",
            Refusal::ZeroKeepAlive => "keep-alive 0 is not accepted",
            Refusal::UnknownWorker => "no such worker",
            Refusal::Revoked => "the worker is revoked",
            Refusal::PoolReset => "the worker's pool was reset since it joined",
            Refusal::NoToken => "the worker has no token",
            Refusal::BadToken => "wrong password",
            Refusal::TokenChanged => "the worker's token was replaced",
            Refusal::CertificateMismatch => "the certificate is not the one recorded for the worker",
            Refusal::CertificateReplaced => "the worker's certificate was replaced",
            Refusal::Unavailable => "the database is unavailable",
            Refusal::Full => "every connection slot is taken",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CONNECT fields that matter for admission.
pub(crate) struct Hello<'a> {
    pub client_id: &'a str,
    pub keep_alive: u16,
    pub login: Option<(&'a str, &'a str)>,
}

pub(crate) struct Authenticator {
    db: DbPool,
    cache: Mutex<HashMap<i64, (Instant, WorkerRecord)>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    pub(crate) fn new(db: DbPool) -> Self {
        Authenticator { db, cache: Mutex::new(HashMap::new()) }
    }

    /// Admits or refuses a client whose certificate rustls already verified.
    pub(crate) async fn admit(&self, peer: &PeerCert, hello: &Hello<'_>) -> Result<Admitted, Refusal> {
        // Everything that needs no database first: a client failing these costs nothing.
        let worker = peer.worker.ok_or(Refusal::NotAWorkerCertificate)?;
        let (username, password) = hello.login.ok_or(Refusal::Anonymous)?;
        if username.is_empty() || password.is_empty() {
            return Err(Refusal::Anonymous);
        }
        if username != wire::tenant(worker) {
            return Err(Refusal::UsernameMismatch);
        }
        if hello.client_id != username {
            return Err(Refusal::ClientIdMismatch);
        }
        if hello.keep_alive == 0 {
            return Err(Refusal::ZeroKeepAlive);
        }
        if hangar_crypto::token_parts(password).is_none_or(|(kind, _)| kind != WORKER_TOKEN_KIND) {
            return Err(Refusal::BadToken);
        }
        let record = self.record(worker).await.map_err(|e| {
            tracing::warn!(worker, error = %hangar_types::error_chain(&e), "cannot look up a connecting worker");
            Refusal::Unavailable
        })?;
        let record = record.ok_or(Refusal::UnknownWorker)?;
        if record.revoked {
            return Err(Refusal::Revoked);
        }
        if record.pool_generation != record.current_generation {
            return Err(Refusal::PoolReset);
        }
        let stored = record.token_hash.as_deref().ok_or(Refusal::NoToken)?;
        if !hangar_crypto::token_matches(password, stored) {
            return Err(Refusal::BadToken);
        }
        let cert_serial = normalize_serial(&record.cert_serial);
        if cert_serial != peer.serial {
            return Err(Refusal::CertificateMismatch);
        }
        Ok(Admitted {
            worker,
            pool: record.pool_id,
            generation: record.pool_generation,
            token_hash: stored.to_string(),
            cert_serial,
        })
    }

    async fn record(&self, worker: i64) -> Result<Option<WorkerRecord>, DbError> {
        if let Some((at, r)) = self.lock().get(&worker)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(Some(r.clone()));
        }
        let found = self.lookup(&[worker]).await?.into_iter().next();
        if let Some(r) = &found {
            self.lock().insert(worker, (Instant::now(), r.clone()));
        }
        Ok(found)
    }

    /// The current records of `workers` (those that exist), straight from the database.
    pub(crate) async fn lookup(&self, workers: &[i64]) -> Result<Vec<WorkerRecord>, DbError> {
        let mut conn = self.db.get().await?;
        let rows = diesel::sql_query(
            "SELECT w.id, w.pool_id, w.pool_generation, p.generation AS current_generation, \
                    w.cert_serial, w.token_hash, w.revoked_at IS NOT NULL AS revoked \
             FROM workers w JOIN worker_pools p ON p.id = w.pool_id \
             WHERE w.id = ANY($1)",
        )
        .bind::<Array<BigInt>, _>(workers)
        .load::<WorkerRecord>(&mut conn)
        .await?;
        Ok(rows)
    }

    pub(crate) fn forget_worker(&self, worker: i64) {
        self.lock().remove(&worker);
    }

    pub(crate) fn forget_pool(&self, pool: i64) {
        self.lock().retain(|_, (_, r)| r.pool_id != pool);
    }

    pub(crate) fn forget_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (Instant, WorkerRecord)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> WorkerRecord {
        WorkerRecord {
            id: 4,
            pool_id: 2,
            pool_generation: 3,
            current_generation: 3,
            cert_serial: "00ab".into(),
            token_hash: Some("h".into()),
            revoked: false,
        }
    }

    #[test]
    fn an_admission_lapses_when_its_record_changes() {
        let admitted = Admitted { worker: 4, pool: 2, generation: 3, token_hash: "h".into(), cert_serial: "ab".into() };
        assert_eq!(admitted.revoked_by(Some(&record())), None);
        assert_eq!(admitted.revoked_by(None), Some(Refusal::UnknownWorker));
        let change = |f: fn(&mut WorkerRecord)| {
            let mut r = record();
            f(&mut r);
            admitted.revoked_by(Some(&r))
        };
        assert_eq!(change(|r| r.revoked = true), Some(Refusal::Revoked));
        assert_eq!(change(|r| r.current_generation = 4), Some(Refusal::PoolReset));
        assert_eq!(change(|r| r.pool_id = 9), Some(Refusal::PoolReset));
        assert_eq!(change(|r| r.token_hash = Some("other".into())), Some(Refusal::TokenChanged));
        assert_eq!(change(|r| r.token_hash = None), Some(Refusal::TokenChanged));
        assert_eq!(change(|r| r.cert_serial = "ac".into()), Some(Refusal::CertificateReplaced));
    }

    #[test]
    fn debug_output_holds_no_token_hash() {
        let text = format!("{:?}", WorkerRecord { token_hash: Some("deadbeefcafe".into()), ..record() });
        assert!(!text.contains("deadbeefcafe"), "{text}");
    }
}
