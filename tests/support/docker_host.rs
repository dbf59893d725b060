//! Helpers for tests of the Docker host backend against the real engine: a berth host instance
//! of the test's own (unique instance label, stack names, proxy port on 127.0.0.1, temp state
//! and manifest folders), an HTTP client for the proxy, polling with deadlines, and cleanup of
//! everything the instance made (containers, networks, volumes) on drop.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use berth::docker::run::{Host, HostOptions};
use berth::docker::state::StateDir;
use berth::docker::status::{self, ObjectStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "demo_images.rs"]
pub mod demo_images;

/// A test's own berth host: instance `<prefix>-<unique>`.
pub struct TestHost {
    pub instance: String,
    pub manifests: tempfile::TempDir,
    pub state: tempfile::TempDir,
    pub http: String,
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{:x}{:x}", std::process::id() % 4096, nanos % 65536)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

impl TestHost {
    pub fn new(prefix: &str) -> TestHost {
        demo_images::ensure_built();
        TestHost {
            instance: unique(prefix),
            manifests: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            http: format!("127.0.0.1:{}", free_port()),
        }
    }

    pub fn options(&self) -> HostOptions {
        HostOptions {
            manifests: self.manifests.path().to_path_buf(),
            state_dir: self.state.path().to_path_buf(),
            instance: self.instance.clone(),
            http: self.http.clone(),
            https: None,
            proxy_image: demo_images::NGINX.into(),
            allow_empty: false,
        }
    }

    pub async fn host(&self) -> Host {
        Host::new(self.options())
            .await
            .expect("cannot open the host")
    }

    /// Writes (or replaces) a manifest file.
    pub fn write(&self, file: &str, yaml: &str) {
        std::fs::write(self.manifests.path().join(file), yaml).unwrap();
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.manifests.path().join(file)).unwrap();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }

    pub fn statuses(&self) -> Vec<ObjectStatus> {
        status::read_all(&StateDir::open(self.state.path()).unwrap())
    }

    pub fn status(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        self.statuses()
            .into_iter()
            .find(|s| s.kind == kind && s.name == name)
            .map(|s| s.status)
    }

    pub fn phase(&self, name: &str) -> Option<String> {
        self.status("AppStack", name)
            .and_then(|s| s["phase"].as_str().map(str::to_string))
    }

    /// `docker ps` of this instance: (name, image, state/status, labels as `k=v,...`).
    pub fn containers(&self) -> Vec<Container> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=berth.dev/instance={}", self.instance),
            "--format",
            "{{.Names}}\t{{.Image}}\t{{.State}}\t{{.Status}}\t{{.ID}}",
        ]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() == 5).then(|| Container {
                    name: f[0].into(),
                    image: f[1].into(),
                    state: f[2].into(),
                    status: f[3].into(),
                    id: f[4].into(),
                })
            })
            .collect()
    }

    /// The containers whose name starts with `prefix-` (a replica group).
    pub fn group(&self, prefix: &str) -> Vec<Container> {
        let mut g: Vec<Container> = self
            .containers()
            .into_iter()
            .filter(|c| {
                c.name
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            })
            .collect();
        g.sort_by(|a, b| a.name.cmp(&b.name));
        g
    }

    pub fn networks(&self) -> Vec<String> {
        docker(&[
            "network",
            "ls",
            "--filter",
            &format!("label=berth.dev/instance={}", self.instance),
            "--format",
            "{{.Name}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    pub fn volumes(&self) -> Vec<String> {
        docker(&[
            "volume",
            "ls",
            "--filter",
            &format!("label=berth.dev/instance={}", self.instance),
            "--format",
            "{{.Name}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// GET `path` through the proxy with `Host: domain`: (status code, body).
    pub async fn get(&self, domain: &str, path: &str) -> Result<(u16, String), String> {
        http_get(&self.http, domain, path).await
    }
}

/// A container as `docker ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub state: String,
    pub status: String,
    pub id: String,
}

impl Container {
    pub fn healthy(&self) -> bool {
        self.state == "running"
            && !self.status.contains("unhealthy")
            && !self.status.contains("starting")
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let filter = format!("label=berth.dev/instance={}", self.instance);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            docker(&args);
        }
        for n in self.networks() {
            docker(&["network", "rm", &n]);
        }
        for v in self.volumes() {
            docker(&["volume", "rm", "-f", &v]);
        }
    }
}

/// Runs the docker CLI; its stdout (panics when docker cannot run at all).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("cannot run `docker`: install docker.io");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`docker`] but panics with stderr when the command fails.
pub fn docker_ok(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("cannot run `docker`: install docker.io");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET over a fresh connection (`Connection: close`).
pub async fn http_get(addr: &str, host: &str, path: &str) -> Result<(u16, String), String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|b| b.1.to_string())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A stack manifest for tests: api (health checked every second) with `replicas`, optionally
/// PostgreSQL and Redis, exposed at `<name>.test`.
pub fn stack_yaml(name: &str, api_image: &str, replicas: u32, with_data: bool) -> String {
    let data = if with_data {
        format!(
            "  postgres: {{image: {}}}\n  redis: {{image: {}}}\n",
            demo_images::POSTGRES,
            demo_images::REDIS
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: berth.dev/v1alpha1
kind: AppStack
metadata: {{name: {name}}}
spec:
  domain: {name}.test
  api:
    image: {api_image}
    port: 8080
    replicas: {replicas}
    healthCheck: {{path: /health, intervalSeconds: 1, timeoutSeconds: 1, failureThreshold: 2, startPeriodSeconds: 0}}
    routes:
      - {{path: /, rateLimit: {{requestsPerSecond: 1000, burst: 1000}}}}
{data}"
    )
}

/// A `berth host run` process, killed when dropped (also when a test fails).
pub struct Berth(pub std::process::Child);

impl Berth {
    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `berth host run` of this crate's binary for a test host.
pub fn spawn_berth(t: &TestHost) -> Berth {
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "host",
            "run",
            "--manifests",
            t.manifests.path().to_str().unwrap(),
            "--state-dir",
            t.state.path().to_str().unwrap(),
            "--instance",
            &t.instance,
            "--http-port",
            &t.http,
            "--proxy-image",
            demo_images::NGINX,
        ])
        .env("RUST_LOG", "berth=info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cannot start berth");
    Berth(child)
}
