//! The manifest folder as the host sees it: keep the last good version of every file.
//!
//! A folder fed by `git pull` or an editor is sometimes wrong for a while: a typo that breaks
//! the YAML, an invalid field, an unknown kind, a file caught half-written, the whole folder
//! missing or emptied. None of that may take a running stack down. So the host applies the
//! folder file by file:
//! - a file whose documents all parse and validate is *good*: it is used as it is, and its text
//!   is remembered (in the state directory, so the memory survives a berth restart);
//! - a file that cannot be read, has a document that does not parse or validate, or was emptied
//!   is *broken*: the last good version of the file is used instead, so everything it produced
//!   (stacks, their workers, backups, certificates) keeps running as it was. The objects are
//!   reported Failed with the error, `file:line`, until the file is fixed or deleted;
//! - a broken file berth has never seen good cannot be attributed: it holds every removal on
//!   the host until it is fixed;
//! - a deleted file is really gone: its objects are removed;
//! - a missing, unreadable or emptied folder holds everything (the last good version of every
//!   file stays in force) unless `--allow-empty`, where an empty folder means "run nothing".
//!
//! [`resolve`] is the pure decision; [`Manifests::load`] does the reading and remembering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{self, Document, LoadError, Object};
use crate::plan::names::child_worker;

pub use super::broken::BrokenFile;
use super::desired::{Kind, ObjectKey};
use super::state::{StateDir, StateError};

/// The last good text of every manifest file, by path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGood {
    pub files: BTreeMap<PathBuf, String>,
}

/// What was read from the folder: a file's text, or why it could not be read.
pub type Listing = Result<Vec<(PathBuf, Result<String, String>)>, FolderProblem>;

/// Why the folder as a whole gives nothing to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FolderProblem {
    /// No `.yaml`/`.yml` file in it.
    Empty(PathBuf),
    /// Missing or unreadable.
    Unreadable(String),
}

/// The folder resolved against the last good versions.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// The documents to apply.
    pub docs: Vec<Document>,
    pub broken: Vec<BrokenFile>,
    /// Objects running on the last good version of a broken file, with the reason.
    pub held: BTreeMap<ObjectKey, String>,
    /// Why no removal may happen on this pass, when none may.
    pub hold: Option<String>,
    /// The last good versions after this read.
    pub last_good: LastGood,
}

/// The objects of documents that are valid, by key (AppStacks with their child Workers).
fn object_keys(docs: &[Document]) -> Vec<ObjectKey> {
    let mut keys = Vec::new();
    for d in docs {
        match &d.result {
            Ok(Object::AppStack(s)) => {
                let name = d.name.clone().unwrap_or_default();
                for w in &s.spec.workers {
                    keys.push(ObjectKey {
                        kind: Kind::Worker,
                        name: child_worker(&name, &w.name),
                    });
                }
                keys.push(ObjectKey {
                    kind: Kind::AppStack,
                    name,
                });
            }
            Ok(Object::Worker(_)) => keys.push(ObjectKey {
                kind: Kind::Worker,
                name: d.name.clone().unwrap_or_default(),
            }),
            _ => {}
        }
    }
    keys
}

fn doc_id(d: &Document) -> Option<(String, String)> {
    Some((d.kind.clone()?, d.name.clone()?))
}

