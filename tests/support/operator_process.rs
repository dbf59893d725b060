//! `berth operator` (the real binary) as a child process for tests/e2e_operator.rs: its JSON
//! log lines collected, its HTTP port asked, signals sent; killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{wait_for, wait_for_within};

pub const LEASE: &str = "berth-e2e-operator";
/// The operator's default --shutdown-timeout-seconds.
pub const BOUND: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `berth operator` whose JSON log lines are collected; killed when dropped.
pub struct Operator {
    pub child: Child,
    pub port: u16,
    pub lines: Arc<Mutex<Vec<Value>>>,
    pub name: String,
}

impl Operator {
    pub fn start(kubeconfig: &str, ns: &str, identity: &str, extra: &[&str]) -> Operator {
        let port = free_port();
        let mut args = vec![
            "operator".to_string(),
            "--http-addr".into(),
            format!("127.0.0.1:{port}"),
            "--log-format".into(),
            "json".into(),
            "--identity".into(),
            identity.into(),
            "--namespace".into(),
            ns.into(),
            "--leader-election-namespace".into(),
            ns.into(),
            "--leader-election-id".into(),
            LEASE.into(),
            "--retry-period-seconds".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,berth::fence=debug")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("BERTH_NAMESPACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("berth operator starts");
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        let who = identity.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"message": line, "unparsed": true}));
                eprintln!("[{who}] {line}");
                sink.lock().unwrap().push(v);
            }
        });
        Operator {
            child,
            port,
            lines,
            name: identity.into(),
        }
    }

    pub fn message_count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    pub fn logged(&self, pred: impl Fn(&Value) -> bool) -> bool {
        self.message_count(pred) > 0
    }

    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    pub async fn wait_log(&mut self, what: &str, pred: impl Fn(&Value) -> bool) {
        let name = self.name.clone();
        wait_for(&format!("{name}: log line {what}"), || {
            let seen = self.logged(&pred);
            if !seen {
                if let Ok(Some(s)) = self.child.try_wait() {
                    panic!("{name} exited ({s}) before logging {what}");
                }
            }
            async move { seen.then_some(()) }
        })
        .await
    }

    /// GET on the operator's HTTP port: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let port = self.port;
        let path = path.to_string();
        tokio::task::spawn_blocking(move || http_get(port, &path))
            .await
            .ok()
            .flatten()
    }

    pub async fn wait_ready(&self, want: u16) -> String {
        wait_for(&format!("{}: /readyz {want}", self.name), || async {
            let (code, body) = self.get("/readyz").await?;
            (code == want).then_some(body)
        })
        .await
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.name);
    }

    /// Waits (up to `limit`) for the process to exit: its status and how long it took.
    pub async fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let name = self.name.clone();
        let status = wait_for_within(limit, &format!("{name} to exit"), || {
            let s = self.child.try_wait().unwrap();
            async move { s }
        })
        .await;
        (status, start.elapsed())
    }

    /// SIGTERM: must exit 0 within the bound. Returns how long it took.
    pub async fn terminate(&mut self) -> Duration {
        self.signal("-TERM");
        // The polling of wait_for adds up to 250 ms to the measured time.
        let (status, took) = self.wait_exit(BOUND + Duration::from_secs(1)).await;
        assert!(status.success(), "{} exited with {status}", self.name);
        println!("{}: exited 0 {took:?} after SIGTERM", self.name);
        took
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((code, body))
}

pub fn message(l: &Value) -> &str {
    l["message"].as_str().unwrap_or_default()
}
