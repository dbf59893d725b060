//! The API contract: checked-in CRDs and docs match the code, the CRDs are structural schemas an
//! API server accepts, every CEL rule compiles and fires, every example is valid and every
//! manifest of the invalid corpus is rejected with the expected message.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

fn berth(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run berth");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn schemas() -> Vec<(String, Value)> {
    berth::api::crds()
        .into_iter()
        .map(|crd| {
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).unwrap())
                .unwrap();
            (crd.spec.names.kind.clone(), schema)
        })
        .collect()
}

fn schema_of(kind: &str) -> Value {
    schemas().into_iter().find(|(k, _)| k == kind).unwrap().1
}

#[test]
fn checked_in_crds_match_the_code() {
    for (file, body) in berth::api::crd_files().unwrap() {
        let path = repo().join("crds").join(&file);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
        assert!(
            on_disk == body,
            "crds/{file} differs from the code: run `make crds` and commit"
        );
    }
    let files: Vec<_> = std::fs::read_dir(repo().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files.len(),
        4,
        "crds/ holds exactly one file per kind: {files:?}"
    );
}

#[test]
fn api_reference_matches_the_code() {
    let on_disk = std::fs::read_to_string(repo().join("docs/api.md")).unwrap();
    assert!(
        on_disk == berth::api::reference::markdown(),
        "docs/api.md differs from the code: run `make docs` and commit"
    );
}

#[test]
fn crds_carry_names_subresources_and_columns() {
    for crd in berth::api::crds() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, "berth.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            names.categories.as_deref(),
            Some(&["berth".to_string()][..])
        );
        assert!(names.short_names.as_ref().is_some_and(|s| !s.is_empty()));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        let sub = v.subresources.as_ref().expect("subresources");
        assert!(
            sub.status.is_some(),
            "{} has a status subresource",
            names.kind
        );
        let columns = v.additional_printer_columns.as_ref().expect("columns");
        assert!(columns
            .iter()
            .any(|c| c.name == "Ready" || c.name == "Phase"));
        if names.kind == "Worker" {
            let scale = sub.scale.as_ref().expect("Worker has a scale subresource");
            assert_eq!(scale.spec_replicas_path, ".spec.replicas");
            assert_eq!(scale.status_replicas_path, ".status.replicas");
            assert_eq!(
                scale.label_selector_path.as_deref(),
                Some(".status.selector")
            );
        } else {
            assert!(sub.scale.is_none());
        }
    }
}

