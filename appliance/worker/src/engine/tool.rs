//! The Terraform/OpenTofu binary of a run: fetched from the appliance once,
//! checked against the SHA-256 the assignment names, and cached by that hash
//! (`<cache>/tools/<sha256>/<tool>`), so a cached binary is the same bytes
//! whichever version label pointed at it. A cached file is checked again before
//! each use: a damaged or altered cache entry is fetched anew, never run.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hangar_types::worker::ToolSpec;

use super::logs::LogStream;
use super::{EngineError, RunHooks};

/// The executable's name for a tool.
fn exe_name(spec: &ToolSpec) -> &'static str {
    match spec.tool {
        hangar_types::Tool::Terraform => "terraform",
        hangar_types::Tool::Opentofu => "tofu",
    }
}

/// The cached binary for `spec`, fetched through `hooks` when absent or damaged.
pub(crate) async fn ensure<H: RunHooks>(
    hooks: &H,
    spec: &ToolSpec,
    cache_dir: &Path,
    log: &mut LogStream<'_, H>,
) -> Result<PathBuf, EngineError> {
    let want = spec.sha256.to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EngineError::BadToolHash {
            sha256: spec.sha256.clone(),
        });
    }
    let dir = cache_dir.join("tools").join(&want);
    let path = dir.join(exe_name(spec));
    if path.is_file() {
        let have = sha256_file(&path).await?;
        if have == want {
            log.line(&format!(
                "{} {} from the cache (sha256 {want})",
                spec.tool.as_str(),
                spec.version
            ))
            .await;
            return Ok(path);
        }
        log.line(&format!(
            "cached {} does not match its SHA-256 any more: fetching it again",
            path.display()
        ))
        .await;
        let _ = std::fs::remove_file(&path);
    }
    std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
        path: dir.clone(),
        source,
    })?;
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    log.line(&format!(
        "fetching {} {} from {}",
        spec.tool.as_str(),
        spec.version,
        spec.url
    ))
    .await;
    if let Err(source) = hooks.download_tool(spec, &tmp).await {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::ToolDownload {
            url: spec.url.clone(),
            source,
        });
    }
    let have = sha256_file(&tmp).await?;
    if have != want {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::ToolChecksum {
            url: spec.url.clone(),
            expected: want,
            actual: have,
        });
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        EngineError::Io {
            path: tmp.clone(),
            source,
        }
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| EngineError::Io {
        path: path.clone(),
        source,
    })?;
    log.line(&format!(
        "{} {} verified (sha256 {want})",
        spec.tool.as_str(),
        spec.version
    ))
    .await;
    Ok(path)
}

/// Hex SHA-256 of a file, computed off the async threads.
pub async fn sha256_file(path: &Path) -> Result<String, EngineError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&p).map_err(|source| EngineError::Io {
            path: p.clone(),
            source,
        })?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(|source| EngineError::Io {
                path: p.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Ok(hex::encode(ctx.finish()))
    })
    .await
    .expect("hashing task panicked")
}
