//! Queue probes: which Redis keys hold a framework's jobs, the commands that count them and
//! how their replies add up to a depth. Building commands and reading replies is pure; the
//! round trip is the pool's (so many Workers share one pipelined round trip).
//!
//! Key layouts, checked against each framework's source (see docs/autoscaling.md):
//! - BullMQ 5.x (`bull:<name>:` prefix): `wait` list + `prioritized` zset + `delayed` zset
//!   entries whose time has come (score = timestamp_ms * 0x1000 + counter, getDelayedScore.lua);
//!   in flight: the `active` list.
//! - Celery 5.x / kombu 5.x Redis transport: the list `<name>` plus its priority lists
//!   `<name>\x06\x16<p>` (`_q_for_pri`, default steps 0,3,6,9; 1..9 all counted).
//! - Sidekiq 7.x: the list `queue:<name>`.
//! - RQ 1.x/2.x: the list `rq:queue:<name>`; in flight: the StartedJobRegistry zset
//!   `rq:wip:<name>`; scheduled jobs due: the zset `rq:scheduled:<name>` (score = epoch seconds).
//! - stream: `XINFO GROUPS` lag of the consumer group (in flight: its pending entries).

use redis::{Pipeline, Value};

use crate::api::worker::{QueueSpec, QueueType};

/// kombu's priority separator (`Channel.sep`).
pub const CELERY_PRIORITY_SEP: &str = "\x06\x16";
/// BullMQ's default key prefix.
pub const BULLMQ_PREFIX: &str = "bull";
/// The BullMQ keys (after the prefix) a depth is read from.
const BULLMQ_KEYS: [&str; 4] = ["wait", "prioritized", "delayed", "active"];

/// How to count one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProbe {
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    List { key: String },
    Bullmq { prefix: String },
    Celery { key: String },
    Rq { key: String, name: String },
    Stream { key: String, group: String },
}

/// One part of a depth, for `berth queue depth` and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// What was counted, e.g. `wait`, `delayed (due)`, `active`.
    pub what: String,
    /// The Redis key it came from.
    pub key: String,
    pub count: i64,
    /// Counted as in flight (jobs being worked on), not waiting.
    pub in_flight: bool,
}

/// A measured queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    pub parts: Vec<Part>,
}

impl Depth {
    /// Jobs waiting to be picked up.
    pub fn waiting(&self) -> i64 {
        self.parts
            .iter()
            .filter(|p| !p.in_flight)
            .map(|p| p.count)
            .sum()
    }
    /// Jobs being worked on now.
    pub fn in_flight(&self) -> i64 {
        self.parts
            .iter()
            .filter(|p| p.in_flight)
            .map(|p| p.count)
            .sum()
    }
    /// What scaling uses: waiting plus in flight, so replicas still working are not removed.
    pub fn total(&self) -> i64 {
        self.waiting() + self.in_flight()
    }
}

/// Why a queue could not be measured. Never contains a URL or password.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("queue type stream needs queue.consumerGroup")]
    MissingGroup,
    #[error("Redis refused to read {key}: {message} (is it the key the framework writes? see docs/autoscaling.md)")]
    Command { key: String, message: String },
    #[error("unexpected reply for {key}: {got}")]
    Reply { key: String, got: String },
    #[error("Redis did not answer: {0}")]
    Unreachable(String),
}

impl ProbeError {
    /// CamelCase reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::MissingGroup => "InvalidQueue",
            ProbeError::Command { .. } | ProbeError::Reply { .. } => "QueueReadFailed",
            ProbeError::Unreachable(_) => "RedisUnreachable",
        }
    }
}