/// Decides what to apply from what was read and the last good versions. Pure.
pub fn resolve(listing: Listing, last: &LastGood, allow_empty: bool) -> Resolved {
    let mut out = Resolved::default();
    let files = match listing {
        Ok(files) => files,
        // "Run nothing": the last good versions are forgotten too.
        Err(FolderProblem::Empty(_)) if allow_empty => return out,
        Err(problem) => {
            let why = match problem {
                FolderProblem::Empty(dir) => format!(
                    "{}: no .yaml or .yml files; keeping everything that runs \
                     (start berth with --allow-empty for an empty folder to mean \"run nothing\")",
                    dir.display()
                ),
                FolderProblem::Unreadable(e) => {
                    format!("{e}; keeping everything that runs until the folder can be read")
                }
            };
            for (file, text) in &last.files {
                out.docs.extend(manifest::parse_documents(file, text));
            }
            out.hold = Some(why);
            out.last_good = last.clone();
            return out;
        }
    };

    // Good files first: what they define wins over a broken file's last good version.
    let mut good_ids: BTreeSet<(String, String)> = BTreeSet::new();
    let mut broken: Vec<(PathBuf, Vec<Document>, Vec<String>)> = Vec::new();
    for (file, text) in files {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                broken.push((
                    file.clone(),
                    Vec::new(),
                    vec![format!("{}: {e}", file.display())],
                ));
                continue;
            }
        };
        let docs = manifest::parse_documents(&file, &text);
        let emptied =
            text.trim().is_empty() && last.files.get(&file).is_some_and(|t| !t.trim().is_empty());
        let errors: Vec<String> = if emptied {
            vec![format!(
                "{}:1: the file is empty; delete it to remove what it defined",
                file.display()
            )]
        } else {
            docs.iter()
                .flat_map(|d| error_lines_with_line(d, &text))
                .collect()
        };
        if errors.is_empty() {
            good_ids.extend(docs.iter().filter_map(doc_id));
            out.docs.extend(docs);
            out.last_good.files.insert(file, text);
        } else {
            broken.push((file, docs, errors));
        }
    }

    let mut unattributed = Vec::new();
    for (file, docs, errors) in broken {
        let kept = match last.files.get(&file) {
            Some(text) => {
                let previous: Vec<Document> = manifest::parse_documents(&file, text)
                    .into_iter()
                    .filter(|d| doc_id(d).is_none_or(|id| !good_ids.contains(&id)))
                    .collect();
                let ids: BTreeSet<_> = previous.iter().filter_map(doc_id).collect();
                let reason = format!(
                    "{} (the last good version of {} stays in force until the file is fixed or deleted)",
                    errors.join("; "),
                    file.display()
                );
                for key in object_keys(&previous) {
                    out.held.insert(key, reason.clone());
                }
                out.docs.extend(previous);
                // New objects of the broken file: their own Failed status.
                out.docs.extend(
                    docs.into_iter()
                        .filter(|d| d.result.is_err())
                        .filter(|d| doc_id(d).is_none_or(|id| !ids.contains(&id))),
                );
                out.last_good.files.insert(file.clone(), text.clone());
                true
            }
            None => {
                // Never seen good: apply what is valid, and remove nothing anywhere, since
                // what the broken documents owned cannot be told.
                out.docs.extend(docs);
                unattributed.push(file.display().to_string());
                false
            }
        };
        out.broken.push(BrokenFile { file, errors, kept });
    }
    if !unattributed.is_empty() {
        out.hold = Some(format!(
            "{} cannot be read as a whole and berth has no earlier good version of it; \
             nothing is removed until it is fixed",
            unattributed.join(", ")
        ));
    }
    out
}

/// The errors of a document as `file:line: path: message`.
pub fn error_lines_with_line(d: &Document, text: &str) -> Vec<String> {
    let Err(errors) = &d.result else {
        return Vec::new();
    };
    let (start, end) = document_lines(text, d.index);
    errors
        .iter()
        .map(|e| {
            let line = yaml_error_line(&e.message)
                .unwrap_or_else(|| field_line(text, start, end, &e.path));
            let what = match (&d.kind, &d.name) {
                (Some(k), Some(n)) => format!(" ({k}/{n})"),
                _ => String::new(),
            };
            format!("{}:{line}:{what} {e}", d.file.display())
        })
        .collect()
}

