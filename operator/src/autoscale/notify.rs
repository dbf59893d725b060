//! Keyspace-notification wake-ups (opt-in: `berth operator --redis-keyspace-notifications`).
//!
//! With it, the driver keeps one subscription connection per Redis, subscribed to
//! `__keyspace@<db>__:<key>` for every key its Workers' probes read. A write to one of those
//! keys (LPUSH, ZADD, XADD, DEL, ...) makes the Workers that read it due at once (no sooner than
//! [`WAKE_MIN_GAP`] after their last poll, so a busy queue does not turn into a read per job),
//! instead of waiting up to a `pollInterval`. Polling stays as it is, a safety net for
//! notifications lost (Pub/Sub delivers at most once; a reconnect loses what was sent meanwhile).
//!
//! Redis only publishes keyspace events when `notify-keyspace-events` says so: berth reads it
//! with `CONFIG GET` and adds the classes it needs ([`NEEDED`]) with `CONFIG SET`. When either is
//! refused (`rename-command CONFIG ""`, an ACL without `+config`, managed services), the Redis
//! is read by polling only and the reason is logged once and shown by [`super::Driver::keyspace`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::driver::{Driver, Inner, ScaleTarget};
pub use super::listener::KeyspaceState;
use super::listener::Listener;
use super::pool::{build_client, scrub, RedisTarget, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// Event classes berth needs: K keyspace channel, g generic (DEL, RENAME, EXPIRE), l lists,
/// z sorted sets, t streams.
pub const NEEDED: &str = "Kglzt";

/// The least time between two polls of a Worker woken by notifications.
pub const WAKE_MIN_GAP: Duration = Duration::from_millis(50);

/// Longest wait between two attempts to reconnect the subscription.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a subscription ended. Messages never contain the URL's password.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NotifyError {
    #[error("{url} refused reading or setting notify-keyspace-events ({message}); polling only: allow CONFIG GET/SET to berth's user or set notify-keyspace-events to include {NEEDED}")]
    Refused { url: String, message: String },
    #[error("keyspace notifications from {url} interrupted: {message}; polling until reconnected")]
    Lost { url: String, message: String },
}

/// The classes to add to `current` (a `notify-keyspace-events` value) so berth's events are
/// published; empty when nothing is missing. `A` stands for every class but `K`/`E`.
pub fn missing_flags(current: &str) -> String {
    let all = current.contains('A');
    NEEDED
        .chars()
        .filter(|c| !(current.contains(*c) || (all && *c != 'K')))
        .collect()
}

/// The channel of `key`'s keyspace events in database `db`.
pub fn channel(db: i64, key: &str) -> String {
    format!("__keyspace@{db}__:{key}")
}

/// Reads `notify-keyspace-events` and adds what berth needs. Returns the value now in effect.
pub async fn ensure_notifications(conn: &mut MultiplexedConnection) -> Result<String, RedisError> {
    let reply: Value = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await?;
    let current = config_value(&reply).ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "CONFIG GET notify-keyspace-events returned no value",
        ))
    })?;
    let missing = missing_flags(&current);
    if missing.is_empty() {
        return Ok(current);
    }
    let wanted = format!("{current}{missing}");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async::<()>(conn)
        .await?;
    Ok(wanted)
}

/// The value of a one-parameter CONFIG GET reply (RESP2 array or RESP3 map).
fn config_value(reply: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply {
        Value::Array(a) if a.len() == 2 => text(&a[1]),
        Value::Map(m) if m.len() == 1 => text(&m[0].1),
        _ => None,
    }
}

impl<T: ScaleTarget> Driver<T> {
    /// How the keyspace notifications of each Redis stand (redacted URL → state); empty when
    /// they are off.
    pub fn keyspace(&self) -> Vec<(String, KeyspaceState)> {
        let listeners = lock(&self.inner.listeners);
        listeners
            .iter()
            .map(|(t, l)| (t.redacted(), lock(&l.state).clone()))
            .collect()
    }

    /// Wake-ups caused by notifications so far (a Worker made due before its pollInterval).
    pub fn wakeups(&self) -> u64 {
        self.inner.wakeups.load(Ordering::Relaxed)
    }

    /// Starts, updates and stops the subscriptions to match the Workers (called by `run`).
    pub(super) fn sync_listeners(&self, shutdown: &CancellationToken) {
        if !self.inner.keyspace.load(Ordering::Relaxed)
            || !self.inner.keys_changed.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let mut wanted: HashMap<RedisTarget, BTreeSet<String>> = HashMap::new();
        for s in self.workers().values() {
            if self.inner.target.subscribable(&s.entry.redis) {
                wanted
                    .entry(s.entry.redis.clone())
                    .or_default()
                    .extend(s.entry.probe.keys());
            }
        }
        let mut listeners = lock(&self.inner.listeners);
        listeners.retain(|t, _| wanted.contains_key(t));
        for (target, keys) in wanted {
            if let Some(l) = listeners.get(&target) {
                l.keys.send_if_modified(|k| {
                    let changed = *k != keys;
                    *k = keys.clone();
                    changed
                });
                continue;
            }
            let (tx, rx) = watch::channel(keys);
            let cancel = shutdown.child_token();
            let state = Arc::new(Mutex::new(KeyspaceState::Starting));
            tokio::spawn(listen(
                Arc::downgrade(&self.inner),
                target.clone(),
                rx,
                state.clone(),
                cancel.clone(),
            ));
            listeners.insert(
                target,
                Listener {
                    keys: tx,
                    cancel,
                    state,
                },
            );
        }
    }
}

