//! What the store's own operations (sealed secrets, VCS integrations) fail
//! with, each naming the record involved.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database query")]
    Query(#[from] diesel::result::Error),
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
