//! Bundles on the appliance: resumable uploads into its staging area, and the
//! staged bundles.
//!
//! An upload is sent in chunks (`PATCH` with `Upload-Offset`), each streamed
//! from the file, never read whole into memory. The upload's id is kept in a
//! small record under the client's state directory, keyed by the server, the
//! file's path, size and modification time: when a transfer breaks, or the
//! command is killed, running it again asks the appliance where the upload
//! stands and sends only the rest.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{Client, ClientError};

/// A verified bundle in the appliance's staging area.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedBundle {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub version: String,
    pub platform: String,
    pub size: u64,
    pub sha256: String,
    pub signers: Vec<String>,
    pub files: u64,
    pub uploaded_by: String,
    pub uploaded_at: String,
    /// When and by whom it was applied, once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<AppliedRecord>,
    /// The last upgrade asked for with it (an appliance bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeState>,
}

/// An upgrade asked for, as the appliance reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeState {
    pub id: String,
    /// `requested`, `running`, `completed`, `rolled-back`, `refused` or `failed`.
    pub state: String,
    pub version: String,
    pub requested_by: String,
    pub requested_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl UpgradeState {
    pub fn ended(&self) -> bool {
        !matches!(self.state.as_str(), "requested" | "running")
    }
}

/// The answer to an upgrade asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeAccepted {
    pub bundle: StagedBundle,
    pub upgrade: UpgradeState,
}

/// The appliance's record of a bundle's apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub applied_by: String,
    pub applied_at: String,
    pub installed: Vec<String>,
    pub unchanged: Vec<String>,
    pub skipped: Vec<String>,
}

/// What an apply did: the bundle's files, by their paths in the bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResult {
    pub bundle: StagedBundle,
    /// Installed now.
    pub installed: Vec<String>,
    /// In place already with the same SHA-256.
    pub unchanged: Vec<String>,
    /// Not for the tools area (a mirror's JSON documents, a worker bundle's
    /// other files).
    pub skipped: Vec<String>,
}

/// An upload as the appliance reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct UploadState {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub offset: u64,
    #[serde(default)]
    pub bundle: Option<StagedBundle>,
}

#[derive(Debug, Deserialize)]
struct StagedList {
    bundles: Vec<StagedBundle>,
}

/// How an upload goes.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Bytes per request.
    pub chunk_bytes: u64,
    /// Attempts after a broken transfer before giving up.
    pub retries: u32,
    /// Where resume records are kept; `None` keeps none.
    pub state_dir: Option<PathBuf>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            chunk_bytes: 64 << 20,
            retries: 5,
            state_dir: default_state_dir(),
        }
    }
}

/// `$XDG_STATE_HOME/hangar/uploads`, else `~/.local/state/hangar/uploads`.
pub fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
        })?;
    Some(base.join("hangar").join("uploads"))
}

/// What the progress callback hears.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// The upload starts (or resumes) at `offset` of `size`.
    Start { offset: u64, size: u64 },
    /// Bytes handed to the connection so far.
    Sent(u64),
    /// The last byte is sent: the appliance finishes verifying.
    Verifying,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRecord {
    id: String,
}

fn resume_key(client: &Client, path: &Path, meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let text = format!(
        "{}\n{}\n{}\n{mtime}",
        client.profile().server,
        canonical.display(),
        meta.len()
    );
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[..16])
}

/// Uploads the bundle at `path` into the appliance's staging area, resuming an
/// earlier upload of the same file when there is one.
pub async fn upload(
    client: &Client,
    path: &Path,
    options: &UploadOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<StagedBundle, ClientError> {
    let meta = std::fs::metadata(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ClientError::Config(format!(
            "{}: not a file",
            path.display()
        )));
    }
    let size = meta.len();
    let record = options
        .state_dir
        .as_ref()
        .map(|d| d.join(format!("{}.json", resume_key(client, path, &meta))));
    let name = path
        .file_name()
        .map_or_else(|| "bundle".into(), |n| n.to_string_lossy().into_owned());

    let earlier = record
        .as_deref()
        .and_then(|r| std::fs::read(r).ok())
        .and_then(|t| serde_json::from_slice::<ResumeRecord>(&t).ok());
    let mut state = match earlier {
        Some(r) => find_upload(client, &r.id, size, options.retries).await?,
        None => None,
    };
    if state.is_none() {
        let created: UploadState = client
            .call(
                Method::POST,
                "/api/v1/bundles/uploads",
                Some(&serde_json::json!({ "name": name, "size": size })),
            )
            .await?;
        if let Some(r) = &record {
            save_record(
                r,
                &ResumeRecord {
                    id: created.id.clone(),
                },
            )?;
        }
        state = Some(created);
    }
    let mut state = state.expect("an upload was found or started");
    progress(Progress::Start {
        offset: state.offset,
        size,
    });

    let mut failures = 0;
    let result = loop {
        // With every byte there but the verdict lost, an empty chunk asks again.
        let end = (state.offset + options.chunk_bytes).min(size);
        match send_chunk(client, path, &state.id, state.offset, end, progress).await {
            Ok(next) => {
                failures = 0;
                state = next;
                if let Some(b) = state.bundle.take() {
                    break Ok(b);
                }
            }
            Err(e) if retryable(&e) && failures < options.retries => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                match client
                    .call::<UploadState>(Method::GET, &upload_path(&state.id), None)
                    .await
                {
                    Ok(s) => state = s,
                    Err(again) if retryable(&again) => {}
                    Err(again) => break Err(again),
                }
                progress(Progress::Start {
                    offset: state.offset,
                    size,
                });
            }
            Err(e) if retryable(&e) => {
                break Err(ClientError::Stalled {
                    id: state.id.clone(),
                    offset: state.offset,
                    size,
                    source: Box::new(e),
                });
            }
            Err(e) => break Err(e),
        }
    };
    // A stalled upload keeps its record for the next run; anything else is over.
    if let Some(r) = &record
        && !matches!(result, Err(ClientError::Stalled { .. }))
    {
        let _ = std::fs::remove_file(r);
    }
    result
}