/// The rules of a structural schema (apiextensions.k8s.io/v1), which a real API server enforces
/// on every CRD it accepts.
fn structural_errors(node: &Value, path: &str, errors: &mut Vec<String>) {
    let obj = match node.as_object() {
        Some(o) => o,
        None => {
            errors.push(format!("{path}: schema node is not an object"));
            return;
        }
    };
    for forbidden in [
        "$ref",
        "definitions",
        "$schema",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
    ] {
        if obj.contains_key(forbidden) {
            errors.push(format!("{path}: {forbidden} is not allowed here"));
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields");
    if let Some(p) = preserve {
        if p != &Value::Bool(true) {
            errors.push(format!(
                "{path}: x-kubernetes-preserve-unknown-fields must be true"
            ));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    match obj.get("type").and_then(Value::as_str) {
        None if preserve.is_none() && !int_or_string => {
            errors.push(format!("{path}: type is missing"))
        }
        Some(t) if !["object", "array", "string", "integer", "number", "boolean"].contains(&t) => {
            errors.push(format!("{path}: unknown type {t}"))
        }
        _ => {}
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        errors.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural_errors(v, &format!("{path}.{k}"), errors);
        }
    }
    if let Some(items) = obj.get("items") {
        if items.is_array() {
            errors.push(format!("{path}: items must be one schema"));
        } else {
            structural_errors(items, &format!("{path}[]"), errors);
        }
        if obj.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
            let required: Vec<&str> = items
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for key in obj["x-kubernetes-list-map-keys"].as_array().unwrap() {
                let key = key.as_str().unwrap();
                let has_default = items
                    .pointer(&format!("/properties/{key}/default"))
                    .is_some();
                if !required.contains(&key) && !has_default {
                    errors.push(format!(
                        "{path}: list-map key {key} must be required or defaulted"
                    ));
                }
                if items
                    .pointer(&format!("/properties/{key}/nullable"))
                    .is_some()
                {
                    errors.push(format!("{path}: list-map key {key} must not be nullable"));
                }
            }
        }
    }
    if let Some(Value::Object(ap)) = obj.get("additionalProperties") {
        structural_errors(&Value::Object(ap.clone()), &format!("{path}.*"), errors);
    }
    if let (Some(default), Some(t)) = (obj.get("default"), obj.get("type").and_then(Value::as_str))
    {
        let ok = match t {
            "string" => default.is_string(),
            "integer" => default.is_i64() || default.is_u64(),
            "number" => default.is_number(),
            "boolean" => default.is_boolean(),
            "array" => default.is_array(),
            "object" => default.is_object(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{path}: default {default} is not a {t}"));
        }
    }
}

#[test]
fn crds_are_structural_schemas() {
    for (kind, schema) in schemas() {
        let mut errors = Vec::new();
        structural_errors(&schema, kind.as_str(), &mut errors);
        // metadata may only be declared as a plain object at the root.
        if let Some(meta) = schema.pointer("/properties/metadata") {
            let keys: Vec<_> = meta.as_object().unwrap().keys().collect();
            assert!(
                keys.iter().all(|k| *k == "type"),
                "{kind}: metadata restricted: {keys:?}"
            );
        }
        assert_eq!(errors, Vec::<String>::new(), "{kind} is not structural");
    }
}

#[test]
fn the_checker_sees_a_non_structural_schema() {
    // The rules above must be able to fail.
    let mut errors = Vec::new();
    let bad =
        json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}, "b": {}}});
    structural_errors(&bad, "x", &mut errors);
    assert_eq!(errors.len(), 3, "{errors:?}");
}

// ---- CEL ----

fn cel_errors(kind: &str, object: &Value) -> Vec<String> {
    let validator = kube_cel::Validator::new();
    match validator.validate(&schema_of(kind), object, None) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn every_cel_rule_compiles_within_the_cost_budget() {
    for (kind, schema) in schemas() {
        let compiled = kube_cel::compile_schema(&schema);
        let text = format!("{:?}", compiled.compilation_errors());
        assert!(
            compiled.compilation_errors().is_empty(),
            "{kind}: CEL rules do not compile: {text}"
        );
        let mut rules = Vec::new();
        collect_rules(&schema, &mut rules);
        assert!(!rules.is_empty());
    }
}

fn collect_rules(node: &Value, out: &mut Vec<String>) {
    if let Some(rules) = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            out.push(r["rule"].as_str().unwrap().to_string());
        }
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        props.values().for_each(|v| collect_rules(v, out));
    }
    if let Some(items) = node.get("items") {
        collect_rules(items, out);
    }
}

fn stack(spec: Value) -> Value {
    json!({"apiVersion": "berth.dev/v1alpha1", "kind": "AppStack", "metadata": {"name": "s"}, "spec": spec})
}

