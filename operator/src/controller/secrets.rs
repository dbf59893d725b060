//! The Secrets of a stack: the ones you provide (read by name, checked for the keys used) and
//! the generated ones (created once when absent). Secrets are not watched (see `Context`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::ResourceExt;

use super::status::Problem;
use super::{Changes, Context, Error};
use crate::api::AppStack;
use crate::k8s::meta::MANAGER;
use crate::k8s::{children, Owner};
use crate::plan::wiring;
use crate::plan::{EnvValue, StackPlan};

impl Context {
    fn secret_known(&self, key: &str) -> bool {
        self.known_secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    fn remember_secret(&self, key: String) {
        self.known_secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
    }

    fn secrets_checked_at(&self, stack: &str) -> Option<String> {
        self.secrets_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stack)
            .cloned()
    }
}

/// Secret keys the stack's components read, by Secret name: key → components using it.
pub fn user_secret_refs(plan: &StackPlan) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut refs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for c in &plan.components {
        let envs = c.env.iter().chain(c.depends_on.iter().flat_map(|d| &d.env));
        for e in envs {
            if let EnvValue::Secret(r) = &e.value {
                refs.entry(r.name.clone())
                    .or_default()
                    .entry(r.key.clone())
                    .or_default()
                    .insert(c.name.clone());
            }
        }
    }
    refs
}

/// The Secrets the stack reads that are missing or lack a key, as a problem for the status.
/// They are read by name (Secrets are not watched) when the stack changed since they were last
/// all found; an unchanged stack (the periodic re-check) is answered from memory, with no
/// request.
pub(super) async fn check_user_secrets(
    stack: &AppStack,
    ns: &str,
    plan: &StackPlan,
    ctx: &Context,
) -> Result<Option<Problem>, Error> {
    let stack_key = format!("{ns}/{}", stack.name_any());
    // resourceVersion changes with every change of the stack (status included); the
    // generation is there for callers that hand in an edited object without a new version.
    let version = match stack.resource_version() {
        Some(rv) => format!("{rv}/{}", stack.metadata.generation.unwrap_or(0)),
        None => String::new(),
    };
    if !version.is_empty() && ctx.secrets_checked_at(&stack_key).as_deref() == Some(&version) {
        return Ok(None);
    }
    let problem = read_user_secrets(ns, plan, ctx).await?;
    let mut checked = ctx
        .secrets_checked
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match &problem {
        None if !version.is_empty() => checked.insert(stack_key, version),
        _ => checked.remove(&stack_key),
    };
    Ok(problem)
}

async fn read_user_secrets(
    ns: &str,
    plan: &StackPlan,
    ctx: &Context,
) -> Result<Option<Problem>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut problems = Vec::new();
    let mut reason = None;
    for (name, keys) in user_secret_refs(plan) {
        let users = |k: &BTreeSet<String>| k.iter().cloned().collect::<Vec<_>>().join(", ");
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|source| Error::ReadSecret {
                name: name.clone(),
                source,
            })?;
        match secret {
            None => {
                let all: BTreeSet<String> = keys.values().flatten().cloned().collect();
                let key_list: Vec<&str> = keys.keys().map(String::as_str).collect();
                reason.get_or_insert("SecretNotFound");
                problems.push(format!(
                    "Secret {name:?} does not exist in namespace {ns} (keys {} used by {}): create it",
                    key_list.join(", "),
                    users(&all)
                ));
            }
            Some(s) => {
                let present: BTreeSet<&String> = s
                    .data
                    .iter()
                    .flat_map(|d| d.keys())
                    .chain(s.string_data.iter().flat_map(|d| d.keys()))
                    .collect();
                for (key, used_by) in &keys {
                    if !present.contains(key) {
                        reason.get_or_insert("SecretKeyNotFound");
                        problems.push(format!(
                            "Secret {name:?} has no key {key:?} (used by {}): add it",
                            users(used_by)
                        ));
                    }
                }
            }
        }
    }
    Ok(reason.map(|r| Problem {
        reason: r.into(),
        message: problems.join("; "),
    }))
}

/// Creates the generated Secrets that do not exist yet. An existing Secret of that name is
/// never touched: credentials are created once and never rotated silently.
pub(super) async fn ensure_generated_secrets(
    ns: &str,
    owner: &Owner,
    plan: &StackPlan,
    ctx: &Context,
    changes: &mut Changes,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for g in &plan.secrets {
        let key = format!("{ns}/{}", g.name);
        if ctx.secret_known(&key) {
            continue;
        }
        let existing = api
            .get_opt(&g.name)
            .await
            .map_err(|source| Error::ReadSecret {
                name: g.name.clone(),
                source,
            })?;
        if existing.is_some() {
            ctx.remember_secret(key);
            continue;
        }
        let data = wiring::materialize(g, &Default::default(), wiring::random_hex)?;
        let secret = children::secret(owner, g, data);
        let pp = PostParams {
            field_manager: Some(MANAGER.into()),
            ..PostParams::default()
        };
        ctx.metrics.writes.inc();
        match api.create(&pp, &secret).await {
            Ok(_) => {
                ctx.remember_secret(key);
                changes.generated.push(g.name.clone())
            }
            // Created meanwhile (another replica): keep it.
            Err(kube::Error::Api(s)) if s.code == 409 => ctx.remember_secret(key),
            Err(source) => {
                return Err(Error::CreateSecret {
                    name: g.name.clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}
