//! `berth backup restore` and the restore-into-a-scratch-database verification.

use rand::Rng;
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::manifest::Manifest;
use super::pg::{self, Conn};
use super::store::Store;
use super::{catalog, stream, BackupError};

/// Which backup to restore.
#[derive(Clone, Debug)]
pub enum Selection {
    Name(String),
    Latest,
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// `DIR` or `s3://bucket/prefix`.
    pub from: String,
    pub selection: Selection,
    pub database_url: String,
    /// Drop and recreate a non-empty target database.
    pub clean: bool,
    /// The user confirmed.
    pub yes: bool,
}

/// Restores a backup into the database of `database_url`, creating it when absent. Refuses
/// without `yes`, and refuses a non-empty database unless `clean`.
pub async fn restore(opts: &RestoreOptions) -> Result<Manifest, BackupError> {
    if !opts.yes {
        return Err(BackupError::NotConfirmed);
    }
    let conn = Conn::parse(&opts.database_url)?;
    let store = Store::open_existing(&opts.from)?;
    let entries = catalog::list(&store).await?;
    let manifest = match &opts.selection {
        Selection::Latest => entries
            .into_iter()
            .next()
            .ok_or_else(|| BackupError::Empty(store.display().to_string()))?,
        Selection::Name(n) => entries
            .into_iter()
            .find(|m| &m.name == n)
            .ok_or_else(|| BackupError::NotFound(n.clone()))?,
    };
    let db = conn.database();
    if !conn.database_exists(&db).await? {
        info!(database = %db, "creating the target database");
        conn.create_database(&db).await?;
    } else {
        let (tables, large_objects) = conn.count_objects().await?;
        let objects = tables + large_objects;
        if objects > 0 {
            if !opts.clean {
                return Err(BackupError::NotEmpty {
                    database: db,
                    objects,
                });
            }
            info!(database = %db, "dropping and recreating the target database (--clean)");
            conn.drop_database(&db).await?;
            conn.create_database(&db).await?;
        }
    }
    restore_into(&store, &manifest, &conn).await?;
    info!(backup = %manifest.name, database = %conn.redacted(), "restored");
    Ok(manifest)
}

/// Streams backup `manifest` from `store` into the (existing, empty) database of `conn`, checking
/// the SHA-256 of what was read against the manifest.
pub async fn restore_into(
    store: &Store,
    manifest: &Manifest,
    conn: &Conn,
) -> Result<(), BackupError> {
    let reader = store.reader(&manifest.name).await?;
    let mut hashing = stream::Hashing::new(reader);
    let mut child = conn.restore_process(manifest.format)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| BackupError::Other("restore process has no stdin".into()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| BackupError::Other("restore process has no stderr".into()))?;
    let stdout = child.stdout.take();
    let stderr_task = tokio::spawn(pg::read_stderr(stderr));
    // Drain stdout so a chatty restore never blocks on a full pipe.
    let stdout_task = tokio::spawn(async move {
        if let Some(mut out) = stdout {
            let _ = tokio::io::copy(&mut out, &mut tokio::io::sink()).await;
        }
    });
    let copied = {
        let mut plain = stream::decompressor(&mut hashing, manifest.compression);
        let r = tokio::io::copy(&mut plain, &mut stdin).await;
        let _ = stdin.shutdown().await;
        drop(stdin);
        r
    };
    let status = child
        .wait()
        .await
        .map_err(super::io_err("waiting for the restore"))?;
    let err = stderr_task.await.unwrap_or_default();
    let _ = stdout_task.await;
    let program = match manifest.format {
        crate::api::backup::DumpFormat::Custom => "pg_restore",
        crate::api::backup::DumpFormat::Plain => "psql",
    };
    if !status.success() {
        return Err(conn.classify(program, &status.to_string(), &err));
    }
    if let Err(e) = copied {
        return Err(BackupError::Io {
            doing: format!("reading {} (damaged or truncated?)", manifest.name),
            source: e,
        });
    }
    let read = hashing.finish();
    if read.sha256 != manifest.sha256 {
        return Err(BackupError::Checksum {
            name: manifest.name.clone(),
            expected: manifest.sha256.clone(),
            actual: read.sha256,
        });
    }
    Ok(())
}

/// Restores `manifest` into a scratch database on the server of `conn` (created, checked: the
/// restore succeeds, the checksum matches and the table count equals the manifest's; then
/// dropped whatever happened).
pub async fn verify(store: &Store, manifest: &Manifest, conn: &Conn) -> Result<(), BackupError> {
    let suffix: u32 = rand::rng().random();
    let scratch = format!("berth_verify_{suffix:08x}");
    conn.create_database(&scratch).await?;
    let target = conn.with_database(&scratch);
    let result = async {
        restore_into(store, manifest, &target).await?;
        let tables = target.count_tables().await?;
        if tables != manifest.tables {
            return Err(BackupError::Verify {
                name: manifest.name.clone(),
                detail: format!(
                    "the restored database has {tables} tables, the source had {}",
                    manifest.tables
                ),
            });
        }
        Ok(())
    }
    .await;
    if let Err(e) = conn.drop_database(&scratch).await {
        warn!(database = %scratch, error = %e, "could not drop the scratch database");
    }
    result
}
