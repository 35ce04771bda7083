//! ModelVersion: one immutable, validated model with its full lineage.
//!
//! Created by the TrainingJob controller when a run succeeds (deterministic name), or by a
//! user importing a model trained elsewhere. `spec` never changes after creation; the
//! ModelVersion controller evaluates `spec.gates` and reports the verdicts in `status`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;
use super::training_job::{DataAction, RunTrigger, Source};

/// Most gates a version (or a TrainingJob's `modelVersion` template) may carry.
pub const MAX_GATES: usize = 32;
/// Most metrics a version may record.
pub const MAX_METRICS: usize = 64;
/// Most entries kept in `status.failedIn`.
pub const MAX_FAILED_IN: usize = 16;
/// Longest storage URI (`artifact.uri`, `lineage.dataset.uri`), in characters.
pub const MAX_URI_LEN: usize = 2048;
/// Longest digest field (`sha256:` and 64 hex digits is 71), in characters.
pub const MAX_DIGEST_LEN: usize = 71;
/// Longest `artifact.format`, in characters.
pub const MAX_FORMAT_LEN: usize = 63;
/// Most entries of `lineage.dataset.validationReport`.
pub const MAX_VALIDATION_CHECKS: usize = 8;
/// Longest check name of a validation report entry, in characters.
pub const MAX_CHECK_NAME_LEN: usize = 63;

/// One immutable, validated model: where its artifact is, how good it is (metrics), where
/// it came from (lineage), and what it must satisfy before it may serve (gates).
// kube's repeated `printcolumn(...)` arguments trip clippy's duplicate-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mlops.dev",
    version = "v1alpha1",
    kind = "ModelVersion",
    namespaced,
    status = "ModelVersionStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "mv",
    category = "mlops",
    selectable = ".spec.model",
    doc = "One immutable, validated model version with full lineage. Spec cannot change after creation.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(
        name = "Validated",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Validated\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Serving", type_ = "string", json_path = ".status.servingIn"),
    printcolumn(
        name = "Training Job",
        type_ = "string",
        json_path = ".spec.lineage.trainingJob",
        priority = 1
    ),
    printcolumn(name = "Format", type_ = "string", json_path = ".spec.artifact.format", priority = 1),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message(
    "ModelVersion spec is immutable: create a new ModelVersion instead"
))]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionSpec {
    /// Model this version belongs to (a DNS label, at most 63 characters). Versions of the
    /// same model are compared by relative gates and followed by `track: LatestValidated`.
    #[x_kube(validation = Rule::new(MODEL_NAME_RULE).message(MODEL_NAME_MESSAGE))]
    #[schemars(length(max = 63))]
    pub model: String,

    /// Where the trained model is stored.
    pub artifact: Artifact,

    /// Measured quality of the model, name to number: statistical (accuracy, precision,
    /// recall, f1, ...) and computational (latencyP99Ms, sizeBytes, ...). Gates refer to
    /// these names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_METRICS))]
    pub metrics: BTreeMap<String, f64>,

    /// Where the model came from. Filled by the TrainingJob controller; optional for
    /// imported models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,

    /// Requirements the version must meet before it may serve. All must pass for
    /// `Validated=True`. No gates: the version is valid as soon as it exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "atomic"))]
    pub gates: Vec<Gate>,
}

/// CEL rule for a model name: a lowercase DNS label, usable as a label value.
pub(crate) const MODEL_NAME_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";
pub(crate) const MODEL_NAME_MESSAGE: &str =
    "model must be a lowercase DNS label: a-z, 0-9 and '-', starting and ending with a letter or digit";

/// CEL rule shared by every storage URI (dataset, output, artifact); each field words
/// its own message.
pub(crate) const STORAGE_URI_RULE: &str =
    "self.startsWith('s3://') || self.startsWith('pvc://') || self.startsWith('file://')";
/// A `pvc://` URI names a claim: `pvc://<claim>/<path>`.
pub(crate) const PVC_URI_RULE: &str =
    "!self.startsWith('pvc://') || self.matches('^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?$')";
