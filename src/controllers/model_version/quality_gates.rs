//! Quality gates, pure: each gate of a ModelVersion (`spec.gates`) against its own
//! metrics and, for relative gates, the metrics of the version serving the same model.
//! Not to be confused with the InferenceService's readiness gate on its pods.

use std::collections::BTreeMap;

use crate::api::{
    Gate,
    model_version::{GateResult, GateVerdict},
};

/// The version relative gates compare with.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline<'a> {
    pub version: &'a str,
    pub metrics: &'a BTreeMap<String, f64>,
}

/// One verdict per gate, in order. A missing metric fails its gate; a relative gate with
/// no serving version passes and says so.
pub fn evaluate(
    gates: &[Gate],
    metrics: &BTreeMap<String, f64>,
    baseline: Option<&Baseline>,
) -> Vec<GateResult> {
    gates.iter().map(|g| evaluate_one(g, metrics, baseline)).collect()
}

fn evaluate_one(gate: &Gate, metrics: &BTreeMap<String, f64>, baseline: Option<&Baseline>) -> GateResult {
    let value = metrics.get(&gate.metric).copied();
    let relative = gate.value.is_none();
    let base_value = baseline.and_then(|b| b.metrics.get(&gate.metric).copied());
    let bound = gate.bound(base_value);
    let mut result = GateResult {
        gate: gate.describe(),
        metric: gate.metric.clone(),
        operator: gate.op,
        bound,
        value,
        baseline_version: if relative { baseline.map(|b| b.version.to_string()) } else { None },
        verdict: GateVerdict::Failed,
        message: String::new(),
    };
    let Some(v) = value else {
        result.message = format!("metric {} is missing from spec.metrics", gate.metric);
        return result;
    };
    let Some(b) = bound else {
        result.verdict = GateVerdict::Passed;
        result.message = match baseline {
            None => "no version is serving this model yet: relative gate passes".into(),
            Some(base) => format!(
                "serving version {} has no metric {}: relative gate passes",
                base.version, gate.metric
            ),
        };
        return result;
    };
    let passed = gate.op.holds(v, b);
    result.verdict = if passed { GateVerdict::Passed } else { GateVerdict::Failed };
    let against = match (relative, baseline) {
        (true, Some(base)) => {
            format!(" (serving {} has {})", base.version, fmt(base_value.unwrap_or(f64::NAN)))
        }
        _ => String::new(),
    };
    result.message = format!(
        "{} = {} {} {} {}{}",
        gate.metric,
        fmt(v),
        if passed { "satisfies" } else { "violates" },
        gate.op.symbol(),
        fmt(b),
        against
    );
    result
}

fn fmt(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A one-line summary of the verdicts, for the `Validated` condition.
pub fn summary(results: &[GateResult]) -> (bool, String) {
    if results.is_empty() {
        return (true, "no gates: the version is valid as imported".into());
    }
    let failed: Vec<&GateResult> = results.iter().filter(|r| r.verdict == GateVerdict::Failed).collect();
    if failed.is_empty() {
        (true, format!("all {} gates passed", results.len()))
    } else {
        let detail: Vec<String> = failed.iter().map(|r| format!("{} ({})", r.gate, r.message)).collect();
        (false, format!("{} of {} gates failed: {}", failed.len(), results.len(), detail.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GateOp;

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn absolute_gates_compare_with_their_value() {
        let m = metrics(&[("accuracy", 0.95), ("latencyP99Ms", 7.0)]);
        let gates =
            [Gate::absolute("accuracy", GateOp::Ge, 0.9), Gate::absolute("latencyP99Ms", GateOp::Le, 5.0)];
        let r = evaluate(&gates, &m, None);
        assert_eq!(r[0].verdict, GateVerdict::Passed);
        assert_eq!(r[0].bound, Some(0.9));
        assert_eq!(r[1].verdict, GateVerdict::Failed);
        assert_eq!(r[1].value, Some(7.0));
        assert_eq!(r[1].message, "latencyP99Ms = 7 violates <= 5");
        let (ok, text) = summary(&r);
        assert!(!ok);
        assert!(text.starts_with("1 of 2 gates failed: latencyP99Ms <= 5"), "{text}");
    }

    #[test]
    fn strict_operators_are_strict() {
        let m = metrics(&[("f1", 0.9)]);
        assert_eq!(
            evaluate(&[Gate::absolute("f1", GateOp::Gt, 0.9)], &m, None)[0].verdict,
            GateVerdict::Failed
        );
        assert_eq!(
            evaluate(&[Gate::absolute("f1", GateOp::Lt, 0.9)], &m, None)[0].verdict,
            GateVerdict::Failed
        );
        assert_eq!(
            evaluate(&[Gate::absolute("f1", GateOp::Ge, 0.9)], &m, None)[0].verdict,
            GateVerdict::Passed
        );
    }

    #[test]
    fn a_missing_metric_fails_its_gate() {
        let r = evaluate(&[Gate::absolute("recall", GateOp::Ge, 0.5)], &metrics(&[]), None);
        assert_eq!(r[0].verdict, GateVerdict::Failed);
        assert!(r[0].message.contains("missing"));
    }

    #[test]
    fn relative_gates_use_the_serving_version_and_tolerance() {
        let serving = metrics(&[("f1", 0.9), ("latencyP99Ms", 2.0)]);
        let base = Baseline { version: "iris-r1", metrics: &serving };
        let gates = [Gate::relative("f1", GateOp::Ge, 0.01), Gate::relative("latencyP99Ms", GateOp::Le, 0.5)];
        let better = evaluate(&gates, &metrics(&[("f1", 0.895), ("latencyP99Ms", 2.4)]), Some(&base));
        assert!(better.iter().all(|r| r.verdict == GateVerdict::Passed), "{better:?}");
        assert_eq!(better[0].baseline_version.as_deref(), Some("iris-r1"));
        assert!((better[0].bound.unwrap() - 0.89).abs() < 1e-9);
        let worse = evaluate(&gates, &metrics(&[("f1", 0.85), ("latencyP99Ms", 3.0)]), Some(&base));
        assert!(worse.iter().all(|r| r.verdict == GateVerdict::Failed), "{worse:?}");
        assert!(worse[0].message.contains("serving iris-r1 has 0.9"), "{}", worse[0].message);
    }

    #[test]
    fn relative_gates_pass_without_a_serving_version_and_say_so() {
        let r = evaluate(&[Gate::relative("f1", GateOp::Ge, 0.0)], &metrics(&[("f1", 0.1)]), None);
        assert_eq!(r[0].verdict, GateVerdict::Passed);
        assert!(r[0].message.contains("no version is serving"));
        assert_eq!(r[0].bound, None);
    }

    #[test]
    fn no_gates_is_valid() {
        assert!(summary(&evaluate(&[], &metrics(&[]), None)).0);
    }
}
