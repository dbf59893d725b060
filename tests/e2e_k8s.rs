//! End-to-end against a real cluster: `BERTH_E2E_KUBECONFIG` names a kubeconfig whose user
//! may install CRDs, ClusterRoles and namespaces (`make e2e-k8s`; CI starts ../shared/k8s and
//! sets it). Without it every test prints why it is skipped and passes, except under CI=true,
//! where a missing cluster fails.
//!
//! Each test installs the CRDs (server-side apply, idempotent, left installed) and runs the
//! three controllers (AppStack, Worker, Backup) in-process against a fresh namespace, deleted at
//! the end, also when the test fails. They share one cache per kind as in `berth operator`
//! (`berth::shared::SharedWatches`). The controllers do not run as the admin: their client
//! impersonates the ServiceAccount `berth-operator` of the namespace, bound to the ClusterRole
//! the Helm chart renders (`helm template charts/berth`), so a verb the chart forgot fails the
//! test. Tests that need running pods use the `berth-demo/*` images (tests/images/build.sh),
//! imported into the cluster's node by ../shared/k8s/import-image.sh when it is there (with
//! kind: `kind load docker-image berth-demo/api:e2e ...` first).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use berth::api::{AppStack, Certificate};
use berth::controller;
use berth::k8s::{build, BuildOptions, Owner};
use berth::plan::set::ManifestSet;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

#[path = "support/argocd.rs"]
mod argocd;
#[path = "support/cluster.rs"]
mod cluster;
use cluster::{wait_for, MANAGER};
#[path = "support/operator_ns.rs"]
mod operator_ns;
use operator_ns::{apply_obj, in_namespace, in_namespace_with, repo_root};

fn examples() -> ManifestSet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let docs = berth::manifest::load_paths(&[dir]).expect("examples load");
    ManifestSet::from_documents(&docs)
}

/// Creates the user Secrets a stack names, with every key it uses.
async fn user_secrets(client: &Client, ns: &str, stack: &AppStack, set: &ManifestSet) {
    let mut observed = set.observed_for(stack);
    if let Some(r) = stack
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.certificate_ref.clone())
    {
        observed.certificate_secrets.entry(r.clone()).or_insert(r);
    }
    let plan = berth::plan::plan_stack(stack, &observed).expect("examples plan");
    for (name, keys) in controller::user_secret_refs(&plan) {
        let data: BTreeMap<String, String> = keys
            .keys()
            .map(|k| (k.clone(), "e2e-value".to_string()))
            .collect();
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "stringData": data,
        }))
        .unwrap();
        apply_obj(client, ns, &secret).await;
    }
}

/// The names of what the controller should have created for a stack.
async fn expected_children(
    client: &Client,
    ns: &str,
    stack: &AppStack,
    set: &ManifestSet,
) -> berth::k8s::Bundle {
    let api: Api<AppStack> = Api::namespaced(client.clone(), ns);
    let live = api.get(&stack.name_any()).await.expect("the stack exists");
    let mut observed = set.observed_for(&live);
    if let Some(r) = live
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.certificate_ref.clone())
    {
        observed.certificate_secrets.entry(r.clone()).or_insert(r);
    }
    let plan = berth::plan::plan_stack(&live, &observed).unwrap();
    build(&Owner::of(&live), &plan, &BuildOptions::default())
}

async fn exists<K>(client: &Client, ns: &str, name: &str) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    matches!(api.get_opt(name).await, Ok(Some(_)))
}

