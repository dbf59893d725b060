//! Prometheus metrics of the Worker controller and its autoscaler.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which Worker a series is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub namespace: String,
    pub worker: String,
}

impl WorkerLabels {
    pub fn new(namespace: &str, worker: &str) -> WorkerLabels {
        WorkerLabels {
            namespace: namespace.into(),
            worker: worker.into(),
        }
    }
}

/// The controller's metrics; register once, share with `Arc`.
#[derive(Default)]
pub struct Metrics {
    /// Jobs waiting plus in flight, as last read.
    pub queue_depth: Family<WorkerLabels, Gauge>,
    /// Replicas the autoscaler wants.
    pub desired_replicas: Family<WorkerLabels, Gauge>,
    /// 1 when the last read of the queue worked, else 0.
    pub queue_reachable: Family<WorkerLabels, Gauge>,
    /// Replica changes made by the autoscaler.
    pub scale_events: Family<WorkerLabels, Counter>,
    /// Reconciles run, and those that failed.
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    /// Deployment applies sent (a Deployment already as desired is not applied).
    pub writes: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under `berth_worker_*`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.register(
            "berth_worker_queue_depth",
            "Jobs waiting plus in flight in the Worker's queue, as last read",
            m.queue_depth.clone(),
        );
        registry.register(
            "berth_worker_desired_replicas",
            "Replicas the autoscaler wants for the Worker",
            m.desired_replicas.clone(),
        );
        registry.register(
            "berth_worker_queue_reachable",
            "1 when the last read of the Worker's queue worked, else 0",
            m.queue_reachable.clone(),
        );
        registry.register(
            "berth_worker_scale_events",
            "Replica changes made by the autoscaler",
            m.scale_events.clone(),
        );
        registry.register(
            "berth_worker_reconciles",
            "Worker reconciles run",
            m.reconciles.clone(),
        );
        registry.register(
            "berth_worker_reconcile_errors",
            "Worker reconciles that failed",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "berth_worker_deployment_applies",
            "Deployment applies the Worker controller sent",
            m.writes.clone(),
        );
        m
    }

    /// Drops the series of a deleted Worker.
    pub fn forget(&self, l: &WorkerLabels) {
        self.queue_depth.remove(l);
        self.desired_replicas.remove(l);
        self.queue_reachable.remove(l);
        self.scale_events.remove(l);
    }
}
