//! Is every berth CRD served by the API server, with every field this binary reads and writes?
//!
//! Served kinds come from discovery (`/apis/berth.dev/v1alpha1`), served schemas from the
//! published OpenAPI v3 document of the group; both are readable by every authenticated user
//! (ClusterRole `system:discovery`), so the operator needs no right on CustomResourceDefinitions.
//! A CRD is outdated when its served schema lacks a property of this binary's schema (under
//! `spec` and `status`): then the API server would prune what berth writes there.

use std::collections::BTreeSet;
use std::fmt;

use kube::Client;
use serde_json::Value;

use crate::api::{API_VERSION, GROUP};

/// The command that installs or updates the CRDs, named in every problem.
pub const INSTALL_HINT: &str =
    "install or update them with `kubectl apply --server-side -f crds/` (or the Helm chart with crds.enabled=true)";

/// One CRD this binary needs.
#[derive(Clone, Debug)]
pub struct Required {
    /// `appstacks.berth.dev`
    pub crd: String,
    pub kind: String,
    pub plural: String,
    /// Property paths under `spec` and `status` (`spec.workers[].image`).
    pub paths: BTreeSet<String>,
}

/// What is wrong with one CRD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrdProblem {
    /// The kind is not served: the CRD is not installed (or not established yet).
    NotInstalled { crd: String, kind: String },
    /// Served, but the schema lacks fields this binary uses.
    Outdated { crd: String, missing: Vec<String> },
}

impl CrdProblem {
    pub fn crd(&self) -> &str {
        match self {
            CrdProblem::NotInstalled { crd, .. } | CrdProblem::Outdated { crd, .. } => crd,
        }
    }
}

impl fmt::Display for CrdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrdProblem::NotInstalled { crd, kind } => write!(
                f,
                "CRD {crd} is not installed: the API server does not serve kind {kind} in {API_VERSION}; {INSTALL_HINT}. The controllers start by themselves once it is served"
            ),
            CrdProblem::Outdated { crd, missing } => {
                const SHOWN: usize = 5;
                let mut list = missing
                    .iter()
                    .take(SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if missing.len() > SHOWN {
                    list.push_str(&format!(" and {} more", missing.len() - SHOWN));
                }
                write!(
                    f,
                    "CRD {crd} is older than this operator: its served schema lacks {list}; {INSTALL_HINT}"
                )
            }
        }
    }
}

/// The API server could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read the API server's discovery of {API_VERSION}: {0}; is the API server reachable?")]
    Discovery(kube::Error),
    #[error("cannot read the API server's OpenAPI document of {API_VERSION}: {0}")]
    OpenApi(kube::Error),
}

/// The CRDs of this binary and the property paths of their schemas.
pub fn required() -> Vec<Required> {
    crate::api::crds()
        .into_iter()
        .map(|crd| {
            let names = &crd.spec.names;
            let schema = crd
                .spec
                .versions
                .iter()
                .find(|v| format!("{GROUP}/{}", v.name) == API_VERSION)
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null);
            Required {
                crd: format!("{}.{}", names.plural, crd.spec.group),
                kind: names.kind.clone(),
                plural: names.plural.clone(),
                paths: schema_paths(&schema),
            }
        })
        .collect()
}

/// Every property path under `spec` and `status` of an OpenAPI schema: `spec.a`, `spec.a[].b`,
/// `spec.m.*.c` (map values). A node that preserves unknown fields without listing properties
/// accepts anything below it.
pub fn schema_paths(schema: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if prefix.is_empty() && k != "spec" && k != "status" {
                    continue;
                }
                out.insert(path.clone());
                walk(sub, &path, out);
            }
        }
        if let Some(items) = v.get("items") {
            walk(items, &format!("{prefix}[]"), out);
        }
        if let Some(ap) = v.get("additionalProperties").filter(|a| a.is_object()) {
            walk(ap, &format!("{prefix}.*"), out);
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for sub in v.get(key).and_then(Value::as_array).into_iter().flatten() {
                walk(sub, prefix, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(schema, "", &mut out);
    out
}

/// Paths of `required` that `served` lacks; a path below a served node that preserves unknown
/// fields (and lists no properties) counts as present.
pub fn missing_paths(required: &BTreeSet<String>, served_schema: &Value) -> Vec<String> {
    let served = schema_paths(served_schema);
    let open = open_nodes(served_schema);
    required
        .iter()
        .filter(|p| !served.contains(*p))
        .filter(|p| !open.iter().any(|o| p.starts_with(&format!("{o}."))))
        .cloned()
        .collect()
}

/// Paths of nodes with `x-kubernetes-preserve-unknown-fields` and no properties.
fn open_nodes(schema: &Value) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        if v.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            && v.get("properties").is_none()
        {
            out.push(prefix.to_string());
        }
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(sub, &path, out);
            }
        }
        if let Some(items) = v.get("items") {
            walk(items, &format!("{prefix}[]"), out);
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}

