//! Component blobs, content-addressed by sha256, behind a small trait:
//! a local directory (the default, one process) or chunks in the database
//! (Postgres mode: any replica serves any blob, whichever one received it).
//! Writes are idempotent, so two uploads of the same bytes store one blob.
//!
//! Whether a blob is present, and its deletion, can also run inside a
//! database transaction ([`BlobStore::present_in`], [`BlobStore::delete_in`]):
//! in the database, on the transaction's connection; on local disk, while the
//! transaction holds SQLite's only connection. That is what lets the store
//! create a version and collect a blob without one undoing the other.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use gannet_model::Sha256Digest;
use sqlx::{AnyConnection, AnyPool, Row};
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;

/// Chunk size for blobs kept in the database.
const CHUNK: usize = 1 << 20;

/// A blob store failure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// File I/O.
    #[error("blob i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Database.
    #[error("blob database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A stream of a blob's bytes.
pub type BlobStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// Where component bytes live.
pub trait BlobStore: Send + Sync {
    /// Stores the file at `path` as `digest` (already verified). Idempotent.
    fn put<'a>(
        &'a self,
        digest: &'a Sha256Digest,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), BlobError>>;
    /// Whether `digest` is stored.
    fn exists<'a>(&'a self, digest: &'a Sha256Digest) -> BoxFuture<'a, Result<bool, BlobError>>;
    /// Streams `digest`'s bytes, if stored.
    fn get<'a>(
        &'a self,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<Option<BlobStream>, BlobError>>;
    /// Removes `digest` (no error if absent).
    fn delete<'a>(&'a self, digest: &'a Sha256Digest) -> BoxFuture<'a, Result<(), BlobError>>;
    /// Whether `digest` is stored, as seen inside the transaction `conn`.
    fn present_in<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<bool, BlobError>>;
    /// Removes `digest` as part of the transaction `conn`.
    fn delete_in<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<(), BlobError>>;
}

/// Blobs as files `<dir>/<digest>`.
pub struct LocalBlobs {
    dir: PathBuf,
}

impl LocalBlobs {
    /// Uses (creating) `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(LocalBlobs {
            dir: dir.to_path_buf(),
        })
    }
    fn path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join(digest.to_string())
    }
}

impl BlobStore for LocalBlobs {
    fn put<'a>(
        &'a self,
        digest: &'a Sha256Digest,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            let dest = self.path(digest);
            if tokio::fs::try_exists(&dest).await? {
                return Ok(());
            }
            // Copy to a temporary name beside the destination, then rename:
            // readers never see a partial blob, and racing writers of the
            // same digest both end with the same bytes in place.
            let tmp = self
                .dir
                .join(format!(".{digest}.{}.tmp", rand::random::<u64>()));
            tokio::fs::copy(path, &tmp).await?;
            let file = tokio::fs::File::open(&tmp).await?;
            file.sync_all().await?;
            if let Err(e) = tokio::fs::rename(&tmp, &dest).await {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e.into());
            }
            Ok(())
        })
    }

    fn exists<'a>(&'a self, digest: &'a Sha256Digest) -> BoxFuture<'a, Result<bool, BlobError>> {
        Box::pin(async move { Ok(tokio::fs::try_exists(self.path(digest)).await?) })
    }

    fn get<'a>(
        &'a self,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<Option<BlobStream>, BlobError>> {
        Box::pin(async move {
            let file = match tokio::fs::File::open(self.path(digest)).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let s = stream::unfold(Some(file), |file| async move {
                let mut file = file?;
                let mut buf = vec![0u8; 256 * 1024];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), Some(file)))
                    }
                    Err(e) => Some((Err(BlobError::from(e)), None)),
                }
            });
            Ok(Some(s.boxed()))
        })
    }

    fn delete<'a>(&'a self, digest: &'a Sha256Digest) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(digest)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    // Local blobs go with SQLite, whose one connection the transaction
    // holds: no other transaction runs until it ends.
    fn present_in<'a>(
        &'a self,
        _conn: &'a mut AnyConnection,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<bool, BlobError>> {
        self.exists(digest)
    }

    fn delete_in<'a>(
        &'a self,
        _conn: &'a mut AnyConnection,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        self.delete(digest)
    }
}

/// Blobs as 1 MiB chunks in the `blob_chunks` table.
pub struct DbBlobs {
    pool: AnyPool,
}

impl DbBlobs {
    /// Uses `pool`.
    pub fn new(pool: AnyPool) -> Self {
        DbBlobs { pool }
    }
}

impl BlobStore for DbBlobs {
    fn put<'a>(
        &'a self,
        digest: &'a Sha256Digest,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            let key = digest.to_string();
            let mut file = tokio::fs::File::open(path).await?;
            let mut tx = self.pool.begin().await?;
            let mut idx: i64 = 0;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 && idx > 0 {
                    break;
                }
                buf.truncate(filled);
                sqlx::query("INSERT INTO blob_chunks (digest, idx, data) VALUES ($1, $2, $3) ON CONFLICT (digest, idx) DO NOTHING")
                    .bind(&key)
                    .bind(idx)
                    .bind(buf)
                    .execute(&mut *tx)
                    .await?;
                idx += 1;
                if filled < CHUNK {
                    break;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn exists<'a>(&'a self, digest: &'a Sha256Digest) -> BoxFuture<'a, Result<bool, BlobError>> {
        Box::pin(async move {
            let row =
                sqlx::query("SELECT COUNT(*) AS n FROM blob_chunks WHERE digest = $1 AND idx = 0")
                    .bind(digest.to_string())
                    .fetch_one(&self.pool)
                    .await?;
            Ok(row.try_get::<i64, _>("n")? > 0)
        })
    }

    fn get<'a>(
        &'a self,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<Option<BlobStream>, BlobError>> {
        Box::pin(async move {
            if !self.exists(digest).await? {
                return Ok(None);
            }
            let pool = self.pool.clone();
            let key = digest.to_string();
            // One chunk per query, so a large blob is never held whole.
            let s = stream::unfold(Some(0i64), move |next| {
                let pool = pool.clone();
                let key = key.clone();
                async move {
                    let idx = next?;
                    let row =
                        sqlx::query("SELECT data FROM blob_chunks WHERE digest = $1 AND idx = $2")
                            .bind(&key)
                            .bind(idx)
                            .fetch_optional(&pool)
                            .await;
                    match row {
                        Ok(Some(r)) => match r.try_get::<Vec<u8>, _>("data") {
                            Ok(data) => Some((Ok(Bytes::from(data)), Some(idx + 1))),
                            Err(e) => Some((Err(BlobError::from(e)), None)),
                        },
                        Ok(None) => None,
                        Err(e) => Some((Err(BlobError::from(e)), None)),
                    }
                }
            });
            Ok(Some(s.boxed()))
        })
    }

    fn delete<'a>(&'a self, digest: &'a Sha256Digest) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM blob_chunks WHERE digest = $1")
                .bind(digest.to_string())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn present_in<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<bool, BlobError>> {
        Box::pin(async move {
            let row =
                sqlx::query("SELECT COUNT(*) AS n FROM blob_chunks WHERE digest = $1 AND idx = 0")
                    .bind(digest.to_string())
                    .fetch_one(&mut *conn)
                    .await?;
            Ok(row.try_get::<i64, _>("n")? > 0)
        })
    }

    fn delete_in<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        digest: &'a Sha256Digest,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM blob_chunks WHERE digest = $1")
                .bind(digest.to_string())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}
