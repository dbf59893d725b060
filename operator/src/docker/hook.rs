//! The seam between the host's run loop ([`super::run`]) and the work that runs beside
//! convergence (scheduled backups, certificate renewal, autoscaling): what a hook sees after a
//! pass and what it must provide.

use std::time::Instant;

use futures::future::BoxFuture;

use super::desired::DesiredHost;
use super::engine::Engine;
use super::state::StateDir;
use crate::manifest::Document;

/// What a hook sees after a pass.
pub struct PassContext<'a> {
    pub engine: &'a Engine,
    pub desired: &'a DesiredHost,
    pub state: &'a StateDir,
    /// The documents in force: the folder's good files and the last good version of broken
    /// ones (see [`super::manifests`]); hooks read their objects (Backups, Certificates) here.
    pub docs: &'a [Document],
}

/// Work that runs on the host beside convergence (scheduled backups, certificate renewal).
pub trait HostHook: Send + Sync {
    /// Called after every pass; must not block for long (spawn long work).
    fn after_pass<'a>(&'a self, ctx: PassContext<'a>) -> BoxFuture<'a, ()>;
    /// When the loop must wake next for this hook, if at all.
    fn next_wake(&self) -> Option<Instant> {
        None
    }
}
