//! Prometheus metrics of the server. Every series carries the constant labels
//! `model_name` and `model_version`, so a query can select a version without
//! a join:
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `mlops_requests_total` | counter | `code` | inference requests by HTTP status (health probes and scrapes are not counted, so error ratios reflect predictions) |
//! | `mlops_request_duration_seconds` | histogram | | inference request latency, body read to response built |
//! | `mlops_predictions_total` | counter | `class` | predicted rows by class (classifiers) |
//! | `mlops_inference_rows_total` | counter | | rows predicted (all models) |
//! | `mlops_feature_drift_psi` | gauge | `feature` | PSI of the drift window against the training distribution; absent until the window holds `MLOPS_DRIFT_MIN_ROWS` rows |
//! | `mlops_drift_window_rows` | gauge | | rows currently in the drift window |
//! | `mlops_model_info` | gauge (1) | `algorithm`, `digest` | the loaded artifact |
//!
//! Hot-path cost: label lookups happen once at load (one handle per status
//! code and class), counters are atomics, and the drift window is updated
//! under `try_lock` so a busy window skips a sample rather than blocking.

use crate::artifact::LoadedModel;
use crate::drift::Window;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Status codes the server can answer an inference with, pre-registered.
const CODES: [u16; 8] = [200, 400, 404, 405, 413, 415, 500, 503];

const BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

pub struct ServerMetrics {
    registry: Registry,
    requests: IntCounterVec,
    by_code: HashMap<u16, IntCounter>,
    duration: Histogram,
    predictions: Vec<IntCounter>,
    rows: IntCounter,
    drift: GaugeVec,
    drift_gauges: OnceLock<Vec<Gauge>>,
    window_rows: Gauge,
    window: Mutex<Window>,
    drift_min_rows: usize,
}

impl ServerMetrics {
    pub fn new(
        model: &LoadedModel,
        model_name: &str,
        model_version: &str,
        digest: &str,
        drift_window: usize,
        drift_min_rows: usize,
    ) -> ServerMetrics {
        let constant = HashMap::from([
            ("model_name".to_string(), model_name.to_string()),
            ("model_version".to_string(), model_version.to_string()),
        ]);
        let opts = |name: &str, help: &str| Opts::new(name, help).const_labels(constant.clone());
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            opts("mlops_requests_total", "Inference requests by HTTP status code."),
            &["code"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new("mlops_request_duration_seconds", "Inference request latency in seconds.")
                .const_labels(constant.clone())
                .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let predictions_vec =
            IntCounterVec::new(opts("mlops_predictions_total", "Predicted rows by class."), &["class"])
                .expect("valid metric");
        let rows = IntCounter::with_opts(opts("mlops_inference_rows_total", "Rows predicted, all models."))
            .expect("valid metric");
        let drift = GaugeVec::new(
            opts(
                "mlops_feature_drift_psi",
                "Population stability index of recent inputs against the training distribution.",
            ),
            &["feature"],
        )
        .expect("valid metric");
        let window_rows = Gauge::with_opts(opts("mlops_drift_window_rows", "Rows in the drift window."))
            .expect("valid metric");
        let info = GaugeVec::new(
            opts("mlops_model_info", "The loaded model artifact (always 1)."),
            &["algorithm", "digest"],
        )
        .expect("valid metric");
        info.with_label_values(&[model.card.algorithm.as_str(), digest]).set(1.0);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(predictions_vec.clone()),
            Box::new(rows.clone()),
            Box::new(drift.clone()),
            Box::new(window_rows.clone()),
            Box::new(info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let by_code =
            CODES.iter().map(|c| (*c, requests.with_label_values(&[c.to_string().as_str()]))).collect();
        let predictions =
            model.card.classes.iter().map(|c| predictions_vec.with_label_values(&[c.as_str()])).collect();
        // Drift gauges appear once the window is meaningful (see `render`).
        let drift_gauges = OnceLock::new();
        ServerMetrics {
            registry,
            requests,
            by_code,
            duration,
            predictions,
            rows,
            drift,
            drift_gauges,
            window_rows,
            window: Mutex::new(Window::new(model.histograms.clone(), drift_window)),
            drift_min_rows,
        }
    }

    /// Counts one inference request.
    #[inline]
    pub fn observe_request(&self, code: u16, seconds: f64) {
        match self.by_code.get(&code) {
            Some(c) => c.inc(),
            None => self.requests.with_label_values(&[code.to_string().as_str()]).inc(),
        }
        self.duration.observe(seconds);
    }

    /// Counts one predicted class (an index into the model's classes).
    #[inline]
    pub fn observe_class(&self, class: usize) {
        self.predictions[class].inc();
    }

    #[inline]
    pub fn observe_rows(&self, rows: u64) {
        self.rows.inc_by(rows);
    }

    /// Feeds input rows to the drift window, unless another request holds it.
    #[inline]
    pub fn observe_inputs(&self, x: &[f64], features: usize) {
        if let Ok(mut w) = self.window.try_lock() {
            for row in x.chunks_exact(features) {
                w.push(row);
            }
        }
    }

    /// Current PSI per feature, `None` while the window is too small.
    pub fn drift_scores(&self) -> Option<Vec<f64>> {
        let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        self.window_rows.set(w.len() as f64);
        (w.len() >= self.drift_min_rows).then(|| w.psi())
    }

    /// The text exposition, with drift gauges refreshed first.
    pub fn render(&self, features: &[String]) -> String {
        if let Some(scores) = self.drift_scores() {
            let gauges = self.drift_gauges.get_or_init(|| {
                features.iter().map(|f| self.drift.with_label_values(&[f.as_str()])).collect()
            });
            for (g, s) in gauges.iter().zip(scores) {
                g.set(s);
            }
        }
        let mut out = Vec::with_capacity(4096);
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}
