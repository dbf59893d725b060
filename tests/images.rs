//! The `berth-demo/*` images on the real Docker engine: each is started on a private network of
//! the test's own (ports published on 127.0.0.1 only) and must behave like the image it stands
//! in for. Everything created is labelled `berth.dev/test=images` and removed on drop.

#[path = "support/demo_images.rs"]
mod demo_images;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, ListNetworksOptions, ListVolumesOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEST_LABEL: &str = "berth.dev/test";
const RUN_LABEL: &str = "berth.dev/test-run";
const DEADLINE: Duration = Duration::from_secs(60);

/// One test's containers, network and volumes on the engine.
struct Env {
    docker: Docker,
    run: String,
    network: String,
}

/// What to start; every container joins the test's network under `alias`.
#[derive(Default)]
struct Spec<'a> {
    alias: &'a str,
    image: &'a str,
    env: Vec<String>,
    cmd: Option<Vec<&'a str>>,
    publish: Option<u16>,
    volume: Option<(&'a str, &'a str)>,
}

impl Env {
    async fn new(test: &str) -> Self {
        demo_images::ensure_built();
        let docker = Docker::connect_with_local_defaults()
            .expect("cannot reach the Docker engine: is docker.io installed and dockerd running?")
            .negotiate_version()
            .await
            .expect("the Docker engine did not answer /version");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let run = format!("bi-{test}-{}-{nanos:x}", std::process::id());
        let network = run.clone();
        docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".into()),
                labels: Some(Self::labels_for(&run)),
                ..Default::default()
            })
            .await
            .expect("create the test network");
        Env {
            docker,
            run,
            network,
        }
    }

    fn labels_for(run: &str) -> HashMap<String, String> {
        HashMap::from([
            (TEST_LABEL.to_string(), "images".to_string()),
            (RUN_LABEL.to_string(), run.to_string()),
        ])
    }

    fn name(&self, alias: &str) -> String {
        format!("{}-{alias}", self.run)
    }

    async fn volume(&self, what: &str) -> String {
        let name = self.name(what);
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(Self::labels_for(&self.run)),
                ..Default::default()
            })
            .await
            .expect("create a test volume");
        name
    }

    async fn start(&self, spec: Spec<'_>) -> String {
        let name = self.name(spec.alias);
        let port_bindings = spec.publish.map(|p| {
            HashMap::from([(
                format!("{p}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: None,
                }]),
            )])
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.to_string()),
            env: Some(spec.env),
            cmd: spec.cmd.map(|c| c.into_iter().map(String::from).collect()),
            labels: Some(Self::labels_for(&self.run)),
            exposed_ports: spec.publish.map(|p| vec![format!("{p}/tcp")]),
            host_config: Some(HostConfig {
                network_mode: Some(self.network.clone()),
                port_bindings,
                binds: spec.volume.map(|(v, path)| vec![format!("{v}:{path}")]),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![spec.alias.to_string()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("create container {name}: {e}"));
        self.docker
            .start_container(&name, None)
            .await
            .unwrap_or_else(|e| panic!("start container {name}: {e}"));
        name
    }

    async fn remove(&self, container: &str) {
        self.docker
            .remove_container(
                container,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("remove {container}: {e}"));
    }

    /// Runs a command in the container; returns its exit code and stdout+stderr.
    async fn exec(&self, container: &str, cmd: &[&str], env: &[&str]) -> (i64, String) {
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    env: Some(env.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("exec {cmd:?} in {container}: {e}"));
        let mut text = String::new();
        if let Ok(StartExecResults::Attached { mut output, .. }) =
            self.docker.start_exec(&created.id, None).await
        {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&chunk.to_string());
            }
        }
        let code = self
            .docker
            .inspect_exec(&created.id)
            .await
            .ok()
            .and_then(|i| i.exit_code)
            .unwrap_or(-1);
        (code, text)
    }

    async fn host_port(&self, container: &str, port: u16) -> u16 {
        let info = self
            .docker
            .inspect_container(container, None)
            .await
            .unwrap_or_else(|e| panic!("inspect {container}: {e}"));
        info.network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&format!("{port}/tcp")).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{container} publishes no port for {port}"))
    }

    async fn exit_code(&self, container: &str) -> Option<i64> {
        let info = self.docker.inspect_container(container, None).await.ok()?;
        let state = info.state?;
        if state.running == Some(true) {
            None
        } else {
            state.exit_code
        }
    }

    async fn logs(&self, container: &str) -> String {
        let opts = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut out = String::new();
        let mut stream = self.docker.logs(container, Some(opts));
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    /// `pg_isready` over TCP: only true once initialisation is over and the server listens.
    async fn wait_postgres(&self, container: &str) {
        wait_until(
            &format!("{container} accepts connections"),
            DEADLINE,
            || async {
                let cmd = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"];
                self.exec(container, &cmd, &[]).await.0 == 0
            },
        )
        .await;
    }

    async fn redis(&self, container: &str, password: &str, args: &[&str]) -> String {
        let mut cmd = vec!["redis-cli", "--no-auth-warning", "-a", password];
        cmd.extend_from_slice(args);
        self.exec(container, &cmd, &[]).await.1.trim().to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Drop cannot await and may run while a test panics: clean up on a runtime of our own.
        let docker = self.docker.clone();
        let run = self.run.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(remove_everything_labelled(&docker, &run));
        });
        let _ = cleanup.join();
    }
}

