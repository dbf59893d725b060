//! The end of a reconcile: the status (written only when it changed), the Events a person
//! should see, and the next action.

use super::*;

/// Status (only when changed), Events, and the next action.
pub(super) async fn finish(
    stack: &AppStack,
    ns: &str,
    plan: Option<&StackPlan>,
    result: Result<Option<Problem>, Error>,
    changes: Changes,
    ctx: &Context,
) -> Result<Action, Error> {
    let (problem, err) = match result {
        Ok(p) => (p, None),
        Err(e) => (
            Some(Problem {
                reason: e.reason().into(),
                message: e.to_string(),
            }),
            Some(e),
        ),
    };
    let components = plan
        .map(|p| observe::components(ns, p, &ctx.stores))
        .unwrap_or_default();
    let old = stack.status.as_ref();
    let new = status::compute(
        stack.meta().generation,
        old,
        plan.and_then(|p| p.url.clone()),
        components,
        problem.as_ref(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    let regarding = stack.object_ref(&());
    for (what, list) in [
        ("applied", &changes.applied),
        ("deleted (left the spec)", &changes.pruned),
    ] {
        if !list.is_empty() {
            info!(what, objects = ?list, "changed children");
            let reason = if what == "applied" {
                "Applied"
            } else {
                "Pruned"
            };
            ctx.publish(
                &regarding,
                EventType::Normal,
                reason,
                format!("{what}: {}", list.join(", ")),
            )
            .await;
        }
    }
    if !changes.generated.is_empty() {
        ctx.publish(
            &regarding,
            EventType::Normal,
            "SecretGenerated",
            format!(
                "generated Secrets {} (created once, never rotated; values are not shown)",
                changes.generated.join(", ")
            ),
        )
        .await;
    }
    if old != Some(&new) {
        let api: Api<AppStack> = Api::namespaced(ctx.client.clone(), ns);
        let body = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "AppStack",
            "status": new,
        });
        ctx.metrics.writes.inc();
        let written = api
            .patch_status(
                &stack.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await;
        if let Err(e) = written {
            if err.is_none() {
                return Err(Error::Status(e));
            }
            warn!(error = %e, "cannot write status");
        }
        transition_events(&regarding, old, &new, problem.as_ref(), ctx).await;
    }
    if let Some(e) = err {
        warn!(error = %e, "reconcile failed");
        return Err(e);
    }
    if let Some(p) = &problem {
        ctx.metrics.error(&p.reason);
        return Ok(Action::requeue(MISSING_SECRET_RECHECK));
    }
    Ok(Action::requeue(RESYNC))
}

/// Events for what a person should know: a new problem, becoming Ready, becoming Degraded.
pub(super) async fn transition_events(
    regarding: &ObjectReference,
    old: Option<&crate::api::AppStackStatus>,
    new: &crate::api::AppStackStatus,
    problem: Option<&Problem>,
    ctx: &Context,
) {
    use crate::api::appstack::Phase;
    let old_ready = status::condition(old, status::READY);
    let new_ready = status::condition(Some(new), status::READY);
    let same =
        |a: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
         b: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
            a.map(|c| (&c.status, &c.reason, &c.message))
                == b.map(|c| (&c.status, &c.reason, &c.message))
        };
    let old_phase = old.and_then(|o| o.phase);
    match (problem, new.phase) {
        (Some(p), _) if !same(old_ready, new_ready) => {
            ctx.publish(regarding, EventType::Warning, &p.reason, p.message.clone())
                .await
        }
        (None, Some(Phase::Ready)) if old_phase != Some(Phase::Ready) => {
            ctx.publish(
                regarding,
                EventType::Normal,
                "Ready",
                "every component is ready".into(),
            )
            .await
        }
        (None, Some(Phase::Degraded)) if old_phase != Some(Phase::Degraded) => {
            let m = new_ready.map(|c| c.message.clone()).unwrap_or_default();
            ctx.publish(regarding, EventType::Warning, "Degraded", m)
                .await
        }
        _ => {}
    }
}
