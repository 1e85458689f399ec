//! The HTTPS client: the profile's CA and API key on every call, answers
//! read as JSON, error bodies turned into [`ClientError::Api`].

use std::time::Duration;

use hangar_types::http::ErrorBody;
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::{ClientError, Profile};

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    profile: Profile,
}

impl Client {
    pub fn new(profile: Profile) -> Result<Client, ClientError> {
        let mut b = reqwest::Client::builder()
            .https_only(true)
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(300));
        if let Some(ca) = &profile.ca_file {
            let pem = std::fs::read(ca).map_err(|source| ClientError::Read {
                path: ca.clone(),
                source,
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                ClientError::Config(format!("{}: not a PEM certificate ({e})", ca.display()))
            })?;
            b = b.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        let http = b
            .build()
            .map_err(|e| ClientError::Config(format!("cannot set up HTTPS: {e}")))?;
        Ok(Client { http, profile })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// A request to `path` on the appliance, with the API key.
    pub fn request(
        &self,
        method: Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let url = self
            .profile
            .server
            .join(path)
            .map_err(|e| ClientError::Config(format!("{}{path}: {e}", self.profile.server)))?;
        let req = self.http.request(method, url);
        // No key yet: `hangar login` asks for one.
        if self.profile.api_key.is_empty() {
            return Ok(req);
        }
        Ok(req.bearer_auth(&self.profile.api_key))
    }

    /// Sends `req` and reads a JSON answer (`None` for 204).
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ClientError> {
        let url = format!(
            "{}{}",
            self.profile.server.as_str().trim_end_matches('/'),
            path
        );
        let r = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = r.status();
        let bytes = r
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        if !status.is_success() {
            let graphql_error = || {
                let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                let first = v.get("errors")?.get(0)?;
                Some((
                    first.pointer("/extensions/code")?.as_str()?.to_string(),
                    first.get("message")?.as_str()?.to_string(),
                ))
            };
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (b.error.code.to_string(), b.error.message),
                Err(_) => graphql_error().unwrap_or_else(|| {
                    (
                        status.canonical_reason().unwrap_or("error").to_string(),
                        String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                    )
                }),
            };
            return Err(ClientError::Api {
                method: method.to_string(),
                path: path.to_string(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Protocol {
                path: path.to_string(),
                problem: e.to_string(),
            })
    }

    /// A JSON call that must answer with a body.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let mut req = self.request(method.clone(), path)?;
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(&method, path, req)
            .await?
            .ok_or_else(|| ClientError::Protocol {
                path: path.to_string(),
                problem: "no body".into(),
            })
    }
}
