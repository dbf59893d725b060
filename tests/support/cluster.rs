//! A real Kubernetes cluster for end-to-end tests, shared by every `tests/e2e_*.rs`.
//!
//! The cluster is the one `BERTH_E2E_KUBECONFIG` names (CI starts ../shared/k8s and sets it;
//! users point it at kind or k3d). Without it a test prints why it is skipped and passes,
//! except in CI (`CI=true`), where a missing cluster fails the test: CI must prove the
//! Kubernetes side for real.
#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::json;

pub const ENV: &str = "BERTH_E2E_KUBECONFIG";
pub const MANAGER: &str = "berth-e2e";
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The kubeconfig path, or `None` (skip) outside CI. In CI a missing cluster is a failure.
pub fn kubeconfig_path() -> Option<String> {
    match std::env::var(ENV) {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !in_ci,
                "CI=true but {ENV} is not set: CI must run the Kubernetes end-to-end tests against a real cluster (.ci/run starts ../shared/k8s)"
            );
            eprintln!("SKIPPED: {ENV} is not set; set it to a kubeconfig to run the Kubernetes end-to-end tests (make e2e-k8s)");
            None
        }
    }
}

/// A client for the test cluster (admin rights: installs CRDs, creates namespaces).
pub async fn client() -> Option<Client> {
    let path = kubeconfig_path()?;
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("{ENV}={path}: cannot read the kubeconfig: {e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{ENV}={path}: {e}"));
    berth::tls::install_default_provider();
    Some(Client::try_from(config).expect("a client from the kubeconfig"))
}

/// Polls `check` until it returns `Some` or `DEADLINE` passes (then panics with `what`).
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_within(DEADLINE, what, check).await
}

/// Polls `check` every 250 ms until it returns `Some` or `deadline` passes.
pub async fn wait_for_within<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Server-side applies berth's CRDs (idempotent; left installed) and waits until each is
/// Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in berth::api::crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("the apiserver refused CRD {name}: {e}"));
        wait_for(&format!("CRD {name} Established"), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
}

/// Creates a fresh namespace `berth-e2e-<test>-<hex>` labelled `berth.dev/e2e=true`.
pub async fn create_namespace(client: &Client, test: &str) -> String {
    let ns = format!("berth-e2e-{test}-{}", berth::plan::wiring::random_hex(3));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": ns, "labels": {"berth.dev/e2e": "true"}}}),
            )
            .expect("a namespace object"),
        )
        .await
        .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
    ns
}

/// Deletes a namespace in the background (its objects go with it); `BERTH_E2E_KEEP=1` keeps
/// it for inspection.
pub async fn delete_namespace(client: &Client, ns: &str) {
    if std::env::var("BERTH_E2E_KEEP").is_ok_and(|v| v == "1") {
        eprintln!("BERTH_E2E_KEEP=1: namespace {ns} kept for inspection");
        return;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Err(e) = namespaces.delete(ns, &DeleteParams::background()).await {
        eprintln!("cleanup: cannot delete namespace {ns}: {e}");
    }
}

/// Runs `body` in a fresh namespace with the CRDs installed, and deletes the namespace
/// afterwards, also when `body` panics. Skips (returns) when there is no cluster outside CI.
pub async fn with_namespace<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(client) = client().await else { return };
    install_crds(&client).await;
    let ns = create_namespace(&client, test).await;
    let outcome = AssertUnwindSafe(body(client.clone(), ns.clone()))
        .catch_unwind()
        .await;
    delete_namespace(&client, &ns).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