async fn all_children_exist(client: &Client, ns: &str, b: &berth::k8s::Bundle) -> bool {
    for d in &b.deployments {
        if !exists::<Deployment>(client, ns, &d.name_any()).await {
            return false;
        }
    }
    for s in &b.stateful_sets {
        if !exists::<StatefulSet>(client, ns, &s.name_any()).await {
            return false;
        }
    }
    for s in &b.services {
        if !exists::<Service>(client, ns, &s.name_any()).await {
            return false;
        }
    }
    for i in &b.ingresses {
        if !exists::<Ingress>(client, ns, &i.name_any()).await {
            return false;
        }
    }
    for n in &b.network_policies {
        if !exists::<NetworkPolicy>(client, ns, &n.name_any()).await {
            return false;
        }
    }
    for w in &b.workers {
        if !exists::<berth::api::Worker>(client, ns, &w.name_any()).await {
            return false;
        }
    }
    for c in &b.certificates {
        if !exists::<Certificate>(client, ns, &c.name_any()).await {
            return false;
        }
    }
    for k in &b.backups {
        if !exists::<berth::api::Backup>(client, ns, &k.name_any()).await {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn e2e_examples_create_update_prune_delete() {
    in_namespace("examples", |client, ns| async move {
        let set = examples();
        let c = &client;
        let ns = ns.as_str();
        for cert in &set.certificates {
            apply_obj(c, ns, cert).await;
        }
        for stack in &set.stacks {
            user_secrets(c, ns, stack, &set).await;
            apply_obj(c, ns, stack).await;
        }
        for stack in &set.stacks {
            let name = stack.name_any();
            let bundle = expected_children(c, ns, stack, &set).await;
            wait_for(&format!("every child of {name}"), || async {
                all_children_exist(c, ns, &bundle).await.then_some(())
            })
            .await;
            // The status describes the current generation.
            let api: Api<AppStack> = Api::namespaced(c.clone(), ns);
            wait_for(&format!("status of {name}"), || async {
                let s = api.get(&name).await.ok()?;
                (s.status?.observed_generation == s.metadata.generation).then_some(())
            })
            .await;
        }

        // Update: a new api image reaches the Deployment; credentials stay the same.
        let stack = set
            .stacks
            .iter()
            .find(|s| {
                s.spec
                    .postgres
                    .as_ref()
                    .is_some_and(|p| p.external.is_none())
                    && !s.spec.workers.is_empty()
            })
            .expect("an example with an in-stack database and workers");
        let name = stack.name_any();
        let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
        let creds = format!("{name}-postgres-credentials");
        let before = secrets
            .get(&creds)
            .await
            .expect("generated credentials")
            .data;
        let stacks: Api<AppStack> = Api::namespaced(c.clone(), ns);
        let patch = json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
            "metadata": {"name": name},
            "spec": {"api": {"image": "registry.invalid/e2e/api:2"}},
        });
        stacks
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching the stack");
        let deployments: Api<Deployment> = Api::namespaced(c.clone(), ns);
        let api_name = format!("{name}-api");
        wait_for("the api Deployment to get the new image", || async {
            let d = deployments.get(&api_name).await.ok()?;
            let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
            (image == "registry.invalid/e2e/api:2").then_some(())
        })
        .await;
        assert_eq!(
            secrets.get(&creds).await.unwrap().data,
            before,
            "credentials never rotate"
        );

        // Prune: workers leave the spec, their Worker objects go.
        let workers: Vec<String> = stack
            .spec
            .workers
            .iter()
            .map(|w| format!("{name}-{}", w.name))
            .collect();
        let patch = json!({"spec": {"workers": null}});
        stacks
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("removing the workers");
        for w in &workers {
            wait_for(&format!("Worker {w} to be deleted"), || async {
                (!exists::<berth::api::Worker>(c, ns, w).await).then_some(())
            })
            .await;
        }

        // Delete: garbage collection removes every child through the ownerReferences.
        let bundle = expected_children(c, ns, stack, &set).await;
        stacks
            .delete(&name, &DeleteParams::foreground())
            .await
            .expect("deleting the stack");
        wait_for("the stack's children to be garbage-collected", || async {
            for d in &bundle.deployments {
                if exists::<Deployment>(c, ns, &d.name_any()).await {
                    return None;
                }
            }
            for s in &bundle.services {
                if exists::<Service>(c, ns, &s.name_any()).await {
                    return None;
                }
            }
            for s in &bundle.stateful_sets {
                if exists::<StatefulSet>(c, ns, &s.name_any()).await {
                    return None;
                }
            }
            (!exists::<Secret>(c, ns, &creds).await).then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn e2e_missing_secret_is_reported() {
    in_namespace("secret", |client, ns| async move {
        let stack: AppStack = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
            "metadata": {"name": "needs-keys"},
            "spec": {"api": {"image": "registry.invalid/e2e/api:1",
                "env": [{"name": "K", "secretKeyRef": {"name": "absent", "key": "k"}}]}}
        }))
        .unwrap();
        apply_obj(&client, &ns, &stack).await;
        let api: Api<AppStack> = Api::namespaced(client.clone(), &ns);
        let ready = wait_for("Ready=False SecretNotFound", || async {
            let s = api.get("needs-keys").await.ok()?;
            let c = s
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (c.reason == "SecretNotFound").then_some(c)
        })
        .await;
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains("absent"), "{}", ready.message);
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
        wait_for("a SecretNotFound event", || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("SecretNotFound")
                        && e.reporting_controller.as_deref() == Some("berth")
                })
                .then_some(())
        })
        .await;
        // The Deployment exists anyway and starts once the Secret is created.
        wait_for("the api Deployment", || async {
            exists::<Deployment>(&client, &ns, "needs-keys-api")
                .await
                .then_some(())
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn e2e_leader_lease_is_exclusive() {
    in_namespace("lease", |client, ns| async move {
        use berth::controller::leader::{Elector, LeaseConfig};
        let cfg = |id: &str| LeaseConfig {
            name: "berth-e2e".into(),
            namespace: ns.clone(),
            identity: id.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        let mut a = Elector::new(client.clone(), cfg("a"));
        let mut b = Elector::new(client.clone(), cfg("b"));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        a.release().await.unwrap();
        assert!(b.try_acquire_or_renew().await.unwrap());
        let lease = Api::<Lease>::namespaced(client.clone(), &ns)
            .get("berth-e2e")
            .await
            .unwrap();
        assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("b"));
    })
    .await;
}

/// Every document of a YAML file as JSON (a file that does not parse gives none).
fn yaml_documents(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        match serde_json::Value::deserialize(doc) {
            Ok(v) if !v.is_null() => out.push(v),
            Ok(_) => {}
            Err(_) => return Vec::new(),
        }
    }
    out
}

use serde::Deserialize;

/// `kubectl apply --server-side --dry-run=server` of one document: `Err` with the apiserver's message when
/// it refuses the object (or when the document names no kind the apiserver serves).
async fn dry_run_create(client: &Client, ns: &str, doc: &serde_json::Value) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = doc["kind"].as_str().ok_or("no kind")?;
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let (resource, _caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("kind {kind} of {api_version} is not served: {e}"))?;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let mut obj = doc.clone();
    obj["metadata"]["namespace"] = json!(ns);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // What `kubectl apply --server-side --dry-run=server` sends: strict field validation, so
    // an unknown field is an error rather than a warning.
    let pp = PatchParams::apply(MANAGER)
        .force()
        .dry_run()
        .validation_strict();
    api.patch(&name, &pp, &Patch::Apply(&obj))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// What the CRDs themselves check: every example is accepted by the real apiserver; of the
/// invalid corpus (tests/invalid, every file of which `berth validate` rejects), the count the
/// apiserver rejects by schema and CEL must not fall below what it is today.
#[tokio::test]
async fn e2e_apiserver_accepts_examples_and_rejects_invalid_manifests() {
    /// Files of tests/invalid the apiserver rejects on its own; raise it when a CRD learns a
    /// rule (never lower it).
    const REJECTED_AT_LEAST: usize = 143;
    let Some(client) = cluster::client().await else {
        return;
    };
    cluster::install_crds(&client).await;
    let ns = cluster::create_namespace(&client, "dryrun").await;
    let outcome = AssertUnwindSafe(async {
        let mut files: Vec<_> = walk(&repo_root().join("examples"));
        files.sort();
        let mut accepted = 0;
        for file in &files {
            for doc in yaml_documents(file) {
                if let Err(e) = dry_run_create(&client, &ns, &doc).await {
                    panic!("the apiserver refused a document of {}: {e}", file.display());
                }
                accepted += 1;
            }
        }
        assert!(accepted >= 17, "examples hold {accepted} documents");
        let mut invalid: Vec<_> = std::fs::read_dir(repo_root().join("tests/invalid"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        invalid.sort();
        let mut rejected = 0;
        let mut passed = Vec::new();
        for file in &invalid {
            let mut refused = false;
            let docs = yaml_documents(file);
            if docs.is_empty() {
                refused = true; // not YAML a client could send
            }
            for doc in docs {
                if dry_run_create(&client, &ns, &doc).await.is_err() {
                    refused = true;
                }
            }
            if refused {
                rejected += 1;
            } else {
                passed.push(file.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        println!(
            "apiserver: {accepted} example documents accepted; {rejected} of {} invalid manifests rejected by the CRDs' schema and CEL rules; {} left to berth validate and the controllers (Ready=False InvalidSpec): {}",
            invalid.len(),
            passed.len(),
            passed.join(" ")
        );
        assert!(
            rejected >= REJECTED_AT_LEAST,
            "the apiserver rejects {rejected} invalid manifests, fewer than {REJECTED_AT_LEAST}: a CRD lost a rule"
        );
    })
    .catch_unwind()
    .await;
    cluster::delete_namespace(&client, &ns).await;
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out
}

/// A rule only berth checks (the CRD cannot): the stack gets Ready=False/InvalidSpec with the
/// field named, and a Warning Event; nothing is created.
#[tokio::test]
async fn e2e_invalid_spec_is_reported_on_the_object() {
    in_namespace("invalid", |client, ns| async move {
        // A health-check timeout longer than its interval: valid for the schema, not for berth.
        let stack: AppStack = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
            "metadata": {"name": "clash"},
            "spec": {"api": {"image": "registry.invalid/e2e/api:1",
                "healthCheck": {"path": "/health", "intervalSeconds": 5, "timeoutSeconds": 30}}}
        }))
        .unwrap();
        apply_obj(&client, &ns, &stack).await;
        let api: Api<AppStack> = Api::namespaced(client.clone(), &ns);
        let ready = wait_for("Ready=False InvalidSpec", || async {
            let s = api.get("clash").await.ok()?;
            let st = s.status?;
            let c = st.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (c.reason == "InvalidSpec").then_some(c)
        })
        .await;
        assert_eq!(ready.status, "False");
        assert!(
            ready
                .message
                .contains("spec.api.healthCheck.timeoutSeconds"),
            "the message names the field: {}",
            ready.message
        );
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
        wait_for("an InvalidSpec Warning event", || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("InvalidSpec")
                        && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
        })
        .await;
        assert!(!exists::<Deployment>(&client, &ns, "clash-api").await);
        // Argo CD's view of the live object: Degraded, with the condition's message.
        let live = serde_json::to_value(api.get("clash").await.unwrap()).unwrap();
        let (health, message) = argocd::health(&live);
        assert_eq!(health, "Degraded", "{live}");
        assert!(message.contains("timeoutSeconds"), "{message}");
    })
    .await;
}

/// The `berth-demo/*` images under the tag `e2e` (not `latest`, so the kubelet uses the
/// imported image instead of trying a registry), imported into the node when the cluster is
/// ../shared/k8s. Elsewhere (kind, k3d) load them first: `docker tag berth-demo/api:latest
/// berth-demo/api:e2e; kind load docker-image berth-demo/api:e2e` (api, worker, postgres, redis).
fn import_demo_images() {
    let images = ["api", "worker", "postgres", "redis"];
    for i in images {
        let ok = std::process::Command::new("docker")
            .args([
                "tag",
                &format!("berth-demo/{i}:latest"),
                &format!("berth-demo/{i}:e2e"),
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "docker tag berth-demo/{i}: build the images first (tests/images/build.sh)"
        );
    }
    let dir = std::env::var("BERTH_K8S_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("../shared/k8s"));
    let script = dir.join("import-image.sh");
    if !script.exists() {
        eprintln!(
            "{} not found: assuming berth-demo/*:e2e are loaded into the cluster",
            script.display()
        );
        return;
    }
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(images.map(|i| format!("berth-demo/{i}:e2e")))
        .output()
        .expect("running import-image.sh");
    assert!(
        out.status.success(),
        "import-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// examples/demo with its images at the `e2e` tag.
fn demo_stack() -> AppStack {
    let path = repo_root().join("examples/demo/demo.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(":latest", ":e2e");
    serde_norway::from_str(&text).expect("examples/demo parses")
}

/// resourceVersion of every object in the namespace berth makes or reads, by kind/name.
async fn versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($($k:ty),*) => {$(
            let api: Api<$k> = Api::namespaced(client.clone(), ns);
            for o in api.list(&Default::default()).await.expect("list").items {
                out.insert(
                    format!("{}/{}", <$k as Resource>::kind(&()), o.name_any()),
                    o.resource_version().unwrap_or_default(),
                );
            }
        )*};
    }
    collect!(
        AppStack,
        berth::api::Worker,
        berth::api::Backup,
        Deployment,
        StatefulSet,
        Service,
        Ingress,
        NetworkPolicy,
        Secret,
        k8s_openapi::api::batch::v1::CronJob,
        k8s_openapi::api::events::v1::Event
    );
    out
}

/// examples/demo on real pods: PostgreSQL, Redis, the api (started after both), a worker and a
/// backup schedule; the stack reaches Ready; then 60 s idle change nothing in the API server.
#[tokio::test]
async fn e2e_demo_stack_runs_ready_then_idles_without_writes() {
    in_namespace_with("demo", |client, ns, metrics| async move {
        import_demo_images();
        let mut stack = demo_stack();
        stack.spec.backup = Some(
            serde_json::from_value(json!({"schedule": "17 3 * * *", "destination": {"volume": {"size": "1Gi"}}}))
                .unwrap(),
        );
        apply_obj(&client, &ns, &stack).await;
        let api: Api<AppStack> = Api::namespaced(client.clone(), &ns);
        // While the pods start, Argo CD sees the live stack as Progressing.
        let starting = wait_for("the demo stack's first status", || async {
            let s = api.get("demo").await.ok()?;
            let st = s.status.as_ref()?;
            (st.observed_generation == s.metadata.generation
                && st.phase != Some(berth::api::appstack::Phase::Ready))
            .then(|| serde_json::to_value(&s).unwrap())
        })
        .await;
        assert_eq!(argocd::health(&starting).0, "Progressing", "{starting}");
        let status = cluster::wait_for_within(Duration::from_secs(240), "the demo stack Ready", || async {
            let s = api.get("demo").await.ok()?;
            let st = s.status?;
            (st.phase == Some(berth::api::appstack::Phase::Ready)
                && st.observed_generation == s.metadata.generation)
                .then_some(st)
        })
        .await;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True", "{ready:?}");
        // Argo CD's view of the live object (the Lua health check users paste): Healthy.
        let live = serde_json::to_value(api.get("demo").await.unwrap()).unwrap();
        assert_eq!(argocd::health(&live).0, "Healthy", "{live}");
        // The pods really run: the api Deployment and the database StatefulSet are available.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let d = deployments.get("demo-api").await.unwrap();
        assert!(d.status.unwrap().available_replicas.unwrap_or(0) >= 1);
        // The stack's Worker and Backup children converge too.
        let workers: Api<berth::api::Worker> = Api::namespaced(client.clone(), &ns);
        wait_for("the demo-worker Worker's status", || async {
            let w = workers.get("demo-worker").await.ok()?;
            let st = w.status?;
            (st.observed_generation == w.metadata.generation
                && st.conditions.iter().any(|c| c.type_ == "QueueReachable"))
            .then_some(())
        })
        .await;
        // Argo CD's view of the live Worker: Ready at 0 of 0 replicas is Healthy (its queue is
        // not readable from the test host, which QueueReachable=False says, not the health).
        let w = serde_json::to_value(workers.get("demo-worker").await.unwrap()).unwrap();
        assert_eq!(argocd::health(&w).0, "Healthy", "{w}");
        let cron: Api<k8s_openapi::api::batch::v1::CronJob> = Api::namespaced(client.clone(), &ns);
        let cj = wait_for("the backup CronJob", || async { cron.get_opt("demo-backup").await.ok().flatten().or(cron.list(&Default::default()).await.ok()?.items.into_iter().next()) }).await;
        assert_eq!(cj.spec.unwrap().schedule, "17 3 * * *");

        // Idle: let every controller settle, then nothing changes for 60 s.
        let settle = versions(&client, &ns).await;
        let mut before = settle;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = versions(&client, &ns).await;
            if now == before {
                break;
            }
            before = now;
        }
        let writes_before = metrics.appstack.writes.get();
        let applies_before = metrics.workers.writes.get();
        let start = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let after = versions(&client, &ns).await;
        let changed: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        println!(
            "idle {:?}: {} objects, changed {:?}; AppStack controller writes {}, Worker Deployment applies {}",
            start.elapsed(),
            after.len(),
            changed,
            metrics.appstack.writes.get() - writes_before,
            metrics.workers.writes.get() - applies_before,
        );
        assert!(changed.is_empty(), "objects written while idle: {changed:?}");
        assert_eq!(metrics.appstack.writes.get(), writes_before, "AppStack controller wrote while idle");
        assert_eq!(metrics.workers.writes.get(), applies_before, "Worker controller applied while idle");
    })
    .await;
}

#[path = "support/redis.rs"]
mod redis_support;

fn redis_cli(port: u16, args: &[&str]) {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian redis-tools)");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
}

/// A redis-server on the host and the Secret `queue` (key `url`) that names it.
async fn queue_redis(client: &Client, ns: &str) -> redis_support::RedisServer {
    let redis = redis_support::RedisServer::start_plain();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "queue"}, "stringData": {"url": redis.url()}
    }))
    .unwrap();
    apply_obj(client, ns, &secret).await;
    redis
}

async fn deployment_replicas(client: &Client, ns: &str, name: &str) -> Option<i32> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.get(name).await.ok()?.spec?.replicas
}

