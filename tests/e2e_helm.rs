//! The Helm chart on the real cluster (BERTH_E2E_KUBECONFIG): `helm install charts/berth` with
//! the image `make image` built, imported into the node → two operator pods Running and Ready
//! with the chart's ServiceAccount and RBAC only, one of them the Lease holder; the demo
//! AppStack reaches Ready; `helm upgrade` with a changed value rolls the operator while the Lease
//! stays held; `helm uninstall` leaves the CRDs and the AppStack in place.
//!
//! The release watches only its own fresh namespace (watchNamespace), so it never touches other
//! tests' objects. The CRDs are cluster-wide and shared with the other e2e tests: the test marks
//! them for adoption by its release (Helm's ownership annotations) before installing.

#[path = "support/berth_image.rs"]
mod berth_image;
#[path = "support/cluster.rs"]
mod cluster;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

use berth::api::AppStack;

fn helm(kubeconfig: &str, args: &[&str]) -> String {
    let out = Command::new(std::env::var("HELM").unwrap_or_else(|_| "helm".into()))
        .args(args)
        .args(["--kubeconfig", kubeconfig])
        .current_dir(berth_image::repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm (install it with .ci/install-helm): {e}"));
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn condition_time(pod: &Pod, type_: &str) -> Option<i64> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")?;
    Some(c.last_transition_time.as_ref()?.0.as_millisecond())
}

/// The operator pods of the release, when `n` of them are Running and Ready with `hash` (the
/// pod-template-hash, any when None).
async fn ready_pods(pods: &Api<Pod>, release: &str, n: usize) -> Option<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={release}"));
    let list = pods.list(&lp).await.ok()?.items;
    let live: Vec<Pod> = list
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    (live.len() == n
        && live.iter().all(|p| {
            ready(p) && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        }))
    .then_some(live)
}

