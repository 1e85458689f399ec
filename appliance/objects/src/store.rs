//! The object store client the appliance uses: a bucket handle on rust-s3, a
//! health check that makes a real signed request, puts and gets, and pre-signed
//! URLs for workers.

use std::fmt;
use std::time::Duration;

use s3::creds::Credentials;
use s3::{Bucket, Region};

use crate::bridge::TlsBridge;
use crate::config::{ObjectsConfig, read_secret_file};
use crate::ObjectsError;

/// Longest validity S3 allows for a pre-signed URL.
pub const MAX_PRESIGN: Duration = Duration::from_secs(604_800);

/// A connected object store.
pub struct ObjectStore {
    endpoint: String,
    /// Sends requests (through the TLS bridge when the store uses https with
    /// our own CA).
    transport: Box<Bucket>,
    /// Signs URLs for workers: always the configured endpoint, never used to send.
    presigner: Box<Bucket>,
    // Kept alive as long as `transport` may use it.
    _bridge: Option<TlsBridge>,
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials stay out of Debug: only where and which bucket.
        f.debug_struct("ObjectStore")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.transport.name)
            .finish_non_exhaustive()
    }
}

impl ObjectStore {
    /// Reads the credential files (0600 only) and the CA, and prepares the
    /// bucket handles. Makes no request: use [`ObjectStore::health`] for that.
    pub async fn connect(cfg: &ObjectsConfig) -> Result<ObjectStore, ObjectsError> {
        cfg.validate()?;
        let access_key = read_secret_file(&cfg.access_key_file)?;
        let secret_key = read_secret_file(&cfg.secret_key_file)?;
        let region_name = cfg.region().unwrap_or_default().to_string();
        let url = cfg.endpoint_url()?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let endpoint = format!("{}://{authority}", url.scheme());
        let creds = Credentials::new(Some(&access_key), Some(&secret_key), None, None, None)
            .map_err(|e| ObjectsError::client(&endpoint, e.into()))?;
        let bucket = |endpoint: String| -> Result<Box<Bucket>, ObjectsError> {
            let region = Region::Custom { region: region_name.clone(), endpoint: endpoint.clone() };
            let b = Bucket::new(&cfg.bucket, region, creds.clone()).map_err(|e| ObjectsError::client(&endpoint, e))?;
            b.with_path_style()
                .with_request_timeout(Duration::from_secs(cfg.request_timeout_secs))
                .map_err(|e| ObjectsError::client(&endpoint, e))
        };
        let presigner = bucket(endpoint.clone())?;
        let (transport, bridge) = match &cfg.ca_file {
            Some(ca) if url.scheme() == "https" => {
                let pem = std::fs::read(ca).map_err(|source| ObjectsError::ReadFile { path: ca.clone(), source })?;
                let roots = hangar_certs::tls::roots_from_pem(&pem)
                    .map_err(|source| ObjectsError::Tls { endpoint: endpoint.clone(), source })?;
                let tls = hangar_certs::tls::client_config(roots, None)
                    .map_err(|source| ObjectsError::Tls { endpoint: endpoint.clone(), source })?;
                let bridge = TlsBridge::start(&authority, tls)
                    .await
                    .map_err(|source| ObjectsError::Bridge { endpoint: endpoint.clone(), source })?;
                let proxy = bridge
                    .proxy()
                    .map_err(|e| ObjectsError::client(&endpoint, s3::error::S3Error::Reqwest(e)))?;
                let plain = bucket(format!("http://{authority}"))?;
                let through = plain.set_proxy(proxy).map_err(|e| ObjectsError::client(&endpoint, e))?;
                (Box::new(through), Some(bridge))
            }
            _ => (presigner.clone(), None),
        };
        Ok(ObjectStore { endpoint, transport, presigner, _bridge: bridge })
    }

    /// `scheme://host:port` of the store.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket_name(&self) -> &str {
        &self.transport.name
    }

    /// The rust-s3 handle requests go through, for operations this client does
    /// not wrap (streams, listings).
    pub fn bucket(&self) -> &Bucket {
        &self.transport
    }

    /// One signed request (a listing of at most one key): proves the endpoint
    /// answers, its certificate is trusted, the credentials are valid and the
    /// bucket exists.
    pub async fn health(&self) -> Result<(), ObjectsError> {
        self.transport
            .list_page(String::new(), None, None, None, Some(1))
            .await
            .map(|_| ())
            .map_err(|source| self.request_error("list", "", source))
    }

    pub async fn put(&self, key: &str, body: &[u8]) -> Result<(), ObjectsError> {
        self.transport
            .put_object(key, body)
            .await
            .map(|_| ())
            .map_err(|source| self.request_error("put", key, source))
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, ObjectsError> {
        self.transport
            .get_object(key)
            .await
            .map(|r| r.to_vec())
            .map_err(|source| self.request_error("get", key, source))
    }

    pub async fn delete(&self, key: &str) -> Result<(), ObjectsError> {
        self.transport
            .delete_object(key)
            .await
            .map(|_| ())
            .map_err(|source| self.request_error("delete", key, source))
    }

    /// A URL a worker can GET `key` from for `ttl`.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, ObjectsError> {
        let secs = presign_secs(ttl)?;
        self.presigner
            .presign_get(key, secs, None)
            .await
            .map_err(|source| self.request_error("presign get", key, source))
    }

    /// A URL a worker can PUT `key` to for `ttl`.
    pub async fn presign_put(&self, key: &str, ttl: Duration) -> Result<String, ObjectsError> {
        let secs = presign_secs(ttl)?;
        self.presigner
            .presign_put(key, secs, None, None)
            .await
            .map_err(|source| self.request_error("presign put", key, source))
    }

    fn request_error(&self, op: &'static str, key: &str, source: s3::error::S3Error) -> ObjectsError {
        ObjectsError::Request {
            op,
            key: key.to_string(),
            endpoint: self.endpoint.clone(),
            bucket: self.transport.name.clone(),
            source: Box::new(source),
        }
    }
}

fn presign_secs(ttl: Duration) -> Result<u32, ObjectsError> {
    if ttl.is_zero() || ttl > MAX_PRESIGN {
        return Err(ObjectsError::Config {
            field: "pre-signed URL lifetime",
            problem: format!("{ttl:?} is outside 1 s to 7 days"),
        });
    }
    Ok(u32::try_from(ttl.as_secs().max(1)).unwrap_or(u32::MAX))
}
