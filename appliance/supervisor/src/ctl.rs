//! The client side of the control socket, used by `hangar ctl` (and by tests).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::CtlError;
use crate::protocol::{Request, RequestLine, Response, ServiceStatus, VERSION};

/// A connection factory for one supervisor's socket.
#[derive(Debug, Clone)]
pub struct CtlClient {
    path: PathBuf,
}

/// Longest response line accepted (a status of many services, a tail chunk).
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

impl CtlClient {
    pub fn new(path: impl Into<PathBuf>) -> CtlClient {
        CtlClient { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn open(&self, request: Request) -> Result<(BufReader<tokio::net::unix::OwnedReadHalf>, tokio::net::unix::OwnedWriteHalf), CtlError> {
        let stream = UnixStream::connect(&self.path).await.map_err(|source| {
            let path = self.path.clone();
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                CtlError::Denied { path, source }
            } else {
                CtlError::NotRunning { path, source }
            }
        })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(&RequestLine { v: VERSION, request }).map_err(|e| CtlError::Protocol {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(|source| CtlError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok((BufReader::new(read), write))
    }

    async fn next(&self, reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Result<Option<Response>, CtlError> {
        use tokio::io::AsyncReadExt;
        let mut line = Vec::new();
        let n = (&mut *reader)
            .take(MAX_RESPONSE)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|source| CtlError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        let resp: Response = serde_json::from_slice(&line).map_err(|e| CtlError::Protocol {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        if !resp.ok {
            return Err(CtlError::Refused(resp.error.unwrap_or_else(|| "request refused".into())));
        }
        Ok(Some(resp))
    }

    /// Sends `request` and returns the single answer (an error answer becomes `Refused`).
    pub async fn request(&self, request: Request) -> Result<Response, CtlError> {
        let (mut reader, _write) = self.open(request).await?;
        self.next(&mut reader).await?.ok_or_else(|| CtlError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the supervisor closed the connection"),
        })
    }

    pub async fn status(&self) -> Result<(Vec<ServiceStatus>, Option<String>), CtlError> {
        let r = self.request(Request::Status).await?;
        Ok((r.services.unwrap_or_default(), r.reload_error))
    }

    /// Streams the service's log to `out` (until the end, or forever with `follow`).
    pub async fn tail(&self, service: &str, lines: usize, follow: bool, mut out: impl FnMut(&str)) -> Result<(), CtlError> {
        let (mut reader, _write) = self
            .open(Request::Tail {
                service: service.to_string(),
                lines,
                follow,
            })
            .await?;
        while let Some(r) = self.next(&mut reader).await? {
            if let Some(d) = &r.data {
                out(d);
            }
            if r.end {
                break;
            }
        }
        Ok(())
    }
}
