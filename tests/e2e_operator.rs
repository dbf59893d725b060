//! `berth operator` (the real binary, as a child process) against a real Kubernetes API server:
//! its lifecycle. Each test gives the operator its own Lease (in a fresh namespace) and watches
//! only that namespace, so it never competes with other tests.
//!
//! - started before the CRDs: errors naming each CRD and the command that installs it, /readyz
//!   503, then the CRDs applied → it reconciles without a restart and /readyz is 200 (this one
//!   runs on a second, control-plane-only cluster where deleting berth's CRDs harms no one:
//!   `BERTH_E2E_SCRATCH_KUBECONFIG`, started by .ci/setup);
//! - SIGTERM while waiting to lead, while leading with a missing CRD, with the CRDs deleted
//!   under running controllers (watches failing), and with reconciles in flight → exit 0 within
//!   the bound, the Lease's holder cleared;
//! - a leader frozen with SIGSTOP loses the Lease to the standby, and when it resumes it sends
//!   no write before it stops.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/operator_process.rs"]
mod operator_process;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use cluster::wait_for;
use operator_process::{message, Operator, LEASE};

async fn holder(client: &Client, ns: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    leases
        .get(LEASE)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn assert_released(client: &Client, ns: &str) {
    assert_eq!(
        holder(client, ns).await,
        None,
        "the Lease still has a holder"
    );
}

fn stack(name: &str) -> Value {
    json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
        "metadata": {"name": name},
        "spec": {"api": {"image": "registry.invalid/e2e/api:1"}}
    })
}

async fn apply(client: &Client, ns: &str, obj: Value) {
    let res = kube::core::ApiResource {
        group: "berth.dev".into(),
        version: "v1alpha1".into(),
        api_version: "berth.dev/v1alpha1".into(),
        kind: "AppStack".into(),
        plural: "appstacks".into(),
    };
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &res);
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(
        &name,
        &PatchParams::apply(cluster::MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("applying AppStack {name}: {e}"));
}

/// Deployments berth made in `ns`.
async fn deployments(client: &Client, ns: &str) -> Vec<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels("app.kubernetes.io/managed-by=berth"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The scratch cluster: a second, control-plane-only cluster where berth's CRDs may be deleted.

const SCRATCH_ENV: &str = "BERTH_E2E_SCRATCH_KUBECONFIG";

fn scratch_kubeconfig() -> Option<String> {
    match std::env::var(SCRATCH_ENV) {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !in_ci,
                "CI=true but {SCRATCH_ENV} is not set: .ci/setup starts the scratch control plane and prints it"
            );
            eprintln!("SKIPPED: {SCRATCH_ENV} is not set (a control-plane-only cluster whose CRDs the test may delete; .ci/setup starts one)");
            None
        }
    }
}

async fn client_for(path: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    berth::tls::install_default_provider();
    Client::try_from(config).unwrap()
}

