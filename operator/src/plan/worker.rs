//! Planning Workers: the child Worker spec of a stack's worker, and a Worker's own process.

use crate::api::appstack::StackWorker;
use crate::api::{AppStack, Worker, WorkerSpec};

use super::component::{env_with_urls, spec_hash};
use super::types::{Component, ComponentKind, EnvValue, WorkerPlan};
use super::wiring::{self, StackUrls, UrlSource};
use super::PlanError;

/// The Worker spec a stack's worker becomes: the stack is its `appStackRef`, so Redis and
/// `DATABASE_URL` come from the stack (unless the worker names its own `queue.redis`).
pub fn stack_worker_spec(stack: &str, w: &StackWorker) -> WorkerSpec {
    WorkerSpec {
        container: w.container.clone(),
        app_stack_ref: Some(stack.to_string()),
        queue: w.queue.clone(),
        scaling: w.scaling.clone(),
        replicas: w.replicas,
        termination_grace_period_seconds: w.termination_grace_period_seconds,
    }
}

/// Replicas a Worker starts with: `replicas`, else the autoscaler's minimum, else 1. The
/// autoscaler changes it afterwards.
pub fn initial_replicas(spec: &WorkerSpec) -> i32 {
    spec.replicas
        .or(spec.scaling.as_ref().map(|s| s.min_replicas))
        .unwrap_or(1)
}

/// The one start-up rule of both backends: the replicas a Worker runs until the autoscaler's
/// first decision (also after berth restarts). Without `scaling`: [`initial_replicas`]. With
/// `scaling`: what runs now (`running`: the Deployment's count, the host's containers; `None`
/// when nothing runs or nothing is known), clamped to `[minReplicas, maxReplicas]`, else
/// [`initial_replicas`].
pub fn start_replicas(spec: &WorkerSpec, running: Option<i32>) -> i32 {
    match (&spec.scaling, running) {
        (Some(s), Some(n)) => n.clamp(s.min_replicas, s.max_replicas.max(s.min_replicas)),
        _ => initial_replicas(spec),
    }
}

