//! The file store of the Docker host and of `berth cert renew --dir`: one folder per
//! Certificate, `<dir>/<secretName>/` holding `tls.crt`, `tls.key`, `ca.crt` (when known) and
//! `status.json`, every file mode 0600. A CA for the `ca` issuer is read from
//! `<dir>/<ca.secretName>/tls.crt|tls.key`, the same shape as a Secret.
//!
//! A new pair is written to temporary files and renamed into place, the key before the
//! certificate, so a reader (the proxy, reloaded afterwards) never sees a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::round::Stored;
use super::{CertError, Issued};
use crate::api::CertificateStatus;

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";
pub const STATUS_FILE: &str = "status.json";

/// One Certificate's folder.
#[derive(Clone, Debug)]
pub struct FileStore {
    dir: PathBuf,
}

fn read_opt(path: &Path) -> Result<Option<String>, CertError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CertError::io(format!("reading {}", path.display()))(e)),
    }
}

/// Writes `data` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CertError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let err = |what: &str| CertError::io(format!("{what} {}", path.display()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err("creating"))?;
        f.write_all(data).map_err(err("writing"))?;
        f.sync_all().map_err(err("syncing"))?;
    }
    std::fs::rename(&tmp, path).map_err(err("replacing"))
}

impl FileStore {
    /// The folder of the Certificate whose `secretName` is `secret_name` under `root`.
    pub fn new(root: &Path, secret_name: &str) -> FileStore {
        FileStore {
            dir: root.join(secret_name),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The stored pair, if both files exist.
    pub fn load(&self) -> Result<Option<Stored>, CertError> {
        let (Some(cert_pem), Some(key_pem)) =
            (read_opt(&self.cert_path())?, read_opt(&self.key_path())?)
        else {
            return Ok(None);
        };
        Ok(Some(Stored {
            cert_pem,
            key_pem,
            ca_pem: read_opt(&self.dir.join(CA_FILE))?,
        }))
    }

    /// Stores a new pair (and ca.crt when known).
    pub fn save(&self, issued: &Issued) -> Result<(), CertError> {
        self.ensure_dir()?;
        if let Some(ca) = &issued.ca_pem {
            write_private(&self.dir.join(CA_FILE), ca.as_bytes())?;
        }
        write_private(&self.key_path(), issued.key_pem.as_bytes())?;
        write_private(&self.cert_path(), issued.cert_pem.as_bytes())
    }

    fn ensure_dir(&self) -> Result<(), CertError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(CertError::io(format!("creating {}", self.dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(CertError::io(format!("securing {}", self.dir.display())))?;
        }
        Ok(())
    }

    /// The status written by the last round.
    pub fn load_status(&self) -> Result<Option<CertificateStatus>, CertError> {
        let path = self.dir.join(STATUS_FILE);
        let Some(text) = read_opt(&path)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CertError::Parse(format!("{}: {e}", path.display())))
    }

    /// Writes the status (only the engine's view; no key material).
    pub fn save_status(&self, status: &CertificateStatus) -> Result<(), CertError> {
        self.ensure_dir()?;
        let text = serde_json::to_vec_pretty(status)
            .map_err(|e| CertError::Parse(format!("status: {e}")))?;
        write_private(&self.dir.join(STATUS_FILE), &text)
    }
}

/// A Certificate a folder of manifests asks for.
#[derive(Clone, Debug)]
pub struct ManifestCert {
    pub name: String,
    pub spec: crate::api::CertificateSpec,
    pub generation: Option<i64>,
    /// The `berth.dev/renew-now` annotation.
    pub renew_now: Option<String>,
}

/// The Certificates a folder of manifests asks for: the Certificate objects, and the child
/// Certificate of every AppStack with the `tls.issuer` shorthand (named as on Kubernetes).
pub fn certificates_of(docs: &[crate::manifest::Document]) -> Vec<ManifestCert> {
    use crate::manifest::Object;
    let set = crate::plan::set::ManifestSet::from_documents(docs);
    let mut out = Vec::new();
    for doc in docs {
        match &doc.result {
            Ok(Object::Certificate(c)) => {
                if let Some(name) = &c.metadata.name {
                    out.push(ManifestCert {
                        name: name.clone(),
                        spec: c.spec.clone(),
                        generation: c.metadata.generation,
                        renew_now: super::kube::renew_now(c).map(str::to_string),
                    });
                }
            }
            Ok(Object::AppStack(s)) => {
                if let Ok(plan) = crate::plan::plan_stack(s, &set.observed_for(s)) {
                    if let Some((name, spec)) = plan.children.certificate {
                        out.push(ManifestCert {
                            name,
                            spec,
                            generation: None,
                            renew_now: None,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}