impl QueueProbe {
    /// The probe of a Worker's `queue`.
    pub fn new(q: &QueueSpec) -> Result<QueueProbe, ProbeError> {
        let key = q.key.as_deref().filter(|k| !k.is_empty());
        let name = q.name.clone();
        let kind = match q.queue_type {
            QueueType::List => Kind::List {
                key: key.map_or(name, str::to_string),
            },
            QueueType::Sidekiq => Kind::List {
                key: key.map_or_else(|| format!("queue:{name}"), str::to_string),
            },
            QueueType::Celery => Kind::Celery {
                key: key.map_or(name, str::to_string),
            },
            QueueType::Bullmq => Kind::Bullmq {
                prefix: key.map_or_else(|| format!("{BULLMQ_PREFIX}:{name}"), str::to_string),
            },
            QueueType::Rq => Kind::Rq {
                key: key.map_or_else(|| format!("rq:queue:{name}"), str::to_string),
                name,
            },
            QueueType::Stream => Kind::Stream {
                key: key.map_or(name, str::to_string),
                group: q
                    .consumer_group
                    .clone()
                    .filter(|g| !g.is_empty())
                    .ok_or(ProbeError::MissingGroup)?,
            },
        };
        Ok(QueueProbe { kind })
    }

    /// The probe of a queue given on the command line.
    pub fn from_parts(
        queue_type: QueueType,
        name: &str,
        key: Option<&str>,
        consumer_group: Option<&str>,
    ) -> Result<QueueProbe, ProbeError> {
        QueueProbe::new(&QueueSpec {
            queue_type,
            name: name.to_string(),
            key: key.map(str::to_string),
            consumer_group: consumer_group.map(str::to_string),
            redis: None,
        })
    }

    /// Commands this probe adds to a pipeline.
    pub fn command_count(&self) -> usize {
        match &self.kind {
            Kind::List { .. } => 1,
            Kind::Bullmq { .. } => 4,
            Kind::Celery { .. } => 10,
            Kind::Rq { .. } => 3,
            Kind::Stream { .. } => 2,
        }
    }

    /// Appends this probe's read-only commands to `pipe`. `now_ms`: Unix time in milliseconds,
    /// which decides the delayed/scheduled jobs that are due.
    pub fn add_commands(&self, pipe: &mut Pipeline, now_ms: u64) {
        match &self.kind {
            Kind::List { key } => {
                pipe.llen(key);
            }
            Kind::Bullmq { prefix } => {
                pipe.llen(format!("{prefix}:wait"));
                pipe.zcard(format!("{prefix}:prioritized"));
                // Scores are timestamp * 0x1000 + a 12-bit counter: every job due by now.
                let due = now_ms.saturating_mul(0x1000).saturating_add(0xfff);
                pipe.zcount(format!("{prefix}:delayed"), "-inf", due);
                pipe.llen(format!("{prefix}:active"));
            }
            Kind::Celery { key } => {
                pipe.llen(key);
                for p in 1..=9 {
                    pipe.llen(format!("{key}{CELERY_PRIORITY_SEP}{p}"));
                }
            }
            Kind::Rq { key, name } => {
                pipe.llen(key);
                pipe.zcount(format!("rq:scheduled:{name}"), "-inf", now_ms / 1000);
                pipe.zcard(format!("rq:wip:{name}"));
            }
            Kind::Stream { key, .. } => {
                pipe.cmd("XINFO").arg("GROUPS").arg(key);
                pipe.cmd("XLEN").arg(key);
            }
        }
    }

    /// The Redis keys this probe reads (what keyspace notifications subscribe to).
    pub fn keys(&self) -> Vec<String> {
        match &self.kind {
            Kind::List { key } | Kind::Stream { key, .. } => vec![key.clone()],
            Kind::Bullmq { prefix } => BULLMQ_KEYS
                .iter()
                .map(|s| format!("{prefix}:{s}"))
                .collect(),
            Kind::Celery { key } => std::iter::once(key.clone())
                .chain((1..=9).map(|p| format!("{key}{CELERY_PRIORITY_SEP}{p}")))
                .collect(),
            Kind::Rq { key, name } => vec![
                key.clone(),
                format!("rq:scheduled:{name}"),
                format!("rq:wip:{name}"),
            ],
        }
    }

