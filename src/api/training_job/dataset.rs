//! The training data of a TrainingJob: where it is, how it is validated and split.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DEFAULT_SPLIT_SEED;
use crate::api::common::LocalRef;
use crate::api::model_version::{
    DIGEST_MESSAGE, DIGEST_RULE, MAX_DIGEST_LEN, MAX_URI_LEN, PVC_URI_MESSAGE, PVC_URI_RULE, STORAGE_URI_RULE,
};

/// The training data.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dataset {
    /// Dataset location: `s3://bucket/key`, `pvc://claim/path` (the claim is mounted and
    /// the trainer gets a local path) or `file:///path`.
    #[x_kube(validation = Rule::new(STORAGE_URI_RULE).message(
        "dataset uri must start with s3://, pvc:// or file://"
    ))]
    #[x_kube(validation = Rule::new(PVC_URI_RULE).message(PVC_URI_MESSAGE))]
    #[schemars(length(min = 1, max = MAX_URI_LEN))]
    pub uri: String,

    /// Optional pin (`sha256:<hex>`): the trainer refuses data with another digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    #[schemars(length(max = MAX_DIGEST_LEN))]
    pub digest: Option<String>,

    /// Target column of a tabular dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub label_column: Option<String>,

    /// Data validation policy: what to do with missing values, duplicates and outliers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<DataValidation>,

    /// Train / validation / test ratios and shuffle seed. Default 0.7 / 0.15 / 0.15, seed 42.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,

    /// Secret (same namespace) with S3 credentials for an `s3://` uri, exposed to the
    /// trainer as environment variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// optionally `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`. Never copied into
    /// status or Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
}

/// Data validation policy per check. An absent check is not run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataValidation {
    /// Rows with a missing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<DataCheck>,
    /// Exact duplicate rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<DataCheck>,
    /// Rows with a numeric feature far from the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outliers: Option<OutlierCheck>,
}

/// Policy of one data check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataCheck {
    /// `Fail` the run, `Drop` the flagged rows, or `Keep` them (report only).
    pub action: DataAction,
    /// If set, the run fails when more than this fraction (0–1) of the rows is flagged,
    /// whatever the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_fraction: Option<f64>,
}

/// Policy of the outlier check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierCheck {
    /// `Fail` the run, `Drop` the flagged rows, or `Keep` them (report only).
    pub action: DataAction,
    /// `ZScore` (distance from the mean in standard deviations) or `IQR` (distance outside
    /// the inter-quartile range in IQRs). Default `ZScore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<OutlierMethod>,
    /// Cut-off of the method: default 3 for `ZScore`, 1.5 for `IQR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub threshold: Option<f64>,
    /// If set, the run fails when more than this fraction (0–1) of the rows is flagged,
    /// whatever the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_fraction: Option<f64>,
}

/// What a data check does with the rows it flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DataAction {
    /// The run fails with a one-line reason.
    #[default]
    Fail,
    /// The flagged rows are removed.
    Drop,
    /// The flagged rows are kept and only reported.
    Keep,
}

impl DataAction {
    /// The lowercase name used in the trainer contract (`MLOPS_VALIDATION`, result JSON).
    pub fn contract_name(self) -> &'static str {
        match self {
            DataAction::Fail => "fail",
            DataAction::Drop => "drop",
            DataAction::Keep => "keep",
        }
    }
}

/// Outlier detection method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OutlierMethod {
    #[default]
    ZScore,
    #[serde(rename = "IQR")]
    Iqr,
}

/// Split ratios; they must sum to 1.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new(
    "self.train + self.validation + self.test >= 0.999 && self.train + self.validation + self.test <= 1.001"
).message("split ratios train + validation + test must sum to 1"))]
#[x_kube(validation = Rule::new("self.train > 0.0").message("split.train must be greater than 0"))]
#[serde(rename_all = "camelCase")]
pub struct Split {
    /// Share of rows used for training (0–1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub train: f64,
    /// Share of rows used for validation (0–1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub validation: f64,
    /// Share of rows held out for the test metrics (0–1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub test: f64,
    /// Shuffle seed, so the same data gives the same split. Default 42.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

impl Default for Split {
    fn default() -> Self {
        Self { train: 0.7, validation: 0.15, test: 0.15, seed: Some(DEFAULT_SPLIT_SEED) }
    }
}
