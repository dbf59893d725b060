//! Prometheus metrics of the AppStack controller, and of the operator's CRD check.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The CamelCase reason also used in conditions and events.
    pub reason: String,
}

/// Reconciles, errors by reason, and how long reconciles take.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            // 1 ms .. ~16 s
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            writes: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics under `berth_appstack_*`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("berth_appstack");
        r.register(
            "reconciles",
            "AppStack reconciles started",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "AppStack reconciles that ended in an error or a problem a person must fix, by reason",
            m.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of AppStack reconciles",
            m.duration.clone(),
        );
        r.register(
            "writes",
            "Write requests (apply, create, delete, status) sent by the AppStack controller",
            m.writes.clone(),
        );
        m
    }

    /// Counts a reconcile and observes its duration when the returned guard is dropped.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.duration,
        }
    }

    /// Counts an error or problem by reason.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrdLabels {
    /// `appstacks.berth.dev`
    pub crd: String,
}

/// A missing or outdated CRD: how often it was reported, and whether it is now.
#[derive(Clone, Debug, Default)]
pub struct CrdMetrics {
    /// Errors logged (at most one per CRD per minute).
    pub problems: Family<CrdLabels, Counter>,
    /// 1 while the CRD is missing or outdated.
    pub unavailable: Family<CrdLabels, Gauge>,
}

impl CrdMetrics {
    /// Registers `berth_crd_problems_total` and `berth_crd_unavailable`.
    pub fn register(registry: &mut Registry) -> CrdMetrics {
        let m = CrdMetrics::default();
        let r = registry.sub_registry_with_prefix("berth_crd");
        r.register(
            "problems",
            "Errors logged because a CRD is missing or older than the operator, by CRD",
            m.problems.clone(),
        );
        r.register(
            "unavailable",
            "1 while a CRD is missing or older than the operator (the operator is not ready)",
            m.unavailable.clone(),
        );
        m
    }

    pub fn labels(crd: &str) -> CrdLabels {
        CrdLabels { crd: crd.into() }
    }
}

/// Observes the elapsed time on drop, so every exit path of a reconcile is measured.
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        {
            let _t = m.reconcile_timer();
        }
        m.error("SecretNotFound");
        m.writes.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "berth_appstack_reconciles_total 1",
            "berth_appstack_reconcile_errors_total{reason=\"SecretNotFound\"} 1",
            "berth_appstack_reconcile_duration_seconds_count 1",
            "berth_appstack_writes_total 1",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }
}