pub(crate) const PVC_URI_MESSAGE: &str = "a pvc:// uri must look like pvc://<claim-name>/<path>";

/// The claim and the path inside it of a `pvc://<claim>/<path>` URI; `None` for any other
/// scheme. The one place that splits such a URI (the trainer's mounts, the server's, the
/// result check).
pub fn pvc_parts(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("pvc://")?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}
/// Digest pins: `sha256:` and 64 lowercase hex digits.
pub(crate) const DIGEST_RULE: &str = "self.matches('^sha256:[0-9a-f]{64}$')";
pub(crate) const DIGEST_MESSAGE: &str = "digest must be sha256: followed by 64 lowercase hex digits";

/// Where the trained model is stored.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Location of the model artifact: `s3://bucket/key`, `pvc://claim/path` or `file:///path`.
    #[x_kube(validation = Rule::new(STORAGE_URI_RULE).message(
        "artifact uri must start with s3://, pvc:// or file://"
    ))]
    #[x_kube(validation = Rule::new(PVC_URI_RULE).message(PVC_URI_MESSAGE))]
    #[schemars(length(min = 1, max = MAX_URI_LEN))]
    pub uri: String,

    /// Content digest of the artifact (`sha256:<hex>`); the server verifies it on load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    #[schemars(length(max = MAX_DIGEST_LEN))]
    pub digest: Option<String>,

    /// Serialization format the server must understand (for example `mlops-linear-v1`,
    /// `onnx`, `sklearn-joblib`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_FORMAT_LEN))]
    pub format: Option<String>,
}

/// Where a version came from: the run that trained it, on which data, with which code.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// Name of the TrainingJob that produced this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub training_job: Option<String>,

    /// Run id (`status.runs[].name` of the TrainingJob) that produced this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub run: Option<String>,

    /// Trainer image as written in the TrainingJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,

    /// Resolved image digest the trainer actually ran (from the pod status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image_digest: Option<String>,

    /// The data the model was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetLineage>,

    /// Hyper-parameters handed to the trainer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub hyperparameters: BTreeMap<String, String>,

    /// Repository and revision of the training code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,

    /// What started the run (schedule, drift, new data, spec change, manual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<RunTrigger>,

    /// When the training run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the training run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// The dataset snapshot a version was trained on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetLineage {
    /// Dataset location.
    #[schemars(length(max = MAX_URI_LEN))]
    pub uri: String,

    /// Digest of the data actually read (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DIGEST_LEN))]
    pub digest: Option<String>,

    /// Row counts after validation, in total and per split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowCounts>,

    /// What data validation found and did, one entry per check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_VALIDATION_CHECKS), extend("x-kubernetes-list-type" = "atomic"))]
    pub validation_report: Vec<ValidationReport>,
}

/// Row counts of a dataset after validation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RowCounts {
    /// Rows kept after validation.
    pub total: i64,
    /// Rows in the training split.
    pub train: i64,
    /// Rows in the validation split.
    pub validation: i64,
    /// Rows in the test split.
    pub test: i64,
}

/// Outcome of one data-validation check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationReport {
    /// Check name: `missing`, `duplicates` or `outliers`.
    #[schemars(length(max = MAX_CHECK_NAME_LEN))]
    pub check: String,
    /// Rows the check flagged.
    pub found: i64,
    /// What was done with them.
    pub action: DataAction,
    /// Rows removed from the dataset because of this check.
    #[serde(default)]
    pub rows_removed: i64,
}

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

/// Observed state of a ModelVersion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionStatus {
    /// `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Validated` (gates), `Ready` (valid and usable), `DeletionBlocked`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Verdict of each gate of `spec.gates`, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub gate_results: Vec<GateResult>,

    /// InferenceServices (same namespace) sending traffic to this version, as stable or canary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub serving_in: Vec<String>,

    /// InferenceServices that keep this version as the target of a revert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub rollback_target_of: Vec<String>,

    /// InferenceServices where a rollout of this version was rolled back (bounded, newest last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub failed_in: Vec<FailedIn>,
}