async fn delete_berth_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in berth::api::crds() {
        let name = crd.name_any();
        let _ = crds.delete(&name, &DeleteParams::default()).await;
        wait_for(&format!("CRD {name} gone"), || async {
            crds.get_opt(&name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
}

/// The CRDs, with `spec.scaling.onQueueUnavailable` cut out of the Worker's schema: an older
/// CRD than the operator.
async fn install_outdated_worker_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut worker = berth::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "Worker")
        .unwrap();
    let mut v = serde_json::to_value(&worker).unwrap();
    let scaling = v
        .pointer_mut(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/scaling/properties",
        )
        .expect("Worker spec.scaling has properties");
    scaling
        .as_object_mut()
        .unwrap()
        .remove("onQueueUnavailable");
    // CEL rules may name the removed field: drop the rules of `scaling`.
    if let Some(s) =
        v.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/scaling")
    {
        s.as_object_mut()
            .unwrap()
            .remove("x-kubernetes-validations");
    }
    worker = serde_json::from_value(v).unwrap();
    crds.patch(
        &worker.name_any(),
        &PatchParams::apply(cluster::MANAGER).force(),
        &Patch::Apply(&worker),
    )
    .await
    .unwrap_or_else(|e| panic!("the apiserver refused the cut-down Worker CRD: {e}"));
}

#[tokio::test]
async fn e2e_operator_started_before_the_crds_reports_them_then_reconciles_without_restart() {
    let Some(path) = scratch_kubeconfig() else {
        return;
    };
    let client = client_for(&path).await;
    delete_berth_crds(&client).await;
    let ns = cluster::create_namespace(&client, "lc-crd").await;

    // 1. Leading with the CRDs missing: errors naming each CRD, /readyz 503, a metric; SIGTERM
    //    ends it within the bound and releases the Lease.
    let mut op = Operator::start(&path, &ns, "lc-crd-1", &[]);
    op.wait_log("became the leader", |l| message(l) == "became the leader")
        .await;
    for crd in [
        "appstacks.berth.dev",
        "workers.berth.dev",
        "certificates.berth.dev",
        "backups.berth.dev",
    ] {
        op.wait_log(&format!("an error naming {crd}"), |l| {
            l["level"] == "ERROR"
                && message(l).contains(&format!("CRD {crd} is not installed"))
                && message(l).contains("kubectl apply --server-side -f crds/")
        })
        .await;
    }
    let body = op.wait_ready(503).await;
    assert!(body.contains("appstacks.berth.dev"), "{body}");
    assert_eq!(
        op.get("/healthz").await.unwrap().0,
        200,
        "liveness stays ok"
    );
    let (_, metrics) = op.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("berth_crd_problems_total{crd=\"appstacks.berth.dev\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_crd_unavailable{crd=\"appstacks.berth.dev\"} 1"),
        "{metrics}"
    );
    assert_eq!(holder(&client, &ns).await.as_deref(), Some("lc-crd-1"));
    op.terminate().await;
    assert_released(&client, &ns).await;
    drop(op);

    // 2. A second operator, the CRDs still missing; then an outdated Worker CRD (named with its
    //    missing field); then the right CRDs: it reconciles and becomes ready without a restart.
    let mut op = Operator::start(&path, &ns, "lc-crd-2", &[]);
    op.wait_log("an error naming appstacks.berth.dev", |l| {
        message(l).contains("CRD appstacks.berth.dev is not installed")
    })
    .await;
    op.wait_ready(503).await;
    install_outdated_worker_crd(&client).await;
    op.wait_log("the outdated Worker CRD named with its field", |l| {
        l["level"] == "ERROR"
            && message(l).contains("CRD workers.berth.dev is older than this operator")
            && message(l).contains("spec.scaling.onQueueUnavailable")
    })
    .await;
    cluster::install_crds(&client).await;
    op.wait_log("controllers started", |l| {
        message(l) == "AppStack controller started"
    })
    .await;
    apply(&client, &ns, stack("late")).await;
    wait_for("the AppStack reconciled (its Deployment)", || async {
        (!deployments(&client, &ns).await.is_empty()).then_some(())
    })
    .await;
    op.wait_ready(200).await;
    let (_, metrics) = op.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("berth_crd_unavailable{crd=\"appstacks.berth.dev\"} 0"),
        "{metrics}"
    );

    // 3. The CRDs deleted under the running controllers (their watches fail): reported again,
    //    unready, and SIGTERM still ends it within the bound.
    let lost = |l: &Value| message(l).contains("CRD appstacks.berth.dev is not installed");
    let reported = op.message_count(lost);
    delete_berth_crds(&client).await;
    wait_for("the deleted CRD reported again", || {
        let again = op.message_count(lost) > reported;
        async move { again.then_some(()) }
    })
    .await;
    op.wait_ready(503).await;
    op.terminate().await;
    assert_released(&client, &ns).await;
    cluster::delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn e2e_operator_sigterm_while_waiting_to_lead() {
    let Some(path) = cluster::kubeconfig_path() else {
        return;
    };
    cluster::with_namespace("lc-wait", |client, ns| async move {
        // Someone else holds the Lease for an hour.
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap();
        leases
            .patch(
                LEASE,
                &PatchParams::apply(cluster::MANAGER),
                &Patch::Apply(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": LEASE},
                    "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                        "renewTime": now, "acquireTime": now}
                })),
            )
            .await
            .unwrap();
        let mut op = Operator::start(&path, &ns, "lc-wait", &[]);
        op.wait_log("waiting to lead", |l| message(l) == "waiting to lead")
            .await;
        // A standby with the CRDs served is ready (a rollout must not wait for it to lead).
        op.wait_ready(200).await;
        let (_, metrics) = op.get("/metrics").await.unwrap();
        assert!(metrics.contains("berth_leader 0"), "{metrics}");
        op.terminate().await;
        assert!(!op.logged(|l| message(l) == "became the leader"));
        assert_eq!(holder(&client, &ns).await.as_deref(), Some("someone-else"));
    })
    .await;
}

