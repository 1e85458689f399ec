//! `/v1/providers/…`: Terraform's provider network mirror protocol over
//! `[server] provider_mirror_dir`, laid out as `terraform providers mirror`
//! writes it (`<hostname>/<namespace>/<type>/terraform-provider-<type>_<version>_<os>_<arch>.zip`).
//! The JSON documents are made from the zips found there (its own JSON files
//! are not trusted), with `zh:` hashes (SHA-256 of each zip). Callers are runs:
//! `Authorization: Bearer <run token>`, what the worker's Terraform CLI
//! configuration sends. Terraform sends no credentials when it downloads an
//! archive (the protocol leaves it to mirrors to hand out archive URLs that
//! authorize themselves), so a version document names each archive with the
//! caller's own run token in the query, and an archive is served to a run
//! token given there too. The token dies with its run, the access log never
//! records query strings, and the worker masks the token in whatever
//! Terraform prints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;
use warp::http::{Method, StatusCode};

use super::{Reply2, Request, WorkerApiError, json as reply_json};
use crate::App;

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// One archive of a provider: version, platform and where it lies.
struct Archive {
    version: String,
    platform: String,
    file_name: String,
    path: PathBuf,
}

/// The archives of `<hostname>/<namespace>/<type>` in the mirror.
async fn archives(root: &std::path::Path, host: &str, ns: &str, ty: &str) -> Vec<Archive> {
    let dir = root.join(host).join(ns).join(ty);
    let prefix = format!("terraform-provider-{ty}_");
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(&dir).await else { return out };
    while let Ok(Some(e)) = entries.next_entry().await {
        let Ok(name) = e.file_name().into_string() else { continue };
        let Some(rest) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".zip")) else { continue };
        // <version>_<os>_<arch>: versions hold no underscore.
        let parts: Vec<&str> = rest.split('_').collect();
        let [version, os, arch] = parts.as_slice() else { continue };
        if !segment_ok(version) || !segment_ok(os) || !segment_ok(arch) {
            continue;
        }
        if !e.file_type().await.is_ok_and(|t| t.is_file()) {
            continue;
        }
        out.push(Archive {
            version: version.to_string(),
            platform: format!("{os}_{arch}"),
            file_name: name.clone(),
            path: e.path(),
        });
    }
    out
}

/// The query parameter of an archive URL that carries the run token.
const TOKEN_PARAM: &str = "token";

/// The run token of `query`, if it gives one.
fn query_token(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == TOKEN_PARAM).map(|(_, v)| v.into_owned())
}

pub(crate) async fn serve(app: &App, req: Request) -> Reply2 {
    let archive_asked = req.tail.last().is_some_and(|d| d.ends_with(".zip"));
    let token = match super::auth::bearer(req.auth.as_deref()) {
        Some(t) => t.to_string(),
        None if archive_asked => query_token(&req.query).ok_or(WorkerApiError::BadRunToken)?,
        None => return Err(WorkerApiError::BadRunToken),
    };
    let token = token.as_str();
    let mut conn = app.db.get().await.map_err(WorkerApiError::db)?;
    hangar_store::run_tokens::holder(&mut conn, token)
        .await
        .map_err(WorkerApiError::db)?
        .ok_or(WorkerApiError::BadRunToken)?;
    drop(conn);
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(WorkerApiError::NotFound("the mirror is read with GET".into()));
    }
    let missing = || WorkerApiError::NotFound("no such provider in the mirror".into());
    let root = app.workers.mirror_dir.as_ref().ok_or_else(missing)?;
    let tail: Vec<&str> = req.tail.iter().map(String::as_str).collect();
    let [host, ns, ty, doc] = tail.as_slice() else { return Err(missing()) };
    if ![host, ns, ty, doc].iter().all(|s| segment_ok(s)) {
        return Err(missing());
    }
    let found = archives(root, host, ns, ty).await;
    if *doc == "index.json" {
        if found.is_empty() {
            return Err(missing());
        }
        let versions: BTreeMap<&str, serde_json::Value> = found.iter().map(|a| (a.version.as_str(), json!({}))).collect();
        return Ok(reply_json(StatusCode::OK, &json!({ "versions": versions })));
    }
    if let Some(version) = doc.strip_suffix(".json") {
        let mut archives = serde_json::Map::new();
        for a in found.iter().filter(|a| a.version == version) {
            let hash = app.workers.sha256_of(&a.path).await.map_err(|e| WorkerApiError::internal("hashing a provider", e))?;
            // Relative to this document's URL, as the protocol allows.
            let url = format!(
                "{}?{TOKEN_PARAM}={}",
                a.file_name,
                url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
            );
            archives.insert(a.platform.clone(), json!({ "url": url, "hashes": [format!("zh:{hash}")] }));
        }
        if archives.is_empty() {
            return Err(missing());
        }
        return Ok(reply_json(StatusCode::OK, &json!({ "archives": archives })));
    }
    let archive = found.into_iter().find(|a| a.file_name == *doc).ok_or_else(missing)?;
    super::files::serve_file(&archive.path, req.method == Method::HEAD, "application/zip").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        assert!(segment_ok("registry.terraform.io"));
        assert!(segment_ok("terraform-provider-null_3.2.1_linux_amd64.zip"));
        assert!(!segment_ok(".."));
        assert!(!segment_ok(".hidden"));
        assert!(!segment_ok("a/b"));
        assert!(!segment_ok(""));
    }

    #[test]
    fn archive_urls_carry_the_token_in_their_query() {
        assert_eq!(query_token("token=hrt_abc_def").as_deref(), Some("hrt_abc_def"));
        assert_eq!(query_token("x=1&token=a%2Bb").as_deref(), Some("a+b"));
        assert_eq!(query_token(""), None);
        assert_eq!(query_token("tokens=1"), None);
    }
}
