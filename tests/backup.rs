//! The backup engine against a real PostgreSQL: round trips through every format and
//! compression, retention, a server killed mid-dump, a wrong password, restore and its refusals.

#[path = "support/postgres.rs"]
mod postgres;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth::api::backup::{Compression, DumpFormat};
use berth::backup::{self, naming, BackupError, RestoreOptions, RunOptions, Selection, Store};
use postgres::PgServer;

const SCHEMA: &str = "
CREATE TABLE items(id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), created timestamptz);
INSERT INTO items SELECT g, 'item-' || g, g * 0.01, '2026-01-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 100000) g;
CREATE TABLE docs(id serial PRIMARY KEY, body jsonb NOT NULL);
INSERT INTO docs(body) SELECT jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b', g::text),
  'nested', jsonb_build_object('x', g * 2, 'ok', g % 2 = 0)) FROM generate_series(1, 20000) g;
CREATE INDEX docs_body ON docs USING gin (body);
CREATE TABLE files(id int PRIMARY KEY, blob oid NOT NULL);
INSERT INTO files VALUES (1, lo_from_bytea(0, decode(repeat('deadbeef0123', 100000), 'hex')));
";

/// A digest of everything the schema holds, to compare a restored database with its source.
const FINGERPRINT: &str = "SELECT
  (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t) || ' ' ||
  (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM docs t) || ' ' ||
  (SELECT count(*) FROM docs WHERE body @> '{\"nested\": {\"ok\": true}}') || ' ' ||
  (SELECT md5(lo_get(blob)) FROM files WHERE id = 1)";

fn seeded(pg: &PgServer, db: &str) -> String {
    pg.sql("postgres", &format!("CREATE DATABASE {db}"));
    pg.sql(db, SCHEMA);
    pg.sql(db, FINGERPRINT)
}

fn opts(pg: &PgServer, db: &str, to: &Path) -> RunOptions {
    RunOptions {
        database_url: pg.url(db),
        to: to.display().to_string(),
        format: DumpFormat::Custom,
        compression: Compression::Zstd,
        keep_last: None,
        max_age: None,
        verify: false,
        name_prefix: None,
    }
}

fn restore_opts(pg: &PgServer, from: &Path, selection: Selection, db: &str) -> RestoreOptions {
    RestoreOptions {
        from: from.display().to_string(),
        selection,
        database_url: pg.url(db),
        clean: false,
        yes: true,
    }
}

async fn listed(dir: &Path) -> Vec<backup::Manifest> {
    backup::list(&Store::open(&dir.display().to_string()).unwrap())
        .await
        .unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_every_format_and_compression() {
    let pg = PgServer::start();
    let want = seeded(&pg, "app");
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    for format in [DumpFormat::Custom, DumpFormat::Plain] {
        for compression in [Compression::Zstd, Compression::Gzip, Compression::None] {
            n += 1;
            let dir = tmp.path().join(format!("{format:?}-{compression:?}"));
            let mut o = opts(&pg, "app", &dir);
            o.format = format;
            o.compression = compression;
            // Verification on every other combination keeps the test short but covers both formats.
            o.verify = n % 2 == 1;
            let out = backup::run(&o).await.unwrap();
            let parsed = naming::parse(&out.backup.name).unwrap();
            assert_eq!((parsed.format, parsed.compression), (format, compression));
            assert_eq!(out.backup.tables, 3);
            assert_eq!(out.backup.verified, o.verify);
            // The manifest matches the stored bytes.
            let bytes = std::fs::read(dir.join(&out.backup.name)).unwrap();
            assert_eq!(bytes.len() as u64, out.backup.size_bytes);
            use sha2::Digest;
            assert_eq!(
                backup::stream::hex(&sha2::Sha256::digest(&bytes)),
                out.backup.sha256
            );
            assert_eq!(
                files_in(&dir),
                vec![
                    out.backup.name.clone(),
                    naming::manifest_name(&out.backup.name)
                ]
            );
            let list = listed(&dir).await;
            assert_eq!(list.len(), 1);
            // JSON does not round-trip every f64 bit; the rest must be equal.
            let mut listed_one = list[0].clone();
            assert!((listed_one.duration_seconds - out.backup.duration_seconds).abs() < 1e-6);
            listed_one.duration_seconds = out.backup.duration_seconds;
            assert_eq!(listed_one, out.backup);

            let target = format!("restored_{n}");
            let m = backup::restore(&restore_opts(&pg, &dir, Selection::Latest, &target))
                .await
                .unwrap();
            assert_eq!(m.name, out.backup.name);
            assert_eq!(
                pg.sql(&target, FINGERPRINT),
                want,
                "{format:?} {compression:?}"
            );
        }
    }
    // Verification dropped its scratch databases.
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'berth_verify_%'"
        ),
        "0"
    );
}

