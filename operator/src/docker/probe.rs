//! Health checks run by berth itself, as Kamal's proxy does: an HTTP GET or a TCP connect from
//! the host process to the container's address on the stack's own Docker network. Images need
//! no wget, curl or nc, and the rolling update is gated on what berth saw, not on Docker's
//! HEALTHCHECK (kept only for `exec` checks, which run a command inside the container anyway).
//!
//! `exec` checks (PostgreSQL's `pg_isready`, Redis' `redis-cli ping`) stay Docker's, whose first
//! check comes one interval (10 s) after the start. While Docker still says `health: starting`,
//! berth runs the same command itself with `docker exec` every [`EXEC_STARTING_EVERY`]: the
//! replica is Ready from the first success, so what waits for it starts seconds earlier.
//!
//! [`ProbeState`] is the pure rule (start period, failure threshold); [`Prober`] keeps one
//! background task per running container and wakes the host's loop when a verdict changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::plan::{Health as Timing, HealthCheckKind};

use super::converge::Health;
use super::engine::Engine;

/// How often a replica that has never passed is checked (it is usually ready in a second).
const STARTING_EVERY: Duration = Duration::from_millis(250);
/// The same for `exec` checks run by berth while Docker's health is still starting.
pub const EXEC_STARTING_EVERY: Duration = Duration::from_millis(500);

/// The verdict on one replica from its checks so far.
#[derive(Clone, Debug)]
pub struct ProbeState {
    started: Instant,
    passed_once: bool,
    failures: i32,
    pub health: Health,
}

impl ProbeState {
    pub fn new(now: Instant) -> ProbeState {
        ProbeState {
            started: now,
            passed_once: false,
            failures: 0,
            health: Health::Starting,
        }
    }

    /// Records one check; true when the verdict changed. A replica is Ready from its first
    /// success, Unhealthy after `failureThreshold` failures in a row; before its first success
    /// failures count only once the start period and one interval are over (Docker's first
    /// check comes after one interval too).
    pub fn record(&mut self, ok: bool, now: Instant, t: &Timing) -> bool {
        let before = self.health;
        if ok {
            self.passed_once = true;
            self.failures = 0;
            self.health = Health::Ready;
        } else {
            let grace = secs(t.start_period_seconds) + secs(t.interval_seconds.max(1));
            if self.passed_once || now.duration_since(self.started) >= grace {
                self.failures += 1;
                if self.failures >= t.failure_threshold.max(1) {
                    self.health = Health::Unhealthy;
                }
            }
        }
        self.health != before
    }

    /// When the next check is due after one.
    pub fn every(&self, t: &Timing) -> Duration {
        let interval = secs(t.interval_seconds.max(1));
        let starting = match t.check {
            HealthCheckKind::Exec { .. } => EXEC_STARTING_EVERY,
            _ => STARTING_EVERY,
        };
        if self.passed_once {
            interval
        } else {
            interval.min(starting)
        }
    }
}

fn secs(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s.max(0)).unwrap_or(0))
}

/// A running container to check.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: String,
    pub name: String,
    /// Its IPv4 address on one of the stack's networks.
    pub ip: String,
    pub check: HealthCheckKind,
    pub timing: Timing,
}

/// The check kinds berth runs itself.
pub fn probed_by_berth(check: &HealthCheckKind) -> bool {
    matches!(
        check,
        HealthCheckKind::Http { .. } | HealthCheckKind::Tcp { .. }
    )
}

/// `exec` checks are run by berth only while Docker's own health is still starting.
pub fn exec_while_starting(check: &HealthCheckKind) -> bool {
    matches!(check, HealthCheckKind::Exec { .. })
}

/// One check of a target: HTTP and TCP from here, `exec` through the engine.
async fn check_target(t: &Target, engine: Option<&Engine>) -> bool {
    let timeout = secs(t.timing.timeout_seconds.max(1));
    match (&t.check, engine) {
        (HealthCheckKind::Exec { command }, Some(engine)) => {
            let cmd: Vec<&str> = command.iter().map(String::as_str).collect();
            let run = engine.exec(&t.name, &cmd);
            matches!(tokio::time::timeout(timeout, run).await, Ok(Ok((0, _))))
        }
        (kind, _) => check(&t.ip, kind, timeout).await,
    }
}

/// One check: true when it passed within the timeout.
pub async fn check(ip: &str, kind: &HealthCheckKind, timeout: Duration) -> bool {
    let run = async {
        match kind {
            HealthCheckKind::Tcp { port } => TcpStream::connect((ip, *port as u16)).await.is_ok(),
            HealthCheckKind::Http { path, port } => {
                http_ok(ip, *port as u16, path).await.unwrap_or(false)
            }
            HealthCheckKind::Exec { .. } => false,
        }
    };
    tokio::time::timeout(timeout, run).await.unwrap_or(false)
}

/// A GET answered 2xx or 3xx.
async fn http_ok(ip: &str, port: u16, path: &str) -> std::io::Result<bool> {
    let mut s = TcpStream::connect((ip, port)).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: berth-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    Ok(matches!(code, Some(200..=399)))
}

struct Entry {
    state: Arc<Mutex<ProbeState>>,
    task: tokio::task::JoinHandle<()>,
}

/// The background checks of every running container that has an HTTP or TCP check, and of
/// starting containers with an `exec` check.
pub struct Prober {
    entries: Mutex<HashMap<String, Entry>>,
    wake: mpsc::UnboundedSender<()>,
    /// Runs `exec` checks; without it they never pass (Docker's verdict stands alone).
    engine: Option<Engine>,
}