/// Each CEL rule of the CRDs, with an object that breaks it and the message the API server
/// returns; the same object must also be rejected by `berth validate` offline.
#[test]
fn every_cel_rule_fires_and_berth_validate_agrees() {
    let api = json!({"image": "app:1"});
    let worker = |spec: Value| json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Worker", "metadata": {"name": "w"}, "spec": spec});
    let cert = |issuer: Value| json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Certificate", "metadata": {"name": "c"}, "spec": {"secretName": "c-tls", "dnsNames": ["a.example.com"], "issuer": issuer}});
    let backup = |db: Value, dest: Value, ret: Value| json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "b"}, "spec": {"schedule": "0 2 * * *", "database": db, "destination": dest, "retention": ret}});
    let vol = json!({"volume": {"size": "1Gi"}});
    let keep = json!({"keepLast": 3});
    let db = json!({"appStackRef": "s"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "AppStack",
            stack(json!({"api": api, "tls": {"certificateRef": "c"}})),
            "tls needs spec.domain",
        ),
        (
            "AppStack",
            stack(json!({"api": api, "domain": "a.example.com", "tls": {}})),
            "exactly one of certificateRef or issuer",
        ),
        (
            "AppStack",
            stack(json!({"api": {"image": "app:1", "env": [{"name": "A"}]}})),
            "exactly one of value or secretKeyRef",
        ),
        (
            "AppStack",
            stack(
                json!({"api": api, "postgres": {"version": "16", "external": {"urlSecretRef": {"name": "d", "key": "u"}}}}),
            ),
            "external excludes version",
        ),
        (
            "AppStack",
            stack(json!({"api": api, "postgres": {"version": "16", "image": "pg:16"}})),
            "either version or image",
        ),
        (
            "AppStack",
            stack(
                json!({"api": api, "redis": {"maxMemory": "1Gi", "external": {"urlSecretRef": {"name": "d", "key": "u"}}}}),
            ),
            "external excludes version, image, maxMemory",
        ),
        (
            "AppStack",
            stack(
                json!({"api": api, "redis": {}, "workers": [{"name": "a", "image": "w:1", "queue": {"type": "stream", "name": "q"}}]}),
            ),
            "a stream queue needs consumerGroup",
        ),
        (
            "AppStack",
            stack(
                json!({"api": api, "redis": {}, "workers": [{"name": "a", "image": "w:1", "queue": {"type": "list", "name": "q"}, "scaling": {"minReplicas": 5, "maxReplicas": 2}}]}),
            ),
            "must be >= minReplicas",
        ),
        (
            "AppStack",
            stack(
                json!({"api": api, "redis": {}, "workers": [{"name": "a", "image": "w:1", "queue": {"type": "list", "name": "q"}, "scaling": {"maxReplicas": 2, "onQueueUnavailable": {"replicas": 3}}}]}),
            ),
            "must be <= maxReplicas",
        ),
        (
            "AppStack",
            stack(
                json!({"api": api, "redis": {}, "workers": [{"name": "proxy", "image": "w:1", "queue": {"type": "list", "name": "q"}}]}),
            ),
            "is used by berth itself (reserved: api, postgres, redis, proxy)",
        ),
        (
            "AppStack",
            stack(
                json!({"api": api, "workers": [{"name": "a", "image": "w:1", "queue": {"type": "list", "name": "q"}}]}),
            ),
            "add spec.redis to the stack",
        ),
        (
            "AppStack",
            stack(json!({"api": api, "backup": {"schedule": "0 2 * * *"}})),
            "there is no database in this stack to back up",
        ),
        (
            "AppStack",
            stack(
                json!({"api": api, "redis": {}, "workers": [{"name": "a", "image": "w:1", "queue": {"type": "list", "name": "q"}}], "services": [{"name": "a", "image": "s:1", "port": 80}]}),
            ),
            "worker and service names must be unique in a stack",
        ),
        (
            "Worker",
            worker(json!({"image": "w:1", "queue": {"type": "list", "name": "q"}})),
            "a worker needs a Redis",
        ),
        (
            "Certificate",
            cert(json!({})),
            "exactly one of acme, selfSigned or ca",
        ),
        (
            "Certificate",
            cert(json!({"selfSigned": {}, "ca": {"secretName": "ca"}})),
            "exactly one of acme, selfSigned or ca",
        ),
        (
            "Backup",
            backup(json!({}), vol.clone(), keep.clone()),
            "exactly one of appStackRef or urlSecretRef",
        ),
        (
            "Backup",
            backup(db.clone(), json!({}), keep.clone()),
            "exactly one of volume or s3",
        ),
        (
            "Backup",
            backup(db.clone(), vol.clone(), json!({})),
            "set keepLast, maxAge or both",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (kind, object, message)) in cases.iter().enumerate() {
        let errors = cel_errors(kind, object);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "case {i}: CEL should reject with {message:?}, got {errors:?}"
        );
        let file = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&file, serde_norway::to_string(object).unwrap()).unwrap();
        let (code, out, _) = berth(&["validate", "-f", file.to_str().unwrap()]);
        assert_eq!(
            code, 1,
            "case {i}: berth validate must reject it too:\n{out}"
        );
        assert!(
            out.contains(message),
            "case {i}: berth validate should say {message:?}:\n{out}"
        );
    }
    // And the same shapes, corrected, pass both.
    let good = [
        (
            "AppStack",
            stack(
                json!({"api": api, "domain": "a.example.com", "tls": {"certificateRef": "c"}, "redis": {}, "workers": [{"name": "a", "image": "w:1", "queue": {"type": "stream", "name": "q", "consumerGroup": "g"}, "scaling": {"maxReplicas": 2, "onQueueUnavailable": {"replicas": 1}}}]}),
            ),
        ),
        ("Certificate", cert(json!({"selfSigned": {}}))),
        ("Backup", backup(db, vol, keep)),
    ];
    for (kind, object) in good {
        assert_eq!(cel_errors(kind, &object), Vec::<String>::new(), "{object}");
    }
}

