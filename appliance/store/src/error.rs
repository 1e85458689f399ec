//! What the store's operations fail with, each naming the record involved.
//! Clients map it once to what they answer (the server's API errors, a job's
//! retry or failure).

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database query")]
    Query(#[from] diesel::result::Error),
    /// From the run store of `hangar-db` (creations and transitions).
    #[error(transparent)]
    Db(#[from] hangar_db::DbError),
    #[error(
        "data key {data_key} is wrapped by master key {stored}, but the configured master key is {configured} \
         (was the master key rotated without swapping the key file?)"
    )]
    MasterKeyMismatch { data_key: i64, stored: String, configured: String },
    #[error("data key {data_key} does not open with master key {master_key}")]
    DataKeyUnwrap {
        data_key: i64,
        master_key: String,
        #[source]
        source: Box<hangar_crypto::CryptoError>,
    },
}
