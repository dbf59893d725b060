//! The demo API of the `berth-demo/api` image.
//!
//! - `GET /health`: 200 `ok` (liveness only; 503 when built broken, see `DEMO_BROKEN`).
//! - `GET /`: an HTML page showing that PostgreSQL (`DATABASE_URL`) and Redis (`REDIS_URL`) were
//!   reached, with the hostname, replica and `APP_VERSION`; 500 with the reason otherwise.
//! - `GET /slow?ms=N`: answers after N ms (at most 60 s), for load and drain tests.
//!
//! `PORT` (default 8080) sets the port. `DEMO_BROKEN=health` makes `/health` fail forever and
//! `DEMO_BROKEN=crash` exits at start: the `berth-demo/api:broken` image sets the former so
//! rollout tests can show the old version keeps serving. On SIGTERM it stops accepting, finishes
//! in-flight requests (up to `SHUTDOWN_GRACE_MS`, default 10 s) and exits 0.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_demo_app::redis::{Connection, RedisUrl, Reply};
use berth_demo_app::{env_millis, hostname, redact_url};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Mutex;

struct State {
    database_url: Option<String>,
    redis_url: Option<String>,
    version: String,
    hostname: String,
    replica: String,
    broken_health: bool,
    started: Instant,
    // One shared client: tokio-postgres pipelines concurrent queries over it, so a burst of page
    // loads does not open a burst of backend processes.
    pg: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

#[tokio::main]
async fn main() {
    let broken = std::env::var("DEMO_BROKEN").unwrap_or_default();
    if broken == "crash" {
        eprintln!("berth-demo-api: DEMO_BROKEN=crash, exiting at start as this build is meant to");
        std::process::exit(1);
    }
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let host = hostname();
    let state = Arc::new(State {
        database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
        redis_url: std::env::var("REDIS_URL").ok().filter(|s| !s.is_empty()),
        version: std::env::var("APP_VERSION").unwrap_or_else(|_| "unknown".into()),
        replica: std::env::var("BERTH_REPLICA").unwrap_or_else(|_| host.clone()),
        hostname: host,
        broken_health: broken == "health",
        started: Instant::now(),
        pg: Mutex::new(None),
    });
    let listener = match TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth-demo-api: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("berth-demo-api: cannot install signal handlers");
        std::process::exit(1);
    };
    println!(
        "berth-demo-api {} listening on :{port} (database {}, redis {}{})",
        state.version,
        state
            .database_url
            .as_deref()
            .map(redact_url)
            .unwrap_or("unset".into()),
        state
            .redis_url
            .as_deref()
            .map(redact_url)
            .unwrap_or("unset".into()),
        if state.broken_health {
            ", /health broken on purpose"
        } else {
            ""
        },
    );

    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let conn = http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| handle(state.clone(), req)),
                );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    println!("berth-demo-api: stopping, draining in-flight requests");
    let grace = env_millis("SHUTDOWN_GRACE_MS", 10_000);
    tokio::select! {
        _ = graceful.shutdown() => println!("berth-demo-api: drained"),
        _ = tokio::time::sleep(grace) => println!("berth-demo-api: grace period over, exiting"),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match req.uri().path() {
        "/health" if state.broken_health => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "broken: this build fails its health check on purpose\n".into(),
        ),
        "/health" => reply(StatusCode::OK, text, "ok\n".into()),
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(
                StatusCode::OK,
                text,
                format!("slept {ms} ms on {}\n", state.replica),
            )
        }
        "/" => index(&state).await,
        _ => reply(StatusCode::NOT_FOUND, text, "not found\n".into()),
    })
}

async fn index(state: &State) -> Response<Full<Bytes>> {
    let (pg, redis) = tokio::join!(check_postgres(state), check_redis(state));
    let line = |name: &str, r: &Result<String, String>| match r {
        Ok(detail) => format!("<li class=\"ok\">{name}: ok ({})</li>", escape(detail)),
        Err(reason) => format!(
            "<li class=\"fail\">{name}: FAILED ({})</li>",
            escape(reason)
        ),
    };
    let all_ok = pg.is_ok() && redis.is_ok();
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>berth demo</title></head>\n\
         <body>\n<h1>berth demo api</h1>\n<ul>\n{}\n{}\n\
         <li>version: {}</li>\n<li>hostname: {}</li>\n<li>replica: {}</li>\n<li>uptime: {} s</li>\n\
         </ul>\n<p>status: {}</p>\n</body></html>\n",
        line("postgres", &pg),
        line("redis", &redis),
        escape(&state.version),
        escape(&state.hostname),
        escape(&state.replica),
        state.started.elapsed().as_secs(),
        if all_ok { "all ok" } else { "degraded" },
    );
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    reply(status, "text/html; charset=utf-8", body)
}

async fn check_postgres(state: &State) -> Result<String, String> {
    let url = state
        .database_url
        .as_deref()
        .ok_or("DATABASE_URL is not set")?;
    // Retry once on a fresh connection: the cached one may have died with a restarted server.
    for attempt in 0..2 {
        let client = postgres_client(state, url).await?;
        let query = client.query_one("SHOW server_version", &[]);
        match tokio::time::timeout(Duration::from_secs(5), query).await {
            Ok(Ok(row)) => {
                let v: String = row.try_get(0).map_err(|e| e.to_string())?;
                return Ok(format!("server version {v}"));
            }
            Ok(Err(e)) if attempt == 0 => {
                eprintln!("berth-demo-api: postgres query failed, reconnecting: {e}");
            }
            Ok(Err(e)) => return Err(format!("query failed: {e}")),
            Err(_) => return Err("query timed out after 5 s".into()),
        }
        *state.pg.lock().await = None;
    }
    Err("unreachable".into())
}

async fn postgres_client(state: &State, url: &str) -> Result<Arc<tokio_postgres::Client>, String> {
    let mut slot = state.pg.lock().await;
    if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
        return Ok(c.clone());
    }
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))?;
    let connect = config.connect(tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| "connect timed out after 5 s".to_string())?
        .map_err(|e| format!("connect failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("berth-demo-api: postgres connection closed: {e}");
        }
    });
    let client = Arc::new(client);
    *slot = Some(client.clone());
    Ok(client)
}

async fn check_redis(state: &State) -> Result<String, String> {
    let url = state.redis_url.as_deref().ok_or("REDIS_URL is not set")?;
    let url = RedisUrl::parse(url)?;
    let mut conn = Connection::open(&url).await?;
    match conn.command(&["PING"]).await? {
        Reply::Error(e) => Err(format!("PING refused: {e}")),
        r => Ok(format!("PING → {}", r.as_text())),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