/// The upload `id` of `size` bytes, when the appliance still has it; the
/// request that was writing it when the last run was cut off may hold it for
/// a moment (409), which is waited out.
async fn find_upload(client: &Client, id: &str, size: u64, retries: u32) -> Result<Option<UploadState>, ClientError> {
    let mut tries = 0;
    loop {
        match client.call::<UploadState>(Method::GET, &upload_path(id), None).await {
            Ok(s) => return Ok((s.size == size).then_some(s)),
            Err(e) if e.status() == Some(404) => return Ok(None),
            Err(e) if retryable(&e) && tries < retries => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(tries))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } => true,
        ClientError::Api { status, .. } => *status == 409 || *status == 503 || *status == 500,
        _ => false,
    }
}

fn upload_path(id: &str) -> String {
    format!("/api/v1/bundles/uploads/{id}")
}

fn save_record(path: &Path, record: &ResumeRecord) -> Result<(), ClientError> {
    let write = |source| ClientError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    std::fs::write(
        path,
        serde_json::to_vec(record).expect("a record serializes"),
    )
    .map_err(write)
}

/// Sends bytes `[offset, end)` of the file as one `PATCH`, streamed.
async fn send_chunk(
    client: &Client,
    path: &Path,
    id: &str,
    offset: u64,
    end: u64,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<UploadState, ClientError> {
    let read_err = |source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
    file.seek(SeekFrom::Start(offset)).await.map_err(read_err)?;
    let (tx, rx) = futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let len = end - offset;
    let reader = tokio::spawn(async move {
        let mut tx = tx;
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; (256 * 1024).min(left as usize)];
            let n = match file.read(&mut buf).await {
                Ok(0) => {
                    let _ = futures::SinkExt::send(
                        &mut tx,
                        Err(std::io::Error::other("the file got shorter")),
                    )
                    .await;
                    break;
                }
                Ok(n) => n,
                Err(e) => {
                    let _ = futures::SinkExt::send(&mut tx, Err(e)).await;
                    break;
                }
            };
            buf.truncate(n);
            left -= n as u64;
            if futures::SinkExt::send(&mut tx, Ok(bytes::Bytes::from(buf)))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    // Progress is reported as the connection takes the pieces.
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut taken = 0u64;
    let body = rx.map(move |piece| {
        if let Ok(b) = &piece {
            taken += b.len() as u64;
            let _ = ptx.send(offset + taken);
        }
        piece
    });
    let req = client
        .request(Method::PATCH, &upload_path(id))?
        .header("upload-offset", offset.to_string())
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, len.to_string())
        .body(reqwest::Body::wrap_stream(body));
    let path_s = upload_path(id);
    let call = client.send::<UploadState>(&Method::PATCH, &path_s, req);
    let mut call = std::pin::pin!(call);
    let answer = loop {
        tokio::select! {
            r = &mut call => break r,
            Some(at) = prx.recv() => {
                progress(Progress::Sent(at));
                if at == end && end > offset {
                    progress(Progress::Verifying);
                }
            }
        }
    };
    reader.abort();
    answer?.ok_or_else(|| ClientError::Protocol {
        path: upload_path(id),
        problem: "no body".into(),
    })
}

/// The staged bundles.
pub async fn list(client: &Client) -> Result<Vec<StagedBundle>, ClientError> {
    Ok(client
        .call::<StagedList>(Method::GET, "/api/v1/bundles", None)
        .await?
        .bundles)
}

/// Applies a staged `tools` or `worker` bundle to the appliance's tools area.
pub async fn apply(client: &Client, id: &str) -> Result<ApplyResult, ClientError> {
    let path = format!("/api/v1/bundles/{id}/apply");
    client.call(Method::POST, &path, None).await
}

/// Asks the appliance to upgrade itself to a staged `appliance` bundle.
pub async fn upgrade(client: &Client, id: &str) -> Result<UpgradeAccepted, ClientError> {
    let path = format!("/api/v1/bundles/{id}/upgrade");
    client.call(Method::POST, &path, None).await
}

/// Follows upgrade `request` (of bundle `id`) until it ends or `timeout`
/// passes, calling `on_state` at each change. The appliance stops and starts
/// again on the way: failed requests are retried until the deadline.
pub async fn wait_upgrade(
    client: &Client,
    id: &str,
    request: &str,
    timeout: Duration,
    on_state: &mut dyn FnMut(&UpgradeState),
) -> Result<UpgradeState, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let unreachable = match list(client).await {
            Ok(list) => {
                let found = list
                    .into_iter()
                    .find(|b| b.id == id)
                    .and_then(|b| b.upgrade)
                    .filter(|u| u.id == request);
                if let Some(u) = found {
                    if u.state != last {
                        last = u.state.clone();
                        on_state(&u);
                    }
                    if u.ended() {
                        return Ok(u);
                    }
                }
                None
            }
            Err(e) => Some(e),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(unreachable.unwrap_or_else(|| ClientError::Timeout {
                what: format!("upgrade {request}"),
                secs: timeout.as_secs(),
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Removes a staged bundle.
pub async fn remove(client: &Client, id: &str) -> Result<(), ClientError> {
    let path = format!("/api/v1/bundles/{id}");
    let req = client.request(Method::DELETE, &path)?;
    client
        .send::<serde_json::Value>(&Method::DELETE, &path, req)
        .await
        .map(|_| ())
}