/// Verdict of one gate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// The gate in human form, e.g. `accuracy >= 0.9` or `f1 >= serving - 0.01`.
    pub gate: String,
    /// Metric name.
    pub metric: String,
    /// Comparison operator.
    pub operator: GateOp,
    /// Bound the value was compared with; absent for a relative gate without a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<f64>,
    /// Measured value from `spec.metrics`; absent when the metric is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// ModelVersion whose metric was the baseline of a relative gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_version: Option<String>,
    /// Passed or Failed.
    pub verdict: GateVerdict,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Verdict of a gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GateVerdict {
    #[default]
    Passed,
    Failed,
}

/// A rollback of this version in one InferenceService.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedIn {
    /// InferenceService name (same namespace).
    pub inference_service: String,
    /// When the rollback was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The check that failed (metric check name, or `health`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
    /// CamelCase reason, e.g. `MetricCheckFailed`, `HealthCheckFailed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Details in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn spec_round_trips() {
        let yaml = r#"
model: iris
artifact: {uri: "s3://models/iris/v1", digest: "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", format: mlops-linear-v1}
metrics: {accuracy: 0.95, latencyP99Ms: 3}
lineage:
  trainingJob: iris
  run: iris-r1
  dataset: {uri: "file:///data/iris.csv", rows: {total: 150, train: 105, validation: 22, test: 23},
            validationReport: [{check: missing, found: 2, action: Drop, rowsRemoved: 2}]}
  trigger: {type: Schedule, scheduleTime: "2025-01-01T00:00:00Z"}
gates:
  - {metric: accuracy, op: ">=", value: 0.9}
  - {metric: f1, op: ">=", relativeTo: Serving, tolerance: 0.01}
"#;
        let spec: ModelVersionSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(spec.gates[0], Gate::absolute("accuracy", GateOp::Ge, 0.9));
        assert_eq!(spec.gates[1], Gate::relative("f1", GateOp::Ge, 0.01));
        assert_eq!(spec.metrics["latencyP99Ms"], 3.0);
        let back: ModelVersionSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        // Unset optionals are not serialized, so server-side apply sends only what we own.
        let v = serde_json::to_value(Gate::absolute("a", GateOp::Lt, 1.0)).unwrap();
        assert_eq!(v, json!({"metric": "a", "op": "<", "value": 1.0}));
    }

    #[test]
    fn gate_bounds_and_ops() {
        let g = Gate::relative("f1", GateOp::Ge, 0.01);
        assert_eq!(g.bound(None), None);
        assert!((g.bound(Some(0.9)).unwrap() - 0.89).abs() < 1e-12);
        assert!((Gate::relative("lat", GateOp::Le, 1.0).bound(Some(5.0)).unwrap() - 6.0).abs() < 1e-12);
        assert_eq!(Gate::absolute("a", GateOp::Gt, 0.5).bound(Some(9.0)), Some(0.5));
        assert!(GateOp::Ge.holds(0.9, 0.9));
        assert!(!GateOp::Gt.holds(0.9, 0.9));
        assert!(GateOp::Le.holds(1.0, 1.0));
        assert!(!GateOp::Lt.holds(f64::NAN, 1.0));
        assert_eq!(Gate::absolute("accuracy", GateOp::Ge, 0.9).describe(), "accuracy >= 0.9");
        assert_eq!(g.describe(), "f1 >= serving - 0.01");
    }

    #[test]
    fn crd_has_immutability_and_gate_rules() {
        let crd = serde_json::to_string(&ModelVersion::crd()).unwrap();
        assert!(crd.contains(r#""rule":"self == oldSelf""#));
        assert!(crd.contains("ModelVersion spec is immutable"));
        assert!(crd.contains("has(self.value) != has(self.relativeTo)"));
        assert!(crd.contains(STORAGE_URI_RULE));
        assert!(crd.contains(DIGEST_RULE));
        assert!(crd.contains(r#""enum":[">=","<=",">","<"]"#));
        assert!(crd.contains(r#""shortNames":["mv"]"#));
    }
}
