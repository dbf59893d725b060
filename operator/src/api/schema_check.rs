//! Offline checking of an object against the openAPIV3Schema of its generated CRD: the same
//! schema the API server enforces (types, required fields, enums, ranges, lengths, patterns,
//! list-map keys), plus what `kubectl` reports under strict field validation (unknown fields).
//! CEL rules (`x-kubernetes-validations`) are mirrored by the Rust checks in `validate`.

use std::collections::HashSet;

use regex::Regex;
use serde_json::Value;

use super::patterns;
use super::validate::{FieldError, Path};

/// Fields of `metadata` that a manifest may carry (ObjectMeta's writable fields).
const METADATA_FIELDS: [&str; 11] = [
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
];

/// Checks `value` (a whole object) against `schema` (the CRD version's openAPIV3Schema).
pub fn check(schema: &Value, value: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_node(schema, value, &Path::root(), &mut errors);
    if let Some(meta) = value.get("metadata").and_then(Value::as_object) {
        let path = Path::root().field("metadata");
        for key in meta.keys() {
            if !METADATA_FIELDS.contains(&key.as_str()) {
                errors.push(unknown_field(&path.field(key), key, &METADATA_FIELDS));
            }
        }
    }
    errors
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

fn check_node(schema: &Value, value: &Value, path: &Path, errors: &mut Vec<FieldError>) {
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) == Some(true) || preserve {
            return;
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            errors.push(path.error(format!("must be {} (got null)", article(t))));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !matches!(value, Value::String(_)) && type_name(value) != "integer" {
            errors.push(path.error(format!(
                "must be an integer or a string (got {} {})",
                type_name(value),
                short(value)
            )));
        }
        return;
    }
    let Some(expected) = schema.get("type").and_then(Value::as_str) else {
        return;
    };
    let actual = type_name(value);
    let type_ok = match expected {
        "number" => matches!(actual, "integer" | "number"),
        t => t == actual,
    };
    if !type_ok {
        errors.push(path.error(format!(
            "must be {} (got {actual} {})",
            article(expected),
            short(value)
        )));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let names: Vec<String> = options
                .iter()
                .map(|o| {
                    o.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| o.to_string())
                })
                .collect();
            errors.push(path.error(format!(
                "must be one of {} (got {})",
                names.join(", "),
                short(value)
            )));
        }
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for field in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(field) {
                        errors.push(path.field(field).error("required field is missing"));
                    }
                }
            }
            for (key, child) in map {
                // The API server owns these at the root; the CRD schema does not list them.
                if path.is_root() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = path.field(key);
                match properties.and_then(|p| p.get(key)) {
                    Some(child_schema) => check_node(child_schema, child, &child_path, errors),
                    None => {
                        if let Some(additional) = schema.get("additionalProperties") {
                            if additional.is_object() {
                                check_node(additional, child, &child_path, errors);
                            }
                        } else if let (false, Some(props)) = (preserve, properties) {
                            let known: Vec<&str> = props.keys().map(String::as_str).collect();
                            errors.push(unknown_field(&child_path, key, &known));
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    errors.push(path.error(format!(
                        "must have at most {max} items (got {})",
                        items.len()
                    )));
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    errors.push(path.error(format!(
                        "must have at least {min} item{} (got {})",
                        if min == 1 { "" } else { "s" },
                        items.len()
                    )));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_node(item_schema, item, &path.index(i), errors);
                }
            }
            check_list_keys(schema, items, path, errors);
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    errors.push(
                        path.error(format!("must be at most {max} characters long (got {len})")),
                    );
                }
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    errors.push(path.error(if min == 1 {
                        "must not be empty".to_string()
                    } else {
                        format!("must be at least {min} characters long (got {len})")
                    }));
                }
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                // Patterns come from our own generated schema; one that does not compile is a
                // bug that the CRD tests catch, not something a user can cause.
                if let Ok(re) = Regex::new(pattern) {
                    if !re.is_match(s) {
                        errors.push(path.error(pattern_message(pattern, s)));
                    }
                }
            }
        }
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if v < min {
                    errors.push(path.error(format!("must be >= {min} (got {n})")));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if v > max {
                    errors.push(path.error(format!("must be <= {max} (got {n})")));
                }
            }
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type: map` lists are keyed; `set` lists hold unique values.
fn check_list_keys(schema: &Value, items: &[Value], path: &Path, errors: &mut Vec<FieldError>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Vec<String> = keys
                    .iter()
                    .map(|k| item.get(*k).map(short).unwrap_or_default())
                    .collect();
                if !seen.insert(key.clone()) {
                    let what = keys
                        .iter()
                        .zip(&key)
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    errors.push(
                        path.index(i)
                            .error(format!("duplicate entry: another item already has {what}")),
                    );
                }
            }
        }
        Some("set") => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    errors.push(
                        path.index(i)
                            .error(format!("duplicate value {}", short(item))),
                    );
                }
            }
        }
        _ => {}
    }
}

/// Plain words for the patterns our schemas use; the raw pattern for any other.
fn pattern_message(pattern: &str, got: &str) -> String {
    match pattern {
        "^/" => format!("must start with / (got {got:?})"),
        "^[a-z]([-a-z0-9]*[a-z0-9])?$" => format!(
            "must be a DNS label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit (got {got:?})"
        ),
        "^[0-9]+(\\.[0-9]+)?$" => format!("must be a version number like \"16\" or \"7.2\" (got {got:?})"),
        p if p == patterns::NO_LEADING_SLASH => format!("must not start with / (got {got:?})"),
        p if p == patterns::CRON => format!(
            "must be a cron schedule with 5 fields (minute hour day-of-month month day-of-week) or @daily-style (got {got:?})"
        ),
        p if p == patterns::S3_BUCKET => format!(
            "must be an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-' (got {got:?})"
        ),
        p if p == patterns::URL_OR_EMPTY => format!("must be an http:// or https:// URL (got {got:?})"),
        p if p == patterns::NOT_BLANK => "must not be blank".to_string(),
        p if p == patterns::DURATION => {
            format!("must be a duration like 90s, 15m, 12h or 30d (got {got:?})")
        }
        p if p == patterns::DNS_NAME => {
            format!("must be a lowercase DNS name like app.example.com (got {got:?})")
        }
        p if p == patterns::DNS_NAME_OR_WILDCARD => format!(
            "must be a lowercase DNS name like app.example.com or *.example.com (got {got:?})"
        ),
        p if p == patterns::QUANTITY => {
            format!("must be a quantity like 500m, 512Mi or 10Gi (got {got:?})")
        }
        p if p == patterns::IMAGE => format!(
            "must be an image reference like ghcr.io/acme/api:1.4.2 (lowercase repository, optional tag or @sha256 digest; got {got:?})"
        ),
        _ => format!("must match the pattern {pattern} (got {got:?})"),
    }
}

fn article(t: &str) -> String {
    match t {
        "integer" | "object" | "array" => format!("an {t}"),
        _ => format!("a {t}"),
    }
}

fn unknown_field(path: &Path, key: &str, known: &[&str]) -> FieldError {
    match closest(key, known) {
        Some(guess) => path.error(format!("unknown field (did you mean {guess}?)")),
        None => path.error(format!(
            "unknown field; known fields here: {}",
            known.join(", ")
        )),
    }
}

/// The known name nearest to a typo, when it is near enough to be a likely meaning.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_field() {
        assert_eq!(
            closest("replcas", &["replicas", "image", "port"]),
            Some("replicas")
        );
        assert_eq!(closest("zzz", &["replicas", "image"]), None);
    }
}
