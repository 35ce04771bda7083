//! Quality gates: the requirements on a version's metrics before it may serve.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A requirement on one metric. Absolute: `{metric: accuracy, op: ">=", value: 0.9}`.
/// Relative to the version currently serving the same model:
/// `{metric: f1, op: ">=", relativeTo: Serving, tolerance: 0.01}` means
/// `f1 >= serving.f1 - 0.01` (for `<=` / `<` the tolerance is added instead). With no
/// serving version yet, a relative gate passes and says so.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.value) != has(self.relativeTo)").message(
    "a gate needs exactly one of value (absolute bound) or relativeTo (relative gate)"
))]
#[x_kube(validation = Rule::new("!has(self.tolerance) || has(self.relativeTo)").message(
    "tolerance is only allowed on a relative gate (with relativeTo)"
))]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    /// Metric name, a key of the version's `spec.metrics`. A missing metric fails the gate.
    #[schemars(length(min = 1, max = 63))]
    pub metric: String,

    /// Comparison: `>=`, `<=`, `>` or `<`.
    pub op: GateOp,

    /// Absolute bound the metric is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,

    /// Compare with the same metric of another version instead of a fixed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_to: Option<GateBaseline>,

    /// Allowed margin against the baseline for a relative gate (default 0): subtracted from
    /// the baseline for `>=` / `>`, added for `<=` / `<`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub tolerance: Option<f64>,
}

impl Gate {
    /// An absolute gate.
    pub fn absolute(metric: impl Into<String>, op: GateOp, value: f64) -> Self {
        Self { metric: metric.into(), op, value: Some(value), ..Default::default() }
    }

    /// A gate relative to the serving version.
    pub fn relative(metric: impl Into<String>, op: GateOp, tolerance: f64) -> Self {
        Self {
            metric: metric.into(),
            op,
            relative_to: Some(GateBaseline::Serving),
            tolerance: Some(tolerance),
            ..Default::default()
        }
    }

    /// The bound the metric must satisfy. Absolute gates: `value`. Relative gates: the
    /// baseline's value moved by `tolerance` in the lenient direction; `None` when there
    /// is no baseline (the gate then passes by definition).
    pub fn bound(&self, baseline: Option<f64>) -> Option<f64> {
        if let Some(v) = self.value {
            return Some(v);
        }
        let base = baseline?;
        let tol = self.tolerance.unwrap_or(0.0);
        Some(match self.op {
            GateOp::Ge | GateOp::Gt => base - tol,
            GateOp::Le | GateOp::Lt => base + tol,
        })
    }

    /// Human form, e.g. `accuracy >= 0.9` or `f1 >= serving - 0.01`.
    pub fn describe(&self) -> String {
        match (self.value, &self.relative_to) {
            (Some(v), _) => format!("{} {} {}", self.metric, self.op.symbol(), v),
            (None, _) => {
                let tol = self.tolerance.unwrap_or(0.0);
                let sign = match self.op {
                    GateOp::Ge | GateOp::Gt => '-',
                    GateOp::Le | GateOp::Lt => '+',
                };
                format!("{} {} serving {} {}", self.metric, self.op.symbol(), sign, tol)
            }
        }
    }
}

/// Comparison operator of a gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GateOp {
    #[default]
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
}

impl GateOp {
    /// The operator as written in YAML.
    pub fn symbol(self) -> &'static str {
        match self {
            GateOp::Ge => ">=",
            GateOp::Le => "<=",
            GateOp::Gt => ">",
            GateOp::Lt => "<",
        }
    }

    /// Whether `value <op> bound` holds. NaN never holds.
    pub fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            GateOp::Ge => value >= bound,
            GateOp::Le => value <= bound,
            GateOp::Gt => value > bound,
            GateOp::Lt => value < bound,
        }
    }
}

/// Baseline of a relative gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GateBaseline {
    /// The version currently serving the same model (stable traffic of an
    /// InferenceService in the same namespace).
    #[default]
    Serving,
}