async fn remove_everything_labelled(docker: &Docker, run: &str) {
    let filters = HashMap::from([("label".to_string(), vec![format!("{RUN_LABEL}={run}")])]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for c in containers {
        if let Some(id) = c.id {
            let opts = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            let _ = docker.remove_container(&id, Some(opts)).await;
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters.clone()),
        }))
        .await
        .unwrap_or_default();
    for n in networks {
        if let Some(id) = n.id {
            let _ = docker.remove_network(&id).await;
        }
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .ok()
        .and_then(|v| v.volumes)
        .unwrap_or_default();
    for v in volumes {
        let _ = docker
            .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true }))
            .await;
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-shot HTTP/1.0 GET to 127.0.0.1: (status, body).
async fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let io = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: demo.test\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_string()))
}

async fn wait_http(port: u16, path: &str, want: u16) -> String {
    let mut last;
    let start = Instant::now();
    loop {
        match http_get(port, path).await {
            Ok((status, body)) if status == want => return body,
            Ok((status, body)) => last = format!("{status} {body}"),
            Err(e) => last = e,
        }
        assert!(
            start.elapsed() < DEADLINE,
            "GET {path} on 127.0.0.1:{port} never answered {want}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends RESP commands in inline form over TCP and returns the raw replies.
async fn redis_over_tcp(port: u16, commands: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the published redis port");
    let mut out = String::new();
    for c in commands {
        s.write_all(format!("{c}\r\n").as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("redis answered in time")
            .unwrap();
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_initialises_once_requires_its_password_and_keeps_data() {
    let env = Env::new("pg").await;
    let volume = env.volume("pgdata").await;
    let first_env = vec![
        "POSTGRES_PASSWORD=first-pw".to_string(),
        "POSTGRES_USER=app".to_string(),
        "POSTGRES_DB=appdb".to_string(),
    ];
    let db = env
        .start(Spec {
            alias: "db",
            image: demo_images::POSTGRES,
            env: first_env,
            publish: Some(5432),
            volume: Some((&volume, "/var/lib/postgresql/data")),
            ..Default::default()
        })
        .await;
    env.wait_postgres(&db).await;

    // A password login over the network (the alias resolves to the container's network address,
    // so pg_hba's `host all all all scram-sha-256` applies), into the database made at init.
    let psql = |sql: &'static str| {
        [
            "psql",
            "-h",
            "db",
            "-U",
            "app",
            "-d",
            "appdb",
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ]
    };
    let (code, out) = env
        .exec(
            &db,
            &psql("select current_user || '@' || current_database()"),
            &["PGPASSWORD=first-pw"],
        )
        .await;
    assert_eq!(
        (code, out.trim()),
        (0, "app@appdb"),
        "password login: {out}"
    );
    let (code, out) = env
        .exec(&db, &psql("select 1"), &["PGPASSWORD=wrong"])
        .await;
    assert_ne!(code, 0, "a wrong password was accepted: {out}");
    assert!(out.contains("password authentication failed"), "{out}");
    let (code, out) = env.exec(&db, &psql("select 1"), &[]).await;
    assert_ne!(code, 0, "a login without password was accepted: {out}");

    // The server runs as postgres, not root.
    let (_, owner) = env
        .exec(
            &db,
            &[
                "sh",
                "-c",
                "stat -c %U /proc/$(head -n1 \"$PGDATA/postmaster.pid\")",
            ],
            &[],
        )
        .await;
    assert_eq!(owner.trim(), "postgres");

    // The published port reaches the server: it answers an SSLRequest with 'N' (no TLS).
    let port = env.host_port(&db, 5432).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");

    let write = psql("create table notes(body text); insert into notes values ('kept')");
    let (code, out) = env.exec(&db, &write, &["PGPASSWORD=first-pw"]).await;
    assert_eq!(code, 0, "{out}");
    let dump = ["pg_dump", "-h", "db", "-U", "app", "-d", "appdb"];
    let (code, out) = env.exec(&db, &dump, &["PGPASSWORD=first-pw"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("CREATE TABLE public.notes"), "{out}");

    // A new container on the same volume keeps the data and, as the official image does, ignores
    // the POSTGRES_* variables of an initialised data directory.
    env.remove(&db).await;
    let db = env
        .start(Spec {
            alias: "db",
            image: demo_images::POSTGRES,
            env: vec!["POSTGRES_PASSWORD=other-pw".to_string()],
            volume: Some((&volume, "/var/lib/postgresql/data")),
            ..Default::default()
        })
        .await;
    env.wait_postgres(&db).await;
    let (code, out) = env
        .exec(
            &db,
            &psql("select body from notes"),
            &["PGPASSWORD=first-pw"],
        )
        .await;
    assert_eq!((code, out.trim()), (0, "kept"), "{out}");
    assert!(
        !env.logs(&db).await.contains("init process complete"),
        "the second container initialised the data directory again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_the_official_arguments_and_requires_its_password() {
    let env = Env::new("redis").await;
    let cache = env
        .start(Spec {
            alias: "cache",
            image: demo_images::REDIS,
            cmd: Some(vec![
                "redis-server",
                "--requirepass",
                "r3dis-pw",
                "--maxmemory",
                "256mb",
            ]),
            publish: Some(6379),
            ..Default::default()
        })
        .await;
    wait_until("redis answers PING", DEADLINE, || async {
        env.redis(&cache, "r3dis-pw", &["ping"]).await == "PONG"
    })
    .await;
    assert_eq!(
        env.redis(&cache, "r3dis-pw", &["config", "get", "maxmemory"])
            .await,
        "maxmemory\n268435456"
    );
    let (_, anonymous) = env
        .exec(&cache, &["redis-cli", "-h", "cache", "ping"], &[])
        .await;
    assert!(
        anonymous.contains("NOAUTH"),
        "PING without password: {anonymous}"
    );

    let port = env.host_port(&cache, 6379).await;
    let replies = redis_over_tcp(port, &["PING", "AUTH wrong", "AUTH r3dis-pw", "PING"]).await;
    let lines: Vec<&str> = replies.lines().collect();
    assert!(lines[0].starts_with("-NOAUTH"), "{replies}");
    assert!(lines[1].starts_with("-WRONGPASS"), "{replies}");
    assert_eq!(&lines[2..], ["+OK", "+PONG"], "{replies}");

    let (_, user) = env
        .exec(&cache, &["stat", "-c", "%U", "/proc/1"], &[])
        .await;
    assert_eq!(user.trim(), "redis", "redis-server should not run as root");

    // Options alone as the command, like `docker run redis --appendonly yes`; no password and
    // reached from another address: protected mode is off, as in the official image.
    let open = env
        .start(Spec {
            alias: "open",
            image: demo_images::REDIS,
            cmd: Some(vec!["--appendonly", "yes"]),
            ..Default::default()
        })
        .await;
    wait_until(
        "the second redis answers PING from the network",
        DEADLINE,
        || async {
            let (_, out) = env
                .exec(&open, &["redis-cli", "-h", "open", "ping"], &[])
                .await;
            out.trim() == "PONG"
        },
    )
    .await;
    let (_, aof) = env
        .exec(
            &open,
            &["redis-cli", "-h", "open", "config", "get", "appendonly"],
            &[],
        )
        .await;
    assert_eq!(aof.trim(), "appendonly\nyes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_worker_and_nginx_serve_a_stack() {
    let env = Env::new("stack").await;
    let db = env
        .start(Spec {
            alias: "db",
            image: demo_images::POSTGRES,
            env: vec!["POSTGRES_PASSWORD=db-pw".into(), "POSTGRES_USER=app".into()],
            ..Default::default()
        })
        .await;
    let cache = env
        .start(Spec {
            alias: "cache",
            image: demo_images::REDIS,
            cmd: Some(vec!["redis-server", "--requirepass", "cache-pw"]),
            ..Default::default()
        })
        .await;
    env.wait_postgres(&db).await;
    wait_until("redis answers PING", DEADLINE, || async {
        env.redis(&cache, "cache-pw", &["ping"]).await == "PONG"
    })
    .await;
    let urls = vec![
        "DATABASE_URL=postgres://app:db-pw@db:5432/app".to_string(),
        "REDIS_URL=redis://:cache-pw@cache:6379".to_string(),
    ];

    // The api reaches both through the shared network.
    let api = env
        .start(Spec {
            alias: "api",
            image: demo_images::API,
            env: urls.clone(),
            publish: Some(8080),
            ..Default::default()
        })
        .await;
    let api_port = env.host_port(&api, 8080).await;
    assert_eq!(wait_http(api_port, "/health", 200).await.trim(), "ok");
    let page = wait_http(api_port, "/", 200).await;
    for want in [
        "postgres: ok (server version 15",
        "redis: ok (PING → PONG)",
        "version: 1",
        "status: all ok",
    ] {
        assert!(page.contains(want), "{want:?} missing from:\n{page}");
    }
    let (code, out) = env
        .exec(&api, &["wget", "-qO-", "http://127.0.0.1:8080/health"], &[])
        .await;
    assert_eq!((code, out.trim()), (0, "ok"), "in-container health check");
    let (status, body) = http_get(api_port, "/slow?ms=200").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("slept 200 ms"), "{body}");

    // A dependency it cannot use: 500 with the reason, and no password in the page.
    let bad = env
        .start(Spec {
            alias: "api-bad",
            image: demo_images::API_V2,
            env: vec![
                urls[0].clone(),
                "REDIS_URL=redis://:not-the-password@cache:6379".into(),
            ],
            publish: Some(8080),
            ..Default::default()
        })
        .await;
    let bad_port = env.host_port(&bad, 8080).await;
    let page = wait_http(bad_port, "/", 500).await;
    assert!(page.contains("redis: FAILED (AUTH refused"), "{page}");
    assert!(
        page.contains("postgres: ok") && page.contains("version: 2"),
        "{page}"
    );
    assert!(
        !page.contains("not-the-password"),
        "the page leaks the password"
    );

    // The broken build serves but never reports healthy.
    let broken = env
        .start(Spec {
            alias: "api-broken",
            image: demo_images::API_BROKEN,
            env: urls.clone(),
            publish: Some(8080),
            ..Default::default()
        })
        .await;
    let broken_port = env.host_port(&broken, 8080).await;
    wait_http(broken_port, "/health", 503).await;

    // The worker drains a queue...
    let worker = env
        .start(Spec {
            alias: "worker",
            image: demo_images::WORKER,
            env: vec![urls[1].clone(), "JOB_MS=10".into()],
            ..Default::default()
        })
        .await;
    let jobs: Vec<String> = (0..25).map(|i| format!("job-{i}")).collect();
    let mut push = vec!["rpush", "jobs"];
    push.extend(jobs.iter().map(String::as_str));
    assert_eq!(env.redis(&cache, "cache-pw", &push).await, "25");
    wait_until("the worker drains 25 jobs", DEADLINE, || async {
        env.redis(&cache, "cache-pw", &["llen", "jobs"]).await == "0"
            && env.redis(&cache, "cache-pw", &["get", "jobs:done"]).await == "25"
    })
    .await;

    // ...and on SIGTERM finishes the job in hand before exiting 0.
    let slow = env
        .start(Spec {
            alias: "slow-worker",
            image: demo_images::WORKER,
            env: vec![urls[1].clone(), "QUEUE=slow".into(), "JOB_MS=1500".into()],
            ..Default::default()
        })
        .await;
    let _ = env
        .redis(&cache, "cache-pw", &["rpush", "slow", "long-job"])
        .await;
    wait_until("the slow worker takes its job", DEADLINE, || async {
        env.redis(&cache, "cache-pw", &["llen", "slow"]).await == "0"
    })
    .await;
    env.docker
        .stop_container(
            &slow,
            Some(StopContainerOptions {
                t: Some(30),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        env.exit_code(&slow).await,
        Some(0),
        "{}",
        env.logs(&slow).await
    );
    assert_eq!(
        env.redis(&cache, "cache-pw", &["get", "slow:done"]).await,
        "1"
    );
    drop(worker);

    // nginx serves its default page, then proxies to the api after a config change and reload.
    let proxy = env
        .start(Spec {
            alias: "proxy",
            image: demo_images::NGINX,
            publish: Some(80),
            ..Default::default()
        })
        .await;
    let proxy_port = env.host_port(&proxy, 80).await;
    let welcome = wait_http(proxy_port, "/", 200).await;
    assert!(welcome.contains("berth-demo/nginx is running"), "{welcome}");
    let conf = "CONF=limit_req_zone $binary_remote_addr zone=perip:10m rate=50r/s;\n\
        map $http_upgrade $connection_upgrade { default upgrade; '' close; }\n\
        server {\n  listen 80 default_server;\n  gzip on;\n  client_max_body_size 10m;\n\
          location = /health { proxy_pass http://api:8080; }\n\
          location / {\n    limit_req zone=perip burst=20 nodelay;\n\
            proxy_http_version 1.1;\n    proxy_set_header Upgrade $http_upgrade;\n\
            proxy_set_header Connection $connection_upgrade;\n    proxy_pass http://api:8080;\n  }\n}\n";
    let reload =
        "printf '%s' \"$CONF\" > /etc/nginx/conf.d/default.conf && nginx -t && nginx -s reload";
    let (code, out) = env.exec(&proxy, &["sh", "-c", reload], &[conf]).await;
    assert_eq!(code, 0, "nginx -t / reload: {out}");
    wait_until("nginx proxies / to the api", DEADLINE, || async {
        matches!(http_get(proxy_port, "/").await, Ok((200, body)) if body.contains("postgres: ok"))
    })
    .await;
    assert_eq!(wait_http(proxy_port, "/health", 200).await.trim(), "ok");
    assert_eq!(
        env.exit_code(&proxy).await,
        None,
        "nginx stopped after reload"
    );

    // Stopping the api lets the request in flight finish (what a rollout's drain relies on).
    let in_flight = tokio::spawn(http_get(api_port, "/slow?ms=1500"));
    wait_until("the /slow request reaches the api", DEADLINE, || async {
        let (_, out) = env.exec(&api, &["netstat", "-tn"], &[]).await;
        out.lines()
            .any(|l| l.contains(":8080 ") && l.contains("ESTABLISHED"))
    })
    .await;
    env.docker
        .stop_container(
            &api,
            Some(StopContainerOptions {
                t: Some(30),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let (status, body) = in_flight.await.unwrap().expect("the in-flight request");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("slept 1500 ms"), "{body}");
    assert_eq!(
        env.exit_code(&api).await,
        Some(0),
        "{}",
        env.logs(&api).await
    );
}
