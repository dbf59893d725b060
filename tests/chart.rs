//! The Helm chart, checked with a real helm binary (installed by .ci/install-helm): it lints,
//! renders into valid Kubernetes objects, ships the same CRDs as crds/, and grants the operator
//! what it needs and no more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn helm(args: &[&str]) -> String {
    let bin = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let out = Command::new(&bin)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}; install it with .ci/install-helm"));
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "rel",
        "charts/berth",
        "--namespace",
        "berth-system",
    ];
    args.extend_from_slice(extra);
    serde_norway::Deserializer::from_str(&helm(&args))
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind}: {e}")))
        .collect()
}

#[test]
fn chart_lints() {
    let out = helm(&["lint", "charts/berth", "--strict"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for (file, body) in berth::api::crd_files().unwrap() {
        let path = repo().join("charts/berth/files/crds").join(&file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == body,
            "{} differs from the code: run `make crds`",
            path.display()
        );
    }
    // Helm installs a chart's crds/ folder by itself, ungated and never upgraded: the CRDs are
    // templates (templates/crds.yaml) reading files/crds/.
    assert!(
        !repo().join("charts/berth/crds").exists(),
        "charts/berth/crds/ must not exist (Helm would install the CRDs twice): generate into charts/berth/files/crds (make crds)"
    );
}

#[test]
fn default_render_is_a_working_operator() {
    let docs = render(&[]);
    let deployments: Vec<Deployment> = find(&docs, "Deployment");
    assert_eq!(deployments.len(), 1);
    let spec = deployments[0].spec.as_ref().unwrap();
    assert_eq!(
        spec.replicas,
        Some(2),
        "two replicas behind leader election"
    );
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "operator");
    assert!(
        args.contains(&"--ingress-class=nginx".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "watches all namespaces"
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(find::<Value>(&docs, "ClusterRoleBinding").len(), 1);
}

#[test]
fn namespaced_install_binds_only_that_namespace() {
    let docs = render(&["--set", "watchNamespace=shop"]);
    assert!(find::<Value>(&docs, "ClusterRoleBinding").is_empty());
    let bindings: Vec<RoleBinding> = find(&docs, "RoleBinding");
    assert!(bindings
        .iter()
        .any(|b| b.metadata.namespace.as_deref() == Some("shop")));
    let d: Vec<Deployment> = find(&docs, "Deployment");
    let args = d[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--namespace=shop".to_string()), "{args:?}");
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|x| x == group))
            && r.resources
                .as_ref()
                .is_some_and(|g| g.iter().any(|x| x == resource))
            && r.verbs.iter().any(|v| v == verb)
    })
}

/// Every (group, resource) → verbs the ClusterRole grants, flattened.
fn grants(rules: &[PolicyRule]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                out.entry((g.clone(), res.clone()))
                    .or_default()
                    .extend(r.verbs.iter().cloned());
            }
        }
    }
    out
}

