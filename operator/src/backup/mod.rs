//! The backup engine shared by both backends: `berth backup run|list|restore`.
//!
//! A run streams `pg_dump` through compression and a SHA-256 hasher into the destination (a local
//! folder or an S3-compatible bucket, both through `object_store`), never holding the dump in
//! memory. The object is published only when pg_dump exited 0 (a local file is written under a
//! staging name and renamed; an S3 multipart upload is completed), and it counts as a backup only
//! once its manifest (`<name>.manifest.json`: size, sha256, verification) is written beside it.
//! Retention runs after a successful run only, counts only backups with a manifest and never
//! deletes the newest one.

pub mod bundle;
pub mod catalog;
pub mod host;
pub mod kube;
pub mod manifest;
pub mod naming;
pub mod pg;
pub mod report;
pub mod restore;
pub mod retention;
pub mod run;
pub mod store;
pub mod stream;

pub use catalog::{list, Entry};
pub use manifest::Manifest;
pub use restore::{restore, RestoreOptions, Selection};
pub use run::{run, RunOptions, RunOutcome};
pub use store::Store;

/// Everything that can go wrong in a backup, restore or listing. Messages never contain a
/// password: URLs are redacted before they reach an error.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid destination {dest:?}: {reason}")]
    InvalidDestination { dest: String, reason: String },
    #[error("cannot start {program}: {source} (install the PostgreSQL client tools, e.g. apt-get install postgresql-client)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error(
        "password authentication failed for {url}: check the user and password in the database URL"
    )]
    Authentication { url: String },
    #[error("cannot connect to {url}: {detail}")]
    Connection { url: String, detail: String },
    #[error("{program} failed ({status}): {detail}")]
    Tool {
        program: String,
        status: String,
        detail: String,
    },
    #[error("storage error at {location}: {source}")]
    Store {
        location: String,
        source: object_store::Error,
    },
    #[error("I/O error while {doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
    #[error("manifest {name} is unreadable: {reason}")]
    Manifest { name: String, reason: String },
    #[error("no backup named {0:?} (see berth backup list)")]
    NotFound(String),
    #[error("no backups at {0}")]
    Empty(String),
    #[error("checksum mismatch for {name}: manifest says {expected}, the file has {actual}; the backup is damaged")]
    Checksum {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("database {database} is not empty ({objects} objects); pass --clean to drop and recreate it")]
    NotEmpty { database: String, objects: u64 },
    #[error("restore overwrites data: pass --yes to confirm")]
    NotConfirmed,
    #[error("verification of {name} failed: {detail}")]
    Verify { name: String, detail: String },
    #[error("invalid retention: {0}")]
    Retention(String),
    #[error("{source}; the partial dump {name} was discarded and no backup was recorded")]
    Discarded {
        name: String,
        source: Box<BackupError>,
    },
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] ::kube::Error),
    #[error("Docker error: {0}")]
    Docker(String),
    #[error("{0}")]
    Other(String),
}

impl BackupError {
    /// The process exit code of `berth backup`: 3 when the database could not be reached or
    /// refused the credentials, 4 for a refused restore, 2 for bad arguments, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackupError::Discarded { source, .. } => source.exit_code(),
            BackupError::Authentication { .. } | BackupError::Connection { .. } => 3,
            BackupError::NotEmpty { .. } | BackupError::NotConfirmed => 4,
            BackupError::InvalidUrl { .. }
            | BackupError::InvalidDestination { .. }
            | BackupError::Retention(_) => 2,
            _ => 1,
        }
    }
}

pub(crate) fn io_err(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let doing = doing.into();
    move |source| BackupError::Io { doing, source }
}
