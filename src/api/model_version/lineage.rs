//! Where a version came from: the run, the data and the code that made it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    MAX_CHECK_NAME_LEN, MAX_DIGEST_LEN, MAX_HYPERPARAMETER_LEN, MAX_HYPERPARAMETERS, MAX_URI_LEN,
    MAX_VALIDATION_CHECKS,
};
use crate::api::training_job::{DataAction, RunTrigger, Source};

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
    #[schemars(extend(
        "maxProperties" = MAX_HYPERPARAMETERS,
        "additionalProperties" = {"type": "string", "maxLength": MAX_HYPERPARAMETER_LEN}
    ))]
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
