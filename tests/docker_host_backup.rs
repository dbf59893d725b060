//! Scheduled backups on the Docker host backend, against the real engine: a stack (berth-demo
//! images) with data in its PostgreSQL and a `backup` schedule; the host's backup hook, driven by
//! a manual clock, does nothing before the firing time and exactly one backup after it (pg_dump
//! by `docker exec`, the database port never published), with its manifest, a status in the
//! Kubernetes shape, and a file that restores the rows into a private PostgreSQL. A stopped
//! database makes the next run fail with Ready=False and a clear reason, and lists nothing new.

#[path = "support/docker_host.rs"]
mod docker_host;
#[path = "support/postgres.rs"]
mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};

use berth::backup::host::ManualClock;
use berth::backup::{self, RestoreOptions, Selection, Store};
use berth::docker::backups::{backup_folder, volume_name, BackupHook};
use berth::docker::run::{HostHook, PassContext};
use berth::docker::state::StateDir;
use docker_host::*;

const CONVERGE: Duration = Duration::from_secs(120);
const RUN: Duration = Duration::from_secs(90);

fn psql(t: &TestHost, stack: &str, sql: &str) -> String {
    let pg = t.group(&format!("{stack}-postgres"));
    let name = &pg.first().expect("no postgres container").name;
    docker_ok(&[
        "exec",
        "-u",
        "postgres",
        name,
        "sh",
        "-c",
        &format!(
            "psql -qtAX -v ON_ERROR_STOP=1 -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" -c \"{sql}\""
        ),
    ])
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_scheduler_fires_a_stack_backup_when_due() {
    let t = TestHost::new("hbk");
    let s = format!("{}s", t.instance);
    // 03:30 in Berlin is 02:30 UTC in November.
    let yaml = format!(
        "{}  backup: {{schedule: \"30 3 * * *\", timeZone: Europe/Berlin, retention: {{keepLast: 3}}, verify: true}}\n",
        stack_yaml(&s, demo_images::API, 1, true)
    );
    t.write("stack.yaml", &yaml);
    // Sub-seconds on purpose: firing times stay whole minutes.
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 22, 2, 29, 30).unwrap()
            + chrono::Duration::milliseconds(250),
    ));
    let hook = Arc::new(BackupHook::new(
        t.manifests.path(),
        &t.instance,
        clock.clone(),
        None,
    ));
    let host = t.host().await.with_hook(hook.clone());

    // Converge by passes (the hook runs after each, the clock before the firing time).
    wait_for("the stack Ready", CONVERGE, || async {
        host.pass().await.ok()?;
        (t.phase(&s)? == "Ready").then_some(())
    })
    .await;
    assert_eq!(
        psql(
            &t,
            &s,
            "CREATE TABLE items(n int PRIMARY KEY, label text); \
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g; \
             SELECT count(*) FROM items"
        ),
        "1000"
    );

    // Before the firing time: nothing runs; the loop is told to wake at it (30 s away).
    host.pass().await.unwrap();
    assert_eq!(hook.finished_runs(), 0);
    assert!(hook.running().is_empty(), "nothing runs before 03:30");
    let wake = hook.next_wake().expect("a wake-up for the schedule");
    let in_secs = wake.saturating_duration_since(Instant::now()).as_secs_f64();
    assert!((25.0..=30.5).contains(&in_secs), "wake in {in_secs}s");
    let folder = backup_folder(&StateDir::open(t.state.path()).unwrap(), &s);
    let store_path = folder.display().to_string();
    let before = t.status("Backup", &s).expect("the Backup is listed");
    assert!(before["lastScheduleTime"].is_null(), "{before}");
    assert!(!folder.exists() || std::fs::read_dir(&folder).unwrap().next().is_none());

    // Just after it: exactly one run.
    clock.set(Utc.with_ymd_and_hms(2026, 11, 22, 2, 30, 5).unwrap());
    host.pass().await.unwrap();
    assert_eq!(hook.running(), vec![s.clone()]);
    host.pass().await.unwrap();
    wait_for("the backup run to end", RUN, || async {
        (hook.finished_runs() >= 1 && hook.running().is_empty()).then_some(())
    })
    .await;
    host.pass().await.unwrap();
    assert_eq!(hook.finished_runs(), 1, "exactly one run");
    assert!(hook.running().is_empty());

    let st = t.status("Backup", &s).unwrap();
    let ready = &st["conditions"].as_array().unwrap()[0];
    assert_eq!(ready["type"], "Ready", "{st}");
    assert_eq!(ready["status"], "True", "{st}");
    assert_eq!(st["lastScheduleTime"], "2026-11-22T02:30:00Z", "{st}");
    assert!(st["lastSuccessfulTime"].as_str().is_some(), "{st}");
    let last = &st["lastBackup"];
    let file = last["name"].as_str().unwrap().to_string();
    assert!(file.starts_with(&s), "{file}");
    assert!(last["sizeBytes"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(last["sha256"].as_str().unwrap().len(), 64, "{st}");
    assert_eq!(last["verified"], true, "{st}");
    assert_eq!(st["backups"].as_array().unwrap().len(), 1, "{st}");

    // On disk: the dump and its manifest, in the folder the named volume binds.
    let store = Store::open(&store_path).unwrap();
    let list = backup::list(&store).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, file);
    let vol = volume_name(&t.instance, &s);
    let device = docker_ok(&[
        "volume",
        "inspect",
        "-f",
        "{{index .Options \"device\"}}",
        &vol,
    ]);
    assert_eq!(device.trim(), store_path);

    // `berth host status` shows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["host", "status", "--state-dir"])
        .arg(t.state.path())
        .args(["--instance", &t.instance])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("Backup") && l.contains(&s)),
        "{table}"
    );

    // The file restores the rows.
    let pg = postgres::PgServer::start();
    let restored = backup::restore(&RestoreOptions {
        from: store_path.clone(),
        selection: Selection::Latest,
        database_url: pg.url("restored"),
        clean: false,
        yes: true,
    })
    .await
    .unwrap();
    assert_eq!(restored.name, file);
    assert_eq!(
        pg.sql(
            "restored",
            "SELECT count(*), sum(n), max(label) FROM items WHERE label = 'item ' || n"
        )
        .trim(),
        "1000|500500|item 999"
    );

    // The database stopped (the hook alone is driven, so nothing restarts it): the next night's
    // run fails with a clear reason; nothing new is listed; the last good backup stays.
    let pg_container = t.group(&format!("{s}-postgres"))[0].name.clone();
    docker_ok(&["stop", &pg_container]);
    clock.set(Utc.with_ymd_and_hms(2026, 11, 23, 2, 30, 5).unwrap());
    let containers = host.engine.containers().await.unwrap();
    let desired = host.desired(&containers).unwrap();
    let docs = berth::manifest::load_paths(&[t.manifests.path().to_path_buf()]).unwrap();
    hook.after_pass(PassContext {
        engine: &host.engine,
        desired: &desired,
        state: &host.state,
        docs: &docs,
    })
    .await;
    wait_for("the failed run to end", RUN, || async {
        (hook.finished_runs() >= 2 && hook.running().is_empty()).then_some(())
    })
    .await;
    assert_eq!(hook.finished_runs(), 2);
    let st = t.status("Backup", &s).unwrap();
    let ready = &st["conditions"].as_array().unwrap()[0];
    assert_eq!(ready["status"], "False", "{st}");
    assert_eq!(ready["reason"], "BackupFailed", "{st}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains(&pg_container) && message.contains("not running"),
        "{message}"
    );
    assert_eq!(st["lastBackup"]["name"], file.as_str(), "{st}");
    assert_eq!(backup::list(&store).await.unwrap().len(), 1);
}