#[tokio::test]
async fn e2e_operator_sigterm_with_reconciles_in_flight() {
    let Some(path) = cluster::kubeconfig_path() else {
        return;
    };
    cluster::with_namespace("lc-busy", |client, ns| async move {
        let mut op = Operator::start(&path, &ns, "lc-busy", &[]);
        op.wait_ready(200).await;
        // Many stacks at once; SIGTERM as soon as the first child exists.
        const STACKS: usize = 12;
        for i in 0..STACKS {
            apply(&client, &ns, stack(&format!("busy-{i}"))).await;
        }
        wait_for("a first Deployment", || async {
            (!deployments(&client, &ns).await.is_empty()).then_some(())
        })
        .await;
        op.terminate().await;
        let made = deployments(&client, &ns).await.len();
        // Writes logged after the signal: reconciles that were in flight and finished.
        let lines = op.lines.lock().unwrap().clone();
        let after_signal = lines
            .iter()
            .skip_while(|l| message(l) != "signal received: stopping")
            .filter(|l| message(l) == "write sent")
            .count();
        println!(
            "{made} of {STACKS} stacks had their Deployment when the operator stopped; {after_signal} write(s) of in-flight reconciles after SIGTERM"
        );
        assert_released(&client, &ns).await;
    })
    .await;
}

#[tokio::test]
async fn e2e_operator_frozen_leader_loses_the_lease_and_never_writes_after_resume() {
    let Some(path) = cluster::kubeconfig_path() else {
        return;
    };
    cluster::with_namespace("lc-freeze", |client, ns| async move {
        const LEASE_S: u64 = 4;
        const RETRY_S: u64 = 1;
        let timing = [
            "--lease-duration-seconds",
            "4",
            "--renew-deadline-seconds",
            "3",
        ];
        let mut a = Operator::start(&path, &ns, "lc-a", &timing);
        a.wait_log("a leads", |l| message(l) == "became the leader")
            .await;
        a.wait_ready(200).await;
        apply(&client, &ns, stack("frozen")).await;
        wait_for("a reconciles the stack", || async {
            (!deployments(&client, &ns).await.is_empty()).then_some(())
        })
        .await;
        let mut b = Operator::start(&path, &ns, "lc-b", &timing);
        b.wait_log("b waits", |l| message(l) == "waiting to lead")
            .await;

        a.signal("-STOP");
        let frozen = Instant::now();
        wait_for("b takes the Lease", || async {
            (holder(&client, &ns).await.as_deref() == Some("lc-b")).then_some(())
        })
        .await;
        let takeover = frozen.elapsed();
        println!("takeover: b holds the Lease {takeover:?} after a was frozen (lease duration {LEASE_S} s)");
        // b judges expiry from when it saw the last renewal (at most one retry period before the
        // freeze) and tries once per retry period.
        assert!(
            takeover <= Duration::from_secs(LEASE_S + 2 * RETRY_S + 1),
            "takeover took {takeover:?}"
        );
        let transitions = |l: Lease| l.spec.and_then(|s| s.lease_transitions);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let after_takeover = transitions(leases.get(LEASE).await.unwrap());

        // Work for the frozen leader: a changed spec and a deleted child, both of which it will
        // see on its open watches when it resumes. b repairs them meanwhile.
        let mut changed = stack("frozen");
        changed["spec"]["api"]["replicas"] = json!(2);
        apply(&client, &ns, changed).await;
        let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let first = deployments(&client, &ns).await[0].name_any();
        deploys
            .delete(&first, &DeleteParams::default())
            .await
            .unwrap();
        wait_for("b applies the change", || async {
            let d = deploys.get(&first).await.ok()?;
            (d.spec?.replicas == Some(2)).then_some(())
        })
        .await;

        // Everything a logged before the freeze has been read by now (it wrote nothing while
        // stopped): the lines from here on are the resumed process's.
        let before = a.line_count();
        let writes_before = a.message_count(|l| message(l) == "write sent");
        assert!(writes_before > 0, "a's writes are logged (berth::fence=debug)");
        a.signal("-CONT");
        let (status, _) = a.wait_exit(Duration::from_secs(30)).await;
        let after: Vec<Value> = a.lines.lock().unwrap()[before..].to_vec();
        let sent: Vec<&Value> = after
            .iter()
            .filter(|l| message(l) == "write sent")
            .collect();
        let refused = after
            .iter()
            .filter(|l| message(l).starts_with("write refused"))
            .count();
        println!(
            "a after resume: exit {status}, {} write(s) sent, {refused} refused",
            sent.len()
        );
        assert!(sent.is_empty(), "the old leader wrote after resuming: {sent:?}");
        assert!(
            !status.success(),
            "a lost the Lease: it exits non-zero so that it restarts"
        );
        // The apiserver's view: b still holds the Lease, no transition since the takeover.
        let lease = leases.get(LEASE).await.unwrap();
        assert_eq!(
            lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).as_deref(),
            Some("lc-b")
        );
        assert_eq!(transitions(lease), after_takeover);

        b.terminate().await;
        assert_released(&client, &ns).await;
    })
    .await;
}