#[test]
fn cluster_role_is_least_privilege() {
    let docs = render(&[]);
    let roles: Vec<ClusterRole> = find(&docs, "ClusterRole");
    let rules = roles[0].rules.clone().unwrap();
    for r in &rules {
        assert!(
            !r.verbs.iter().any(|v| v == "*"),
            "no wildcard verbs: {r:?}"
        );
        assert!(
            !r.resources.iter().flatten().any(|v| v == "*"),
            "no wildcard resources: {r:?}"
        );
        assert!(
            !r.api_groups.iter().flatten().any(|v| v == "*"),
            "no wildcard groups: {r:?}"
        );
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
    }
    // Exactly what the controllers use (see the comment in clusterrole.yaml):
    // server-side apply = patch (+ create for a new object); watch = list + watch; prune = delete.
    let managed = ["get", "list", "watch", "create", "patch", "delete"];
    let expected: Vec<(&str, &str, &[&str])> = vec![
        ("berth.dev", "appstacks", &["get", "list", "watch"]),
        ("berth.dev", "appstacks/status", &["get", "patch", "update"]),
        ("berth.dev", "workers", &managed),
        ("berth.dev", "workers/status", &["get", "patch", "update"]),
        ("berth.dev", "backups", &managed),
        ("berth.dev", "backups/status", &["get", "patch", "update"]),
        ("berth.dev", "certificates", &managed),
        (
            "berth.dev",
            "certificates/status",
            &["get", "patch", "update"],
        ),
        ("apps", "deployments", &managed),
        ("apps", "deployments/scale", &["get", "patch", "update"]),
        ("apps", "statefulsets", &managed),
        ("", "services", &managed),
        // Generated credentials are created once and never patched or deleted; user Secrets
        // are only read, by name: never list or watch (that would be every Secret of the cluster).
        // patch: the Certificate controller server-side applies the TLS Secrets it issues (it
        // never deletes one: an Ingress may still serve it).
        ("", "secrets", &["get", "create", "patch"]),
        ("", "persistentvolumeclaims", &["get", "create", "patch"]),
        // The backup pods' termination reports (status.backups); never exec, never delete.
        ("", "pods", &["get", "list"]),
        ("networking.k8s.io", "ingresses", &managed),
        ("networking.k8s.io", "networkpolicies", &managed),
        ("batch", "cronjobs", &managed),
        // backup-now starts a Job at once; finished Jobs are left to the CronJob's history limits.
        ("batch", "jobs", &["get", "list", "watch", "create"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        // The ACME renewal Jobs' account `<certificate>-renew` (server-side apply).
        ("", "serviceaccounts", &["create", "patch"]),
        ("rbac.authorization.k8s.io", "roles", &["create", "patch"]),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            &["create", "patch"],
        ),
    ];
    let expected: BTreeMap<(String, String), BTreeSet<String>> = expected
        .into_iter()
        .map(|(g, r, v)| {
            (
                (g.to_string(), r.to_string()),
                v.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(grants(&rules), expected);
    // RBAC's escalation rule: the Role the Certificate controller makes for its renewal Jobs
    // may only grant what the operator holds itself.
    let cert: berth::api::Certificate = serde_json::from_value(serde_json::json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "prod"},
        "spec": {"secretName": "web-tls", "dnsNames": ["web.example.test"],
                 "issuer": {"acme": {"email": "ops@example.test"}}}
    }))
    .unwrap();
    for r in berth::cert::kube::rbac::rules(&cert) {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(
                        allows(&rules, g, res, v),
                        "the renewer Role grants {g}/{res} {v}, which the operator lacks"
                    );
                }
            }
        }
    }
    // certificates.watchSecrets=true adds list/watch on Secrets (the Certificate controller's
    // metadata watch of its TLS Secrets), nothing else.
    let docs = render(&["--set", "certificates.watchSecrets=true"]);
    let watched = find::<ClusterRole>(&docs, "ClusterRole")[0]
        .rules
        .clone()
        .unwrap();
    let mut with_watch = expected.clone();
    with_watch
        .get_mut(&("".to_string(), "secrets".to_string()))
        .unwrap()
        .extend(["list".to_string(), "watch".to_string()]);
    assert_eq!(grants(&watched), with_watch);
    // Nothing the operator does not touch: no pods/exec, no nodes, no cluster-wide RBAC, no
    // cluster-wide leases.
    for (group, resource) in [
        ("", "pods/exec"),
        ("", "nodes"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("coordination.k8s.io", "leases"),
    ] {
        assert!(
            !allows(&rules, group, resource, "create"),
            "{group}/{resource}"
        );
    }
}

#[test]
fn leader_election_lease_only_in_the_release_namespace() {
    let docs = render(&[]);
    let roles: Vec<k8s_openapi::api::rbac::v1::Role> = find(&docs, "Role");
    let lease_roles: Vec<_> = roles
        .iter()
        .filter(|r| {
            grants(r.rules.as_deref().unwrap_or_default())
                .contains_key(&("coordination.k8s.io".into(), "leases".into()))
        })
        .collect();
    assert_eq!(lease_roles.len(), 1);
    assert_eq!(
        lease_roles[0].metadata.namespace.as_deref(),
        Some("berth-system")
    );
    let g = grants(lease_roles[0].rules.as_deref().unwrap());
    let verbs: Vec<&str> = g[&("coordination.k8s.io".to_string(), "leases".to_string())]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(verbs, ["create", "get", "update"]);
}

