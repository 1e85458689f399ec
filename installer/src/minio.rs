//! MinIO, the object store of production bundles (`embedded/minio/minio`):
//! its supervisor entry, its certificate directory and its bucket. MinIO
//! serves TLS itself from `--certs-dir` (`public.crt`, `private.key`), so it
//! needs no TLS front, unlike Garage. Its root credentials are the object
//! store's key files: a small shell reads them into `MINIO_ROOT_USER` and
//! `MINIO_ROOT_PASSWORD` and execs MinIO, so that neither the world-readable
//! `hangar.toml` nor any command line ever holds them.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::answers::Answers;
use crate::error::InstallError;
use crate::host::{Layout, ensure_dir, write_if_changed};
use crate::render::{BUCKET, OBJECTS_ACCESS_KEY, OBJECTS_SECRET_KEY};

/// MinIO signs and checks requests in this region unless told otherwise.
pub const REGION: &str = "us-east-1";

/// The MinIO server binary of the current release.
pub fn binary(l: &Layout) -> PathBuf {
    l.current.join("embedded/minio/minio")
}

/// MinIO's `--certs-dir`: `public.crt` and `private.key`, the appliance CA's
/// `objects` certificate.
pub fn certs_dir(l: &Layout) -> PathBuf {
    l.pki.join("minio")
}

/// Its data directory (one drive: a single-node, single-drive deployment).
pub fn data_dir(l: &Layout) -> PathBuf {
    l.objects.clone()
}

/// Where MinIO listens: the answers' address and object store port.
pub fn address(answers: &Answers) -> SocketAddr {
    SocketAddr::new(answers.listen, answers.ports.objects)
}

/// The readiness URL the supervisor and the installer poll (MinIO's
/// documented `GET /minio/health/ready`).
pub fn ready_url(answers: &Answers) -> String {
    format!("https://{}/minio/health/ready", answers.local_addr(answers.ports.objects))
}

/// The shell that reads the credentials from their files into MinIO's
/// environment and execs it: `$0` MinIO, `$1` and `$2` the key files, `$3`
/// the data directory, `$4` the address, `$5` the certificate directory.
pub const LAUNCH: &str = "set -e; u=$(cat \"$1\"); p=$(cat \"$2\"); export MINIO_ROOT_USER=\"$u\" MINIO_ROOT_PASSWORD=\"$p\"; \
                          exec \"$0\" server \"$3\" --address \"$4\" --certs-dir \"$5\"";

/// The supervisor's entry for MinIO (TOML), given the quoting helpers of
/// `render`.
pub fn service_toml(answers: &Answers, l: &Layout, q: &dyn Fn(&str) -> String) -> String {
    let p = |p: &Path| q(&p.to_string_lossy());
    format!(
        "[[supervisor.service]]\nname = \"minio\"\ncommand = \"/bin/sh\"\n\
         args = [\"-c\", {script}, {minio}, {ak}, {sk}, {data}, {address}, {certs}]\n\
         # No web console: nothing listens but the S3 API.\n\
         env = {{ MINIO_BROWSER = \"off\" }}\n\
         ready = {{ kind = \"https\", url = {ready}, ca_file = {ca} }}\n\n",
        script = q(LAUNCH),
        minio = p(&binary(l)),
        ak = p(&l.secret(OBJECTS_ACCESS_KEY)),
        sk = p(&l.secret(OBJECTS_SECRET_KEY)),
        data = p(&data_dir(l)),
        address = q(&address(answers).to_string()),
        certs = p(&certs_dir(l)),
        ready = q(&ready_url(answers)),
        ca = p(&l.pki.join("ca.crt")),
    )
}