impl Prober {
    /// `wake` is told when a verdict changes.
    pub fn new(wake: mpsc::UnboundedSender<()>, engine: Option<Engine>) -> Prober {
        Prober {
            entries: Mutex::default(),
            wake,
            engine,
        }
    }

    /// Checks exactly `targets` from now on, and returns the verdict on each. A container seen
    /// for the first time is checked once right away, so one that already serves (berth
    /// restarted) is Ready at once and keeps its place in the proxy (`exec` targets are
    /// starting anyway: their first check comes after [`EXEC_STARTING_EVERY`]).
    pub async fn sync(&self, targets: Vec<Target>) -> HashMap<String, Health> {
        let fresh: Vec<Target> = {
            let Ok(mut entries) = self.entries.lock() else {
                return HashMap::new();
            };
            entries.retain(|id, e| {
                let keep = targets.iter().any(|t| &t.id == id);
                if !keep {
                    e.task.abort();
                }
                keep
            });
            targets
                .iter()
                .filter(|t| !entries.contains_key(&t.id))
                .cloned()
                .collect()
        };
        let engine = self.engine.as_ref();
        let first = futures::future::join_all(fresh.iter().map(|t| async move {
            let mut state = ProbeState::new(Instant::now());
            if !exec_while_starting(&t.check) {
                let ok = check_target(t, engine).await;
                state.record(ok, Instant::now(), &t.timing);
            }
            (t.clone(), state)
        }))
        .await;
        let Ok(mut entries) = self.entries.lock() else {
            return HashMap::new();
        };
        for (t, state) in first {
            debug!(container = %t.name, health = ?state.health, "checking health from berth");
            let state = Arc::new(Mutex::new(state));
            let task = tokio::spawn(watch(
                t.clone(),
                state.clone(),
                self.wake.clone(),
                self.engine.clone(),
            ));
            entries.insert(t.id.clone(), Entry { state, task });
        }
        entries
            .iter()
            .filter_map(|(id, e)| Some((id.clone(), e.state.lock().ok()?.health)))
            .collect()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Ok(entries) = self.entries.lock() {
            for e in entries.values() {
                e.task.abort();
            }
        }
    }
}

async fn watch(
    t: Target,
    state: Arc<Mutex<ProbeState>>,
    wake: mpsc::UnboundedSender<()>,
    engine: Option<Engine>,
) {
    loop {
        let every = match state.lock() {
            Ok(s) => s.every(&t.timing),
            Err(_) => return,
        };
        tokio::time::sleep(every).await;
        let ok = check_target(&t, engine.as_ref()).await;
        let changed = match state.lock() {
            Ok(mut s) => s.record(ok, Instant::now(), &t.timing).then_some(s.health),
            Err(_) => return,
        };
        if let Some(h) = changed {
            info!(container = %t.name, health = ?h, "health changed");
            if wake.send(()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(start: i32, threshold: i32) -> Timing {
        Timing {
            check: HealthCheckKind::Tcp { port: 1 },
            interval_seconds: 2,
            timeout_seconds: 1,
            failure_threshold: threshold,
            start_period_seconds: start,
        }
    }

    #[test]
    fn starting_failures_count_only_after_the_start_period() {
        let t0 = Instant::now();
        let t = timing(10, 2);
        let mut s = ProbeState::new(t0);
        for i in 0..5 {
            assert!(!s.record(false, t0 + Duration::from_secs(i), &t));
        }
        assert_eq!(s.health, Health::Starting);
        assert_eq!(s.every(&t), STARTING_EVERY);
        assert!(s.record(true, t0 + Duration::from_secs(6), &t));
        assert_eq!(s.health, Health::Ready);
        assert_eq!(s.every(&t), Duration::from_secs(2));
    }

    #[test]
    fn threshold_failures_in_a_row_make_it_unhealthy_and_a_success_heals() {
        let t0 = Instant::now();
        let t = timing(0, 3);
        let mut s = ProbeState::new(t0);
        s.record(true, t0, &t);
        assert!(!s.record(false, t0, &t));
        assert!(!s.record(false, t0, &t));
        assert!(!s.record(true, t0, &t), "a success resets the count");
        s.record(false, t0, &t);
        s.record(false, t0, &t);
        assert!(s.record(false, t0, &t));
        assert_eq!(s.health, Health::Unhealthy);
        assert!(s.record(true, t0, &t));
        // Never passed, start period over: failures count.
        let mut s = ProbeState::new(t0);
        let late = t0 + Duration::from_secs(3);
        s.record(false, late, &t);
        s.record(false, late, &t);
        s.record(false, late, &t);
        assert_eq!(s.health, Health::Unhealthy);
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if req.starts_with("GET /health ") {
                    200
                } else {
                    503
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let port = i32::from(port);
        let second = Duration::from_secs(1);
        let http = |path: &str| HealthCheckKind::Http {
            path: path.into(),
            port,
        };
        assert!(check("127.0.0.1", &http("/health"), second).await);
        assert!(!check("127.0.0.1", &http("/broken"), second).await);
        assert!(check("127.0.0.1", &HealthCheckKind::Tcp { port }, second).await);
        let closed = i32::from(crate::docker::probe::tests::closed_port());
        assert!(!check("127.0.0.1", &HealthCheckKind::Tcp { port: closed }, second).await);
    }

    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }
}
