//! One connection per Redis, shared by every Worker that reads it. A multiplexed connection
//! pipelines concurrent requests on one socket, and the driver sends the probes of all Workers
//! due at the same tick as one pipeline: one round trip per Redis per tick.
//!
//! URLs carry passwords: they are kept out of `Debug`, logs and errors ([`redact`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Pipeline, Value};

/// How long connecting, and one round trip, may take before the probe counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed dial the next one waits 1 s, doubling per failure up to this; meanwhile
/// the probe fails at once with the last error. (Dialling on every tick of a Redis that is
/// down made one DNS lookup per Worker per tick, each on a blocking thread.)
pub const REDIAL_MAX: Duration = Duration::from_secs(10);

/// The wait before dialling again after `failures` failed dials in a row (at least one).
pub fn redial_delay(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(REDIAL_MAX)
}

/// Where a queue lives: a `redis://` or `rediss://` URL and, for TLS with a private CA, the
/// CA certificate (PEM). Both are secret material; `Debug` shows the redacted URL only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisTarget {
    url: String,
    ca_pem: Option<Vec<u8>>,
}

impl RedisTarget {
    pub fn new(url: impl Into<String>, ca_pem: Option<Vec<u8>>) -> RedisTarget {
        RedisTarget {
            url: url.into().trim().to_string(),
            ca_pem,
        }
    }