    /// Whether `key` is one of [`QueueProbe::keys`] (without allocating: called for every
    /// notification).
    pub fn watches(&self, key: &str) -> bool {
        match &self.kind {
            Kind::List { key: k } | Kind::Stream { key: k, .. } => k == key,
            Kind::Bullmq { prefix } => key
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|s| BULLMQ_KEYS.contains(&s)),
            Kind::Celery { key: k } => {
                k == key
                    || key
                        .strip_prefix(k.as_str())
                        .and_then(|rest| rest.strip_prefix(CELERY_PRIORITY_SEP))
                        .is_some_and(|p| matches!(p.as_bytes(), [b'1'..=b'9']))
            }
            Kind::Rq { key: k, name } => {
                k == key
                    || key.strip_prefix("rq:scheduled:") == Some(name.as_str())
                    || key.strip_prefix("rq:wip:") == Some(name.as_str())
            }
        }
    }

    /// Reads this probe's replies (exactly `command_count()` of them, in order).
    pub fn parse(&self, replies: &[Value]) -> Result<Depth, ProbeError> {
        let mut parts = Vec::new();
        let mut push = |what: &str, key: String, count: i64, in_flight: bool| {
            parts.push(Part {
                what: what.to_string(),
                key,
                count,
                in_flight,
            })
        };
        match &self.kind {
            Kind::List { key } => push("list", key.clone(), int(&replies[0], key)?, false),
            Kind::Bullmq { prefix } => {
                for (i, (what, suffix, in_flight)) in [
                    ("wait", "wait", false),
                    ("prioritized", "prioritized", false),
                    ("delayed (due)", "delayed", false),
                    ("active", "active", true),
                ]
                .into_iter()
                .enumerate()
                {
                    let key = format!("{prefix}:{suffix}");
                    let n = int(&replies[i], &key)?;
                    push(what, key, n, in_flight);
                }
            }
            Kind::Celery { key } => {
                push("priority 0", key.clone(), int(&replies[0], key)?, false);
                for (p, reply) in replies.iter().enumerate().take(10).skip(1) {
                    let k = format!("{key}{CELERY_PRIORITY_SEP}{p}");
                    let n = int(reply, &k)?;
                    if n > 0 {
                        push(&format!("priority {p}"), printable(&k), n, false);
                    }
                }
            }
            Kind::Rq { key, name } => {
                push("queued", key.clone(), int(&replies[0], key)?, false);
                let scheduled = format!("rq:scheduled:{name}");
                push(
                    "scheduled (due)",
                    scheduled.clone(),
                    int(&replies[1], &scheduled)?,
                    false,
                );
                let wip = format!("rq:wip:{name}");
                push("started", wip.clone(), int(&replies[2], &wip)?, true);
            }
            Kind::Stream { key, group } => {
                let len = int(&replies[1], key)?;
                match &replies[0] {
                    // No stream yet: nothing to do.
                    Value::ServerError(e) if e.details().unwrap_or("").contains("no such key") => {
                        push("lag", key.clone(), 0, false);
                    }
                    Value::ServerError(e) => {
                        return Err(ProbeError::Command {
                            key: key.clone(),
                            message: e.to_string(),
                        })
                    }
                    Value::Array(groups) => {
                        let found = groups
                            .iter()
                            .map(fields)
                            .find(|f| field_str(f, "name").as_deref() == Some(group.as_str()));
                        match found {
                            // No group yet: no consumer ever ran, so every entry is waiting.
                            None => push("entries (no group yet)", key.clone(), len, false),
                            Some(f) => {
                                // lag is nil when Redis cannot compute it (entries deleted):
                                // count the whole stream rather than under-count.
                                let lag = field_int(&f, "lag").unwrap_or(len);
                                push("lag", key.clone(), lag, false);
                                let pending = field_int(&f, "pending").unwrap_or(0);
                                push("pending", key.clone(), pending, true);
                            }
                        }
                    }
                    other => {
                        return Err(ProbeError::Reply {
                            key: key.clone(),
                            got: format!("{other:?}"),
                        })
                    }
                }
            }
        }
        Ok(Depth { parts })
    }
}