/// The OpenAPI v3 schema name of a kind: `dev.berth.v1alpha1.AppStack`.
pub fn openapi_name(kind: &str) -> String {
    let group: Vec<&str> = GROUP.split('.').rev().collect();
    let version = API_VERSION.rsplit('/').next().unwrap_or(API_VERSION);
    format!("{}.{version}.{kind}", group.join("."))
}

/// Compares what the API server serves with [`required`]. An empty list: all is well.
pub async fn check(client: &Client) -> Result<Vec<CrdProblem>, CheckError> {
    let required = required();
    let served: BTreeSet<String> = match client.list_api_group_resources(API_VERSION).await {
        Ok(list) => list.resources.into_iter().map(|r| r.name).collect(),
        Err(kube::Error::Api(s)) if s.code == 404 => BTreeSet::new(),
        Err(e) => return Err(CheckError::Discovery(e)),
    };
    let mut problems = Vec::new();
    let mut schemas = None;
    for r in &required {
        if !served.contains(&r.plural) {
            problems.push(CrdProblem::NotInstalled {
                crd: r.crd.clone(),
                kind: r.kind.clone(),
            });
            continue;
        }
        if schemas.is_none() {
            schemas = Some(openapi(client).await?);
        }
        // A kind just established may not be published in OpenAPI yet: judged on the next check.
        let Some(schema) = schemas.as_ref().and_then(|s| s.get(openapi_name(&r.kind))) else {
            continue;
        };
        let missing = missing_paths(&r.paths, schema);
        if !missing.is_empty() {
            problems.push(CrdProblem::Outdated {
                crd: r.crd.clone(),
                missing,
            });
        }
    }
    Ok(problems)
}

/// `components.schemas` of the group's OpenAPI v3 document (empty when not published yet).
async fn openapi(client: &Client) -> Result<Value, CheckError> {
    let req = http::Request::get(format!("/openapi/v3/apis/{API_VERSION}"))
        .body(Vec::new())
        .map_err(|e| CheckError::OpenApi(kube::Error::HttpError(e)))?;
    match client.request::<Value>(req).await {
        Ok(doc) => Ok(doc
            .pointer("/components/schemas")
            .cloned()
            .unwrap_or(Value::Null)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Value::Null),
        Err(e) => Err(CheckError::OpenApi(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_of_nested_schemas() {
        let s = json!({"properties": {
            "metadata": {"properties": {"name": {}}},
            "spec": {"properties": {
                "a": {"items": {"properties": {"b": {}}}},
                "m": {"additionalProperties": {"properties": {"c": {}}}}
            }}
        }});
        let p: Vec<String> = schema_paths(&s).into_iter().collect();
        assert_eq!(p, ["spec", "spec.a", "spec.a[].b", "spec.m", "spec.m.*.c"]);
    }

    #[test]
    fn every_crd_is_required_with_its_fields() {
        let r = required();
        let names: Vec<&str> = r.iter().map(|r| r.crd.as_str()).collect();
        for crd in [
            "appstacks.berth.dev",
            "workers.berth.dev",
            "certificates.berth.dev",
            "backups.berth.dev",
        ] {
            assert!(names.contains(&crd), "{names:?}");
        }
        let worker = r.iter().find(|r| r.kind == "Worker").unwrap();
        assert!(worker
            .paths
            .contains("spec.scaling.onQueueUnavailable.replicas"));
        assert_eq!(openapi_name("Worker"), "dev.berth.v1alpha1.Worker");
    }

    #[test]
    fn a_served_schema_without_a_field_is_outdated() {
        let required = schema_paths(&json!({"properties": {"spec": {"properties": {
            "a": {}, "b": {"properties": {"c": {}}}, "o": {"properties": {"x": {}}}
        }}}}));
        let served = json!({"properties": {"spec": {"properties": {
            "a": {}, "b": {}, "o": {"x-kubernetes-preserve-unknown-fields": true}
        }}}});
        assert_eq!(missing_paths(&required, &served), ["spec.b.c"]);
        let p = CrdProblem::Outdated {
            crd: "workers.berth.dev".into(),
            missing: vec!["spec.b.c".into()],
        };
        let text = p.to_string();
        assert!(text.contains("workers.berth.dev") && text.contains("spec.b.c"));
        assert!(
            text.contains("kubectl apply --server-side -f crds/"),
            "{text}"
        );
    }
}
