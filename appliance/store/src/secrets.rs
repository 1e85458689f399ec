//! Secrets at rest: values are sealed with a data key (AES-256-GCM, the owner and
//! name of the value as associated data), and data keys are stored wrapped by the
//! master key. Unwrapped data keys live only in this process's memory.
//!
//! Rotating the master key re-wraps every data key in one transaction and leaves
//! the sealed values untouched.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hangar_crypto::{DataKey, MasterKey};
use hangar_db::schema::data_keys;

use crate::StoreError;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = data_keys)]
struct DataKeyRow {
    id: i64,
    wrapped: Vec<u8>,
    master_key_id: String,
}

/// Seals and opens secret values with data keys wrapped by one master key.
pub struct SecretBox {
    master: MasterKey,
    cache: Mutex<HashMap<i64, DataKey>>,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox").field("master_key", &self.master.id()).finish_non_exhaustive()
    }
}

/// A sealed value and the data key that sealed it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub data_key_id: i64,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed").field("data_key_id", &self.data_key_id).field("len", &self.bytes.len()).finish()
    }
}

impl SecretBox {
    pub fn new(master: MasterKey) -> SecretBox {
        SecretBox { master, cache: Mutex::new(HashMap::new()) }
    }

    /// A key for signing links, derived from the master key for `purpose`.
    pub fn mac_key(&self, purpose: &str) -> hangar_crypto::MacKey {
        self.master.mac_key(purpose)
    }

    pub fn master_key_id(&self) -> String {
        self.master.id()
    }

    /// Fails when any stored data key is wrapped by another master key (a
    /// rotation whose key file was not swapped, or the wrong file).
    pub async fn check(&self, conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
        let mine = self.master.id();
        let other: Option<(i64, String)> = data_keys::table
            .filter(data_keys::master_key_id.ne(&mine))
            .select((data_keys::id, data_keys::master_key_id))
            .first(conn)
            .await
            .optional()?;
        match other {
            Some((data_key, stored)) => Err(StoreError::MasterKeyMismatch { data_key, stored, configured: mine }),
            None => Ok(()),
        }
    }

    /// Seals `plaintext` under the newest data key (made on first use).
    pub async fn seal(&self, conn: &mut AsyncPgConnection, plaintext: &[u8], context: &str) -> Result<Sealed, StoreError> {
        let newest: Option<DataKeyRow> = data_keys::table
            .order(data_keys::id.desc())
            .select(DataKeyRow::as_select())
            .first(conn)
            .await
            .optional()?;
        let (id, key) = match newest {
            Some(row) => (row.id, self.unwrap_row(&row)?),
            None => {
                let key = DataKey::generate();
                let id: i64 = diesel::insert_into(data_keys::table)
                    .values((data_keys::wrapped.eq(self.master.wrap(&key)), data_keys::master_key_id.eq(self.master.id())))
                    .returning(data_keys::id)
                    .get_result(conn)
                    .await?;
                self.lock().insert(id, key.clone());
                (id, key)
            }
        };
        Ok(Sealed { data_key_id: id, bytes: key.seal(plaintext, context.as_bytes()) })
    }

    /// Opens a value sealed with data key `data_key_id` under `context`.
    pub async fn open(
        &self,
        conn: &mut AsyncPgConnection,
        sealed: &Sealed,
        context: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let cached = self.lock().get(&sealed.data_key_id).cloned();
        let key = match cached {
            Some(k) => k,
            None => {
                let row: DataKeyRow = data_keys::table
                    .find(sealed.data_key_id)
                    .select(DataKeyRow::as_select())
                    .first(conn)
                    .await?;
                self.unwrap_row(&row)?
            }
        };
        key.open(&sealed.bytes, context.as_bytes()).map_err(|source| StoreError::DataKeyUnwrap {
            data_key: sealed.data_key_id,
            master_key: self.master.id(),
            source: Box::new(source),
        })
    }

    fn unwrap_row(&self, row: &DataKeyRow) -> Result<DataKey, StoreError> {
        if let Some(k) = self.lock().get(&row.id) {
            return Ok(k.clone());
        }
        if row.master_key_id != self.master.id() {
            return Err(StoreError::MasterKeyMismatch {
                data_key: row.id,
                stored: row.master_key_id.clone(),
                configured: self.master.id(),
            });
        }
        let key = self.master.unwrap_key(&row.wrapped).map_err(|source| StoreError::DataKeyUnwrap {
            data_key: row.id,
            master_key: self.master.id(),
            source: Box::new(source),
        })?;
        self.lock().insert(row.id, key.clone());
        Ok(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, DataKey>> {
        // A poisoned cache only ever held fully inserted keys.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Re-wraps every data key from `old` to `new` in one transaction; returns how
/// many were re-wrapped. Nothing changes unless every key opens with `old`.
pub async fn rotate_master_key(
    conn: &mut AsyncPgConnection,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<usize, StoreError> {
    let (old, new) = (old.clone(), new.clone());
    conn.transaction::<_, StoreError, _>(async move |c| {
        let rows: Vec<DataKeyRow> = data_keys::table
            .order(data_keys::id.asc())
            .for_update()
            .select(DataKeyRow::as_select())
            .load(c)
            .await?;
        for row in &rows {
            if row.master_key_id != old.id() {
                return Err(StoreError::MasterKeyMismatch {
                    data_key: row.id,
                    stored: row.master_key_id.clone(),
                    configured: old.id(),
                });
            }
            let key = old.unwrap_key(&row.wrapped).map_err(|source| StoreError::DataKeyUnwrap {
                data_key: row.id,
                master_key: old.id(),
                source: Box::new(source),
            })?;
            diesel::update(data_keys::table.find(row.id))
                .set((
                    data_keys::wrapped.eq(new.wrap(&key)),
                    data_keys::master_key_id.eq(new.id()),
                    data_keys::rewrapped_at.eq(diesel::dsl::now),
                ))
                .execute(c)
                .await?;
        }
        Ok(rows.len())
    })
    .await
}
