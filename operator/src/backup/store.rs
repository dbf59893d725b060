//! Where backups live: a local folder or an S3-compatible bucket, both behind `object_store`, so
//! the run, list and restore code is one.
//!
//! S3 credentials and endpoint come from the environment as the AWS tools read them:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (default `us-east-1`),
//! `AWS_ENDPOINT_URL` for S3-compatible services (path-style requests; `http://` allowed).

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::AsyncRead;

use super::BackupError;

/// One destination.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    display: String,
}

impl Store {
    /// Opens `DIR` (created when missing) or `s3://bucket/prefix`.
    pub fn open(dest: &str) -> Result<Store, BackupError> {
        let invalid = |reason: String| BackupError::InvalidDestination {
            dest: dest.to_string(),
            reason,
        };
        if let Some(rest) = dest.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("name the bucket: s3://bucket/prefix".into()));
            }
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                b = b.with_region("us-east-1");
            } else if let Ok(r) = std::env::var("AWS_DEFAULT_REGION") {
                if std::env::var_os("AWS_REGION").is_none() {
                    b = b.with_region(r);
                }
            }
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                b = b
                    .with_endpoint(endpoint.clone())
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            let inner = b.build().map_err(|e| invalid(e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            Ok(Store {
                inner: Arc::new(inner),
                prefix: (!prefix.is_empty()).then(|| Path::from(prefix)),
                display: dest.to_string(),
            })
        } else if dest.contains("://") {
            Err(invalid("use a local folder or s3://bucket/prefix".into()))
        } else {
            std::fs::create_dir_all(dest)
                .map_err(|e| invalid(format!("cannot create the folder: {e}")))?;
            let inner = LocalFileSystem::new_with_prefix(dest)
                .map_err(|e| invalid(e.to_string()))?
                .with_automatic_cleanup(true);
            Ok(Store {
                inner: Arc::new(inner),
                prefix: None,
                display: dest.to_string(),
            })
        }
    }

    /// Opens an existing destination for reading (`list`, `restore`): a missing local folder is
    /// an error rather than created.
    pub fn open_existing(dest: &str) -> Result<Store, BackupError> {
        if !dest.contains("://") && !std::path::Path::new(dest).is_dir() {
            return Err(BackupError::InvalidDestination {
                dest: dest.to_string(),
                reason: "no such folder".into(),
            });
        }
        Store::open(dest)
    }

    /// How the destination was given, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    fn path(&self, name: &str) -> Path {
        match &self.prefix {
            Some(p) => p.clone().join(name),
            None => Path::from(name),
        }
    }

    fn err(&self, name: &str) -> impl FnOnce(object_store::Error) -> BackupError {
        let location = format!("{}/{}", self.display.trim_end_matches('/'), name);
        move |source| BackupError::Store { location, source }
    }

    /// A streaming writer for object `name`: nothing is visible under `name` until
    /// `shutdown()` succeeds; `abort()` throws the upload away.
    pub fn writer(&self, name: &str) -> BufWriter {
        BufWriter::new(self.inner.clone(), self.path(name))
    }

    pub async fn put(&self, name: &str, data: Vec<u8>) -> Result<(), BackupError> {
        self.inner
            .put(&self.path(name), PutPayload::from(Bytes::from(data)))
            .await
            .map(drop)
            .map_err(self.err(name))
    }

    pub async fn get(&self, name: &str) -> Result<Bytes, BackupError> {
        let r = self.inner.get(&self.path(name)).await;
        match r {
            Err(object_store::Error::NotFound { .. }) => Err(BackupError::NotFound(name.into())),
            Err(e) => Err(self.err(name)(e)),
            Ok(r) => r.bytes().await.map_err(self.err(name)),
        }
    }

    /// A streaming reader of object `name`.
    pub async fn reader(
        &self,
        name: &str,
    ) -> Result<impl AsyncRead + Send + Unpin + 'static, BackupError> {
        let r = match self.inner.get(&self.path(name)).await {
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackupError::NotFound(name.into()))
            }
            r => r.map_err(self.err(name))?,
        };
        let stream = r.into_stream().map_err(std::io::Error::other);
        Ok(tokio_util::io::StreamReader::new(stream))
    }

    pub async fn delete(&self, name: &str) -> Result<(), BackupError> {
        match self.inner.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(name)(e)),
        }
    }

    /// The object names directly under the destination (no sub-folders).
    pub async fn names(&self) -> Result<Vec<String>, BackupError> {
        let listing = self
            .inner
            .list_with_delimiter(self.prefix.as_ref())
            .await
            .map_err(self.err(""))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }
}
