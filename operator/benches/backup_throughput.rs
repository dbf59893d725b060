//! `make bench-backup`: throughput of `berth backup run` on a database of about 1 GB next to
//! `pg_dump | zstd > file` in the same run, and berth's peak memory.
//!
//! Env: BENCH_ROWS (default 3,600,000 rows ≈ 1 GB on disk), BENCH_REPEAT (rounds, default 3:
//! the best of each side is compared), BENCH_SINGLE=1 (also berth with zstd on its own thread,
//! `BERTH_ZSTD_WORKERS=0`). Prints where berth's time goes (streaming vs start/connect). Needs
//! PostgreSQL (server and client), zstd and /usr/bin/time (GNU time), all installed by .ci/run.

#[path = "../../tests/support/postgres.rs"]
mod postgres;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Measured {
    seconds: f64,
    /// berth: the manifest's duration (dump → compressed, hashed, published).
    streamed: f64,
    max_rss_kb: u64,
    bytes: u64,
}

/// Runs `cmd` under GNU time and returns wall time and peak RSS.
fn timed(what: &str, cmd: Command, out_file: &Path) -> Measured {
    let stats = out_file.with_extension("time");
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&stats)
        .arg(cmd.get_program());
    wrapped.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    let t = Instant::now();
    let out = wrapped
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (is GNU time installed?)"));
    let wall = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&stats).unwrap_or_default();
    let mut parts = text.split_whitespace();
    let seconds = parts.next().and_then(|s| s.parse().ok()).unwrap_or(wall);
    let max_rss_kb = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let bytes = std::fs::metadata(out_file).map(|m| m.len()).unwrap_or(0);
    Measured {
        seconds,
        streamed: 0.0,
        max_rss_kb,
        bytes,
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing to filter.
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_600_000);
    let pg = postgres::PgServer::start();
    pg.sql("postgres", "CREATE DATABASE bench");
    let t = Instant::now();
    pg.sql(
        "bench",
        &format!(
            "CREATE TABLE events(id bigint PRIMARY KEY, kind text, payload jsonb, note text, at timestamptz);
             INSERT INTO events SELECT g, (ARRAY['click','view','buy','signup'])[1 + g % 4],
               jsonb_build_object('user', g % 100000, 'amount', (g % 997) * 1.5, 'tags', jsonb_build_array('a', g % 13)),
               md5(g::text) || ' ' || md5((g * 31)::text),
               '2026-01-01'::timestamptz + g * interval '1 second'
             FROM generate_series(1, {rows}) g;"
        ),
    );
    // Hint bits and visibility set once, so that the first dump does not pay for them.
    pg.sql("bench", "VACUUM (FREEZE, ANALYZE) events");
    pg.sql("bench", "CHECKPOINT");
    let db_bytes: u64 = pg
        .sql("bench", "SELECT pg_database_size('bench')")
        .parse()
        .unwrap_or(0);
    println!(
        "database: {rows} rows, {:.0} MB on disk (generated in {:.0}s)",
        db_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let url = pg.url("bench");

    // Baseline: what the seeds' cron line does.
    let base_file = dir.path().join("baseline.dump.zst");
    let baseline = || {
        let _ = std::fs::remove_file(&base_file);
        let mut base = Command::new("bash");
        base.arg("-c")
            .arg(format!(
                "set -o pipefail; pg_dump --format=custom --compress=0 --no-password --dbname='{}' | zstd -q -3 -o '{}'",
                url.replace(postgres::PASSWORD, ""),
                base_file.display()
            ))
            .env("PGPASSWORD", postgres::PASSWORD);
        timed("pg_dump | zstd", base, &base_file)
    };
    let out_dir = dir.path().join("berth");
    let stats_anchor = dir.path().join("berth.out");
    // `workers`: BERTH_ZSTD_WORKERS for this run (None: berth's default).
    let berth_run = |workers: Option<&str>| {
        let _ = std::fs::remove_dir_all(&out_dir);
        let mut berth = Command::new(env!("CARGO_BIN_EXE_berth"));
        berth
            .args([
                "backup",
                "run",
                "--format",
                "custom",
                "--compression",
                "zstd",
                "--to",
            ])
            .arg(&out_dir)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn");
        if let Some(w) = workers {
            berth.env("BERTH_ZSTD_WORKERS", w);
        }
        let mut m = timed("berth backup run", berth, &stats_anchor);
        // Where berth's time goes: the manifest's duration is dump → compressed, hashed,
        // published; the rest is the process start, the connection check and the listing.
        m.streamed = std::fs::read_dir(&out_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .find_map(|v| v["durationSeconds"].as_f64())
            .unwrap_or(0.0);
        m
    };
    // Rounds of baseline, berth (and berth with zstd on its own thread, BENCH_SINGLE=1) one
    // after the other; the best of each is compared (the machine is shared).
    let rounds: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let single = std::env::var("BENCH_SINGLE").is_ok_and(|v| v == "1");
    let best = |a: Option<Measured>, b: Measured| match a {
        Some(a) if a.seconds <= b.seconds => Some(a),
        _ => Some(b),
    };
    let (mut b, mut m, mut s1) = (None, None, None);
    for round in 1..=rounds {
        let rb = baseline();
        print!("round {round}: pg_dump | zstd {:.1}s", rb.seconds);
        if single {
            let rs = berth_run(Some("0"));
            print!(", berth with zstd on its thread {:.1}s", rs.seconds);
            s1 = best(s1, rs);
        }
        // The last berth run's files stay for the size and the manifest below.
        let rm = berth_run(None);
        println!(", berth {:.1}s", rm.seconds);
        b = best(b, rb);
        m = best(m, rm);
    }
    let (b, m) = (b.expect("one round"), m.expect("one round"));
    if let Some(s) = s1 {
        println!(
            "berth, zstd on its thread: {:7.1}s  {:7.1} MB/s  peak RSS {:.1} MB",
            s.seconds,
            db_bytes as f64 / 1e6 / s.seconds,
            s.max_rss_kb as f64 / 1024.0
        );
    }
    let berth_bytes: u64 = std::fs::read_dir(&out_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".zst"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let _ = m.bytes;

    let mbps = |s: f64| db_bytes as f64 / 1e6 / s;
    println!(
        "pg_dump | zstd -3 > file : {:7.1}s  {:7.1} MB/s  dump {:7.1} MB",
        b.seconds,
        mbps(b.seconds),
        b.bytes as f64 / 1e6
    );
    println!(
        "berth backup run         : {:7.1}s  {:7.1} MB/s  dump {:7.1} MB  peak RSS {:.1} MB",
        m.seconds,
        mbps(m.seconds),
        berth_bytes as f64 / 1e6,
        m.max_rss_kb as f64 / 1024.0
    );
    println!(
        "berth phases             : dump+compress+hash+publish {:.1}s, start/connect/list {:.1}s ({} zstd worker threads)",
        m.streamed,
        (m.seconds - m.streamed).max(0.0),
        berth::backup::stream::zstd_workers()
    );
    println!(
        "ratio berth / baseline   : {:.2} (throughput {:.2})",
        m.seconds / b.seconds,
        b.seconds / m.seconds
    );
}
