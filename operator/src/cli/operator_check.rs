//! `berth operator --check`: what the operator needs, checked with its own identity, printed
//! one line each, and a non-zero exit with the list of what is missing.
//!
//! - the API server answers;
//! - every berth CRD is served and current ([`crate::controller::crd_check`]);
//! - every verb of the chart's ClusterRole (and of its leader-election Role) is granted, asked
//!   with a SelfSubjectAccessReview per verb, in the watched namespace (or cluster-wide).

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::exit;
use super::operator_args::OperatorArgs;
use crate::controller::crd_check;

/// The chart's ClusterRole: exactly the verbs the controllers use (tests/chart.rs pins it).
const CLUSTER_ROLE: &str = include_str!("../../../charts/berth/templates/clusterrole.yaml");

#[derive(Debug, serde::Deserialize)]
struct Rules {
    rules: Vec<Rule>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

/// (API group, resource, verb) of every rule of the chart's ClusterRole.
pub fn cluster_rules() -> Result<Vec<(String, String, String)>, serde_norway::Error> {
    // The rules are plain YAML below `rules:`; template lines ({{ }}) are not part of them,
    // nor are the optional grants between `{{- if ... }}` and `{{- end }}` (e.g. list/watch on
    // Secrets with certificates.watchSecrets): the operator works without them.
    let mut optional = 0usize;
    let mut rules = String::new();
    for l in CLUSTER_ROLE
        .lines()
        .skip_while(|l| !l.starts_with("rules:"))
    {
        if l.contains("{{") {
            if l.contains(" if ") {
                optional += 1;
            } else if l.contains(" end ") {
                optional = optional.saturating_sub(1);
            }
            continue;
        }
        if optional == 0 {
            rules.push_str(l);
            rules.push('\n');
        }
    }
    let parsed: Rules = serde_norway::from_str(&rules)?;
    let mut out = Vec::new();
    for r in parsed.rules {
        for g in &r.api_groups {
            for res in &r.resources {
                for v in &r.verbs {
                    out.push((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    Ok(out)
}

/// The leader-election Lease, in the Lease's namespace.
pub const LEASE_VERBS: &[&str] = &["get", "create", "update"];

const TIMEOUT: Duration = Duration::from_secs(10);

/// One permission: `create deployments.apps in namespace x`.
fn describe(verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> String {
    let (res, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let mut name = if group.is_empty() {
        res.to_string()
    } else {
        format!("{res}.{group}")
    };
    if let Some(s) = sub {
        name.push('/');
        name.push_str(s);
    }
    match namespace {
        Some(ns) => format!("{verb} {name} in namespace {ns}"),
        None => format!("{verb} {name} (all namespaces)"),
    }
}

async fn allowed(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> Result<bool, String> {
    let (res, sub) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(res),
                subresource: sub,
                verb: Some(verb.into()),
                namespace: namespace.map(String::from),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    match tokio::time::timeout(TIMEOUT, api.create(&PostParams::default(), &review)).await {
        Ok(Ok(r)) => Ok(r.status.is_some_and(|s| s.allowed)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the API server did not answer in time".into()),
    }
}

/// Prints each check and returns the exit code.
pub async fn run(args: &OperatorArgs) -> u8 {
    let mut missing: Vec<String> = Vec::new();
    let mut config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            println!(
                "MISSING  a Kubernetes client configuration: {e}; set KUBECONFIG or run in a pod"
            );
            return exit::INVALID;
        }
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(TIMEOUT);
    let client = match kube::Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            println!("MISSING  a Kubernetes client: {e}");
            return exit::INVALID;
        }
    };

    match tokio::time::timeout(TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => println!(
            "ok       API server reachable (Kubernetes {}.{})",
            v.major, v.minor
        ),
        Ok(Err(e)) => missing.push(format!("the API server: {e}")),
        Err(_) => missing.push("the API server: no answer within 10 s".into()),
    }
    if !missing.is_empty() {
        return report(missing);
    }

    match crd_check::check(&client).await {
        Ok(problems) => {
            for r in crd_check::required() {
                match problems.iter().find(|p| p.crd() == r.crd) {
                    Some(p) => missing.push(p.to_string()),
                    None => println!("ok       CRD {} served and current", r.crd),
                }
            }
        }
        Err(e) => missing.push(e.to_string()),
    }

    let ns = args.namespace.clone();
    let mut checks: Vec<(String, String, String, Option<String>)> = match cluster_rules() {
        Ok(rules) => rules
            .into_iter()
            .map(|(g, r, v)| (v, g, r, ns.clone()))
            .collect(),
        Err(e) => {
            missing.push(format!(
                "the list of RBAC rules built into berth is unreadable: {e}"
            ));
            Vec::new()
        }
    };
    if args.leader_elect {
        let lease_ns = args
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        for verb in LEASE_VERBS {
            checks.push((
                verb.to_string(),
                "coordination.k8s.io".into(),
                "leases".into(),
                Some(lease_ns.clone()),
            ));
        }
    }
    let mut granted = 0;
    for (verb, group, resource, namespace) in &checks {
        let what = describe(verb, group, resource, namespace.as_deref());
        match allowed(&client, verb, group, resource, namespace.as_deref()).await {
            Ok(true) => granted += 1,
            Ok(false) => missing.push(format!("RBAC: {what}")),
            Err(e) => missing.push(format!("RBAC: cannot ask whether {what} is allowed: {e}")),
        }
    }
    println!(
        "ok       {granted} of {} RBAC permissions granted",
        checks.len()
    );
    report(missing)
}

fn report(missing: Vec<String>) -> u8 {
    if missing.is_empty() {
        println!("everything the operator needs is there");
        return exit::OK;
    }
    for m in &missing {
        println!("MISSING  {m}");
    }
    println!(
        "{} thing(s) missing: install the CRDs with `kubectl apply --server-side -f crds/` and grant the verbs of charts/berth/templates/clusterrole.yaml",
        missing.len()
    );
    exit::INVALID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_rules_are_read() {
        let rules = cluster_rules().unwrap();
        for want in [
            ("berth.dev", "appstacks", "watch"),
            ("apps", "deployments/scale", "patch"),
            ("events.k8s.io", "events", "create"),
        ] {
            assert!(
                rules
                    .iter()
                    .any(|(g, r, v)| (g.as_str(), r.as_str(), v.as_str()) == want),
                "{want:?} not in {rules:?}"
            );
        }
        // Optional grants (certificates.watchSecrets) are not required.
        for verb in ["list", "watch"] {
            assert!(
                !rules
                    .iter()
                    .any(|(g, r, v)| g.is_empty() && r == "secrets" && v == verb),
                "{verb} secrets is optional"
            );
        }
        assert!(rules
            .iter()
            .any(|(g, r, v)| g.is_empty() && r == "secrets" && v == "get"));
    }

    #[test]
    fn permissions_read_like_kubectl() {
        assert_eq!(
            describe("patch", "apps", "deployments/scale", Some("x")),
            "patch deployments.apps/scale in namespace x"
        );
        assert_eq!(
            describe("create", "", "secrets", None),
            "create secrets (all namespaces)"
        );
    }
}
