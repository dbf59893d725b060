//! A bad manifest never takes a running stack down (issue 13), on the real Docker engine: a
//! syntax error, an invalid field, an unknown kind in the file of a running stack (api, a
//! worker, PostgreSQL, Redis), a berth restart meanwhile, an emptied folder: nothing is
//! stopped, recreated or removed, pass after pass, and `berth host status` says Failed with the
//! file and line. Fixed, it converges without restarting anything; deleted, the stack goes
//! (its volumes stay).
//!
//! The host's passes are driven one by one here, so "untouched" is checked over a counted
//! number of full reconcile passes rather than over a wall-clock period.

#[path = "support/docker_host.rs"]
mod docker_host;

use std::collections::BTreeMap;
use std::time::Duration;

use berth::docker::run::Host;
use docker_host::*;

const CONVERGE: Duration = Duration::from_secs(180);
/// Full passes a broken manifest must survive untouched.
const PASSES: usize = 6;

fn stack(s: &str) -> String {
    format!(
        "apiVersion: berth.dev/v1alpha1
kind: AppStack
metadata: {{name: {s}}}
spec:
  domain: {s}.test
  api:
    image: {api}
    port: 8080
    replicas: 1
    healthCheck: {{path: /health, intervalSeconds: 1, timeoutSeconds: 1, failureThreshold: 2, startPeriodSeconds: 0}}
  workers:
    - name: work
      image: {worker}
      queue: {{type: list, name: jobs}}
      scaling: {{minReplicas: 1, maxReplicas: 1}}
  postgres: {{image: {pg}}}
  redis: {{image: {redis}}}
",
        api = demo_images::API,
        worker = demo_images::WORKER,
        pg = demo_images::POSTGRES,
        redis = demo_images::REDIS,
    )
}

/// Every container of the instance: name → (id, StartedAt).
fn snapshot(t: &TestHost) -> BTreeMap<String, (String, String)> {
    let ids: Vec<String> = t.containers().into_iter().map(|c| c.id).collect();
    let mut args = vec!["inspect", "-f", "{{.Name}} {{.Id}} {{.State.StartedAt}}"];
    args.extend(ids.iter().map(String::as_str));
    docker_ok(&args)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| {
                (
                    f[0].trim_start_matches('/').to_string(),
                    (f[1].to_string(), f[2].to_string()),
                )
            })
        })
        .collect()
}

async fn converge(host: &Host, t: &TestHost, s: &str) {
    wait_for("the stack Ready", CONVERGE, || async {
        let _ = host.pass().await;
        (t.phase(s)? == "Ready").then_some(())
    })
    .await;
}

/// `PASSES` full passes that create and remove nothing, then the same containers as before.
async fn untouched(host: &Host, t: &TestHost, before: &BTreeMap<String, (String, String)>) {
    for i in 0..PASSES {
        let r = host.pass().await.expect("pass");
        assert!(
            r.removing.is_empty() && r.created.is_empty(),
            "pass {i} changed something: removing {:?}, created {:?}",
            r.removing,
            r.created
        );
        // A pass a second, like the loop while something is wrong.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(&snapshot(t), before, "containers changed");
}

fn failed_message(t: &TestHost, kind: &str, name: &str) -> String {
    let st = t
        .status(kind, name)
        .unwrap_or_else(|| panic!("no status of {kind}/{name}"));
    // Workers have no phase: their Ready condition says it.
    if kind == "Worker" {
        assert_eq!(st["conditions"][0]["reason"], "InvalidManifest", "{st}");
    } else {
        assert_eq!(st["phase"], "Failed", "{kind}/{name}: {st}");
    }
    st["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_never_takes_a_running_stack_down() {
    let t = TestHost::new("bm");
    let s = format!("{}s", t.instance);
    let good = stack(&s);
    let file = t.manifests.path().join("stack.yaml");
    let file = file.display();
    t.write("stack.yaml", &good);
    let host = t.host().await;
    converge(&host, &t, &s).await;
    let before = snapshot(&t);
    assert_eq!(
        before.len(),
        5,
        "api, worker, postgres, redis, proxy: {before:?}"
    );
    let volumes = t.volumes();
    assert!(!volumes.is_empty());

    // A syntax error.
    t.write("stack.yaml", &good.replace("replicas: 1", "replicas: {1"));
    untouched(&host, &t, &before).await;
    let m = failed_message(&t, "AppStack", &s);
    assert!(m.contains(&format!("{file}:9: not valid YAML")), "{m}");
    let w = failed_message(&t, "Worker", &format!("{s}-work"));
    assert!(w.contains("not valid YAML"), "{w}");
    let row = failed_message(&t, "Manifest", &file.to_string());
    assert!(row.contains("last good version"), "{row}");

    // An invalid field: the line of the field.
    t.write("stack.yaml", &good.replace("replicas: 1", "replcas: 1"));
    untouched(&host, &t, &before).await;
    let m = failed_message(&t, "AppStack", &s);
    assert!(
        m.contains(&format!(
            "{file}:9: (AppStack/{s}) spec.api.replcas: unknown field"
        )),
        "{m}"
    );

    // An unknown kind in a second document of the file; then berth restarts meanwhile: the
    // last good version is remembered in the state directory.
    t.write(
        "stack.yaml",
        &format!(
            "{good}---\napiVersion: berth.dev/v1alpha1\nkind: AppStak\nmetadata: {{name: x}}\n"
        ),
    );
    untouched(&host, &t, &before).await;
    let m = failed_message(&t, "AppStack", &s);
    assert!(
        m.contains(&format!("{file}:20: (AppStak/x) kind: unknown kind")),
        "{m}"
    );
    drop(host);
    let host = t.host().await;
    untouched(&host, &t, &before).await;

    // An emptied folder: nothing removed, and said.
    t.remove("stack.yaml");
    untouched(&host, &t, &before).await;
    let row = failed_message(&t, "Manifest", &t.manifests.path().display().to_string());
    assert!(row.contains("--allow-empty"), "{row}");

    // Fixed: converged, nothing restarted, no Failed rows left.
    t.write("stack.yaml", &good);
    converge(&host, &t, &s).await;
    untouched(&host, &t, &before).await;
    assert!(t.statuses().iter().all(|r| r.kind != "Manifest"));
    assert_eq!(t.phase(&s).as_deref(), Some("Ready"));

    // Really deleted (another file remains, so the folder is not empty): the stack goes, its
    // data volumes stay.
    t.write("notes.yaml", "# nothing here yet\n");
    t.remove("stack.yaml");
    wait_for("the stack removed", CONVERGE, || async {
        let _ = host.pass().await;
        t.containers().is_empty().then_some(())
    })
    .await;
    assert!(t.status("AppStack", &s).is_none());
    let left = t.volumes();
    for v in volumes {
        assert!(left.contains(&v), "volume {v} removed: {left:?}");
    }
}
