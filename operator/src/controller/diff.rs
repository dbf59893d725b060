//! Whether an observed child already is what berth would apply, so that an unchanged stack
//! costs no write at all.
//!
//! Two checks, both needed:
//! - the `berth.dev/applied-hash` annotation equals the hash of the desired object: catches
//!   berth's own changes, removals included (a field berth stopped setting is not in the
//!   desired object, so the containment check alone would not see it);
//! - every field of the desired object has the same value in the observed one: catches drift
//!   (someone edited a field berth manages). Fields the API server or other managers add are
//!   ignored; quantities compare by value (`0.5` = `500m`).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::units::parse_quantity;

/// Annotation holding the hash of the object berth last applied.
pub const APPLIED_HASH_ANNOTATION: &str = "berth.dev/applied-hash";

/// Hashes `desired` (which must not carry the annotation yet), writes the hash into its
/// annotations and returns it.
pub fn stamp(desired: &mut Value) -> String {
    let hash = hash(desired);
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if !annotations.is_object() {
            *annotations = Value::Object(Default::default());
        }
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_HASH_ANNOTATION.into(), Value::String(hash.clone()));
        }
    }
    hash
}

/// 16 hex characters of SHA-256 over the canonical JSON (object keys sorted).
pub fn hash(v: &Value) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The applied-hash annotation of an observed object.
pub fn applied_hash(observed: &Value) -> Option<&str> {
    observed
        .pointer("/metadata/annotations")?
        .get(APPLIED_HASH_ANNOTATION)?
        .as_str()
}

/// True when applying `desired` (stamped) over `observed` would change nothing berth manages.
pub fn up_to_date(desired: &Value, observed: &Value) -> bool {
    applied_hash(desired).is_some()
        && applied_hash(desired) == applied_hash(observed)
        && contains(observed, desired)
}

/// Every field of `want` is in `have` with an equal value. Lists must have the same length
/// and match element by element (berth owns whole lists: containers, env, ports, rules).
pub fn contains(have: &Value, want: &Value) -> bool {
    match (want, have) {
        (Value::Null, _) => true,
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, wv)| match h.get(k) {
            Some(hv) => contains(hv, wv),
            None => is_empty(wv),
        }),
        (Value::Object(w), Value::Null) => w.values().all(is_empty),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(wv, hv)| contains(hv, wv))
        }
        (Value::Array(w), Value::Null) => w.is_empty(),
        (Value::String(w), Value::String(h)) => w == h || same_quantity(w, h),
        (Value::Number(w), Value::Number(h)) => w == h || w.as_f64() == h.as_f64(),
        (Value::Number(w), Value::String(h)) | (Value::String(h), Value::Number(w)) => {
            same_quantity(&w.to_string(), h)
        }
        (w, h) => w == h,
    }
}

/// What the API server drops when stored: null, `{}` with only empty values, `[]`.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    // Only strings that look like quantities: names and images never start with a digit and
    // a unit, but a cheap guard keeps the parse off most strings.
    let looks = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
    };
    if !looks(a) || !looks(b) {
        return false;
    }
    match (parse_quantity(a), parse_quantity(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamped(mut v: Value) -> Value {
        stamp(&mut v);
        v
    }

    #[test]
    fn stamping_is_stable_and_changes_with_content() {
        let a = stamped(json!({"metadata": {"name": "x"}, "spec": {"replicas": 1}}));
        let b = stamped(json!({"metadata": {"name": "x"}, "spec": {"replicas": 1}}));
        let c = stamped(json!({"metadata": {"name": "x"}, "spec": {"replicas": 2}}));
        assert_eq!(applied_hash(&a), applied_hash(&b));
        assert_ne!(applied_hash(&a), applied_hash(&c));
        assert_eq!(applied_hash(&a).unwrap().len(), 16);
    }

    #[test]
    fn server_additions_are_ignored() {
        let desired = stamped(json!({
            "metadata": {"name": "x", "labels": {"a": "1"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }));
        let mut observed = desired.clone();
        observed["metadata"]["uid"] = json!("u");
        observed["metadata"]["labels"]["extra"] = json!("y");
        observed["spec"]["revisionHistoryLimit"] = json!(10);
        observed["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Always");
        observed["status"] = json!({"readyReplicas": 1});
        assert!(up_to_date(&desired, &observed));
    }

    #[test]
    fn drift_and_own_changes_are_seen() {
        let desired = stamped(json!({
            "metadata": {"name": "x"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}
        }));
        let mut edited = desired.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("i:2");
        assert!(!up_to_date(&desired, &edited), "someone changed the image");
        let mut scaled = desired.clone();
        scaled["spec"]["replicas"] = json!(5);
        assert!(!up_to_date(&desired, &scaled), "someone scaled it");
        let mut extra = desired.clone();
        extra["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar"}));
        assert!(!up_to_date(&desired, &extra), "lists are owned whole");
        // berth removed a field: the hash changes even though the rest is contained.
        let smaller = stamped(json!({"metadata": {"name": "x"}, "spec": {"replicas": 2}}));
        assert!(!up_to_date(&smaller, &desired));
        // Never applied by berth (no annotation).
        let mut foreign = desired.clone();
        foreign["metadata"]["annotations"] = json!({});
        assert!(!up_to_date(&desired, &foreign));
    }

    #[test]
    fn quantities_compare_by_value_and_nulls_by_absence() {
        let desired = stamped(json!({
            "metadata": {"name": "x"},
            "spec": {"cpu": "0.5", "mem": "1Gi", "port": 80, "gone": null, "list": []}
        }));
        let mut observed = desired.clone();
        observed["spec"] = json!({"cpu": "500m", "mem": "1073741824", "port": 80});
        assert!(up_to_date(&desired, &observed));
        observed["spec"]["mem"] = json!("1G");
        assert!(!up_to_date(&desired, &observed));
        assert!(!contains(&json!("api"), &json!("apis")));
    }
}
