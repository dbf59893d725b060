//! The real-cluster harness of the Kubernetes e2e suites (tests/e2e_k8s.rs,
//! tests/e2e_examples.rs): a fresh namespace, berth's controllers running in-process in it as the
//! ServiceAccount `berth-operator` bound to the ClusterRole the Helm chart renders (so a verb the
//! chart forgot fails the test), and cleanup whatever happens.
//!
//! Include after `#[path = "support/cluster.rs"] mod cluster;` with
//! `#[path = "support/operator_ns.rs"] mod operator_ns;`.
#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use berth::controller::{self, Metrics, Settings};
use berth::k8s::BuildOptions;
use futures::FutureExt;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cluster::{self, MANAGER};

/// The ClusterRole the chart grants the operator, installed under this name for the tests.
pub const CHART_ROLE: &str = "berth-e2e-chart-operator";
/// The ServiceAccount the in-process controllers impersonate.
pub const OPERATOR_SA: &str = "berth-operator";

pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The ClusterRole of `helm template charts/berth`, applied as `CHART_ROLE`.
pub async fn install_chart_role(admin: &Client) {
    let out = std::process::Command::new("helm")
        .args(["template", "berth"])
        .arg(repo_root().join("charts/berth"))
        .output()
        .expect("cannot run helm (install it with .ci/install-helm)");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let mut role: ClusterRole = text
        .split("\n---")
        .filter_map(|doc| serde_norway::from_str::<serde_json::Value>(doc).ok())
        .find(|v| v["kind"] == "ClusterRole")
        .map(|v| serde_json::from_value(v).expect("the chart's ClusterRole parses"))
        .expect("the chart renders a ClusterRole");
    role.metadata = kube::api::ObjectMeta {
        name: Some(CHART_ROLE.into()),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            CHART_ROLE,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await
        .expect("applying the chart's ClusterRole");
}

/// A client that acts as the ServiceAccount `OPERATOR_SA` of `ns`, bound to the chart's
/// ClusterRole in that namespace (the rights a namespaced install of the chart gives).
pub async fn operator_client(admin: &Client, ns: &str) -> Client {
    install_chart_role(admin).await;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": OPERATOR_SA, "namespace": ns}}))
            .unwrap();
    apply_obj(admin, ns, &sa).await;
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": OPERATOR_SA, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CHART_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": ns}],
    }))
    .unwrap();
    apply_obj(admin, ns, &binding).await;
    let path = cluster::kubeconfig_path().expect("a cluster");
    let kubeconfig = Kubeconfig::read_from(&path).expect("the kubeconfig");
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("a client config");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{OPERATOR_SA}"));
    Client::try_from(config).expect("an impersonating client")
}

/// Every controller's metrics, to read what they sent.
#[derive(Clone, Default)]
pub struct OperatorMetrics {
    pub appstack: Arc<Metrics>,
    pub workers: Arc<berth::workers::Metrics>,
}

/// A fresh namespace, the three controllers running in it as the chart's ServiceAccount, and
/// cleanup whatever happens.
pub async fn in_namespace<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    in_namespace_with(test, |client, ns, _| body(client, ns)).await
}

pub async fn in_namespace_with<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Client, String, OperatorMetrics) -> Fut,
    Fut: Future<Output = ()>,
{
    in_namespace_running(test, None, body).await
}

/// Like [`in_namespace_with`]; `acme_job_image: Some(image)` also runs the Certificate
/// controller, its ACME Jobs running `image`.
pub async fn in_namespace_running<F, Fut>(test: &str, acme_job_image: Option<&str>, body: F)
where
    F: FnOnce(Client, String, OperatorMetrics) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(client) = cluster::client().await else {
        return;
    };
    cluster::install_crds(&client).await;
    let ns = cluster::create_namespace(&client, test).await;
    let operator = operator_client(&client, &ns).await;
    let stop = CancellationToken::new();
    let settings = Settings {
        namespace: Some(ns.clone()),
        build: BuildOptions::default(),
        instance: Some("e2e".into()),
    };
    let metrics = OperatorMetrics::default();
    // Wired as `berth operator` does: one watch and one cache per kind, shared.
    let shared = berth::shared::SharedWatches::new(&operator, Some(&ns), acme_job_image.is_some());
    let appstacks = tokio::spawn(controller::run_shared(
        operator.clone(),
        settings,
        metrics.appstack.clone(),
        stop.clone(),
        None,
        Some(shared.appstack),
    ));
    let workers = tokio::spawn(berth::workers::run_shared(
        operator.clone(),
        Some(ns.clone()),
        metrics.workers.clone(),
        stop.clone(),
        Default::default(),
        false,
        Some(shared.workers),
    ));
    let backups = tokio::spawn(berth::backup::kube::controller::run_shared(
        operator.clone(),
        Some(ns.clone()),
        Arc::new(berth::backup::kube::controller::Metrics::default()),
        stop.clone(),
        Default::default(),
        Some(shared.backups),
    ));
    let certs = acme_job_image.map(|image| {
        let mut ctx = berth::cert::kube::controller::Context::new(
            operator.clone(),
            Arc::new(berth::cert::kube::controller::Metrics::default()),
        );
        ctx.jobs.image = image.to_string();
        tokio::spawn(berth::cert::kube::controller::run_shared(
            ctx,
            Some(ns.clone()),
            stop.clone(),
            shared.certificates,
        ))
    });
    let outcome = AssertUnwindSafe(body(client.clone(), ns.clone(), metrics))
        .catch_unwind()
        .await;
    stop.cancel();
    let mut tasks = vec![
        tokio::spawn(async move { appstacks.await.map(|r| r.map_err(|e| e.to_string())) }),
        tokio::spawn(async move { workers.await.map(|r| r.map_err(|e| e.to_string())) }),
        tokio::spawn(async move { backups.await.map(|r| r.map_err(|e| e.to_string())) }),
    ];
    if let Some(certs) = certs {
        tasks.push(tokio::spawn(async move {
            certs.await.map(|r| r.map_err(|e| e.to_string()))
        }));
    }
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(Ok(())))) => {}
            Ok(Ok(Ok(Err(e)))) => eprintln!("a controller ended with an error: {e}"),
            other => eprintln!("a controller did not stop cleanly: {other:?}"),
        }
    }
    cluster::delete_namespace(&client, &ns).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

pub async fn apply_obj<K>(client: &Client, ns: &str, obj: &K)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut v = serde_json::to_value(obj).unwrap();
    v["metadata"]["namespace"] = json!(ns);
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&v),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {} {name}: {e}", K::kind(&())));
}
