//! Files served to workers (tool binaries, provider archives) streamed from
//! disk in fixed-size chunks: a Terraform binary is tens of megabytes and many
//! workers may fetch it at once, so no download holds a whole file in memory.

use std::path::Path;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::{Reply, Response};

use super::WorkerApiError;

/// Bytes read from disk per chunk sent.
const CHUNK_BYTES: usize = 64 * 1024;

/// `path` as a 200 response of `content_type` with its length; the body
/// is left out for HEAD.
pub(crate) async fn serve_file(path: &Path, head: bool, content_type: &'static str) -> Result<Response, WorkerApiError> {
    let file = tokio::fs::File::open(path).await.map_err(|e| WorkerApiError::internal("opening a served file", e))?;
    let len = file.metadata().await.map_err(|e| WorkerApiError::internal("reading a served file's size", e))?.len();
    let mut r = if head {
        warp::reply::with_status(Vec::new(), StatusCode::OK).into_response()
    } else {
        warp::reply::stream(chunks(file, len)).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

/// The first `len` bytes of `file`, a chunk at a time. A file that shrinks
/// while it is sent ends the body early with an error rather than sending
/// fewer bytes than the announced length as if complete.
fn chunks(file: tokio::fs::File, len: u64) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    futures::stream::try_unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = CHUNK_BYTES.min(usize::try_from(left).unwrap_or(CHUNK_BYTES));
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the served file shrank while it was sent"));
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), (file, left - n as u64))))
    })
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    #[tokio::test]
    async fn a_file_is_sent_in_chunks_and_a_shrunk_one_fails() {
        let dir = std::env::temp_dir().join(format!("hangar-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tool");
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let parts: Vec<Bytes> = chunks(file, data.len() as u64).try_collect().await.unwrap();
        assert!(parts.len() >= 3 && parts.iter().all(|p| p.len() <= CHUNK_BYTES));
        assert_eq!(parts.concat(), data);
        // Announced longer than it is: an error, not a short body.
        let file = tokio::fs::File::open(&path).await.unwrap();
        let r: std::io::Result<Vec<Bytes>> = chunks(file, data.len() as u64 + 1).try_collect().await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