/// A kubeconfig like `path` whose user acts as `system:serviceaccount:<ns>:<sa>`.
fn impersonating_kubeconfig(path: &str, ns: &str, sa: &str, dir: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut v: Value = serde_norway::from_str(&text).unwrap();
    for u in v["users"].as_array_mut().unwrap() {
        u["user"]["as"] = json!(format!("system:serviceaccount:{ns}:{sa}"));
    }
    let out = dir.join("impersonating.kubeconfig");
    std::fs::write(&out, serde_norway::to_string(&v).unwrap()).unwrap();
    out.to_string_lossy().into_owned()
}

#[tokio::test]
async fn e2e_operator_check_names_a_missing_verb() {
    let Some(path) = cluster::kubeconfig_path() else {
        return;
    };
    cluster::with_namespace("lc-check", |client, ns| async move {
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        let pp = PatchParams::apply(cluster::MANAGER).force();
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        sas.patch(
            "op",
            &pp,
            &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "op"}})),
        )
        .await
        .unwrap();
        // The chart's rules (and the Lease's), granted in this namespace only.
        let role = |drop: Option<(&str, &str)>| {
            let mut rules: Vec<Value> = berth::cli::operator_check::cluster_rules()
                .unwrap()
                .into_iter()
                .filter(|(_, r, v)| drop != Some((r.as_str(), v.as_str())))
                .map(|(g, r, v)| json!({"apiGroups": [g], "resources": [r], "verbs": [v]}))
                .collect();
            rules.push(
                json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "verbs": ["get", "create", "update"]}),
            );
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "op"}, "rules": rules})
        };
        let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
        roles
            .patch("op", &pp, &Patch::Apply(role(None)))
            .await
            .unwrap();
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        bindings
            .patch(
                "op",
                &pp,
                &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "op"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "op"},
                "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": ns}]})),
            )
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = impersonating_kubeconfig(&path, &ns, "op", dir.path());
        let check = || {
            let out = Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["operator", "--check", "--namespace", &ns])
                .args(["--leader-election-namespace", &ns])
                .env("KUBECONFIG", &kubeconfig)
                .env_remove("BERTH_NAMESPACE")
                .env_remove("POD_NAMESPACE")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            println!("{text}");
            (out.status, text)
        };
        // Everything granted (RBAC is evaluated at once, but allow the authorizer's cache).
        let (status, text) = wait_for("--check passes with the full Role", || {
            let r = check();
            async move { r.0.success().then_some(r) }
        })
        .await;
        assert!(status.success(), "{text}");
        assert!(
            text.contains("everything the operator needs is there"),
            "{text}"
        );

        // One verb taken away: named, exit non-zero.
        roles
            .patch(
                "op",
                &pp,
                &Patch::Apply(role(Some(("deployments", "delete")))),
            )
            .await
            .unwrap();
        let (status, text) = wait_for("--check names the missing verb", || {
            let r = check();
            async move { (!r.0.success()).then_some(r) }
        })
        .await;
        assert_eq!(status.code(), Some(1), "{text}");
        let missing: Vec<&str> = text.lines().filter(|l| l.starts_with("MISSING")).collect();
        assert_eq!(
            missing,
            [format!("MISSING  RBAC: delete deployments.apps in namespace {ns}").as_str()],
            "{text}"
        );
    })
    .await;
}