    /// The URL with its password replaced, for logs and messages.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &self.redacted())
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`. Anything that does not
/// look like a URL is replaced whole.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// A failure to reach or read a Redis; the message names the redacted URL only.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("invalid Redis URL {url}: {message} (expected redis://[:password@]host[:port][/db] or rediss://...)")]
    InvalidUrl { url: String, message: String },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("reading from {url} failed: {message}")]
    Query { url: String, message: String },
    #[error("{url} did not answer within {0:?}", RESPONSE_TIMEOUT)]
    Timeout { url: String },
}

/// Connections by Redis, shared by all Workers.
#[derive(Default, Clone)]
pub struct Pool {
    conns: Arc<Mutex<HashMap<RedisTarget, Arc<Conn>>>>,
    resolver: Resolver,
}

/// Looks up a Redis host before a dial (the system resolver, on tokio's blocking threads).
#[derive(Clone)]
pub struct Resolver(
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<()>> + Send + Sync>,
);

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::new(|host, port| {
            Box::pin(async move {
                tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map(|_| ())
            })
        })
    }
}

impl Resolver {
    /// A resolver of one's own (tests: one that never answers).
    pub fn new(
        f: impl Fn(String, u16) -> BoxFuture<'static, std::io::Result<()>> + Send + Sync + 'static,
    ) -> Resolver {
        Resolver(Arc::new(f))
    }
}

/// One Redis: its client and the current connection (re-dialled after a failure).
pub struct Conn {
    target: RedisTarget,
    client: Result<Client, PoolError>,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    round_trips: AtomicU64,
    dials: AtomicU64,
    /// The last failed dial: not before `.0` again; `.1` failures in a row; `.2` the error.
    failed: Mutex<Option<(Instant, u32, PoolError)>>,
    resolver: Resolver,
    /// The lookup of the host that a dial gave up waiting for, while it still runs.
    lookup: Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    /// A pool whose dials look hosts up with `resolver`.
    pub fn with_resolver(resolver: Resolver) -> Pool {
        Pool {
            conns: Arc::default(),
            resolver,
        }
    }

    /// The shared connection of a Redis (created lazily; nothing is dialled here).
    pub fn get(&self, target: &RedisTarget) -> Arc<Conn> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .entry(target.clone())
            .or_insert_with(|| Arc::new(Conn::new(target.clone(), self.resolver.clone())))
            .clone()
    }

    /// Forgets Redis servers no Worker uses any more.
    pub fn retain(&self, used: &[RedisTarget]) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|k, _| used.contains(k));
    }

    /// Connections held (one per distinct Redis).
    pub fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Conn {
    fn new(target: RedisTarget, resolver: Resolver) -> Conn {
        let client = build_client(&target);
        Conn {
            target,
            client,
            conn: tokio::sync::Mutex::new(None),
            round_trips: AtomicU64::new(0),
            dials: AtomicU64::new(0),
            failed: Mutex::new(None),
            resolver,
            lookup: Mutex::new(None),
        }
    }

    /// Looks the Redis host up before a dial, one lookup at a time per Redis. A lookup cannot
    /// be cancelled (getaddrinfo on a blocking thread): with a slow resolver, a dial that gives
    /// up leaves its lookup queued, and redialling many unreachable Redis servers every few
    /// seconds queued lookups faster than the resolver answered them (1,000 Redis hosts, a
    /// resolver that drops queries: the blocking pool's queue, and the heap, grew by ~1 MB a
    /// minute, without end). So a dial waits up to [`CONNECT_TIMEOUT`] for its lookup, and
    /// while a lookup it gave up on still runs, the next dial does not start: `Err(None)`.
    /// IP addresses and Unix sockets need no lookup.
    async fn resolve(&self, client: &Client) -> Result<(), Option<String>> {
        let (host, port) = match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
            _ => return Ok(()),
        };
        if host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok()
        {
            return Ok(());
        }
        let mut lookup = {
            let mut slot = self.lookup.lock().unwrap_or_else(|e| e.into_inner());
            match slot.take() {
                Some(pending) if !pending.is_finished() => {
                    *slot = Some(pending);
                    return Err(None);
                }
                _ => tokio::spawn((self.resolver.0)(host.clone(), port)),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, &mut lookup).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Some(format!("cannot resolve {host}: {e}"))),
            Ok(Err(e)) => Err(Some(format!("resolving {host} failed: {e}"))),
            Err(_) => {
                *self.lookup.lock().unwrap_or_else(|e| e.into_inner()) = Some(lookup);
                Err(Some(format!(
                    "resolving {host} took longer than {CONNECT_TIMEOUT:?} (slow DNS); no new dial until that lookup ends"
                )))
            }
        }
    }

    /// The same one-lookup-at-a-time gate for another connection to this Redis (the
    /// keyspace-notification subscription): `Err` with a message when it must not dial now.
    pub(super) async fn lookup_gate(&self) -> Result<(), String> {
        let Ok(client) = self.client.as_ref() else {
            return Ok(()); // the dial reports the invalid URL itself
        };
        self.resolve(client).await.map_err(|e| {
            e.unwrap_or_else(|| {
                "the host's lookup from an earlier dial has not finished yet".into()
            })
        })
    }

    /// Connection attempts so far.
    pub fn dials(&self) -> u64 {
        self.dials.load(Ordering::Relaxed)
    }

    /// Round trips sent so far (for benchmarks and metrics).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Dials the Redis (after its lookup), unless the last failed dial was too recent: then
    /// the last error again. A failure is remembered with the wait before the next dial.
    async fn dial(&self, client: &Client, url: &str) -> Result<MultiplexedConnection, PoolError> {
        let last_failure = {
            let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            failed.as_ref().map(|(at, n, e)| (*at, *n, e.clone()))
        };
        if let Some((not_before, _, e)) = &last_failure {
            if Instant::now() < *not_before {
                return Err(e.clone());
            }
        }
        let record = |message: String| {
            let err = PoolError::Connect {
                url: url.to_string(),
                message: scrub(&message, &self.target),
            };
            let n = last_failure
                .as_ref()
                .map_or(1, |(_, n, _)| n.saturating_add(1));
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now() + redial_delay(n), n, err.clone()));
            err
        };
        match self.resolve(client).await {
            Ok(()) => {}
            Err(Some(message)) => return Err(record(message)),
            // The last lookup still runs: the last error stands, and the wait
            // before the next dial starts again.
            Err(None) => {
                let err = match &last_failure {
                    Some((_, _, e)) => e.clone(),
                    None => PoolError::Connect {
                        url: url.to_string(),
                        message: "the host's lookup has not finished yet".into(),
                    },
                };
                let n = last_failure.as_ref().map_or(1, |(_, n, _)| *n);
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now() + redial_delay(n), n, err.clone()));
                return Err(err);
            }
        }
        // rediss:// relies on the process-wide rustls provider.
        crate::tls::install_default_provider();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.dials.fetch_add(1, Ordering::Relaxed);
        let dialled = client
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match dialled {
            Ok(c) => {
                *failed = None;
                Ok(c)
            }
            Err(e) => {
                drop(failed);
                Err(record(e.to_string()))
            }
        }
    }

    /// Sends one pipeline (replies of failed commands come back as `Value::ServerError`, so
    /// one Worker's wrong key does not fail the others). A broken connection is dropped and
    /// re-dialled on the next call.
    pub async fn query(&self, pipe: &Pipeline) -> Result<Vec<Value>, PoolError> {
        let url = self.target.redacted();
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let mut conn = {
            let mut slot = self.conn.lock().await;
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    // Boxed: a dial's future (lookup, connect, TLS, handshake) is several
                    // times a query's, and a poll has one query in flight per Redis.
                    let c = Box::pin(self.dial(client, &url)).await?;
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let result =
            tokio::time::timeout(RESPONSE_TIMEOUT, pipe.query_async::<Vec<Value>>(&mut conn)).await;
        let failure = match result {
            Ok(Ok(values)) => return Ok(values),
            Ok(Err(e)) => PoolError::Query {
                url,
                message: scrub(&e.to_string(), &self.target),
            },
            Err(_) => PoolError::Timeout { url },
        };
        *self.conn.lock().await = None;
        Err(failure)
    }
}

pub(super) fn build_client(target: &RedisTarget) -> Result<Client, PoolError> {
    let invalid = |e: redis::RedisError| PoolError::InvalidUrl {
        url: target.redacted(),
        message: scrub(&e.to_string(), target),
    };
    match &target.ca_pem {
        Some(ca) if target.url.starts_with("rediss://") => Client::build_with_tls(
            target.url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        )
        .map_err(invalid),
        _ => Client::open(target.url.as_str()).map_err(invalid),
    }
}

/// Removes the URL and its password from a driver message, should one ever echo them.
pub(super) fn scrub(message: &str, target: &RedisTarget) -> String {
    let mut out = message.replace(&target.url, &target.redacted());
    if let Some(pw) = password_of(&target.url) {
        if !pw.is_empty() {
            out = out.replace(pw, "***");
        }
    }
    out
}

fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poll has one query in flight per Redis (1,000 at 1,000 stacks): the dial, large and
    /// rare, is boxed while it runs, so a query on an open connection stays small.
    #[test]
    fn a_query_in_flight_is_small() {
        let conn = Pool::new().get(&RedisTarget::new("redis://redis:6379/0", None));
        let pipe = redis::pipe();
        let query = std::mem::size_of_val(&conn.query(&pipe));
        eprintln!("query {query} B");
        // 2,400 bytes with the dial inline.
        assert!(query <= 768, "query: {query} bytes");
    }

    #[test]
    fn redial_waits_double_up_to_ten_seconds() {
        let secs: Vec<u64> = (1..8).map(|n| redial_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(redial_delay(u32::MAX), REDIAL_MAX);
    }

    /// A lookup that outlives its dial (slow DNS) holds back the next dials of that Redis
    /// until it ends, so lookups never queue up; the probes meanwhile get the last error.
    #[tokio::test]
    async fn no_new_lookup_while_the_last_one_runs() {
        let calls = Arc::new(AtomicU64::new(0));
        let answer = Arc::new(tokio::sync::Notify::new());
        let resolver = {
            let (calls, answer) = (calls.clone(), answer.clone());
            Resolver::new(move |_, _| {
                calls.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                Box::pin(async move {
                    answer.notified().await;
                    Err(std::io::Error::other("no such host"))
                })
            })
        };
        let conn = Pool::with_resolver(resolver)
            .get(&RedisTarget::new("redis://:pw@redis.invalid:6379/0", None));
        let pipe = redis::pipe();
        let first = conn.query(&pipe).await.unwrap_err();
        assert!(first.to_string().contains("took longer"), "{first}");
        assert!(!first.to_string().contains("pw"), "{first}");
        // Past the redial wait (1 s), with the lookup still running: no new lookup, no dial,
        // the same error.
        tokio::time::sleep(redial_delay(1) + Duration::from_millis(100)).await;
        assert_eq!(conn.query(&pipe).await.unwrap_err(), first);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a second lookup while one runs"
        );
        assert_eq!(conn.dials(), 0);
        // Once it ends, the next dial (after the redial wait) looks the host up again.
        answer.notify_one();
        let deadline = Instant::now() + Duration::from_secs(10);
        let next = loop {
            let e = conn.query(&pipe).await.unwrap_err();
            if calls.load(Ordering::SeqCst) == 2 {
                break e;
            }
            assert!(Instant::now() < deadline, "no new lookup within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The second lookup is not answered either: that dial gave up after 2 s, like the first.
        assert!(matches!(next, PoolError::Connect { .. }), "{next}");
        answer.notify_one();
    }

    /// A Redis that refuses connections is dialled once, not on every probe, until the wait is
    /// over; the probes in between fail at once with the same error.
    #[tokio::test]
    async fn a_failed_dial_is_not_repeated_before_its_wait() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let conn = Pool::new().get(&RedisTarget::new(
            format!("redis://:pw@127.0.0.1:{port}/0"),
            None,
        ));
        let pipe = redis::pipe();
        let first = conn.query(&pipe).await.unwrap_err();
        assert!(matches!(first, PoolError::Connect { .. }), "{first}");
        for _ in 0..5 {
            assert_eq!(conn.query(&pipe).await.unwrap_err(), first);
        }
        assert_eq!(conn.dials(), 1, "probes during the wait do not dial");
        // After the wait (1 s for a first failure) it dials again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.dials() < 2 {
            assert!(Instant::now() < deadline, "no second dial within 5 s");
            let _ = conn.query(&pipe).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(conn.dials(), 2);
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("redis://:s3cret@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact("rediss://default:p@ss@h:1"),
            "rediss://default:***@h:1"
        );
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact("s3cret"), "***");
        let t = RedisTarget::new("redis://:hunter2@x:1/0", None);
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(scrub("auth hunter2 failed", &t), "auth *** failed");
    }
}
