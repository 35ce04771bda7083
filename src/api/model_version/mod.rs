//! ModelVersion: one immutable, validated model with its full lineage.
//!
//! Created by the TrainingJob controller when a run succeeds (deterministic name), or by a
//! user importing a model trained elsewhere. `spec` never changes after creation; the
//! ModelVersion controller evaluates `spec.gates` and reports the verdicts in `status`.

mod gate;
mod lineage;
mod status;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use gate::{Gate, GateBaseline, GateOp};
pub use lineage::{DatasetLineage, Lineage, RowCounts, ValidationReport};
pub use status::{FailedIn, GateResult, GateVerdict, ModelVersionStatus};

// The bounds a trainer's result is held to are the contract's: the schema of the fields a
// result is copied into is generated from the same constants, so the two cannot drift.
// (Storage URIs of every kind share `MAX_URI_LEN`; `MAX_DIGEST_LEN` is `sha256:` and 64 hex
// digits, as `DIGEST_RULE` requires.)
pub use contract::result::{
    MAX_CHECK_NAME_LEN, MAX_DIGEST_LEN, MAX_FORMAT_LEN, MAX_METRICS, MAX_URI_LEN, MAX_VALIDATION_CHECKS,
};

/// Most gates a version (or a TrainingJob's `modelVersion` template) may carry.
pub const MAX_GATES: usize = 32;
/// Most entries kept in `status.failedIn`.
pub const MAX_FAILED_IN: usize = 16;
/// Longest model name (`spec.model` of every kind): a DNS label, so it fits a label value.
pub const MAX_MODEL_NAME_LEN: usize = 63;
/// Most hyper-parameters of a TrainingJob, and so of a produced version's lineage.
pub const MAX_HYPERPARAMETERS: usize = 64;
/// Longest hyper-parameter value, in characters.
pub const MAX_HYPERPARAMETER_LEN: usize = 1024;

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
    #[schemars(length(max = MAX_MODEL_NAME_LEN))]
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
    #[schemars(length(max = MAX_GATES), extend("x-kubernetes-list-type" = "atomic"))]
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
