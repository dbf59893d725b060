//! The Docker host side of backups against the real Docker engine: the scheduler, driven by a
//! manual clock, fires a backup of a real `berth-demo/postgres` container (dumped by `docker
//! exec`, its port never published), which appears with its manifest and restores cleanly.

#[path = "support/demo_images.rs"]
mod demo_images;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use chrono::{TimeZone, Utc};

use berth::api::BackupSpec;
use berth::backup::host::{self, Clock, ManualClock, Scheduler};
use berth::backup::{self, naming, Store};
use berth::docker::backup_exec::{run_in_container, HostJob};

struct Container {
    docker: Docker,
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let name = self.name.clone();
        // Drop may run outside a runtime: remove with a small one of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().map(|rt| {
                rt.block_on(
                    docker.remove_container(
                        &name,
                        Some(
                            RemoveContainerOptionsBuilder::default()
                                .force(true)
                                .v(true)
                                .build(),
                        ),
                    ),
                )
            })
        })
        .join();
    }
}

async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> (i64, String) {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures::StreamExt;
    let e = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                ..CreateExecOptions::default()
            },
        )
        .await
        .unwrap();
    let mut out = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&e.id, None).await.unwrap()
    {
        while let Some(Ok(o)) = output.next().await {
            out.push_str(&o.to_string());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let i = docker.inspect_exec(&e.id).await.unwrap();
        if i.running != Some(true) {
            return (i.exit_code.unwrap_or(-1), out);
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_fires_a_backup_of_the_stack_postgres() {
    demo_images::ensure_built();
    let docker = Docker::connect_with_local_defaults().expect("docker");
    let stack = format!("bkt{}x{:x}", std::process::id(), rand::random::<u32>());
    let name = format!("{stack}-postgres-0");
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            ContainerCreateBody {
                image: Some(demo_images::POSTGRES.into()),
                env: Some(vec![
                    "POSTGRES_USER=app".into(),
                    "POSTGRES_DB=shop".into(),
                    "POSTGRES_PASSWORD=pw-in-container".into(),
                ]),
                labels: Some(HashMap::from([(
                    "berth.dev/test".to_string(),
                    "backup_host".to_string(),
                )])),
                ..ContainerCreateBody::default()
            },
        )
        .await
        .unwrap();
    let _guard = Container {
        docker: docker.clone(),
        name: name.clone(),
    };
    docker.start_container(&name, None).await.unwrap();
    // Wait until the final server accepts connections. The entrypoint first runs a setup server
    // on the local socket only (no TCP), stops it and starts the real one, as the official image
    // does: a query on the socket can reach the setup server and the next one find no server.
    // Only the final server listens on TCP, so readiness is asked there, as berth's own check does.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, _) = exec(
            &docker,
            &name,
            &[
                "pg_isready",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "app",
                "-d",
                "shop",
            ],
        )
        .await;
        if code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postgres in {name} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out) = exec(
        &docker,
        &name,
        &["psql", "-U", "app", "-d", "shop", "-v", "ON_ERROR_STOP=1", "-c",
          "CREATE TABLE orders(id int PRIMARY KEY, body jsonb); INSERT INTO orders SELECT g, jsonb_build_object('n', g) FROM generate_series(1, 5000) g;"],
    )
    .await;
    assert_eq!(code, 0, "{out}");

    let spec: BackupSpec = serde_json::from_value(serde_json::json!({
        "schedule": "0 2 * * *", "timeZone": "Europe/Berlin",
        "database": {"appStackRef": stack}, "destination": {"volume": {"size": "1Gi"}},
        "retention": {"keepLast": 2}, "verify": true
    }))
    .unwrap();
    let mut backups = BTreeMap::new();
    backups.insert(stack.clone(), spec.clone());
    let folder = tempfile::tempdir().unwrap();

    // 01:59:30 Berlin time: not yet. 02:00:00: due, exactly once.
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 0, 59, 30).unwrap());
    let mut scheduler = Scheduler::new();
    assert!(scheduler.due(clock.now(), &backups).is_empty());
    clock.advance(Duration::from_secs(30));
    let due = scheduler.due(clock.now(), &backups);
    assert_eq!(due.len(), 1);
    assert!(
        scheduler.due(clock.now(), &backups).is_empty(),
        "no double run"
    );

    let job = HostJob::from_spec(
        &stack,
        &spec,
        name.clone(),
        folder.path().display().to_string(),
    )
    .unwrap();
    let result = run_in_container(&docker, &job).await;
    scheduler.finished(&due[0].name, clock.now());
    let out = result.as_ref().expect("the backup runs");
    assert!(out.backup.verified, "verified by restore in the container");
    assert_eq!(out.backup.tables, 1);
    assert_eq!(out.backup.database, "shop");

    let store = Store::open(&folder.path().display().to_string()).unwrap();
    let list = backup::list(&store).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, out.backup.name);
    assert!(folder
        .path()
        .join(naming::manifest_name(&out.backup.name))
        .exists());
    assert!(list[0].size_bytes > 0);

    // The status the host backend writes, same shape as on Kubernetes.
    let b = berth::api::Backup::new(&stack, spec.clone());
    let st = host::record(&b, None, due[0].scheduled_for, clock.now(), &result);
    assert_eq!(st.last_backup.as_ref().unwrap().name, out.backup.name);
    assert_eq!(st.conditions[0].type_, "Ready");
    assert_eq!(st.conditions[0].status, "True");

    // A stopped database: a clear error, nothing new listed.
    docker.stop_container(&name, None).await.unwrap();
    let err = run_in_container(&docker, &job).await.unwrap_err();
    assert!(err.to_string().contains("not running"), "{err}");
    assert_eq!(backup::list(&store).await.unwrap().len(), 1);
    let st2 = host::record(&b, Some(&st), due[0].scheduled_for, clock.now(), &Err(err));
    assert_eq!(st2.conditions[0].status, "False");
    assert_eq!(st2.last_backup, st.last_backup);
}
