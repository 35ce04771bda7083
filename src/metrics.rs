//! The operator's own Prometheus metrics, served at `/metrics`. Label values are short
//! static strings (controller names, error reasons), never formatted errors.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciliations: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    pub leader: IntGauge,
    deployments: IntCounterVec,
    lead_time: HistogramVec,
    time_to_restore: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new("mlops_operator_reconciliations_total", "Reconciliations started, by controller."),
            &["controller"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "mlops_operator_reconcile_errors_total",
                "Failed reconciliations, by controller and reason.",
            ),
            &["controller", "reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "mlops_operator_reconcile_duration_seconds",
                "Time spent in one reconciliation.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["controller"],
        )
        .expect("valid metric");
        let leader = IntGauge::new("mlops_operator_leader", "1 while this replica holds the leader lease.")
            .expect("valid metric");
        let deployments = IntCounterVec::new(
            Opts::new(
                "mlops_deployments_total",
                "Rollouts that ended, by outcome: promoted (deployment frequency) or rolled_back (change failures).",
            ),
            &["namespace", "inference_service", "outcome"],
        )
        .expect("valid metric");
        let delivery_buckets =
            vec![1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 604800.0];
        let lead_time = HistogramVec::new(
            HistogramOpts::new(
                "mlops_lead_time_seconds",
                "From a version's origin (source commit time, else training start) to 100 % traffic.",
            )
            .buckets(delivery_buckets.clone()),
            &["namespace", "inference_service"],
        )
        .expect("valid metric");
        let time_to_restore = HistogramVec::new(
            HistogramOpts::new(
                "mlops_time_to_restore_seconds",
                "From the failed check to all traffic back on a healthy version.",
            )
            .buckets(vec![0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0]),
            &["namespace", "inference_service"],
        )
        .expect("valid metric");
        for c in [
            Box::new(deployments.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lead_time.clone()),
            Box::new(time_to_restore.clone()),
            Box::new(reconciliations.clone()),
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            reconciliations,
            errors,
            duration,
            leader,
            deployments,
            lead_time,
            time_to_restore,
        }
    }

    /// Counts a reconciliation and times it until the returned guard is dropped.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciliations.with_label_values(&[controller]).inc();
        ReconcileTimer { histogram: self.duration.with_label_values(&[controller]), start: Instant::now() }
    }

    pub fn reconcile_failed(&self, controller: &'static str, reason: &'static str) {
        self.errors.with_label_values(&[controller, reason]).inc();
    }

    /// Records a rollout outcome for the delivery metrics.
    pub fn delivered(&self, namespace: &str, service: &str, what: &crate::rollout::Delivered) {
        use crate::rollout::Delivered;
        match what {
            Delivered::Promoted { lead_time_seconds } => {
                self.deployments.with_label_values(&[namespace, service, "promoted"]).inc();
                if let Some(s) = lead_time_seconds {
                    self.lead_time.with_label_values(&[namespace, service]).observe(*s as f64);
                }
            }
            Delivered::RolledBack => {
                self.deployments.with_label_values(&[namespace, service, "rolled_back"]).inc()
            }
            Delivered::Restored { seconds } => {
                self.time_to_restore.with_label_values(&[namespace, service]).observe(*seconds as f64)
            }
        }
    }

    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

pub struct ReconcileTimer {
    histogram: prometheus::Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_errors_and_durations_per_controller() {
        let m = Metrics::new();
        drop(m.reconcile_started("trainingjob"));
        m.reconcile_failed("trainingjob", "kube_api");
        let text = m.render();
        assert!(
            text.contains(r#"mlops_operator_reconciliations_total{controller="trainingjob"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"mlops_operator_reconcile_errors_total{controller="trainingjob",reason="kube_api"} 1"#
        ));
        assert!(
            text.contains(r#"mlops_operator_reconcile_duration_seconds_count{controller="trainingjob"} 1"#)
        );
    }
}