// ---- examples and the invalid corpus ----

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn every_example_is_valid() {
    let files = yaml_files(&repo().join("examples"));
    assert!(!files.is_empty(), "examples/ has manifests");
    let (code, out, err) = berth(&["validate", "-f", "examples/"]);
    assert_eq!(
        code, 0,
        "berth validate -f examples/ must exit 0:\n{out}{err}"
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.starts_with('#'),
            "{} begins with a comment saying what it shows",
            file.display()
        );
        // The API server's CEL rules accept every example too.
        for de in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(de).unwrap();
            if let Some(kind) = value.get("kind").and_then(Value::as_str) {
                if kind != "Secret" {
                    assert_eq!(
                        cel_errors(kind, &value),
                        Vec::<String>::new(),
                        "{}",
                        file.display()
                    );
                }
            }
        }
    }
}

#[test]
fn every_invalid_manifest_is_rejected_with_its_message() {
    let files = yaml_files(&repo().join("tests/invalid"));
    assert!(
        files.len() >= 40,
        "the corpus holds at least 40 manifests, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Every `# expect:` line must be in the one run's output (documents with several
        // errors list them all).
        let expects: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(|e| e.trim().to_string())
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let rel = file
            .strip_prefix(repo())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let (code, out, err) = berth(&["validate", "-f", &rel]);
        if code != 1 {
            failures.push(format!("{rel}: exit {code}, expected 1\n{out}{err}"));
        } else {
            for expect in expects.iter().filter(|e| !out.contains(e.as_str())) {
                failures.push(format!("{rel}: expected {expect:?} in:\n{out}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- the command line ----

#[test]
fn validate_exit_codes() {
    let (code, _, err) = berth(&["validate", "-f", "no/such/file.yaml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such file"), "{err}");
    let (code, _, _) = berth(&["validate"]);
    assert_eq!(code, 2, "-f is required");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("two.yaml");
    std::fs::write(
        &f,
        "apiVersion: berth.dev/v1alpha1\nkind: AppStack\nmetadata: {name: a}\nspec: {api: {image: app:1, port: 0}}\n---\napiVersion: berth.dev/v1alpha1\nkind: Worker\nmetadata: {name: b}\nspec: {image: w:1, queue: {type: kafka, name: q}, appStackRef: a}\n",
    )
    .unwrap();
    let (code, out, _) = berth(&["validate", "-f", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 2, "every error is listed:\n{out}");
    assert!(
        lines[0]
            .ends_with("two.yaml: document 1 (AppStack/a): spec.api.port: must be >= 1 (got 0)"),
        "{out}"
    );
    assert!(lines[1].contains("document 2 (Worker/b): spec.queue.type: must be one of list, bullmq, celery, sidekiq, rq, stream (got \"kafka\")"), "{out}");
}

#[test]
fn crds_command_prints_all_four_kinds() {
    let (code, out, _) = berth(&["crds"]);
    assert_eq!(code, 0);
    let kinds: Vec<String> = serde_norway::Deserializer::from_str(&out)
        .map(|d| {
            let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
                serde::Deserialize::deserialize(d).unwrap();
            crd.spec.names.kind
        })
        .collect();
    assert_eq!(kinds, ["AppStack", "Worker", "Certificate", "Backup"]);
}

#[test]
fn help_lists_the_commands() {
    let (code, out, _) = berth(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["crds", "validate"] {
        assert!(out.contains(cmd), "{out}");
    }
}
