//! The state directory of a berth host (default `/var/lib/berth`):
//!
//! ```text
//! secrets/<name>.json     generated credentials, mode 0600 (directory 0700), never rotated
//! status/<kind>-<name>.json   the status of each object (what `berth host status` shows)
//! proxy/conf.d/*.conf     the proxy's nginx configuration, bind-mounted read-only
//! ```

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::plan::wiring::{materialize, random_hex};
use crate::plan::{GeneratedSecret, SecretData};

use super::desired::SecretSource;

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {path}: {source}; pass --state-dir to a directory this user can write"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another `berth host run` uses the state directory {path} (it holds {path}/lock): stop it first, or give this one its own --state-dir")]
    Busy { path: PathBuf },
    #[error("{path}: not valid JSON ({message}); restore it from a backup or remove it (a removed credentials file means new credentials, which an existing database will refuse)")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// Opens (creating) a state directory; the path is made absolute because the proxy's
    /// configuration is bind-mounted from it.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let root = std::fs::canonicalize(root).map_err(io(root))?;
        let s = StateDir { root };
        let secrets = s.secrets_dir();
        std::fs::create_dir_all(&secrets).map_err(io(&secrets))?;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&secrets))?;
        for d in [s.status_dir(), s.proxy_conf_dir()] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(s)
    }

    /// Takes the directory's lock for as long as the returned file lives: one reconciler per
    /// state directory (two would generate two sets of credentials).
    pub fn lock(&self) -> Result<std::fs::File, StateError> {
        let path = self.root.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Busy {
                path: self.root.clone(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    pub fn status_dir(&self) -> PathBuf {
        self.root.join("status")
    }
    pub fn proxy_conf_dir(&self) -> PathBuf {
        self.root.join("proxy").join("conf.d")
    }

    /// The values of a generated secret: read, completed with missing keys (never replacing
    /// one), and written back with mode 0600 when something was added.
    pub fn ensure_secret(&self, secret: &GeneratedSecret) -> Result<SecretData, StateError> {
        let path = self.secrets_dir().join(format!("{}.json", secret.name));
        let existing: SecretData = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecretData::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let data = materialize(secret, &existing, random_hex).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if data != existing {
            write_private(&path, &serde_json::to_vec_pretty(&data).unwrap_or_default())?;
        }
        Ok(data)
    }

    /// Like [`StateDir::write_if_changed`], for a file only its owner may read.
    pub fn write_private_if_changed(&self, path: &Path, bytes: &[u8]) -> Result<bool, StateError> {
        if std::fs::read(path).ok().as_deref() == Some(bytes) {
            return Ok(false);
        }
        write_private(path, bytes)?;
        Ok(true)
    }

    /// Writes `bytes` to `path` if different; true when it changed.
    pub fn write_if_changed(&self, path: &Path, bytes: &[u8]) -> Result<bool, StateError> {
        if std::fs::read(path).ok().as_deref() == Some(bytes) {
            return Ok(false);
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        Ok(true)
    }
}

/// Writes a file only its owner can read, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

impl SecretSource for StateDir {
    fn generated(&mut self, secret: &GeneratedSecret) -> Result<SecretData, String> {
        self.ensure_secret(secret).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{SecretEntry, SecretValue};

    #[test]
    fn secrets_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let secret = GeneratedSecret {
            name: "x-redis-credentials".into(),
            component: "redis".into(),
            entries: vec![
                SecretEntry {
                    key: "password".into(),
                    value: SecretValue::Random { bytes: 8 },
                },
                SecretEntry {
                    key: "url".into(),
                    value: SecretValue::Template("redis://:{password}@h".into()),
                },
            ],
        };
        let a = s.ensure_secret(&secret).unwrap();
        let b = s.ensure_secret(&secret).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["password"].len(), 16);
        let path = s.secrets_dir().join("x-redis-credentials.json");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(s.secrets_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn one_reconciler_per_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let held = s.lock().unwrap();
        assert!(matches!(s.lock(), Err(StateError::Busy { .. })));
        drop(held);
        s.lock().unwrap();
    }
}
