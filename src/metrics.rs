//! The operator's own Prometheus metrics, served at `/metrics`. Label values are short
//! static strings (controller names, error reasons), never formatted errors.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

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
    training: TrainingMetrics,
    /// UIDs of deleted objects whose series were dropped (the newest [`FORGOTTEN_UIDS`]):
    /// a pass that was in flight when its object went must not write them back.
    forgotten: Arc<Mutex<VecDeque<String>>>,
}

/// Deleted objects remembered so that their series stay dropped.
const FORGOTTEN_UIDS: usize = 4096;

/// Every `trigger` label value of the training run counters.
const TRIGGERS: [&str; 5] = ["spec", "manual", "schedule", "drift", "data"];

/// Continuous-training metrics, recorded by the TrainingJob controller.
#[derive(Clone)]
struct TrainingMetrics {
    runs_started: IntCounterVec,
    runs_finished: IntCounterVec,
    last_success: GaugeVec,
    drift_value: GaugeVec,
    drift_threshold: GaugeVec,
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
        let tj_labels = ["namespace", "training_job"];
        let training = TrainingMetrics {
            runs_started: IntCounterVec::new(
                Opts::new(
                    "mlops_training_runs_started_total",
                    "Training runs started, by trigger: spec, manual, schedule, drift or data.",
                ),
                &["namespace", "training_job", "trigger"],
            )
            .expect("valid metric"),
            runs_finished: IntCounterVec::new(
                Opts::new(
                    "mlops_training_runs_total",
                    "Training runs that finished, by trigger and outcome: succeeded or failed.",
                ),
                &["namespace", "training_job", "trigger", "outcome"],
            )
            .expect("valid metric"),
            last_success: GaugeVec::new(
                Opts::new(
                    "mlops_training_last_success_timestamp_seconds",
                    "Completion time (Unix seconds) of the latest successful run in status.runs.",
                ),
                &tj_labels,
            )
            .expect("valid metric"),
            drift_value: GaugeVec::new(
                Opts::new(
                    "mlops_retrain_drift_value",
                    "Latest drift value measured by a TrainingJob's drift trigger.",
                ),
                &tj_labels,
            )
            .expect("valid metric"),
            drift_threshold: GaugeVec::new(
                Opts::new("mlops_retrain_drift_threshold", "Threshold of a TrainingJob's drift trigger."),
                &tj_labels,
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(training.runs_started.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(training.runs_finished.clone()),
            Box::new(training.last_success.clone()),
            Box::new(training.drift_value.clone()),
            Box::new(training.drift_threshold.clone()),
            Box::new(deployments.clone()),
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
            training,
            forgotten: Arc::default(),
        }
    }

    /// Runs `write` (a pass's metric writes for the object `uid`) unless the object was
    /// deleted and its series forgotten. Under the same lock as [`Metrics::forget`], so a
    /// write either lands before the series are dropped or not at all.
    pub fn for_live_object(&self, uid: Option<&str>, write: impl FnOnce(&Self)) {
        let forgotten = self.forgotten.lock().expect("forgotten lock");
        if uid.is_some_and(|u| forgotten.iter().any(|f| f == u)) {
            return;
        }
        write(self);
    }

    /// Drops a deleted object's series with `drop`, and keeps them dropped.
    pub fn forget(&self, uid: Option<&str>, drop: impl FnOnce(&Self)) {
        let mut forgotten = self.forgotten.lock().expect("forgotten lock");
        if let Some(uid) = uid {
            if forgotten.len() >= FORGOTTEN_UIDS {
                forgotten.pop_front();
            }
            forgotten.push_back(uid.to_string());
        }
        drop(self);
    }

    /// A training run started; `trigger` is a short static name (`spec`, `drift`, ...).
    pub fn training_run_started(&self, namespace: &str, training_job: &str, trigger: &'static str) {
        self.training.runs_started.with_label_values(&[namespace, training_job, trigger]).inc();
    }

    /// A training run finished with `outcome` (`succeeded` or `failed`).
    pub fn training_run_finished(
        &self,
        namespace: &str,
        training_job: &str,
        trigger: &'static str,
        outcome: &'static str,
    ) {
        self.training.runs_finished.with_label_values(&[namespace, training_job, trigger, outcome]).inc();
    }

    /// The latest successful run's completion time, or removes the series when none is known.
    pub fn training_last_success(&self, namespace: &str, training_job: &str, unix_seconds: Option<f64>) {
        match unix_seconds {
            Some(s) => self.training.last_success.with_label_values(&[namespace, training_job]).set(s),
            None => {
                let _ = self.training.last_success.remove_label_values(&[namespace, training_job]);
            }
        }
    }

    /// The drift trigger's latest value and threshold; `None` removes both series.
    pub fn retrain_drift(
        &self,
        namespace: &str,
        training_job: &str,
        value_threshold: Option<(Option<f64>, f64)>,
    ) {
        let labels = [namespace, training_job];
        match value_threshold {
            Some((value, threshold)) => {
                self.training.drift_threshold.with_label_values(&labels).set(threshold);
                match value {
                    Some(v) => self.training.drift_value.with_label_values(&labels).set(v),
                    None => {
                        let _ = self.training.drift_value.remove_label_values(&labels);
                    }
                }
            }
            None => {
                let _ = self.training.drift_value.remove_label_values(&labels);
                let _ = self.training.drift_threshold.remove_label_values(&labels);
            }
        }
    }

    /// Drops a deleted TrainingJob's gauges, so dashboards and alerts (e.g. "no successful
    /// training in N days") stop seeing it. Its counters stay, as counters do.
    pub fn forget_training_job(&self, namespace: &str, training_job: &str) {
        self.training_last_success(namespace, training_job, None);
        self.retrain_drift(namespace, training_job, None);
        for trigger in TRIGGERS {
            let _ = self.training.runs_started.remove_label_values(&[namespace, training_job, trigger]);
            for outcome in ["succeeded", "failed"] {
                let _ = self.training.runs_finished.remove_label_values(&[
                    namespace,
                    training_job,
                    trigger,
                    outcome,
                ]);
            }
        }
    }

    /// Drops a deleted InferenceService's series (its delivery metrics), so a cluster where
    /// services come and go does not grow `/metrics` forever.
    pub fn forget_inference_service(&self, namespace: &str, service: &str) {
        for outcome in ["promoted", "rolled_back"] {
            let _ = self.deployments.remove_label_values(&[namespace, service, outcome]);
        }
        let _ = self.lead_time.remove_label_values(&[namespace, service]);
        let _ = self.time_to_restore.remove_label_values(&[namespace, service]);
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

    #[test]
    fn records_training_runs_and_drift() {
        let m = Metrics::new();
        m.training_run_started("ml", "iris", "drift");
        m.training_run_finished("ml", "iris", "drift", "succeeded");
        m.training_last_success("ml", "iris", Some(1.7e9));
        m.retrain_drift("ml", "iris", Some((Some(0.3), 0.2)));
        let text = m.render();
        for line in [
            r#"mlops_training_runs_started_total{namespace="ml",training_job="iris",trigger="drift"} 1"#,
            r#"mlops_training_runs_total{namespace="ml",outcome="succeeded",training_job="iris",trigger="drift"} 1"#,
            r#"mlops_training_last_success_timestamp_seconds{namespace="ml",training_job="iris"} 1700000000"#,
            r#"mlops_retrain_drift_value{namespace="ml",training_job="iris"} 0.3"#,
            r#"mlops_retrain_drift_threshold{namespace="ml",training_job="iris"} 0.2"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.retrain_drift("ml", "iris", None);
        m.training_last_success("ml", "iris", None);
        let text = m.render();
        assert!(
            !text.contains("mlops_retrain_drift_value{")
                && !text.contains("mlops_training_last_success_timestamp_seconds{")
        );
    }

    #[test]
    fn a_deleted_objects_series_stay_dropped_when_a_pass_in_flight_writes_late() {
        let m = Metrics::new();
        let write = |m: &Metrics| m.training_last_success("ml", "iris", Some(1.0));
        m.for_live_object(Some("uid-1"), write);
        assert!(m.render().contains("training_job=\"iris\""));
        m.forget(Some("uid-1"), |m| m.forget_training_job("ml", "iris"));
        m.for_live_object(Some("uid-1"), write);
        assert!(!m.render().contains("training_job=\"iris\""), "the late write was kept");
        // A new object of the same name has a new UID: its series are written.
        m.for_live_object(Some("uid-2"), write);
        assert!(m.render().contains("training_job=\"iris\""));
    }
}
