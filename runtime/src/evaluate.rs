//! Metrics on the held-out rows: statistical quality and computational cost.
//!
//! Names are the result contract (camelCase, see `contract::result`): `accuracy`,
//! `precision`, `recall`, `f1` (macro averages over the classes present in
//! the truth or the predictions, as scikit-learn does, 0 when undefined) or
//! `rmse`, `mae`, `r2`; then `trainingSeconds`, `latencyP50Ms`,
//! `latencyP99Ms` (one-row predictions of the compiled model, no HTTP) and
//! `artifactSizeBytes`.

use crate::model::{Prediction, Predictor};
use std::collections::BTreeMap;
use std::time::Instant;

pub type Metrics = BTreeMap<String, f64>;

/// Accuracy and macro precision / recall / F1.
pub fn classification_metrics(truth: &[usize], predicted: &[usize], n_classes: usize) -> Metrics {
    let mut tp = vec![0usize; n_classes];
    let mut fp = vec![0usize; n_classes];
    let mut fn_ = vec![0usize; n_classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        if t == p {
            tp[t] += 1;
        } else {
            fp[p] += 1;
            fn_[t] += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let present: Vec<usize> = (0..n_classes).filter(|&c| tp[c] + fp[c] + fn_[c] > 0).collect();
    let (mut precision, mut recall, mut f1) = (0.0, 0.0, 0.0);
    for &c in &present {
        let p = ratio(tp[c], tp[c] + fp[c]);
        let r = ratio(tp[c], tp[c] + fn_[c]);
        precision += p;
        recall += r;
        f1 += if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
    }
    let k = present.len().max(1) as f64;
    Metrics::from([
        ("accuracy".into(), ratio(tp.iter().sum(), truth.len())),
        ("precision".into(), precision / k),
        ("recall".into(), recall / k),
        ("f1".into(), f1 / k),
    ])
}

/// RMSE, MAE and R² (R² is 0 when the truth is constant).
pub fn regression_metrics(truth: &[f64], predicted: &[f64]) -> Metrics {
    let n = truth.len().max(1) as f64;
    let mean = truth.iter().sum::<f64>() / n;
    let (mut se, mut ae, mut tot) = (0.0, 0.0, 0.0);
    for (t, p) in truth.iter().zip(predicted) {
        se += (t - p).powi(2);
        ae += (t - p).abs();
        tot += (t - mean).powi(2);
    }
    Metrics::from([
        ("rmse".into(), (se / n).sqrt()),
        ("mae".into(), ae / n),
        ("r2".into(), if tot == 0.0 { 0.0 } else { 1.0 - se / tot }),
    ])
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50 and p99 of single-row prediction latency in milliseconds, over at
/// least `samples` calls cycling through `rows`.
pub fn prediction_latency_ms(predictor: &Predictor, rows: &[&[f64]], samples: usize) -> (f64, f64) {
    if rows.is_empty() {
        return (0.0, 0.0);
    }
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let row = rows[i % rows.len()];
        let start = Instant::now();
        let p = predictor.predict(std::hint::black_box(row));
        std::hint::black_box(p);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (percentile(&times, 50.0), percentile(&times, 99.0))
}

/// Predictions of `rows` as class indices or values, by the predictor's kind;
/// `None` for a row whose values are too large to score.
pub fn predict_all(predictor: &Predictor, rows: &[&[f64]]) -> Vec<Option<Prediction>> {
    rows.iter().map(|r| predictor.predict(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn perfect_classification_scores_one() {
        let m = classification_metrics(&[0, 1, 2, 1], &[0, 1, 2, 1], 3);
        assert!(m.values().all(|v| close(*v, 1.0)), "{m:?}");
    }

    #[test]
    fn macro_averages_match_a_worked_example() {
        // truth: 0 0 1 1 ; predicted: 0 1 1 1
        // class 0: p=1, r=.5, f1=2/3 ; class 1: p=2/3, r=1, f1=.8
        let m = classification_metrics(&[0, 0, 1, 1], &[0, 1, 1, 1], 2);
        assert!(close(m["accuracy"], 0.75));
        assert!(close(m["precision"], (1.0 + 2.0 / 3.0) / 2.0));
        assert!(close(m["recall"], 0.75));
        assert!(close(m["f1"], (2.0 / 3.0 + 0.8) / 2.0));
    }

    #[test]
    fn absent_classes_do_not_dilute_the_macro_average() {
        let m = classification_metrics(&[0, 0], &[0, 0], 5);
        assert!(close(m["precision"], 1.0) && close(m["f1"], 1.0));
    }

    #[test]
    fn regression_metrics_match_hand_computation() {
        let m = regression_metrics(&[1.0, 2.0, 3.0], &[1.0, 2.0, 5.0]);
        assert!(close(m["mae"], 2.0 / 3.0));
        assert!(close(m["rmse"], (4.0f64 / 3.0).sqrt()));
        assert!(close(m["r2"], 1.0 - 4.0 / 2.0));
        assert!(close(regression_metrics(&[2.0, 2.0], &[2.0, 2.0])["r2"], 0.0));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        assert_eq!(percentile(&[3.0], 0.0), 3.0);
    }
}