#[test]
fn deployment_args_are_flags_berth_operator_accepts() {
    use clap::Parser;
    for extra in [&[][..], &["--set", "watchNamespace=shop"][..]] {
        let docs = render(extra);
        let d: Vec<Deployment> = find(&docs, "Deployment");
        let args = d[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap();
        let mut argv = vec!["berth".to_string()];
        argv.extend(args.clone());
        if let Err(e) = berth::cli::Cli::try_parse_from(&argv) {
            panic!("berth rejects the chart's args {args:?}: {e}");
        }
    }
}

/// `helm template` with these args fails, and the error names the value.
fn render_fails(extra: &[&str], expect: &str) {
    let bin = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let out = Command::new(&bin)
        .args(["template", "rel", "charts/berth"])
        .args(extra)
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{extra:?} was accepted");
    assert!(err.contains(expect), "{extra:?}: {err}");
}

#[test]
fn values_schema_rejects_bad_values() {
    render_fails(&["--set", "replicaCount=two"], "replicaCount");
    render_fails(&["--set", "replicaCount=0"], "replicaCount");
    render_fails(&["--set", "image.pullPolicy=Sometimes"], "pullPolicy");
    render_fails(&["--set", "logFormat=xml"], "logFormat");
    render_fails(&["--set", "crds.enabled=yes"], "crds");
    render_fails(&["--set", "certificates.watchSecrets=yes"], "watchSecrets");
    render_fails(&["--set", "metrics.port=http"], "port");
    render_fails(
        &["--set", "watchNamespace=Not_A_Namespace"],
        "watchNamespace",
    );
    render_fails(&["--set", "replicas=2"], "replicas");
}

/// Parses `doc` into `T` and back: a field the type does not know (a typo, a wrong level) is
/// dropped on the way and shows as a difference.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, doc, "{} does not round-trip", doc["kind"]);
}

#[test]
fn every_rendered_object_parses_into_its_kubernetes_type() {
    for extra in [
        &[][..],
        &[
            "--set",
            "watchNamespace=shop,metrics.serviceMonitor.enabled=true",
        ][..],
        &[
            "--set",
            "replicaCount=1,crds.enabled=false,metrics.service.enabled=false",
        ][..],
    ] {
        for doc in render(extra) {
            match doc["kind"].as_str().unwrap_or_default() {
                "Deployment" => round_trips::<Deployment>(&doc),
                "Service" => round_trips::<Service>(&doc),
                "ServiceAccount" => round_trips::<ServiceAccount>(&doc),
                "ClusterRole" => round_trips::<ClusterRole>(&doc),
                "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(&doc),
                "Role" => round_trips::<Role>(&doc),
                "RoleBinding" => round_trips::<RoleBinding>(&doc),
                "PodDisruptionBudget" => round_trips::<PodDisruptionBudget>(&doc),
                "CustomResourceDefinition" => {
                    let _: CustomResourceDefinition = serde_json::from_value(doc.clone())
                        .unwrap_or_else(|e| panic!("CRD {}: {e}", doc["metadata"]["name"]));
                }
                "ServiceMonitor" => {
                    assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                    assert_eq!(doc["spec"]["endpoints"][0]["port"], "http");
                    assert_eq!(doc["spec"]["endpoints"][0]["path"], "/metrics");
                }
                other => panic!("{extra:?} renders a {other} the test does not know"),
            }
        }
    }
}

fn container(docs: &[Value]) -> k8s_openapi::api::core::v1::Container {
    let d: Vec<Deployment> = find(docs, "Deployment");
    d[0].spec.clone().unwrap().template.spec.unwrap().containers[0].clone()
}

