//! What the driver holds of each Redis's keyspace-notification subscription
//! ([`super::notify`] runs it): the state shown to users and the handle that ends the task when
//! dropped. Its own module so that the driver and the subscription code do not import each other.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How the notifications of one Redis stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyspaceState {
    /// Connecting or checking `notify-keyspace-events`.
    Starting,
    /// Subscribed: writes wake the Workers.
    Subscribed,
    /// Notifications are not available on this Redis: polling only (the reason says why).
    Polling(String),
    /// The subscription broke; polling meanwhile, reconnecting with a backoff.
    Reconnecting(String),
}

/// The subscription task of one Redis, as the driver holds it.
pub(super) struct Listener {
    pub(super) keys: watch::Sender<BTreeSet<String>>,
    pub(super) cancel: CancellationToken,
    pub(super) state: Arc<Mutex<KeyspaceState>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