/// Rewrites a backup's manifest as if it had been made `days` days ago.
fn age_backup(dir: &Path, name: &str, days: i64) {
    let path = dir.join(naming::manifest_name(name));
    let mut m: backup::Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let t = chrono::DateTime::parse_from_rfc3339(&m.time).unwrap() - chrono::Duration::days(days);
    m.time = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_last_and_max_age() {
    let pg = PgServer::start();
    pg.sql("postgres", "CREATE DATABASE small");
    pg.sql("small", "CREATE TABLE t(x int); INSERT INTO t VALUES (1)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");

    // keepLast: 2 after four runs leaves the two newest.
    let mut names = Vec::new();
    let mut o = opts(&pg, "small", &dir);
    o.keep_last = Some(2);
    for _ in 0..4 {
        names.push(backup::run(&o).await.unwrap().backup.name);
    }
    let list: Vec<String> = listed(&dir).await.into_iter().map(|m| m.name).collect();
    assert_eq!(list, vec![names[3].clone(), names[2].clone()]);

    // Leftovers of a failed run are neither listed nor counted, and a good run removes them.
    let leftover = naming::backup_name(
        "small",
        chrono::Utc::now() + chrono::Duration::days(1),
        DumpFormat::Custom,
        Compression::Zstd,
    );
    std::fs::write(dir.join(&leftover), b"half a dump").unwrap();
    assert_eq!(listed(&dir).await.len(), 2);
    let newest = backup::run(&o).await.unwrap();
    let list: Vec<String> = listed(&dir).await.into_iter().map(|m| m.name).collect();
    assert_eq!(list, vec![newest.backup.name.clone(), names[3].clone()]);
    assert!(!dir.join(&leftover).exists());

    // maxAge: 30d deletes the backups aged past it, keeps the younger one.
    age_backup(&dir, &names[3], 40);
    let mut o2 = opts(&pg, "small", &dir);
    o2.max_age = Some(Duration::from_secs(30 * 86_400));
    let out = backup::run(&o2).await.unwrap();
    assert_eq!(out.deleted, vec![names[3].clone()]);
    let list: Vec<String> = listed(&dir).await.into_iter().map(|m| m.name).collect();
    assert_eq!(
        list,
        vec![out.backup.name.clone(), newest.backup.name.clone()]
    );

    // The newest good backup survives a max age it exceeds, and a failed run deletes nothing.
    let all = listed(&dir).await;
    for m in &all {
        age_backup(&dir, &m.name, 100);
    }
    let mut failing = o2.clone();
    failing.database_url = pg.url_with_password("small", "wrong");
    assert!(backup::run(&failing).await.is_err());
    assert_eq!(
        listed(&dir).await.len(),
        2,
        "a failed run must not apply retention"
    );
    o2.max_age = Some(Duration::from_secs(86_400));
    let out = backup::run(&o2).await.unwrap();
    let list: Vec<String> = listed(&dir).await.into_iter().map(|m| m.name).collect();
    assert_eq!(list, vec![out.backup.name.clone()]);

    // Retention alone with everything aged: the newest one is still kept.
    age_backup(&dir, &out.backup.name, 100);
    let store = Store::open(&dir.display().to_string()).unwrap();
    let deleted = backup::run::apply_retention(
        &store,
        backup::retention::Policy {
            keep_last: Some(1),
            max_age: Some(Duration::from_secs(1)),
        },
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(deleted.is_empty());
    assert_eq!(listed(&dir).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_killed_mid_dump_keeps_old_backups() {
    let mut pg = PgServer::start();
    seeded(&pg, "app");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let o = opts(&pg, "app", &dir);
    backup::run(&o).await.unwrap();
    backup::run(&o).await.unwrap();
    let before = listed(&dir).await;
    let files_before = files_in(&dir);
    assert_eq!(before.len(), 2);

    // Hold a lock pg_dump must wait for, so the dump is provably in flight when the server dies.
    let mut locker = pg.session("app");
    locker
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"BEGIN;\nLOCK TABLE docs IN ACCESS EXCLUSIVE MODE;\n")
        .unwrap();
    let task = tokio::spawn({
        let o = o.clone();
        async move { backup::run(&o).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'",
        );
        if waiting == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg_dump never waited on the lock"
        );
        assert!(
            !task.is_finished(),
            "the run ended before the server was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.kill();
    let err = task.await.unwrap().unwrap_err();
    let text = err.to_string();
    let BackupError::Discarded { source, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(
            **source,
            BackupError::Tool { .. } | BackupError::Connection { .. }
        ),
        "{err:?}"
    );
    assert!(text.contains("pg_dump failed"), "{text}");
    assert!(text.contains("server closed the connection"), "{text}");
    assert!(text.contains("no backup was recorded"), "{text}");
    assert!(!text.contains(postgres::PASSWORD), "{text}");
    assert_eq!(listed(&dir).await, before, "no new backup, old ones intact");
    assert_eq!(files_in(&dir), files_before, "no partial file left behind");
    let _ = locker.kill();
    let _ = locker.wait();
}

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

#[test]
fn wrong_password_is_a_clear_error() {
    let pg = PgServer::start();
    pg.sql("postgres", "CREATE DATABASE app");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let report = tmp.path().join("report.json");
    let out = berth()
        .args(["backup", "run", "--to"])
        .arg(&dir)
        .arg("--report")
        .arg(&report)
        .env(
            "DATABASE_URL",
            pg.url_with_password("app", "not-the-password-x1"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(stderr.contains("check the user and password"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password-x1"),
        "the password leaked: {stderr}"
    );
    // The report the Kubernetes controller reads carries the same error.
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("password authentication failed") && !e.contains("not-the-password-x1"),
        "{e}"
    );
    assert!(r.get("backup").is_none());
    assert!(
        !dir.exists() || files_in(&dir).is_empty(),
        "nothing written: {:?}",
        files_in(&dir)
    );
}

#[test]
fn cli_run_list_restore_and_refusals() {
    let pg = PgServer::start();
    let want = seeded(&pg, "app");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let run = |extra: &[&str]| {
        let out = berth()
            .args(["backup", "run", "--to"])
            .arg(&dir)
            .args(extra)
            .env("DATABASE_URL", pg.url("app"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["--format", "plain", "--compression", "gzip"]);
    let report = tmp.path().join("report.json");
    run(&[
        "--verify",
        "--keep-last",
        "5",
        "--max-age",
        "30d",
        "--report",
        report.to_str().unwrap(),
    ]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(r["backup"]["name"].as_str().unwrap().ends_with(".dump.zst"));
    assert_eq!(r["backup"]["verified"], true);
    assert_eq!(
        r["backups"].as_array().unwrap().len(),
        2,
        "the kept backups, newest first"
    );
    assert_eq!(r["backups"][0]["name"], r["backup"]["name"]);

    let out = berth()
        .args(["backup", "list", "-o", "json", "--from"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0]["name"].as_str().unwrap().ends_with(".dump.zst"),
        "newest first"
    );
    assert!(rows[1]["name"].as_str().unwrap().ends_with(".sql.gz"));
    assert_eq!(rows[0]["verified"], true);
    assert_eq!(rows[1]["verified"], false);
    for r in &rows {
        assert!(r["sizeBytes"].as_u64().unwrap() > 0);
        assert_eq!(r["sha256"].as_str().unwrap().len(), 64);
        assert!(r["time"].as_str().is_some());
    }
    let table = berth()
        .args(["backup", "list", "--from"])
        .arg(&dir)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    let restore = |db: &str, extra: &[&str]| {
        berth()
            .args(["backup", "restore", "--from"])
            .arg(&dir)
            .args(extra)
            .arg("--database-url")
            .arg(pg.url(db))
            .output()
            .unwrap()
    };
    // Without --yes: refused, nothing created.
    let out = restore("copy", &["--latest"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'copy'"
        ),
        "0"
    );

    // Into a database that does not exist yet: created, same data.
    let older = rows[1]["name"].as_str().unwrap();
    let out = restore("copy", &["--name", older, "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.sql("copy", FINGERPRINT), want);

    // Into the now non-empty database: refused without --clean.
    let out = restore("copy", &["--latest", "--yes"]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not empty") && stderr.contains("--clean"),
        "{stderr}"
    );
    pg.sql("copy", "DELETE FROM items WHERE id <= 10");

    // With --clean: dropped, recreated, restored.
    let out = restore("copy", &["--latest", "--yes", "--clean"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.sql("copy", FINGERPRINT), want);

    // An unknown name is an error that says where to look.
    let out = restore("other", &["--name", "nope.dump", "--yes"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("berth backup list"));
}