async fn lease_holder(leases: &Api<Lease>, name: &str) -> Option<(String, i32)> {
    let l = leases.get_opt(name).await.ok()??;
    let spec = l.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

async fn stack_ready(stacks: &Api<AppStack>, name: &str) -> Option<()> {
    let s = stacks.get_opt(name).await.ok()??;
    s.status?
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
        .then_some(())
}

/// Lets the release adopt the shared CRDs (Helm's ownership metadata), as `helm install` would
/// otherwise refuse objects it did not create.
async fn adopt_crds(client: &Client, release: &str, ns: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in berth::api::crds() {
        let patch = json!({"metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": ns},
        }});
        crds.patch(
            &crd.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap_or_else(|e| panic!("labelling CRD {} for adoption: {e}", crd.name_any()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_upgrade_uninstall_on_a_real_cluster() {
    let Some(kubeconfig) = cluster::kubeconfig_path() else {
        return;
    };
    // The demo's images are tagged `latest`, which the kubelet always tries to pull (there is no
    // registry): the test runs them under a tag of its own, imported like berth's image.
    let demo_images = ["api", "worker", "postgres", "redis"];
    berth_image::ensure_in_cluster(&demo_images, &[]);
    let tagged: Vec<String> = demo_images
        .iter()
        .map(|i| berth_image::retag(&format!("berth-demo/{i}:latest"), "e2e-helm"))
        .collect();
    berth_image::ensure_in_cluster(&[], &tagged.iter().map(String::as_str).collect::<Vec<_>>());
    let image = berth_image::image();
    let (repository, tag) = image
        .rsplit_once(':')
        .map(|(r, t)| (r.to_string(), t.to_string()))
        .expect("BERTH_E2E_IMAGE is repo:tag");
    cluster::with_namespace("helm", |client, ns| async move {
        let release = format!("berth-{}", ns.rsplit('-').next().unwrap_or("x"));
        adopt_crds(&client, &release, &ns).await;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd_uid = crds.get("appstacks.berth.dev").await.unwrap().uid();

        let image_args = [
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            format!("watchNamespace={ns}"),
        ];
        let set = image_args.join(",");
        let started = Instant::now();
        helm(
            &kubeconfig,
            &[
                "install", &release, "charts/berth", "--namespace", &ns, "--set", &set, "--wait", "--force-conflicts",
                "--timeout", "180s",
            ],
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let first = cluster::wait_for("two operator pods Running and Ready", || {
            ready_pods(&pods, &release, 2)
        })
        .await;
        let install_secs = started.elapsed().as_secs_f64();
        for p in &first {
            let spec = p.spec.as_ref().unwrap();
            assert_eq!(
                spec.service_account_name.as_deref(),
                Some(release.as_str()),
                "the operator runs with the chart's ServiceAccount"
            );
            let c = &spec.containers[0];
            assert_eq!(c.image.as_deref(), Some(image.as_str()));
            let created = p.metadata.creation_timestamp.as_ref().unwrap().0.as_millisecond();
            let ready_at = condition_time(p, "Ready").unwrap();
            println!(
                "FIGURE operator pod {}: created → Ready in {:.1} s (image {image})",
                p.name_any(),
                (ready_at - created) as f64 / 1000.0
            );
        }
        println!("FIGURE helm install --wait → two Ready operator pods: {install_secs:.1} s");
        let names: Vec<String> = first.iter().map(|p| p.name_any()).collect();
        let (holder, transitions) = cluster::wait_for("a leader in the Lease", || {
            lease_holder(&leases, &release)
        })
        .await;
        assert!(names.contains(&holder), "leader {holder} is not one of {names:?}");

        // The demo AppStack, reconciled by the chart's operator alone.
        let demo = std::fs::read_to_string(berth_image::repo_root().join("examples/demo/demo.yaml"))
            .unwrap()
            .replace(":latest", ":e2e-helm");
        let mut demo: Value = serde_norway::from_str(&demo).unwrap();
        demo["metadata"]["namespace"] = json!(ns);
        let stacks: Api<AppStack> = Api::namespaced(client.clone(), &ns);
        stacks
            .patch("demo", &PatchParams::apply(cluster::MANAGER), &Patch::Apply(&demo))
            .await
            .expect("the apiserver accepts examples/demo/demo.yaml");
        let t = Instant::now();
        cluster::wait_for_within(Duration::from_secs(240), "the demo AppStack Ready", || {
            stack_ready(&stacks, "demo")
        })
        .await;
        println!("FIGURE demo AppStack Ready in {:.1} s", t.elapsed().as_secs_f64());

        // helm upgrade with a changed value: a new ReplicaSet rolls out, the Lease stays held.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let gen_before = deployments.get(&release).await.unwrap().metadata.generation;
        let upgrade = format!("{set},logLevel=debug");
        let watcher = {
            let leases = leases.clone();
            let release = release.clone();
            tokio::spawn(async move {
                // Sampled through the rollout: the Lease object is never lost; a leader that
                // stops on SIGTERM releases it (holder cleared) and a standby takes it over.
                let mut samples = 0u32;
                let mut missing = 0u32;
                let mut vacant_since: Option<Instant> = None;
                let mut longest_vacancy = Duration::ZERO;
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(600) {
                    match leases.get_opt(&release).await {
                        Ok(Some(l)) => {
                            let held = l
                                .spec
                                .as_ref()
                                .and_then(|s| s.holder_identity.as_deref())
                                .is_some_and(|h| !h.is_empty());
                            match (held, vacant_since) {
                                (false, None) => vacant_since = Some(Instant::now()),
                                (true, Some(t)) => {
                                    longest_vacancy = longest_vacancy.max(t.elapsed());
                                    vacant_since = None;
                                }
                                _ => {}
                            }
                        }
                        _ => missing += 1,
                    }
                    samples += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if std::path::Path::new(&format!("/tmp/{release}.done")).exists() {
                        break;
                    }
                }
                (samples, missing, longest_vacancy)
            })
        };
        let t = Instant::now();
        helm(
            &kubeconfig,
            &[
                "upgrade", &release, "charts/berth", "--namespace", &ns, "--set", &upgrade, "--force-conflicts",
                "--wait", "--timeout", "180s",
            ],
        );
        let second = cluster::wait_for("two upgraded operator pods Ready", || {
            let pods = pods.clone();
            let release = release.clone();
            let names = names.clone();
            async move {
                let p = ready_pods(&pods, &release, 2).await?;
                p.iter().all(|p| !names.contains(&p.name_any())).then_some(p)
            }
        })
        .await;
        println!("FIGURE helm upgrade rollout: {:.1} s", t.elapsed().as_secs_f64());
        let gen_after = deployments.get(&release).await.unwrap().metadata.generation;
        assert!(gen_after > gen_before, "the upgrade changed the Deployment");
        let env = &second[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")));
        let new_names: Vec<String> = second.iter().map(|p| p.name_any()).collect();
        let (holder2, transitions2) = cluster::wait_for("a new pod leading", || {
            let leases = leases.clone();
            let release = release.clone();
            let new_names = new_names.clone();
            async move {
                let (h, t) = lease_holder(&leases, &release).await?;
                new_names.contains(&h).then_some((h, t))
            }
        })
        .await;
        std::fs::write(format!("/tmp/{release}.done"), b"").unwrap();
        let (samples, missing, vacancy) = watcher.await.unwrap();
        let _ = std::fs::remove_file(format!("/tmp/{release}.done"));
        assert_eq!(missing, 0, "the Lease was missing in {missing} of {samples} samples");
        assert!(transitions2 > transitions, "the leadership moved to a new pod through the Lease");
        println!(
            "FIGURE helm upgrade: leader {holder} → {holder2}, leaseTransitions {transitions} → {transitions2}, longest time without a holder {:.1} s ({samples} samples, every 200 ms)",
            vacancy.as_secs_f64()
        );
        cluster::wait_for("the demo AppStack Ready under the new leader", || {
            stack_ready(&stacks, "demo")
        })
        .await;

        // helm uninstall: the operator goes, the CRDs (keep policy) and the user's objects stay.
        helm(&kubeconfig, &["uninstall", &release, "--namespace", &ns, "--wait"]);
        cluster::wait_for("the operator Deployment deleted", || {
            let deployments = deployments.clone();
            let release = release.clone();
            async move { deployments.get_opt(&release).await.ok()?.is_none().then_some(()) }
        })
        .await;
        let crd = crds.get("appstacks.berth.dev").await.expect("the CRD survives helm uninstall");
        assert_eq!(crd.uid(), crd_uid, "the CRD was kept, not recreated");
        assert!(crd.metadata.deletion_timestamp.is_none());
        for name in ["workers.berth.dev", "backups.berth.dev", "certificates.berth.dev"] {
            crds.get(name).await.unwrap_or_else(|e| panic!("{name} after uninstall: {e}"));
        }
        let demo = stacks.get("demo").await.expect("the AppStack survives helm uninstall");
        assert!(demo.metadata.deletion_timestamp.is_none());
    })
    .await;
}
