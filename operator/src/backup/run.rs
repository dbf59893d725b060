//! `berth backup run`: one dump, published only when it is complete, then retention.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tracing::{info, warn};

use super::manifest::Manifest;
use super::pg::{self, Conn};
use super::retention::{self, Policy};
use super::store::Store;
use super::{catalog, naming, restore, stream, BackupError};
use crate::api::backup::{Compression, DumpFormat};

/// What `berth backup run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub database_url: String,
    /// `DIR` or `s3://bucket/prefix`.
    pub to: String,
    pub format: DumpFormat,
    pub compression: Compression,
    pub keep_last: Option<usize>,
    pub max_age: Option<Duration>,
    pub verify: bool,
    /// The start of backup names; default: the database name.
    pub name_prefix: Option<String>,
}

/// What a successful run did.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub backup: Manifest,
    /// Backups retention deleted.
    pub deleted: Vec<String>,
    /// The good backups left, newest first.
    pub kept: Vec<Manifest>,
}

/// Dumps the database, publishes the backup with its manifest, verifies it when asked, and
/// applies retention. On any failure nothing new is listed and nothing is deleted.
pub async fn run(opts: &RunOptions) -> Result<RunOutcome, BackupError> {
    let conn = Conn::parse(&opts.database_url)?;
    let store = Store::open(&opts.to)?;
    let policy = Policy {
        keep_last: opts.keep_last,
        max_age: opts.max_age,
    };
    if opts.keep_last == Some(0) {
        return Err(BackupError::Retention(
            "--keep-last must be at least 1".into(),
        ));
    }
    // Connects once before dumping: a wrong password or an unreachable server fails here with
    // a clear error, and the table count is what verification expects back.
    let tables = conn.count_tables().await?;
    let database = conn.database();
    let base = naming::sanitize_base(opts.name_prefix.as_deref().unwrap_or(&database));
    // Names have a one-second resolution: a second run within the same second waits for the
    // next one rather than overwrite a backup.
    let existing = store.names().await?;
    let (started, name) = loop {
        let now = Utc::now();
        let name = naming::backup_name(&base, now, opts.format, opts.compression);
        if !existing.contains(&name) {
            break (now, name);
        }
        let into_second = u64::from(now.timestamp_subsec_millis());
        tokio::time::sleep(Duration::from_millis(1000 - into_second.min(999))).await;
    };
    info!(backup = %name, destination = %store.display(), database = %conn.redacted(), "dump starting");

    let clock = Instant::now();
    let mut child = conn.pg_dump(opts.format)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BackupError::Other("pg_dump has no stdout".into()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| BackupError::Other("pg_dump has no stderr".into()))?;
    let stderr_task = tokio::spawn(pg::read_stderr(stderr));
    let finished = async {
        let status = child
            .wait()
            .await
            .map_err(super::io_err("waiting for pg_dump"))?;
        let err = stderr_task.await.unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(conn.classify("pg_dump", &status.to_string(), &err))
        }
    };
    let written = publish(&store, &name, stdout, opts.compression, finished).await?;
    let manifest = Manifest {
        name: name.clone(),
        time: started.to_rfc3339_opts(SecondsFormat::Secs, true),
        size_bytes: written.bytes,
        sha256: written.sha256,
        duration_seconds: clock.elapsed().as_secs_f64(),
        format: opts.format,
        compression: opts.compression,
        database,
        tables,
        verified: false,
        verify_error: None,
        berth_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    finish(
        &store,
        manifest,
        opts.verify.then_some(&conn),
        policy,
        Utc::now(),
    )
    .await
}