/// The real Worker controller and a real redis-server on the host: the Deployment follows
/// the queue depth up and down; a spec change while scaled keeps the scaled count.
#[tokio::test]
async fn e2e_worker_scales_a_deployment_with_a_real_queue() {
    in_namespace("worker", |client, ns| async move {
        let redis = queue_redis(&client, &ns).await;
        let worker: berth::api::Worker = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": "render"},
            "spec": {"image": "registry.invalid/e2e/worker:1",
                "queue": {"type": "list", "name": "jobs", "redis": {"urlSecretRef": {"name": "queue", "key": "url"}}},
                "scaling": {"minReplicas": 0, "maxReplicas": 5, "jobsPerReplica": 5,
                    "pollInterval": "200ms", "scaleDownStabilization": "0s"}}
        }))
        .unwrap();
        apply_obj(&client, &ns, &worker).await;
        wait_for("the Deployment at minReplicas 0", || async {
            (deployment_replicas(&client, &ns, "render").await == Some(0)).then_some(())
        })
        .await;
        let jobs: Vec<String> = (0..12).map(|i| format!("job-{i}")).collect();
        let mut push = vec!["RPUSH", "jobs"];
        push.extend(jobs.iter().map(String::as_str));
        redis_cli(redis.port, &push);
        wait_for("3 replicas for 12 jobs", || async {
            (deployment_replicas(&client, &ns, "render").await == Some(3)).then_some(())
        })
        .await;
        let workers: Api<berth::api::Worker> = Api::namespaced(client.clone(), &ns);
        let status = wait_for("the Worker status with the depth", || async {
            let st = workers.get("render").await.ok()?.status?;
            (st.queue_depth == Some(12)).then_some(st)
        })
        .await;
        assert_eq!(status.desired_replicas, Some(3));

        // A spec change (a new env var) while scaled: the pod template changes, the replica
        // count stays the autoscaler's.
        let patch = json!({"spec": {"env": [{"name": "MODE", "value": "fast"}]}});
        workers
            .patch("render", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let d = wait_for("the new env in the Deployment", || async {
            let d = deployments.get("render").await.ok()?;
            let env = d.spec.as_ref()?.template.spec.as_ref()?.containers[0].env.clone()?;
            env.iter().any(|e| e.name == "MODE").then_some(d)
        })
        .await;
        assert_eq!(d.spec.unwrap().replicas, Some(3), "a spec change must not reset the scaled replicas");

        // Drained: back to zero.
        redis_cli(redis.port, &["DEL", "jobs"]);
        wait_for("0 replicas once the queue is empty", || async {
            (deployment_replicas(&client, &ns, "render").await == Some(0)).then_some(())
        })
        .await;
    })
    .await;
}

