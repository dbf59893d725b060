//! The manifest written beside each good backup: its existence is what makes a dump a backup.

use serde::{Deserialize, Serialize};

use crate::api::backup::{BackupRecord, Compression, DumpFormat};

/// `<name>.manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The backup's object name.
    pub name: String,
    /// When the dump started, RFC 3339.
    pub time: String,
    pub size_bytes: u64,
    /// SHA-256 of the stored (compressed) object, hex.
    pub sha256: String,
    pub duration_seconds: f64,
    pub format: DumpFormat,
    pub compression: Compression,
    /// The dumped database's name.
    pub database: String,
    /// User tables in the database when it was dumped; verification expects as many.
    #[serde(default)]
    pub tables: u64,
    /// Whether a restore into a scratch database succeeded (`false` when not tried).
    #[serde(default)]
    pub verified: bool,
    /// Why verification failed, when it was tried and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
    /// The berth version that wrote it.
    #[serde(default)]
    pub berth_version: String,
}

impl Manifest {
    /// The status record of this backup.
    pub fn record(&self) -> BackupRecord {
        BackupRecord {
            name: self.name.clone(),
            time: Some(self.time.clone()),
            size_bytes: self.size_bytes,
            duration_seconds: self.duration_seconds,
            sha256: self.sha256.clone(),
            verified: self.verified,
        }
    }
}
