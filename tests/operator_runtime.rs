//! `berth operator` as a process: serves /healthz (liveness) and /metrics on --http-addr and a
//! false /readyz while the API server is unreachable, logs JSON with --log-format json, waits
//! for the Lease without reconciling, and exits 0 on SIGTERM within the shutdown timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
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

#[test]
fn serves_health_and_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // An API server that refuses connections: the operator must stay up, unready to lead.
    let dead = free_port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{dead}'}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "operator",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
            "--identity",
            "test-pod",
            "--retry-period-seconds",
            "1",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_NAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        if let Some(r) = get(port, "/healthz") {
            break r;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("berth operator exited early ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "no /healthz within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health, (200, "ok".to_string()));
    // Liveness only says the process serves; readiness needs the API server and the CRDs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, body) = loop {
        let r = get(port, "/readyz").unwrap();
        if r.1 != "checking the CRDs" {
            break r;
        }
        assert!(Instant::now() < deadline, "the CRD check never finished");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("API server"), "{body}");
    let (code, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("berth_leader 0"), "{metrics}");
    assert!(
        metrics.contains("berth_appstack_reconciles_total 0"),
        "{metrics}"
    );
    // The binary's counting allocator: live heap and its peak, both above 0, live <= peak.
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (live, peak) = (
        gauge("berth_heap_live_bytes"),
        gauge("berth_heap_peak_bytes"),
    );
    assert!(live > 0 && live <= peak, "live {live} peak {peak}");

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The default bound is 10 s.
    let deadline = Instant::now() + Duration::from_secs(11);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 11 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(!lines.is_empty(), "logs on stdout");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("waiting to lead")),
        "{lines:?}"
    );
}

/// The settings the binary gives jemalloc (main.rs `MALLOC_CONF`) are the ones it runs with:
/// one arena, no per-thread caches, freed pages handed back after about a second. jemalloc
/// prints its options at exit when asked to in the environment.
#[cfg(feature = "jemalloc")]
#[test]
fn the_allocator_runs_with_one_arena_no_thread_caches_and_a_short_decay() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--version")
        .env(
            "_RJEM_MALLOC_CONF",
            "stats_print:true,stats_print_opts:mdablxe",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.narenas: 1\n",
        "opt.tcache: false\n",
        "opt.dirty_decay_ms: 1000 ",
    ] {
        assert!(
            stats.contains(option),
            "jemalloc does not run with `{}`:\n{stats}",
            option.trim()
        );
    }
}