#[test]
fn image_is_what_make_image_builds_and_backup_jobs_get_it() {
    let docs = render(&[]);
    let c = container(&docs);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        c.image.as_deref(),
        Some(format!("berth:{version}").as_str())
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let env = c.env.unwrap();
    let berth_image = env
        .iter()
        .find(|e| e.name == "BERTH_IMAGE")
        .expect("BERTH_IMAGE");
    assert_eq!(
        berth_image.value.as_deref(),
        Some(format!("berth:{version}").as_str())
    );

    let docs = render(&[
        "--set",
        "image.repository=registry.local/berth,image.tag=1.2.3",
    ]);
    let c = container(&docs);
    assert_eq!(c.image.as_deref(), Some("registry.local/berth:1.2.3"));
    let env = c.env.unwrap();
    assert!(env.iter().any(
        |e| e.name == "BERTH_IMAGE" && e.value.as_deref() == Some("registry.local/berth:1.2.3")
    ));
}

#[test]
fn pod_is_locked_down() {
    let docs = render(&[]);
    let d: Vec<Deployment> = find(&docs, "Deployment");
    let pod = d[0].spec.clone().unwrap().template.spec.unwrap();
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    // A rolling update keeps a Ready replica: a new pod is Ready before an old one stops.
    let strategy = d[0].spec.clone().unwrap().strategy.unwrap();
    let ru = strategy.rolling_update.unwrap();
    assert_eq!(
        ru.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
}

#[test]
fn pdb_only_with_more_than_one_replica() {
    let pdbs: Vec<PodDisruptionBudget> = find(&render(&[]), "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    let spec = pdbs[0].spec.clone().unwrap();
    assert!(spec.max_unavailable.is_some());
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/name"],
        "berth"
    );
    assert!(find::<Value>(&render(&["--set", "replicaCount=1"]), "PodDisruptionBudget").is_empty());
}

#[test]
fn service_monitor_is_optional() {
    assert!(find::<Value>(&render(&[]), "ServiceMonitor").is_empty());
    let docs = render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom",
    ]);
    let sm: Vec<Value> = find(&docs, "ServiceMonitor");
    assert_eq!(sm.len(), 1);
    assert_eq!(sm[0]["metadata"]["labels"]["release"], "prom");
    // It selects the metrics Service by its labels.
    let svc: Vec<Service> = find(&docs, "Service");
    let labels = svc[0].metadata.labels.clone().unwrap();
    for (k, v) in sm[0]["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "{k}");
    }
}

#[test]
fn crds_are_gated_kept_and_applied_first() {
    let crds: Vec<CustomResourceDefinition> = find(&render(&[]), "CustomResourceDefinition");
    let names: BTreeSet<String> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    let expected: BTreeSet<String> = berth::api::crds()
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(names, expected);
    for crd in &crds {
        let a = crd.metadata.annotations.clone().unwrap();
        assert_eq!(a["helm.sh/resource-policy"], "keep");
        // Argo CD applies lower waves first: the CRDs before any berth object (wave 0).
        assert!(a["argocd.argoproj.io/sync-wave"].parse::<i32>().unwrap() < 0);
        // Exactly the generated schema.
        let generated = berth::api::crds()
            .into_iter()
            .find(|c| c.metadata.name == crd.metadata.name)
            .unwrap();
        assert!(
            crd.spec == generated.spec,
            "{:?} differs from the generated CRD: run make crds",
            crd.metadata.name
        );
    }
    let kept_off: Vec<CustomResourceDefinition> = find(
        &render(&["--set", "crds.keep=false"]),
        "CustomResourceDefinition",
    );
    assert_eq!(kept_off.len(), 4);
    assert!(kept_off.iter().all(|c| !c
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .contains_key("helm.sh/resource-policy")));
    assert!(find::<Value>(
        &render(&["--set", "crds.enabled=false"]),
        "CustomResourceDefinition"
    )
    .is_empty());
}

#[test]
fn notes_name_the_next_command() {
    let out = helm(&[
        "install",
        "rel",
        "charts/berth",
        "--dry-run=client",
        "--namespace",
        "berth-system",
    ]);
    assert!(
        out.contains("kubectl -n berth-system rollout status deploy/rel-berth"),
        "{out}"
    );
    assert!(out.contains("kubectl get berth -A"), "{out}");
}