/// Streams `src` compressed into object `name` and publishes it when `producer` (the dump
/// process) reports success; otherwise the upload is thrown away and its error returned.
pub async fn publish<R, F>(
    store: &Store,
    name: &str,
    src: R,
    compression: Compression,
    producer: F,
) -> Result<stream::Written, BackupError>
where
    R: AsyncRead + Send + Unpin,
    F: std::future::Future<Output = Result<(), BackupError>>,
{
    let mut writer = store.writer(name);
    let copied = stream::compress_into(src, compression, &mut writer).await;
    let produced = producer.await;
    let result = match (produced, copied) {
        (Err(e), _) => Err(BackupError::Discarded {
            name: name.to_string(),
            source: Box::new(e),
        }),
        (Ok(()), Err(e)) => Err(BackupError::Io {
            doing: format!("writing {name} to {}", store.display()),
            source: e,
        }),
        (Ok(()), Ok(w)) => match writer.shutdown().await {
            Ok(()) => return Ok(w),
            Err(e) => Err(BackupError::Io {
                doing: format!("publishing {name} to {}", store.display()),
                source: e,
            }),
        },
    };
    if let Err(e) = writer.abort().await {
        warn!(backup = %name, error = %e, "could not discard the partial upload");
    }
    result
}

/// After a published dump: verification (when `verify_with` is given), the manifest, then
/// retention.
pub async fn finish(
    store: &Store,
    manifest: Manifest,
    verify_with: Option<&Conn>,
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<RunOutcome, BackupError> {
    let verifier = verify_with
        .map(|conn| move |m: Manifest| async move { restore::verify(store, &m, conn).await });
    finish_with(store, manifest, verifier, policy, now).await
}

/// [`finish`] with any verifier (the Docker host restores inside the container). Shared by
/// `berth backup run` and the Docker host runner.
pub async fn finish_with<F, Fut>(
    store: &Store,
    mut manifest: Manifest,
    verifier: Option<F>,
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<RunOutcome, BackupError>
where
    F: FnOnce(Manifest) -> Fut,
    Fut: std::future::Future<Output = Result<(), BackupError>>,
{
    let name = manifest.name.clone();
    let mut verify_failure = None;
    if let Some(verify) = verifier {
        match verify(manifest.clone()).await {
            Ok(()) => manifest.verified = true,
            Err(e) => {
                manifest.verify_error = Some(e.to_string());
                verify_failure = Some(e);
            }
        }
    }
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Other(format!("cannot encode the manifest: {e}")))?;
    if let Err(e) = store.put(&naming::manifest_name(&name), json).await {
        // Without its manifest the dump is not a backup: remove it rather than leave it half-kept.
        let _ = store.delete(&name).await;
        return Err(e);
    }
    info!(backup = %name, size = manifest.size_bytes, sha256 = %manifest.sha256, verified = manifest.verified, "backup published");
    if let Some(e) = verify_failure {
        // A backup that does not restore is kept for inspection but retention does not run:
        // it must not push a good backup out.
        return Err(BackupError::Verify {
            name,
            detail: e.to_string(),
        });
    }
    let deleted = apply_retention(store, policy, now).await?;
    let kept = catalog::list(store).await?;
    Ok(RunOutcome {
        backup: manifest,
        deleted,
        kept,
    })
}

/// Deletes what `policy` drops among good backups (those that failed verification neither count
/// nor are deleted), then leftovers of failed runs. Returns the deleted backups' names.
pub async fn apply_retention(
    store: &Store,
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<Vec<String>, BackupError> {
    let entries: Vec<Manifest> = catalog::list(store)
        .await?
        .into_iter()
        .filter(|m| m.verify_error.is_none())
        .collect();
    let times: Vec<DateTime<Utc>> = entries
        .iter()
        .map(|m| {
            DateTime::parse_from_rfc3339(&m.time)
                .map(|t| t.with_timezone(&Utc))
                .ok()
                .or_else(|| naming::parse(&m.name).map(|p| p.time))
                .unwrap_or(now)
        })
        .collect();
    let mut deleted = Vec::new();
    for i in retention::to_delete(&times, policy, now) {
        let name = &entries[i].name;
        // The manifest goes first: from then on the object is no longer a backup.
        store.delete(&naming::manifest_name(name)).await?;
        store.delete(name).await?;
        info!(backup = %name, "deleted by retention");
        deleted.push(name.clone());
    }
    for orphan in catalog::orphans(store).await? {
        warn!(object = %orphan, "deleting the leftover of a failed run");
        store.delete(&orphan).await?;
    }
    Ok(deleted)
}