/// `at line N` of a YAML syntax error (lines of the whole file). An unclosed flow mapping or
/// sequence (`replicas: {1`) is found where the parser gave up, a line later: the line where
/// it was opened is where the typo is.
fn yaml_error_line(message: &str) -> Option<usize> {
    let from = message
        .find("while parsing a flow")
        .map_or(0, |i| i + "while parsing a flow".len());
    let message = &message[from..];
    let rest = &message[message.find("at line ")? + "at line ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// First and last line (1-based, inclusive) of the `index`-th document of a stream.
fn document_lines(text: &str, index: usize) -> (usize, usize) {
    let mut starts = vec![1];
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line == "---" || line.starts_with("--- ") || line.starts_with("---\t") {
            if content {
                starts.push(n);
            } else if let Some(s) = starts.last_mut() {
                *s = n;
            }
            content = false;
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            content = true;
        }
    }
    let total = text.lines().count().max(1);
    let start = starts.get(index.saturating_sub(1)).copied().unwrap_or(1);
    let end = starts
        .get(index)
        .map(|s| s.saturating_sub(1))
        .unwrap_or(total);
    (start, end.max(start))
}

/// The line where a field path is written, found by its keys in order (block or flow style);
/// the deepest key found, else the document's first line.
fn field_line(text: &str, start: usize, end: usize, path: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = start;
    let mut from = start;
    for seg in path.split('.').map(|s| s.split('[').next().unwrap_or(s)) {
        if seg.is_empty() {
            continue;
        }
        let key = format!("{seg}:");
        let found = (from..=end.min(lines.len())).find(|&n| {
            let l = lines[n - 1];
            l.match_indices(&key).any(|(i, _)| {
                i == 0
                    || l[..i]
                        .chars()
                        .last()
                        .is_some_and(|c| matches!(c, ' ' | '{' | ',' | '-' | '\t' | '"'))
            })
        });
        match found {
            Some(n) => {
                at = n;
                from = n;
            }
            None => break,
        }
    }
    at
}

/// The kind of the status rows of manifest files in `berth host status`.
pub const KIND: &str = "Manifest";

fn status_file(state: &StateDir, name: &str) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    state.status_dir().join(format!("manifest-{hex}.json"))
}

/// One status row per broken file (phase Failed, its errors with `file:line`) and one for the
/// folder when removals are held; rows of files that are fine again are removed.
pub fn write_statuses(
    state: &StateDir,
    folder: &Path,
    desired: &super::desired::DesiredHost,
) -> Result<(), StateError> {
    let mut rows: Vec<(String, &str, String)> = desired
        .broken
        .iter()
        .map(|b| {
            let what = if b.kept {
                "; the last good version of the file stays in force"
            } else {
                "; nothing is removed until it is fixed"
            };
            (
                b.file.display().to_string(),
                "InvalidManifest",
                format!("{}{what}", b.errors.join("; ")),
            )
        })
        .collect();
    if let Some(h) = &desired.hold {
        rows.push((folder.display().to_string(), "RemovalsHeld", h.clone()));
    }
    let mut keep = BTreeSet::new();
    for (name, reason, message) in rows {
        let path = status_file(state, &name);
        let row = super::status::ObjectStatus {
            kind: KIND.into(),
            name,
            status: serde_json::json!({
                "phase": "Failed",
                "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}],
            }),
        };
        let bytes = serde_json::to_vec_pretty(&row).unwrap_or_default();
        state.write_if_changed(&path, &bytes)?;
        keep.insert(path);
    }
    for e in std::fs::read_dir(state.status_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = e.path();
        let ours = e.file_name().to_string_lossy().starts_with("manifest-");
        if ours && !keep.contains(&path) {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// The host's manifest folder with its last good versions, kept in the state directory (in
/// the private `secrets` folder: manifests may carry Secrets).
pub struct Manifests {
    pub folder: PathBuf,
    pub allow_empty: bool,
    file: PathBuf,
}

impl Manifests {
    pub fn new(folder: &Path, allow_empty: bool, state: &StateDir) -> Manifests {
        Manifests {
            folder: folder.to_path_buf(),
            allow_empty,
            file: state.secrets_dir().join("last-good-manifests.json"),
        }
    }

    fn last_good(&self) -> LastGood {
        std::fs::read(&self.file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn listing(&self) -> Listing {
        let files = match manifest::yaml_files(&self.folder) {
            Ok(f) => f,
            Err(LoadError::EmptyDir { path }) => return Err(FolderProblem::Empty(path)),
            Err(e) => return Err(FolderProblem::Unreadable(e.to_string())),
        };
        Ok(files
            .into_iter()
            .map(|f| {
                let text = std::fs::read_to_string(&f).map_err(|e| format!("cannot read: {e}"));
                (f, text)
            })
            .collect())
    }

    /// Reads the folder, resolves it and remembers the good files.
    pub fn load(&self, state: &StateDir) -> Result<Resolved, StateError> {
        let last = self.last_good();
        let resolved = resolve(self.listing(), &last, self.allow_empty);
        if resolved.last_good != last {
            let bytes = serde_json::to_vec(&resolved.last_good).unwrap_or_default();
            state.write_private_if_changed(&self.file, &bytes)?;
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests;
