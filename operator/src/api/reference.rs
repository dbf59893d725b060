//! docs/api.md, generated from the CRD schemas so the field documentation has one source: the
//! doc comments on the Rust types.

use std::fmt::Write;

use serde_json::Value;

use super::crds;

/// The API reference as Markdown.
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str("# berth API reference (`berth.dev/v1alpha1`)\n\n");
    out.push_str(
        "Generated from the CRD schemas by `make docs` (`berth crds --markdown`); a test fails when \
         this file differs from the code. The field descriptions are the doc comments of the Rust \
         types in `operator/src/api/`. Durations are strings like `90s`, `15m`, `12h`, `30d` (units \
         ms, s, m, h, d; combinable: `1h30m`). Quantities are Kubernetes quantities (`500m`, `512Mi`, \
         `10Gi`). Cron schedules have 5 fields. Unknown fields are errors.\n\n",
    );
    out.push_str("Refinements of the contract in `shared/API.md`, decided here:\n\n");
    for line in REFINEMENTS {
        let _ = writeln!(out, "- {line}");
    }
    out.push('\n');
    for crd in crds() {
        let names = &crd.spec.names;
        let _ = writeln!(out, "## {}\n", names.kind);
        let _ = writeln!(
            out,
            "Plural `{}`, short names `{}`, category `{}`; namespaced; subresources: {}.\n",
            names.plural,
            names.short_names.clone().unwrap_or_default().join("`, `"),
            names.categories.clone().unwrap_or_default().join(", "),
            subresources(&crd)
        );
        let Some(schema) = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
        else {
            continue;
        };
        out.push_str(
            "| Field | Type | Required | Default | Description |\n|---|---|---|---|---|\n",
        );
        for part in ["spec", "status"] {
            if let Some(node) = schema.pointer(&format!("/properties/{part}")) {
                let required = part == "spec";
                rows(&mut out, part, node, required);
            }
        }
        out.push('\n');
    }
    out
}

const REFINEMENTS: [&str; 8] = [
    "`Scaling.pollInterval` defaults to `1s` (not `5s`), so a scaling decision follows a depth change within 2 s.",
    "`Scaling.onQueueUnavailable` is a typed object `{replicas: N}` (absent: hold the current replicas); `replicas` must be <= `maxReplicas`.",
    "`api.port` defaults to 8080 and `api.replicas` to 1; `api.routes` defaults to one route `/`; `api.maxBodySize` defaults to `1Mi`.",
    "Workers, services, routes and env lists are list-maps keyed by `name` (routes by `path`): duplicates are rejected by the API server.",
    "`services[].mountPath` (default `/data`) says where a service's `storage` is mounted; `redis.storage` turns on append-only persistence.",
    "`Worker.spec.terminationGracePeriodSeconds` (default 30) gives a stopping replica time to finish its job.",
    "A `v1` `Secret` may stand in a manifest folder for the Docker host, where there is no API server to hold it.",
    "`Certificate.spec.issuer.acme.http01.ingressClassName` chooses the ingress class of the challenge Ingress.",
];

fn subresources(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let mut parts = Vec::new();
    if let Some(sub) = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.subresources.as_ref())
    {
        if sub.status.is_some() {
            parts.push("status".to_string());
        }
        if let Some(scale) = &sub.scale {
            parts.push(format!(
                "scale (`{}`, `{}`, `{}`)",
                scale.spec_replicas_path,
                scale.status_replicas_path,
                scale.label_selector_path.clone().unwrap_or_default()
            ));
        }
    }
    parts.join(", ")
}

fn rows(out: &mut String, path: &str, node: &Value, required: bool) {
    let ty = type_of(node);
    let default = node
        .get("default")
        .map(|d| format!("`{d}`"))
        .unwrap_or_default();
    let mut description = node
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .replace('\n', " ")
        .replace('|', "\\|");
    let rules = constraints(node);
    if !rules.is_empty() {
        let _ = write!(
            description,
            " <br>*{}*",
            rules.join("; ").replace('|', "\\|")
        );
    }
    let _ = writeln!(
        out,
        "| `{path}` | {ty} | {} | {default} | {description} |",
        if required { "yes" } else { "" }
    );
    let required_children: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let (children, prefix) = match node.get("type").and_then(Value::as_str) {
        Some("array") => (
            node.pointer("/items/properties").and_then(Value::as_object),
            format!("{path}[]"),
        ),
        _ => (
            node.get("properties").and_then(Value::as_object),
            path.to_string(),
        ),
    };
    let required_items: Vec<&str> = node
        .pointer("/items/required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(children) = children {
        for (name, child) in children {
            let req = required_children.contains(&name.as_str())
                || required_items.contains(&name.as_str());
            rows(out, &format!("{prefix}.{name}"), child, req);
        }
    }
}

fn type_of(node: &Value) -> String {
    if node.get("x-kubernetes-preserve-unknown-fields").is_some() && node.get("type").is_none() {
        return "any".into();
    }
    match node.get("type").and_then(Value::as_str) {
        Some("array") => format!(
            "[]{}",
            node.get("items")
                .map(type_of)
                .unwrap_or_else(|| "any".into())
        ),
        Some(t) => t.to_string(),
        None => "any".into(),
    }
}

fn constraints(node: &Value) -> Vec<String> {
    let mut c = Vec::new();
    if let Some(e) = node.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = e
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect();
        c.push(format!("one of: {}", names.join(", ")));
    }
    for (key, label) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ] {
        if let Some(v) = node.get(key).and_then(Value::as_f64) {
            c.push(format!("{label} {v}"));
        }
    }
    if let Some(p) = node.get("pattern").and_then(Value::as_str) {
        c.push(format!("pattern `{p}`"));
    }
    if let Some(rules) = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            if let Some(m) = r.get("message").and_then(Value::as_str) {
                c.push(format!("rule: {m}"));
            }
        }
    }
    c
}
