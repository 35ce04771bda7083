//! Prometheus metrics of the server. Every series carries the constant labels
//! `model_name` and `model_version`, so a query can select a version without
//! a join:
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `mlops_requests_total` | counter | `code` | inference requests by HTTP status, refusals by a limit included (503, 413) (health probes and scrapes are not counted, so error ratios reflect predictions) |
//! | `mlops_request_duration_seconds` | histogram | | inference request latency, body read to response built |
//! | `mlops_predictions_total` | counter | `class` | predicted rows by class (classifiers) |
//! | `mlops_inference_rows_total` | counter | | rows predicted (all models) |
//! | `mlops_feature_drift_psi` | gauge | `feature` | PSI of the drift window against the training distribution; absent until the window holds `MLOPS_DRIFT_MIN_ROWS` rows |
//! | `mlops_drift_window_rows` | gauge | | rows currently in the drift window |
//! | `mlops_model_info` | gauge (1) | `algorithm`, `digest` | the loaded artifact |
//!
//! Two series of the server's limits do not carry the model labels:
//! `mlops_server_rejected_total{reason}`, what the limits refused (see
//! [`Reason`]), and `mlops_server_requests_in_flight`, requests admitted and not
//! yet answered (against `MLOPS_MAX_CONCURRENT_REQUESTS`). They count from the
//! first connection, before the model is loaded or a route is known (a header
//! timeout happens before the request line is complete); a pod serves one
//! model, so the scrape's pod labels tell which.
//!
//! Hot-path cost: label lookups happen once at load (one handle per status
//! code and class), counters are atomics, and the drift window is updated
//! under `try_lock` so a busy window skips a sample rather than blocking.

use crate::artifact::LoadedModel;
use crate::drift::Window;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
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

/// Why a limit refused a connection or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Headers not complete within `MLOPS_HEADER_TIMEOUT_SECONDS` of the first byte:
    /// the connection is closed.
    HeaderTimeout,
    /// No answer within `MLOPS_REQUEST_TIMEOUT_SECONDS`: 503.
    RequestTimeout,
    /// `MLOPS_MAX_CONCURRENT_REQUESTS` already in flight: 503 with `Retry-After`.
    Overloaded,
    /// Body over `MLOPS_MAX_REQUEST_BYTES`: 413.
    RequestTooLarge,
    /// Answer bound over `MLOPS_MAX_RESPONSE_BYTES`: 413 before scoring.
    ResponseTooLarge,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::HeaderTimeout,
        Reason::RequestTimeout,
        Reason::Overloaded,
        Reason::RequestTooLarge,
        Reason::ResponseTooLarge,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::HeaderTimeout => "header_timeout",
            Reason::RequestTimeout => "request_timeout",
            Reason::Overloaded => "overloaded",
            Reason::RequestTooLarge => "request_too_large",
            Reason::ResponseTooLarge => "response_too_large",
        }
    }
}

/// The limits' series: `mlops_server_rejected_total{reason}`, every reason present
/// from the start (at 0) so `rate()` and `increase()` work from the first scrape,
/// and `mlops_server_requests_in_flight`, read from the transport's count at
/// scrape time (nothing on the hot path).
pub struct LimitMetrics {
    registry: Registry,
    by_reason: Vec<IntCounter>,
    in_flight: IntGauge,
}

impl Default for LimitMetrics {
    fn default() -> LimitMetrics {
        let registry = Registry::new();
        let rejected = IntCounterVec::new(
            Opts::new(
                "mlops_server_rejected_total",
                "Connections and requests refused by a server limit, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "mlops_server_requests_in_flight",
            "Requests admitted and not yet answered (probes and scrapes are not counted).",
        )
        .expect("valid metric");
        registry.register(Box::new(rejected.clone())).expect("metric names are unique");
        registry.register(Box::new(in_flight.clone())).expect("metric names are unique");
        let by_reason = Reason::ALL.iter().map(|r| rejected.with_label_values(&[r.label()])).collect();
        LimitMetrics { registry, by_reason, in_flight }
    }
}

impl LimitMetrics {
    #[inline]
    pub fn reject(&self, reason: Reason) {
        self.by_reason[reason as usize].inc();
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.by_reason[reason as usize].get()
    }

    /// Appends the text exposition to `out`, with `in_flight` requests.
    pub fn render_into(&self, out: &mut String, in_flight: usize) {
        self.in_flight.set(in_flight as i64);
        let mut bytes = Vec::with_capacity(512);
        TextEncoder::new().encode(&self.registry.gather(), &mut bytes).expect("text encoding cannot fail");
        out.push_str(std::str::from_utf8(&bytes).expect("exposition is UTF-8"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_exported_from_the_start_and_counted_apart() {
        let r = LimitMetrics::default();
        r.reject(Reason::Overloaded);
        r.reject(Reason::Overloaded);
        r.reject(Reason::HeaderTimeout);
        let mut text = String::new();
        r.render_into(&mut text, 3);
        assert!(text.lines().any(|l| l == "mlops_server_requests_in_flight 3"), "{text}");
        for (reason, n) in [
            ("header_timeout", 1),
            ("request_timeout", 0),
            ("overloaded", 2),
            ("request_too_large", 0),
            ("response_too_large", 0),
        ] {
            let line = format!("mlops_server_rejected_total{{reason=\"{reason}\"}} {n}");
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        assert_eq!(r.get(Reason::Overloaded), 2);
    }
}
