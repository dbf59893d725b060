//! What the stack and worker planners share: the facts observed beyond a spec, a component's
//! spec hash, and a container's environment (the user's variables, then the stack's URLs).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::api::common::EnvVar;

use super::types::{Component, Env, EnvValue};
use super::wiring::{self, StackUrls};

/// What the planner needs to know beyond the spec: facts observed elsewhere.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Secret names of berth Certificates in the stack's namespace, by Certificate name (to
    /// resolve `tls.certificateRef`).
    pub certificate_secrets: BTreeMap<String, String>,
}

/// A stable hash of a component (its `spec_hash` field excluded): 16 hex characters.
pub fn spec_hash(c: &Component) -> String {
    let mut c = c.clone();
    c.spec_hash = String::new();
    // Plain data with string keys: serialization cannot fail.
    let bytes = serde_json::to_vec(&c).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The user's env, then `DATABASE_URL`/`REDIS_URL` (validation rejects user variables that
/// would shadow them).
pub(super) fn env_with_urls(user: &[EnvVar], urls: &StackUrls) -> Vec<Env> {
    let mut env: Vec<Env> = user.iter().map(user_env).collect();
    env.extend(wiring::url_env(urls));
    env
}

pub(super) fn user_env(e: &EnvVar) -> Env {
    let value = match (&e.value, &e.secret_key_ref) {
        (_, Some(r)) => EnvValue::Secret(r.clone()),
        (Some(v), None) => EnvValue::Literal(v.clone()),
        (None, None) => EnvValue::Literal(String::new()),
    };
    Env {
        name: e.name.clone(),
        value,
    }
}
