//! The backups at a destination: every object with a manifest beside it, newest first.
//! Objects without a manifest (a dump that failed or is still being written) are not backups.

use std::collections::HashSet;

use super::manifest::Manifest;
use super::naming::{self, MANIFEST_SUFFIX};
use super::store::Store;
use super::BackupError;

/// One listed backup.
pub type Entry = Manifest;

/// The good backups at `store`, newest first.
pub async fn list(store: &Store) -> Result<Vec<Entry>, BackupError> {
    let names = store.names().await?;
    let present: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for m in names.iter().filter(|n| n.ends_with(MANIFEST_SUFFIX)) {
        let data = m.trim_end_matches(MANIFEST_SUFFIX);
        if !present.contains(data) || naming::parse(data).is_none() {
            continue;
        }
        let bytes = match store.get(m).await {
            Ok(b) => b,
            // Deleted between listing and reading: retention of a concurrent run.
            Err(BackupError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| BackupError::Manifest {
                name: m.clone(),
                reason: e.to_string(),
            })?;
        out.push(manifest);
    }
    out.sort_by(|a, b| b.time.cmp(&a.time).then(b.name.cmp(&a.name)));
    Ok(out)
}

/// Objects named like backups that have no manifest: leftovers of failed or interrupted runs.
pub async fn orphans(store: &Store) -> Result<Vec<String>, BackupError> {
    let names = store.names().await?;
    let present: HashSet<&str> = names.iter().map(String::as_str).collect();
    Ok(names
        .iter()
        .filter(|n| naming::parse(n).is_some())
        .filter(|n| !present.contains(naming::manifest_name(n).as_str()))
        .cloned()
        .collect())
}
