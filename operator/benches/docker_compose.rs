//! berth's Docker host backend side by side with docker compose (Debian's `docker-compose`)
//! on an equivalent stack: PostgreSQL, Redis, the demo api (health checked every second,
//! started after the database and cache are healthy) and nginx in front, all from the
//! berth-demo images. Prints, for each: time to converge from empty, time to recover a killed
//! api container, and failed requests through the proxy during an image update under load;
//! then the ratios. Before them, where the converge time goes: a timeline of when each
//! component's container appeared and when it was ready (berth: its own status; compose: Docker's
//! health), polled every [`TIMELINE_EVERY`]. `make bench-docker`.

#[path = "../../tests/support/docker_host.rs"]
mod docker_host;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use docker_host::*;

const LIMIT: Duration = Duration::from_secs(180);
const LOAD_CONNECTIONS: usize = 6;
const RECOVER_LIMIT: Duration = Duration::from_secs(60);
const TIMELINE_EVERY: Duration = Duration::from_millis(200);

/// Per component: seconds from the start until its container was first seen, and until it was
/// first ready.
type Phases = BTreeMap<String, (Option<f64>, Option<f64>)>;

/// Polls `sample` (component, ready) every [`TIMELINE_EVERY`] on a thread until stopped.
struct Timeline {
    phases: Arc<Mutex<Phases>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Timeline {
    fn start(start: Instant, sample: impl Fn() -> Vec<(String, bool)> + Send + 'static) -> Self {
        let phases = Arc::new(Mutex::new(Phases::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (phases.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let now = start.elapsed().as_secs_f64();
                for (component, ready) in sample() {
                    let mut p = p.lock().unwrap();
                    let e = p.entry(component).or_default();
                    e.0.get_or_insert(now);
                    if ready {
                        e.1.get_or_insert(now);
                    }
                }
                std::thread::sleep(TIMELINE_EVERY);
            }
        });
        Timeline {
            phases,
            stop,
            thread,
        }
    }

    fn finish(self) -> Phases {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        let p = self.phases.lock().unwrap().clone();
        p
    }
}

/// `docker ps` names and statuses of the containers whose name contains `filter`.
fn ps(filter: &str) -> Vec<(String, String)> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={filter}"),
        "--format",
        "{{.Names}}\t{{.Status}}",
    ])
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect()
}

fn print_timeline(who: &str, phases: &Phases, served: Duration) {
    let at = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.1}s"));
    let mut parts: Vec<String> = phases
        .iter()
        .map(|(c, (seen, ready))| format!("{c} created {} ready {}", at(*seen), at(*ready)))
        .collect();
    parts.push(format!("served ok {:.1}s", served.as_secs_f64()));
    println!("{who:<15} timeline: {}", parts.join(" | "));
}