fn lock<V>(m: &Mutex<V>) -> std::sync::MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the Workers reading `key` on `target` due now (or [`WAKE_MIN_GAP`] after their last
/// poll) and wakes the polling loop.
fn wake<T>(inner: &Inner<T>, target: &RedisTarget, key: &str) {
    let now = Instant::now();
    let mut woke = false;
    for s in lock(&inner.workers).values_mut() {
        if s.entry.redis != *target || !s.entry.probe.watches(key) {
            continue;
        }
        let earliest = s.last_poll.map_or(now, |t| t + WAKE_MIN_GAP).max(now);
        if earliest < s.next_due {
            s.next_due = earliest;
            woke = true;
        }
    }
    if woke {
        inner.wakeups.fetch_add(1, Ordering::Relaxed);
        inner.changed.notify_one();
    }
}

/// The subscription of one Redis until `cancel`: reconnects with a backoff after a failure,
/// gives up (polling only) when notifications cannot be enabled.
async fn listen<T: Send + Sync + 'static>(
    inner: Weak<Inner<T>>,
    target: RedisTarget,
    mut keys: watch::Receiver<BTreeSet<String>>,
    state: Arc<Mutex<KeyspaceState>>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let end = session(&inner, &target, &mut keys, &state, &cancel).await;
        match end {
            Ok(()) => return,
            Err(e @ NotifyError::Refused { .. }) => {
                tracing::warn!(error = %e, "keyspace notifications unavailable");
                *lock(&state) = KeyspaceState::Polling(e.to_string());
                return;
            }
            Err(e @ NotifyError::Lost { .. }) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "keyspace notifications lost");
                *lock(&state) = KeyspaceState::Reconnecting(e.to_string());
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session<T>(
    inner: &Weak<Inner<T>>,
    target: &RedisTarget,
    keys: &mut watch::Receiver<BTreeSet<String>>,
    state: &Mutex<KeyspaceState>,
    cancel: &CancellationToken,
) -> Result<(), NotifyError> {
    let url = target.redacted();
    let refused = |e: &RedisError| NotifyError::Refused {
        url: url.clone(),
        message: scrub(&e.to_string(), target),
    };
    let lost = |e: &RedisError| NotifyError::Lost {
        url: url.clone(),
        message: scrub(&e.to_string(), target),
    };
    let client = build_client(target).map_err(|e| NotifyError::Refused {
        url: url.clone(),
        message: e.to_string(),
    })?;
    let db = client.get_connection_info().redis_settings().db();
    // One lookup at a time per Redis host, shared with the probes' dials (see Conn::resolve).
    let Some(pool) = inner.upgrade().map(|i| i.pool.clone()) else {
        return Ok(());
    };
    pool.get(target)
        .lookup_gate()
        .await
        .map_err(|message| NotifyError::Lost {
            url: url.clone(),
            message,
        })?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| lost(&e))?;
    if let Err(e) = ensure_notifications(&mut conn).await {
        let transient = e.is_io_error() || e.is_timeout() || e.is_connection_dropped();
        return Err(if transient { lost(&e) } else { refused(&e) });
    }
    drop(conn);
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| NotifyError::Lost {
            url: url.clone(),
            message: format!("no connection within {CONNECT_TIMEOUT:?}"),
        })?
        .map_err(|e| lost(&e))?;
    let (mut sink, mut stream) = pubsub.split();
    let prefix = channel(db, "");
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    let mut wanted = keys.borrow_and_update().clone();
    loop {
        let add: Vec<String> = wanted
            .difference(&subscribed)
            .map(|k| channel(db, k))
            .collect();
        let gone: Vec<String> = subscribed
            .difference(&wanted)
            .map(|k| channel(db, k))
            .collect();
        if !add.is_empty() {
            sink.subscribe(&add).await.map_err(|e| lost(&e))?;
        }
        if !gone.is_empty() {
            sink.unsubscribe(&gone).await.map_err(|e| lost(&e))?;
        }
        subscribed = wanted;
        *lock(state) = KeyspaceState::Subscribed;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = keys.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    wanted = keys.borrow_and_update().clone();
                    break;
                }
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Err(NotifyError::Lost {
                            url: url.clone(),
                            message: "the subscription connection closed".into(),
                        });
                    };
                    let Some(inner) = inner.upgrade() else { return Ok(()) };
                    let channel: Vec<u8> = msg.get_channel().unwrap_or_default();
                    if let Some(key) = channel.strip_prefix(prefix.as_bytes()) {
                        wake(&inner, target, &String::from_utf8_lossy(key));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_added_only_when_missing() {
        assert_eq!(missing_flags(""), "Kglzt");
        assert_eq!(missing_flags("Ex"), "Kglzt");
        assert_eq!(missing_flags("AK"), "");
        assert_eq!(missing_flags("KA"), "");
        assert_eq!(missing_flags("A"), "K");
        assert_eq!(missing_flags("Kl"), "gzt");
    }

    #[test]
    fn config_replies() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![bulk("notify-keyspace-events"), bulk("KEA")]);
        assert_eq!(config_value(&resp2).as_deref(), Some("KEA"));
        let resp3 = Value::Map(vec![(bulk("notify-keyspace-events"), bulk(""))]);
        assert_eq!(config_value(&resp3).as_deref(), Some(""));
        assert_eq!(config_value(&Value::Array(vec![])), None);
        assert_eq!(channel(2, "bull:q:wait"), "__keyspace@2__:bull:q:wait");
    }
}