/// Keys with control characters (Celery's separator) shown escaped.
fn printable(k: &str) -> String {
    k.escape_default().to_string()
}

fn int(v: &Value, key: &str) -> Result<i64, ProbeError> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::ServerError(e) => Err(ProbeError::Command {
            key: printable(key),
            message: e.to_string(),
        }),
        other => Err(ProbeError::Reply {
            key: printable(key),
            got: format!("{other:?}"),
        }),
    }
}

/// A group entry of XINFO GROUPS: a map (RESP3) or a flat key/value array (RESP2).
fn fields(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| text(k).map(|k| (k, v.clone())))
            .collect(),
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => text(k).map(|k| (k, v.clone())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn field_str(f: &[(String, Value)], name: &str) -> Option<String> {
    f.iter().find(|(k, _)| k == name).and_then(|(_, v)| text(v))
}

fn field_int(f: &[(String, Value)], name: &str) -> Option<i64> {
    f.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| match v {
            Value::Int(n) => Some(*n),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_mapping() {
        let p = |t, key: Option<&str>| QueueProbe::from_parts(t, "jobs", key, Some("g")).unwrap();
        assert_eq!(
            p(QueueType::Sidekiq, None).kind,
            Kind::List {
                key: "queue:jobs".into()
            }
        );
        assert_eq!(
            p(QueueType::Bullmq, None).kind,
            Kind::Bullmq {
                prefix: "bull:jobs".into()
            }
        );
        assert_eq!(
            p(QueueType::Bullmq, Some("app:jobs")).kind,
            Kind::Bullmq {
                prefix: "app:jobs".into()
            }
        );
        assert_eq!(
            p(QueueType::Rq, None).kind,
            Kind::Rq {
                key: "rq:queue:jobs".into(),
                name: "jobs".into()
            }
        );
        assert_eq!(
            QueueProbe::from_parts(QueueType::Stream, "s", None, None),
            Err(ProbeError::MissingGroup)
        );
    }

    #[test]
    fn watched_keys_are_the_keys() {
        for (t, key) in [
            (QueueType::List, None),
            (QueueType::Bullmq, None),
            (QueueType::Bullmq, Some("app:jobs")),
            (QueueType::Celery, None),
            (QueueType::Rq, None),
            (QueueType::Stream, None),
            (QueueType::Sidekiq, None),
        ] {
            let p = QueueProbe::from_parts(t, "jobs", key, Some("g")).unwrap();
            for k in p.keys() {
                assert!(p.watches(&k), "{t:?} watches {k:?}");
            }
            for other in [
                "jobs:x",
                "bull:jobs:meta",
                "rq:wip:jobs2",
                "jobs\x06\x160",
                "other",
            ] {
                assert_eq!(
                    p.watches(other),
                    p.keys().iter().any(|k| k == other),
                    "{t:?} {other:?}"
                );
            }
        }
    }

    #[test]
    fn resp2_and_resp3_groups_read_alike() {
        let probe = QueueProbe::from_parts(QueueType::Stream, "s", None, Some("g")).unwrap();
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("pending"),
            Value::Int(2),
            bulk("lag"),
            Value::Int(5),
        ])]);
        let resp3 = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("g")),
            (bulk("pending"), Value::Int(2)),
            (bulk("lag"), Value::Nil),
        ])]);
        let d2 = probe.parse(&[resp2, Value::Int(9)]).unwrap();
        assert_eq!((d2.waiting(), d2.in_flight()), (5, 2));
        let d3 = probe.parse(&[resp3, Value::Int(9)]).unwrap();
        assert_eq!(
            (d3.waiting(), d3.in_flight()),
            (9, 2),
            "nil lag counts the stream"
        );
    }
}