/// Fills the certificate directory from the `objects` certificate and key
/// the appliance CA issued (its names: the host name, its addresses,
/// localhost). The key is the service user's alone. Returns whether anything
/// changed.
pub fn prepare_certs(l: &Layout, owner: Option<(u32, u32)>) -> Result<bool, InstallError> {
    let dir = certs_dir(l);
    ensure_dir(&dir, 0o755, None)?;
    let cert = fs::read(l.pki.join("objects.crt")).map_err(InstallError::io("read", l.pki.join("objects.crt")))?;
    let key = fs::read(l.pki.join("objects.key")).map_err(InstallError::io("read", l.pki.join("objects.key")))?;
    let mut changed = write_if_changed(&dir.join("public.crt"), &cert, 0o644, None)?;
    changed |= write_if_changed(&dir.join("private.key"), &key, 0o600, owner)?;
    Ok(changed)
}

/// An S3 `CreateBucket` (`PUT /<bucket>`, no body: the default region)
/// signed with the root credentials, at `addr` presenting `host`, trusting
/// only `ca`. A bucket that exists already and is ours counts as made.
pub async fn create_bucket(host: &str, addr: SocketAddr, ca: &Path, bucket: &str, region: &str, access_key: &str, secret_key: &str) -> Result<String, String> {
    let tls = crate::tls::client_config(ca)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .resolve(host, addr)
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let host_header = format!("{host}:{}", addr.port());
    let path = format!("/{}", hangar_supervisor::sigv4::encode_segment(bucket));
    let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let auth = hangar_supervisor::sigv4::authorization(&hangar_supervisor::sigv4::Request {
        method: "PUT",
        host: &host_header,
        path: &path,
        region,
        access_key,
        secret_key,
        amz_date: &amz_date,
    });
    let url = format!("https://{host_header}{path}");
    let resp = client
        .put(&url)
        .header("host", &host_header)
        .header("x-amz-date", &amz_date)
        .header("x-amz-content-sha256", hangar_supervisor::sigv4::EMPTY_SHA256)
        .header("authorization", auth)
        .send()
        .await
        .map_err(|e| hangar_types::error_chain(&e))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(format!("bucket {bucket} created"));
    }
    if status == reqwest::StatusCode::CONFLICT && body.contains("BucketAlreadyOwnedByYou") {
        return Ok(format!("bucket {bucket} in place"));
    }
    let code = body.split_once("<Code>").and_then(|(_, r)| r.split_once("</Code>")).map(|(c, _)| c).unwrap_or("no S3 error code");
    Err(format!("PUT {url} answered {status} ({code})"))
}

/// Waits for MinIO to answer ready, then makes the appliance's bucket with
/// the root credentials (MinIO, unlike Garage, starts with none).
pub fn ensure_bucket(answers: &Answers, l: &Layout, timeout: Duration) -> Result<String, InstallError> {
    let read = |name: &str| -> Result<String, InstallError> {
        let path = l.secret(name);
        Ok(fs::read_to_string(&path).map_err(InstallError::io("read", &path))?.trim().to_string())
    };
    let (ak, sk) = (read(OBJECTS_ACCESS_KEY)?, read(OBJECTS_SECRET_KEY)?);
    let ca = l.pki.join("ca.crt");
    let addr = answers.local_addr(answers.ports.objects);
    let endpoint = format!("https://{}:{}", answers.hostname, answers.ports.objects);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(InstallError::io("start a runtime for", "the bucket"))?;
    let deadline = Instant::now() + timeout;
    let ready = ready_url(answers);
    rt.block_on(async {
        let tls = crate::tls::client_config(&ca).map_err(|problem| InstallError::Objects { endpoint: endpoint.clone(), problem })?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| InstallError::Objects { endpoint: endpoint.clone(), problem: e.to_string() })?;
        loop {
            match client.get(&ready).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) if Instant::now() > deadline => {
                    return Err(InstallError::Objects { endpoint: endpoint.clone(), problem: format!("{ready} answered {}", r.status()) });
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(InstallError::Objects { endpoint: endpoint.clone(), problem: hangar_types::error_chain(&e) });
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        create_bucket(&answers.hostname, addr, &ca, BUCKET, REGION, &ak, &sk)
            .await
            .map_err(|problem| InstallError::Objects { endpoint, problem })
    })
}