/// Plans a Worker's process. `stack` is the AppStack named by `appStackRef`, when it has one
/// (the caller looks it up; it must be given when the reference is set).
pub fn plan_worker(worker: &Worker, stack: Option<&AppStack>) -> Result<WorkerPlan, PlanError> {
    let name = worker
        .metadata
        .name
        .clone()
        .ok_or(PlanError::MissingName { kind: "Worker" })?;
    if let Some(e) = PlanError::from_field_errors(crate::api::validate::Validate::validate(worker))
    {
        return Err(e);
    }
    let spec = &worker.spec;
    let mut urls = match (&spec.app_stack_ref, stack) {
        (None, _) => StackUrls::default(),
        (Some(wanted), Some(s)) if s.metadata.name.as_deref() == Some(wanted) => {
            wiring::stack_urls(wanted, &s.spec)
        }
        (Some(wanted), _) => {
            return Err(PlanError::StackNotFound {
                name: wanted.clone(),
            })
        }
    };
    if let Some(own) = &spec.queue.redis {
        urls.redis = Some(UrlSource {
            value: EnvValue::Secret(own.url_secret_ref.clone()),
            in_stack: false,
            tool_image: format!("redis:{}", wiring::DEFAULT_REDIS_VERSION),
        });
    }
    let mut component = Component {
        name: name.clone(),
        kind: ComponentKind::Worker,
        host: name.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: env_with_urls(&spec.env, &urls),
        port: None,
        health: None,
        replicas: initial_replicas(spec),
        storage: None,
        resources: spec.resources.clone(),
        user: None,
        scratch_paths: vec!["/tmp".into()],
        depends_on: wiring::dependencies(&urls),
        termination_grace_period_seconds: spec.termination_grace_period_seconds,
        spec_hash: String::new(),
    };
    component.spec_hash = spec_hash(&component);
    Ok(WorkerPlan {
        worker: name,
        stack: spec.app_stack_ref.clone(),
        component,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::SecretKeyRef;
    use serde_json::json;

    fn worker(spec: serde_json::Value) -> Worker {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Worker",
            "metadata": {"name": "w"}, "spec": spec
        }))
        .unwrap()
    }

    fn stack(spec: serde_json::Value) -> AppStack {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppStack",
            "metadata": {"name": "shop"}, "spec": spec
        }))
        .unwrap()
    }

    fn env_of(p: &WorkerPlan, name: &str) -> Option<EnvValue> {
        p.component
            .env
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value.clone())
    }

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn urls_by_source() {
        let full = stack(json!({"api": {"image": "a:1"}, "postgres": {}, "redis": {}}));
        let own_redis = json!({"name": "q", "type": "list",
            "redis": {"urlSecretRef": {"name": "cache", "key": "url"}}});
        let cases = [
            // standalone with its own Redis: REDIS_URL only
            (
                json!({"image": "w:1", "queue": own_redis.clone()}),
                None,
                None,
                Some(EnvValue::Secret(key("cache", "url"))),
            ),
            // from the stack: both, generated
            (
                json!({"image": "w:1", "appStackRef": "shop", "queue": {"name": "q", "type": "list"}}),
                Some(&full),
                Some(EnvValue::Generated(key("shop-postgres-credentials", "url"))),
                Some(EnvValue::Generated(key("shop-redis-credentials", "url"))),
            ),
            // from the stack, with its own Redis overriding the stack's
            (
                json!({"image": "w:1", "appStackRef": "shop", "queue": own_redis}),
                Some(&full),
                Some(EnvValue::Generated(key("shop-postgres-credentials", "url"))),
                Some(EnvValue::Secret(key("cache", "url"))),
            ),
        ];
        for (spec, s, db, redis) in cases {
            let p = plan_worker(&worker(spec.clone()), s).unwrap();
            assert_eq!(env_of(&p, "DATABASE_URL"), db, "{spec}");
            assert_eq!(env_of(&p, "REDIS_URL"), redis, "{spec}");
            assert_eq!(
                p.component.depends_on.len(),
                usize::from(db.is_some()) + usize::from(redis.is_some())
            );
        }
    }

    #[test]
    fn missing_stack_is_an_error() {
        let w = worker(
            json!({"image": "w:1", "appStackRef": "shop", "queue": {"name": "q", "type": "list"}}),
        );
        assert_eq!(
            plan_worker(&w, None),
            Err(PlanError::StackNotFound {
                name: "shop".into()
            })
        );
    }

    /// A Worker with its own Redis and `extra` in its spec.
    fn queue_worker(extra: &serde_json::Value) -> Worker {
        let mut spec = json!({"image": "w:1", "queue": {"name": "q", "type": "list",
            "redis": {"urlSecretRef": {"name": "c", "key": "u"}}}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        worker(spec)
    }

    #[test]
    fn replicas() {
        let cases = [
            (json!({}), 1),
            (json!({"replicas": 3}), 3),
            (json!({"scaling": {"minReplicas": 2, "maxReplicas": 5}}), 2),
            (json!({"scaling": {"maxReplicas": 5}}), 0),
        ];
        for (extra, want) in cases {
            let w = queue_worker(&extra);
            assert_eq!(initial_replicas(&w.spec), want, "{extra}");
        }
    }

    #[test]
    fn start_replicas_is_one_rule() {
        let scaled = json!({"scaling": {"minReplicas": 1, "maxReplicas": 3}});
        let cases = [
            // (spec, what runs, start with)
            (json!({}), None, 1),
            (json!({}), Some(5), 1),
            (json!({"replicas": 2}), Some(5), 2),
            (scaled.clone(), None, 1),
            (scaled.clone(), Some(2), 2),
            (scaled.clone(), Some(7), 3),
            (scaled.clone(), Some(0), 1),
            (
                json!({"scaling": {"minReplicas": 0, "maxReplicas": 3}}),
                Some(0),
                0,
            ),
            (
                json!({"scaling": {"minReplicas": 0, "maxReplicas": 3}}),
                None,
                0,
            ),
            (
                json!({"replicas": 2, "scaling": {"minReplicas": 1, "maxReplicas": 3}}),
                None,
                2,
            ),
        ];
        for (extra, running, want) in cases {
            let w = queue_worker(&extra);
            assert_eq!(
                start_replicas(&w.spec, running),
                want,
                "{extra} running {running:?}"
            );
        }
    }
}
