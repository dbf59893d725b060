//! A manifest file the host does not apply as written: what both the manifest loader
//! ([`super::manifests`]) and the desired state ([`super::desired`]) speak of.

use std::path::PathBuf;

/// A file that is not applied as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenFile {
    pub file: PathBuf,
    /// `file:line: message`, one per error.
    pub errors: Vec<String>,
    /// The last good version of the file is in force.
    pub kept: bool,
}
