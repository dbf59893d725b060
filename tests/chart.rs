//! The Helm chart, checked with a real helm binary (installed by .ci/install-helm): it lints,
//! renders into valid Kubernetes objects, ships the same CRDs as crds/, and grants the operator
//! what it needs and no more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding};
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
        let path = repo().join("charts/berth/crds").join(&file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == body,
            "{} differs from the code: run `make crds`",
            path.display()
        );
    }
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
    // Nothing the operator does not touch: no pods/exec, no nodes, no RBAC escalation, no
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
