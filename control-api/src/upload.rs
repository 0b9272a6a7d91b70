//! Receiving an upload: streamed to a temporary file (never whole in
//! memory), hashed as it arrives, and cut off with 413 the moment it passes
//! the size allowed. The temporary file is deleted when dropped, so a failed
//! upload leaves nothing behind.

use crate::error::ApiError;
use axum::body::Body;
use futures::StreamExt;
use gannet_model::{ByteSize, Sha256Digest};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::AsyncWriteExt;

/// Most bytes read past a limit just to deliver the refusal.
const DISCARD_LIMIT: u64 = 64 << 20;

/// An upload on disk.
pub struct Received {
    /// The bytes, in a temporary file removed on drop.
    pub file: tempfile::TempPath,
    /// Their sha256.
    pub digest: Sha256Digest,
    /// Their size.
    pub size: u64,
}

/// Streams `body` into a temporary file under `tmp_dir`, allowing at most
/// `max` bytes.
pub async fn receive(body: Body, max: u64, tmp_dir: &Path) -> Result<Received, ApiError> {
    let temp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(tmp_dir)?
        .into_temp_path();
    let mut file = tokio::fs::File::create(&temp).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::Invalid(format!("reading the upload failed: {e}")))?;
        size += chunk.len() as u64;
        if size > max {
            // Let the client finish sending (up to a cap) so it reads the 413.
            let mut rest = 0u64;
            while let Some(Ok(c)) = stream.next().await {
                rest += c.len() as u64;
                if rest > DISCARD_LIMIT {
                    break;
                }
            }
            return Err(ApiError::TooLarge(format!(
                "the component is larger than the {} allowed",
                ByteSize(max)
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    if size == 0 {
        return Err(ApiError::Invalid(
            "the upload is empty: send the component's bytes as the body".into(),
        ));
    }
    Ok(Received {
        file: temp,
        digest: Sha256Digest::from_bytes(hasher.finalize().into()),
        size,
    })
}

/// Reads and drops up to `cap` bytes of `body`, so a client still sending it
/// receives the response instead of a reset connection.
pub async fn discard(body: Body, cap: u64) {
    let mut seen = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > cap {
            break;
        }
    }
}
