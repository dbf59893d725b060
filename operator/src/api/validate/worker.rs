//! Worker: a standalone queue consumer, and the queue and scaling rules a stack's workers share.

use super::values::dns_label;
use super::{container, object_name, Errors, FieldError, Path, Validate, MAX_LABEL};
use crate::api::units::parse_duration;
use crate::api::worker::{QueueSpec, QueueType, Scaling, Worker};

pub(super) fn queue(errs: &mut Errors, q: &QueueSpec, path: &Path) {
    if q.queue_type == QueueType::Stream && q.consumer_group.as_deref().unwrap_or("").is_empty() {
        errs.push(
            &path.field("consumerGroup"),
            "a stream queue needs consumerGroup: its depth is the group's lag plus pending entries",
        );
    }
    if q.name.trim().is_empty() {
        errs.push(&path.field("name"), "must not be empty");
    }
}

pub(super) fn scaling(errs: &mut Errors, s: &Scaling, path: &Path) {
    if s.max_replicas < s.min_replicas {
        errs.push(
            &path.field("maxReplicas"),
            format!(
                "must be >= minReplicas ({} < {})",
                s.max_replicas, s.min_replicas
            ),
        );
    }
    match parse_duration(&s.poll_interval) {
        Err(e) => errs.push(&path.field("pollInterval"), e),
        Ok(d) if d.as_millis() < 100 => {
            errs.push(&path.field("pollInterval"), "must be at least 100ms")
        }
        Ok(_) => {}
    }
    errs.check(
        &path.field("scaleUpStabilization"),
        parse_duration(&s.scale_up_stabilization).map(drop),
    );
    errs.check(
        &path.field("scaleDownStabilization"),
        parse_duration(&s.scale_down_stabilization).map(drop),
    );
    if let Some(n) = s.on_queue_unavailable.as_ref().map(|q| q.replicas) {
        if n > s.max_replicas {
            errs.push(
                &path.field("onQueueUnavailable").field("replicas"),
                format!("must be <= maxReplicas ({n} > {})", s.max_replicas),
            );
        }
    }
}

impl Validate for Worker {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Errors::default();
        object_name(&mut errs, self.metadata.name.as_deref(), MAX_LABEL);
        let spec = &self.spec;
        let path = Path::root().field("spec");
        let has_stack = spec.app_stack_ref.is_some();
        container(&mut errs, &spec.container, &path, false, false);
        if let Some(stack) = &spec.app_stack_ref {
            errs.check(&path.field("appStackRef"), dns_label(stack, MAX_LABEL));
        }
        queue(&mut errs, &spec.queue, &path.field("queue"));
        if !has_stack && spec.queue.redis.is_none() {
            errs.push(
                &path,
                "a worker needs a Redis: set appStackRef or queue.redis",
            );
        }
        if let Some(s) = &spec.scaling {
            scaling(&mut errs, s, &path.field("scaling"));
        }
        errs.0
    }
}
