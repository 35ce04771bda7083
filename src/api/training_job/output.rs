//! What a run produces: where the artifact is written and what the produced ModelVersion gets.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::common::LocalRef;
use crate::api::model_version::{
    Gate, MAX_GATES, MAX_URI_LEN, PVC_URI_MESSAGE, PVC_URI_RULE, STORAGE_URI_RULE,
};

/// Where the trainer writes the artifact.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Artifact location prefix: `s3://`, `pvc://claim/path` or `file:///path`. Each run
    /// writes below it in a folder named after the run.
    #[x_kube(validation = Rule::new(STORAGE_URI_RULE).message(
        "output uri must start with s3://, pvc:// or file://"
    ))]
    #[x_kube(validation = Rule::new(PVC_URI_RULE).message(PVC_URI_MESSAGE))]
    #[schemars(length(min = 1, max = MAX_URI_LEN))]
    pub uri: String,

    /// Secret with S3 credentials for an `s3://` uri (same keys as `dataset.credentialsSecretRef`).
    /// When it differs from the dataset's, the trainer gets it as `MLOPS_OUTPUT_AWS_*` and
    /// writes the artifact with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
}

/// What produced ModelVersions get besides the run's results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionTemplate {
    /// Labels added to each produced ModelVersion.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    pub labels: BTreeMap<String, String>,

    /// Gates copied into each produced ModelVersion's `spec.gates`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GATES), extend("x-kubernetes-list-type" = "atomic"))]
    pub gates: Vec<Gate>,

    /// How many produced versions are kept. Unset: the last 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// Versions a TrainingJob keeps. A version that is serving, is a rollback target, or is
/// named in an InferenceService's rollout history is always kept and not counted; of the
/// others, the newest `keepLast` stay and older ones are deleted, so a frequent schedule
/// cannot grow the registry without bound.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Versions kept besides those in use (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub keep_last: Option<i32>,
}
