//! The demo worker of the `berth-demo/worker` image.
//!
//! Pops jobs from the Redis list `QUEUE` (default `jobs`) with BLPOP, "works" `JOB_MS`
//! milliseconds (default 200) on each, then increments `<QUEUE>:done`. On SIGTERM it finishes the
//! job in hand and exits 0, which is what berth's scale-down relies on. Redis being down is not
//! fatal: it retries every `RETRY_MS` (default 500) so start-up order does not matter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_demo_app::redis::{Connection, RedisUrl, Reply};
use berth_demo_app::{env_millis, hostname, redact_url};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() {
    let raw_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let url = match RedisUrl::parse(&raw_url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("berth-demo-worker: {e}");
            std::process::exit(2);
        }
    };
    let queue = std::env::var("QUEUE")
        .ok()
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| "jobs".into());
    let job_time = env_millis("JOB_MS", 200);
    let retry = env_millis("RETRY_MS", 500);
    let me = hostname();

    let stopping = Arc::new(AtomicBool::new(false));
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let Ok(mut sig) = signal(kind) else {
            eprintln!("berth-demo-worker: cannot install signal handlers");
            std::process::exit(1);
        };
        let stopping = stopping.clone();
        tokio::spawn(async move {
            sig.recv().await;
            println!("berth-demo-worker: signal received, finishing the current job");
            stopping.store(true, Ordering::SeqCst);
        });
    }
    println!(
        "berth-demo-worker on {me}: queue {queue:?} at {}, {} ms per job",
        redact_url(&raw_url),
        job_time.as_millis()
    );

    let done_key = format!("{queue}:done");
    let mut conn: Option<Connection> = None;
    let mut processed: u64 = 0;
    while !stopping.load(Ordering::SeqCst) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Connection::open(&url).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    eprintln!("berth-demo-worker: redis unavailable ({e}), retrying");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            },
        };
        // A short BLPOP timeout bounds how long a SIGTERM waits when the queue is empty, without
        // abandoning a pop the server may already have made.
        let popped = c
            .command_with_timeout(&["BLPOP", &queue, "1"], Duration::from_secs(6))
            .await;
        let job = match popped {
            Ok(Reply::Array(Some(items))) if items.len() == 2 => items[1].as_text(),
            Ok(Reply::Array(None)) | Ok(Reply::Bulk(None)) => continue,
            Ok(other) => {
                eprintln!(
                    "berth-demo-worker: unexpected BLPOP reply: {}",
                    other.as_text()
                );
                conn = None;
                tokio::time::sleep(retry).await;
                continue;
            }
            Err(e) => {
                eprintln!("berth-demo-worker: {e}, reconnecting");
                conn = None;
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        tokio::time::sleep(job_time).await;
        processed += 1;
        // The counter is best effort: a lost INCR must not lose the worker.
        let counted = match conn.as_mut() {
            Some(c) => c.command(&["INCR", &done_key]).await,
            None => Err("no connection".into()),
        };
        if let Err(e) = counted {
            eprintln!("berth-demo-worker: cannot count job {job:?}: {e}");
            conn = None;
        }
        println!("berth-demo-worker: done {job:?} ({processed} so far)");
    }
    println!("berth-demo-worker: stopped after {processed} jobs");
}