/// `kubectl scale worker X --replicas 4` on Workers without `scaling` (a standalone one and
/// one an AppStack owns) sets their Deployments to 4, and nothing sets them back.
#[tokio::test]
async fn e2e_kubectl_scale_worker_is_kept() {
    in_namespace("scale", |client, ns| async move {
        let _redis = queue_redis(&client, &ns).await;
        let worker: berth::api::Worker = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": "mailer"},
            "spec": {"image": "registry.invalid/e2e/worker:1",
                "queue": {"type": "list", "name": "mail", "redis": {"urlSecretRef": {"name": "queue", "key": "url"}}}}
        }))
        .unwrap();
        apply_obj(&client, &ns, &worker).await;
        let stack: AppStack = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
            "metadata": {"name": "shop"},
            "spec": {"api": {"image": "registry.invalid/e2e/api:1"}, "redis": {},
                "workers": [{"name": "jobs", "image": "registry.invalid/e2e/w:1",
                    "queue": {"type": "list", "name": "jobs"}}]}
        }))
        .unwrap();
        apply_obj(&client, &ns, &stack).await;
        for name in ["mailer", "shop-jobs"] {
            wait_for(&format!("the {name} Deployment at 1"), || async {
                (deployment_replicas(&client, &ns, name).await == Some(1)).then_some(())
            })
            .await;
        }
        let workers: Api<berth::api::Worker> = Api::namespaced(client.clone(), &ns);
        let scale = json!({"spec": {"replicas": 4}});
        for name in ["mailer", "shop-jobs"] {
            workers
                .patch_scale(name, &PatchParams::default(), &Patch::Merge(&scale))
                .await
                .unwrap_or_else(|e| panic!("kubectl scale worker {name}: {e}"));
        }
        for name in ["mailer", "shop-jobs"] {
            wait_for(&format!("the {name} Deployment at 4"), || async {
                (deployment_replicas(&client, &ns, name).await == Some(4)).then_some(())
            })
            .await;
        }
        // The AppStack is changed and reconciled again; the Workers are reconciled again too.
        let stacks: Api<AppStack> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"spec": {"api": {"env": [{"name": "A", "value": "1"}]}}});
        stacks
            .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        wait_for("the stack's new generation observed", || async {
            let s = stacks.get("shop").await.ok()?;
            (s.status?.observed_generation == s.metadata.generation).then_some(())
        })
        .await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        wait_for("the api Deployment with the new env", || async {
            let d = deployments.get("shop-api").await.ok()?;
            let env = d.spec?.template.spec?.containers[0].env.clone()?;
            env.iter().any(|e| e.name == "A").then_some(())
        })
        .await;
        for name in ["mailer", "shop-jobs"] {
            let touch = json!({"metadata": {"annotations": {"e2e/touch": "1"}}});
            workers
                .patch(name, &PatchParams::default(), &Patch::Merge(&touch))
                .await
                .unwrap();
        }
        // Both Workers keep 4 in the spec and in their Deployments after those reconciles.
        for name in ["mailer", "shop-jobs"] {
            wait_for(&format!("{name}: status with 4 desired"), || async {
                let w = workers.get(name).await.ok()?;
                (w.spec.replicas == Some(4) && w.status?.desired_replicas == Some(4)).then_some(())
            })
            .await;
            assert_eq!(deployment_replicas(&client, &ns, name).await, Some(4), "{name} reverted");
        }
    })
    .await;
}