/// Time until `/health` answers 200 again, if within [`RECOVER_LIMIT`].
async fn recovery(addr: &str, domain: &str) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < RECOVER_LIMIT {
        if let Ok((200, _)) = http_get(addr, domain, "/health").await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[derive(Debug, Default)]
struct Figures {
    converge: Duration,
    /// `None`: not serving again within [`RECOVER_LIMIT`].
    recover: Option<Duration>,
    update_ok: usize,
    update_failed: usize,
    timeline: Phases,
}

async fn until_ok(addr: &str, domain: &str, path: &str) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = http_get(addr, domain, path).await {
            if path != "/" || body.contains("status: all ok") {
                return start.elapsed();
            }
        }
        assert!(start.elapsed() < LIMIT, "not serving after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Load on `/health` and `/slow?ms=100` while `update` runs and until `done` says so.
async fn under_load<F, Fut, D, DFut>(
    addr: &str,
    domain: &str,
    update: F,
    mut done: D,
) -> (usize, usize)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
    D: FnMut() -> DFut,
    DFut: std::future::Future<Output = bool>,
{
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..LOAD_CONNECTIONS {
        let (ok, failed, rx) = (ok.clone(), failed.clone(), rx.clone());
        let (addr, domain) = (addr.to_string(), domain.to_string());
        tasks.push(tokio::spawn(async move {
            while !*rx.borrow() {
                let path = if i % 2 == 0 {
                    "/slow?ms=100"
                } else {
                    "/health"
                };
                match http_get(&addr, &domain, path).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        if failed.fetch_add(1, Ordering::SeqCst) < 3 {
                            eprintln!(
                                "failed request: {:?}",
                                other.map(|(c, b)| (c, b.chars().take(80).collect::<String>()))
                            );
                        }
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    update().await;
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < LIMIT, "update did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the old replicas drain and stop while the load goes on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
}

/// The test stack without its rate limit: the compose side has none either.
fn berth_stack(name: &str, image: &str) -> String {
    stack_yaml(name, image, 1, true).replace(
        "    routes:\n      - {path: /, rateLimit: {requestsPerSecond: 1000, burst: 1000}}\n",
        "",
    )
}

async fn berth_figures() -> Figures {
    let t = TestHost::new("bb");
    let s = format!("{}s", t.instance);
    let domain = format!("{s}.test");
    let mut f = Figures::default();
    t.write("stack.yaml", &berth_stack(&s, demo_images::API));
    let start = Instant::now();
    let timeline = {
        let (state, s, instance) = (t.state.path().to_path_buf(), s.clone(), t.instance.clone());
        Timeline::start(start, move || {
            // Ready as berth decides it: its status, components[].readyReplicas.
            let status = berth::docker::state::StateDir::open(&state)
                .ok()
                .map(|d| berth::docker::status::read_all(&d))
                .unwrap_or_default()
                .into_iter()
                .find(|o| o.kind == "AppStack" && o.name == s)
                .map(|o| o.status);
            let ready = |component: &str| {
                status.as_ref().is_some_and(|st| {
                    st["components"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["name"] == component && c["readyReplicas"].as_i64() > Some(0)
                        })
                    })
                })
            };
            ps(&instance)
                .into_iter()
                .filter_map(|(name, _)| {
                    let component = if name.ends_with("-proxy") {
                        "proxy".to_string()
                    } else {
                        let rest = name.strip_prefix(&format!("{s}-"))?;
                        rest.rsplit_once('-')?.0.to_string()
                    };
                    let r = ready(&component);
                    Some((component, r))
                })
                .collect()
        })
    };
    let mut berth = spawn_berth(&t);
    f.converge = until_ok(&t.http, &domain, "/").await;
    f.timeline = timeline.finish();

    let api = t.group(&format!("{s}-api"))[0].name.clone();
    docker_ok(&["kill", &api]);
    f.recover = recovery(&t.http, &domain).await;
    // The update is measured from a converged stack.
    wait_for("Ready again", LIMIT, || async {
        (t.phase(&s)? == "Ready" && t.group(&format!("{s}-api")).iter().all(|c| c.healthy()))
            .then_some(())
    })
    .await;

    let (ok, failed) = under_load(
        &t.http,
        &domain,
        || async { t.write("stack.yaml", &berth_stack(&s, demo_images::API_V2)) },
        || async {
            let g = t.group(&format!("{s}-api"));
            g.len() == 1 && g[0].image == demo_images::API_V2 && g[0].healthy()
        },
    )
    .await;
    f.update_ok = ok;
    f.update_failed = failed;
    berth.kill();
    f
}

fn compose_file(api_image: &str, port: u16) -> String {
    format!(
        r#"version: "3.8"
services:
  postgres:
    image: {pg}
    environment: {{POSTGRES_USER: app, POSTGRES_PASSWORD: benchpw, POSTGRES_DB: app}}
    volumes: [pgdata:/var/lib/postgresql/data]
    restart: unless-stopped
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -q -h 127.0.0.1 -U app -d app"]
      interval: 10s
      timeout: 5s
      retries: 6
      start_period: 30s
  redis:
    image: {redis}
    command: ["redis-server", "--requirepass", "benchpw"]
    restart: unless-stopped
    healthcheck:
      test: ["CMD-SHELL", "redis-cli -a benchpw --no-auth-warning ping | grep -q PONG"]
      interval: 10s
      timeout: 5s
      retries: 3
      start_period: 5s
  api:
    image: {api_image}
    environment:
      DATABASE_URL: postgres://app:benchpw@postgres:5432/app
      REDIS_URL: redis://default:benchpw@redis:6379/0
    restart: unless-stopped
    depends_on:
      postgres: {{condition: service_healthy}}
      redis: {{condition: service_healthy}}
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/health"]
      interval: 1s
      timeout: 1s
      retries: 2
  proxy:
    image: {nginx}
    ports: ["127.0.0.1:{port}:80"]
    volumes: ["./nginx.conf:/etc/nginx/conf.d/default.conf:ro"]
    restart: unless-stopped
    depends_on: [api]
volumes:
  pgdata: {{}}
"#,
        pg = demo_images::POSTGRES,
        redis = demo_images::REDIS,
        nginx = demo_images::NGINX,
    )
}

const NGINX_CONF: &str = "server {
    listen 80;
    location / {
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_pass http://api:8080;
    }
}
";

fn compose(dir: &std::path::Path, project: &str, args: &[&str]) {
    let out = Command::new("docker-compose")
        .arg("-p")
        .arg(project)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot run docker-compose: apt-get install docker-compose");
    assert!(
        out.status.success(),
        "docker-compose {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn compose_figures() -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let project = unique("bc");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(dir.path().join("nginx.conf"), NGINX_CONF).unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        compose_file(demo_images::API, port),
    )
    .unwrap();
    let mut f = Figures::default();
    let start = Instant::now();
    let timeline = {
        let prefix = format!("{project}_");
        Timeline::start(start, move || {
            ps(&prefix)
                .into_iter()
                .filter_map(|(name, status)| {
                    let component = name.strip_prefix(&prefix)?.rsplit_once('_')?.0.to_string();
                    let ready = status.contains("(healthy)")
                        || (status.starts_with("Up") && !status.contains("health"));
                    Some((component, ready))
                })
                .collect()
        })
    };
    compose(dir.path(), &project, &["up", "-d"]);
    until_ok(&addr, "compose.test", "/").await;
    f.converge = start.elapsed();
    f.timeline = timeline.finish();

    docker_ok(&["kill", &format!("{project}_api_1")]);
    f.recover = recovery(&addr, "compose.test").await;
    if f.recover.is_none() {
        // compose does not bring a killed container back: restart it by hand to go on.
        compose(dir.path(), &project, &["up", "-d"]);
        until_ok(&addr, "compose.test", "/health").await;
    }

    let path = dir.path().to_path_buf();
    let (ok, failed) = under_load(
        &addr,
        "compose.test",
        || async {
            std::fs::write(
                path.join("docker-compose.yml"),
                compose_file(demo_images::API_V2, port),
            )
            .unwrap();
            compose(&path, &project, &["up", "-d"]);
        },
        || async {
            let img = docker(&[
                "inspect",
                "-f",
                "{{.Config.Image}}",
                &format!("{project}_api_1"),
            ]);
            img.trim() == demo_images::API_V2
        },
    )
    .await;
    f.update_ok = ok;
    f.update_failed = failed;
    compose(dir.path(), &project, &["down", "-v"]);
    f
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        if a == 0.0 {
            "1.00".into()
        } else {
            "inf".into()
        }
    } else {
        format!("{:.2}", a / b)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        demo_images::ensure_built();
        let b = berth_figures().await;
        let c = compose_figures().await;
        print_timeline("berth", &b.timeline, b.converge);
        print_timeline("docker-compose", &c.timeline, c.converge);
        println!(
            "{:<44} {:>12} {:>16} {:>10}",
            "", "berth", "docker-compose", "ratio"
        );
        println!(
            "{:<44} {:>11.1}s {:>15.1}s {:>10}",
            "time to converge from empty (served ok)",
            b.converge.as_secs_f64(),
            c.converge.as_secs_f64(),
            ratio(b.converge.as_secs_f64(), c.converge.as_secs_f64())
        );
        let secs = |d: Option<Duration>| {
            d.map(|d| format!("{:.2}s", d.as_secs_f64()))
                .unwrap_or_else(|| format!("never (>{}s)", RECOVER_LIMIT.as_secs()))
        };
        let recover_ratio = match (b.recover, c.recover) {
            (Some(b), Some(c)) => ratio(b.as_secs_f64(), c.as_secs_f64()),
            (Some(_), None) => "berth only".into(),
            _ => "-".into(),
        };
        println!(
            "{:<44} {:>12} {:>16} {:>10}",
            "time to recover a killed api container",
            secs(b.recover),
            secs(c.recover),
            recover_ratio
        );
        println!(
            "{:<44} {:>12} {:>16} {:>10}",
            "failed requests during an image update",
            format!("{}/{}", b.update_failed, b.update_ok + b.update_failed),
            format!("{}/{}", c.update_failed, c.update_ok + c.update_failed),
            ratio(b.update_failed as f64, c.update_failed as f64)
        );
    });
}