/// A Backup manifest whose stack is not on the host: each due run fails with a reason that says
/// what to fix, and no file is written. After a restart, missed firing times run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_stack_fails_clearly_and_a_restart_catches_up_once() {
    let t = TestHost::new("hbm");
    let name = format!("{}b", t.instance);
    t.write(
        "backup.yaml",
        &format!(
            "apiVersion: berth.dev/v1alpha1
kind: Backup
metadata: {{name: {name}}}
spec:
  schedule: \"*/5 * * * *\"
  database: {{appStackRef: nowhere}}
  destination: {{volume: {{size: 1Gi}}}}
  retention: {{keepLast: 2}}
"
        ),
    );
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 22, 10, 4, 0).unwrap(),
    ));
    let hook = Arc::new(BackupHook::new(
        t.manifests.path(),
        &t.instance,
        clock.clone(),
        None,
    ));
    let host = t.host().await.with_hook(hook.clone());
    host.pass().await.unwrap();
    assert_eq!(hook.finished_runs(), 0);
    clock.set(Utc.with_ymd_and_hms(2026, 11, 22, 10, 5, 1).unwrap());
    host.pass().await.unwrap();
    wait_for("the run to end", RUN, || async {
        (hook.finished_runs() == 1).then_some(())
    })
    .await;
    let st = t.status("Backup", &name).unwrap();
    let ready = &st["conditions"].as_array().unwrap()[0];
    assert_eq!(ready["status"], "False", "{st}");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("AppStack nowhere") && message.contains("appStackRef"),
        "{message}"
    );
    assert!(st["lastBackup"].is_null(), "{st}");
    let folder = backup_folder(&StateDir::open(t.state.path()).unwrap(), &name);
    assert!(!folder.exists() || std::fs::read_dir(&folder).unwrap().next().is_none());
    assert_eq!(st["lastScheduleTime"], "2026-11-22T10:05:00Z", "{st}");

    // berth restarts at 10:31 (a new hook): the firing times missed since the stored
    // lastScheduleTime (10:10 ... 10:30) cause one catch-up run, not five.
    drop(host);
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 22, 10, 31, 0).unwrap(),
    ));
    let hook = Arc::new(BackupHook::new(
        t.manifests.path(),
        &t.instance,
        clock.clone(),
        None,
    ));
    let host = t.host().await.with_hook(hook.clone());
    host.pass().await.unwrap();
    wait_for("the catch-up run to end", RUN, || async {
        (hook.finished_runs() == 1 && hook.running().is_empty()).then_some(())
    })
    .await;
    host.pass().await.unwrap();
    host.pass().await.unwrap();
    assert_eq!(hook.finished_runs(), 1, "one catch-up run");
    let st = t.status("Backup", &name).unwrap();
    assert_eq!(st["lastScheduleTime"], "2026-11-22T10:10:00Z", "{st}");
}
