//! `Worker`: a queue consumer scaled by the depth of its Redis queue.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ContainerSpec, ExternalUrl};

/// The desired state of a queue consumer.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Worker",
    plural = "workers",
    namespaced,
    status = "WorkerStatus",
    shortname = "bworker",
    category = "berth",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.queue.name"),
    printcolumn(name = "Depth", type_ = "integer", json_path = ".status.queueDepth"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.appStackRef) || has(self.queue.redis)").message("a worker needs a Redis: set appStackRef or queue.redis"))]
pub struct WorkerSpec {
    // image, command, args, env, resources (api/common.rs)
    #[serde(flatten)]
    pub container: ContainerSpec,
    /// Take Redis (and `DATABASE_URL`) from this AppStack in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(pattern = crate::api::patterns::DNS_NAME))]
    pub app_stack_ref: Option<String>,
    /// The queue this worker consumes.
    pub queue: QueueSpec,
    /// Queue-depth autoscaling; without it `replicas` is fixed (and the scale subresource works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    /// Replica count when `scaling` is absent; the scale subresource's `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Seconds a stopping replica gets to finish its job after SIGTERM (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub termination_grace_period_seconds: Option<i64>,
}

super::common::container_fields!(WorkerSpec);

/// A queue in Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'stream' || (has(self.consumerGroup) && self.consumerGroup != '')").message("a stream queue needs consumerGroup: its depth is the group's lag plus pending entries"))]
pub struct QueueSpec {
    /// The framework that writes the queue; decides which Redis keys hold its jobs.
    #[serde(rename = "type")]
    pub queue_type: QueueType,
    /// The queue's name as the framework knows it.
    #[schemars(length(min = 1, max = 512), regex(pattern = crate::api::patterns::NOT_BLANK))]
    pub name: String,
    /// Raw Redis key; overrides the name-to-key mapping of `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub key: Option<String>,
    /// For `stream`: the consumer group whose lag (plus pending entries) is the depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub consumer_group: Option<String>,
    /// Redis to read; without it the AppStack's Redis is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<ExternalUrl>,
}

/// Queue frameworks berth can measure (also the values of `berth queue depth --type`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A plain Redis list (LLEN of the key).
    List,
    /// BullMQ: waiting + prioritized + delayed jobs that are due, under `bull:<name>:`.
    Bullmq,
    /// Celery (kombu Redis transport): the list `<name>` and its priority lists.
    Celery,
    /// Sidekiq: the list `queue:<name>`.
    Sidekiq,
    /// RQ: the list `rq:queue:<name>`.
    Rq,
    /// A Redis stream read by a consumer group.
    Stream,
}

impl QueueType {
    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::List => "list",
            QueueType::Bullmq => "bullmq",
            QueueType::Celery => "celery",
            QueueType::Sidekiq => "sidekiq",
            QueueType::Rq => "rq",
            QueueType::Stream => "stream",
        }
    }
}

/// Queue-depth autoscaling. desired = ceil(depth / jobsPerReplica), clamped to
/// [minReplicas, maxReplicas].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.maxReplicas >= self.minReplicas").message("maxReplicas must be >= minReplicas"))]
#[x_kube(validation = Rule::new("!has(self.onQueueUnavailable) || self.onQueueUnavailable.replicas <= self.maxReplicas").message("onQueueUnavailable.replicas must be <= maxReplicas"))]
pub struct Scaling {
    /// Fewest replicas; 0 lets an idle worker scale to zero.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target queue depth per replica.
    #[serde(default = "default_jobs_per_replica")]
    #[schemars(range(min = 1, max = 1000000))]
    pub jobs_per_replica: i64,
    /// From zero replicas, scale up only when the depth reaches this.
    #[serde(default = "default_activation_depth")]
    #[schemars(range(min = 1, max = 1000000))]
    pub activation_depth: i64,
    /// How often the queue is read (a duration such as `1s`).
    #[serde(default = "default_poll_interval")]
    #[schemars(regex(pattern = crate::api::patterns::DURATION))]
    pub poll_interval: String,
    /// Scale up only to the lowest recommendation within this window.
    #[serde(default = "default_up_window")]
    #[schemars(regex(pattern = crate::api::patterns::DURATION))]
    pub scale_up_stabilization: String,
    /// Scale down only to the highest recommendation within this window.
    #[serde(default = "default_down_window")]
    #[schemars(regex(pattern = crate::api::patterns::DURATION))]
    pub scale_down_stabilization: String,
    /// Most replicas added in one step; 0 means unlimited.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub max_scale_up_step: i32,
    /// While the queue cannot be read, run at least `replicas` replicas. Absent: hold the
    /// current replicas. Never scales down because a read failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_queue_unavailable: Option<QueueUnavailable>,
}

impl Scaling {
    /// The policy for a failed queue read that `onQueueUnavailable` asks for.
    pub fn queue_unavailable_policy(&self) -> OnQueueUnavailable {
        self.on_queue_unavailable
            .as_ref()
            .map_or(OnQueueUnavailable::Hold, |q| {
                OnQueueUnavailable::Fixed(q.replicas)
            })
    }
}

/// `onQueueUnavailable`: a typed object (never a string-or-object union, which kube-apiserver
/// cannot compile CEL rules for).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueUnavailable {
    /// Replicas to run at least while the queue cannot be read (raises, never lowers).
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
}

fn default_jobs_per_replica() -> i64 {
    5
}
fn default_activation_depth() -> i64 {
    1
}
fn default_poll_interval() -> String {
    "1s".into()
}
fn default_up_window() -> String {
    "0s".into()
}
fn default_down_window() -> String {
    "5m".into()
}

/// Behaviour while the queue cannot be read, as the autoscaler applies it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OnQueueUnavailable {
    /// Keep the current replica count (`onQueueUnavailable` absent).
    #[default]
    Hold,
    /// Run at least this many replicas until the queue can be read again: raises the count to
    /// N, never lowers it (a failed read never removes replicas that may still be working).
    Fixed(i32),
}

/// The observed state of a Worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Replicas that exist now (the scale subresource's `status.replicas`).
    #[serde(default)]
    pub replicas: i32,
    /// What the autoscaler (or `spec.replicas`) wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Jobs waiting as last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
    /// When the replica count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Label selector of the worker's pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready, Progressing, Degraded (the rules of an AppStack component) and QueueReachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_queue_unavailable_is_a_typed_object() {
        let s: Scaling = serde_json::from_str(r#"{"maxReplicas": 4}"#).unwrap();
        assert_eq!(s.queue_unavailable_policy(), OnQueueUnavailable::Hold);
        let s: Scaling =
            serde_json::from_str(r#"{"maxReplicas": 4, "onQueueUnavailable": {"replicas": 2}}"#)
                .unwrap();
        assert_eq!(s.queue_unavailable_policy(), OnQueueUnavailable::Fixed(2));
        assert_eq!(
            serde_json::to_value(&s).unwrap()["onQueueUnavailable"],
            serde_json::json!({"replicas": 2})
        );
        assert!(serde_json::from_str::<Scaling>(
            r#"{"maxReplicas": 4, "onQueueUnavailable": "hold"}"#
        )
        .is_err());
    }
}
