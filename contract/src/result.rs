//! The trainer's result document: the JSON a trainer writes to its termination message
//! when a run succeeds, and the operator turns into a ModelVersion.
//!
//! ```json
//! {"version": 1,
//!  "metrics": {"accuracy": 0.97, "f1": 0.97, "latencyP99Ms": 0.001},
//!  "artifact": {"uri": "s3://bucket/iris-r1/model.json", "digest": "sha256:…", "format": "mlops-runtime-json/v1"},
//!  "dataset": {"uri": "s3://…", "digest": "sha256:…", "total": 150, "train": 104, "validation": 23, "test": 23},
//!  "validation": {"missing": {"found": 0, "action": "drop", "removed": 0}}}
//! ```
//!
//! These are the wire types only: the operator's strict checks (URI schemes, digest form,
//! the bounds below) and their messages live where the result is read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The document's `version`; an operator refuses any other.
pub const VERSION: u64 = 1;

/// The kubelet keeps at most 4 KiB of a termination message: a longer result is cut and
/// would not parse, so a trainer must stay within it and the operator refuses more.
pub const MAX_RESULT_BYTES: usize = 4096;

// The bounds of the ModelVersion fields a result is copied into. The operator's CRD
// schema is generated from these, so a result within them is never refused by the API
// server. Lengths count characters (as the API server does), not bytes.

/// Most metrics a version may record.
pub const MAX_METRICS: usize = 64;
/// Longest storage URI (`artifact.uri`, the dataset's URI).
pub const MAX_URI_LEN: usize = 2048;
/// Longest digest field (`sha256:` and 64 hex digits is 71).
pub const MAX_DIGEST_LEN: usize = "sha256:".len() + 64;
/// Longest `artifact.format`.
pub const MAX_FORMAT_LEN: usize = 63;
/// Most data-validation checks reported.
pub const MAX_VALIDATION_CHECKS: usize = 8;
/// Longest data-validation check name.
pub const MAX_CHECK_NAME_LEN: usize = 63;

/// The whole document. Unknown top-level fields are refused, so a typo is not silently
/// dropped from the lineage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrainerResult {
    /// Always [`VERSION`] when written by a trainer of this contract.
    pub version: u64,
    /// Metric name → value, e.g. `accuracy`, `f1`, `latencyP99Ms`; at most [`MAX_METRICS`].
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    pub artifact: ArtifactRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetRef>,
    /// Check name (`schema`, `missing`, `duplicates`, `outliers`) → what it found and did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub validation: BTreeMap<String, CheckReport>,
}

/// Where the trained model was written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRef {
    /// `s3://bucket/key`, `pvc://claim/path` or `file:///path`.
    pub uri: String,
    /// `sha256:<64 lowercase hex digits>` of the artifact's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// The data the run read. Row counts come either flat (`total`, `train`, `validation`,
/// `test`, all four) or nested under `rows`; see [`DatasetRef::row_counts`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetRef {
    /// Also in the TrainingJob's spec: a trainer may leave it out to fit in 4 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Digest of the bytes actually read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowCounts>,
}

/// Rows after validation, in total and per split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    pub total: i64,
    pub train: i64,
    pub validation: i64,
    pub test: i64,
}

impl DatasetRef {
    /// A dataset reference with flat row counts, as the reference trainer writes it.
    pub fn new(uri: Option<String>, digest: String, rows: RowCounts) -> DatasetRef {
        DatasetRef {
            uri,
            digest: Some(digest),
            total: Some(rows.total),
            train: Some(rows.train),
            validation: Some(rows.validation),
            test: Some(rows.test),
            rows: None,
        }
    }

    /// The row counts: nested `rows`, else the four flat fields when all are present.
    pub fn row_counts(&self) -> Option<RowCounts> {
        self.rows.or(match (self.total, self.train, self.validation, self.test) {
            (Some(total), Some(train), Some(validation), Some(test)) => {
                Some(RowCounts { total, train, validation, test })
            }
            _ => None,
        })
    }
}

/// What one data-validation check found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    #[serde(default)]
    pub found: i64,
    /// `fail`, `drop` or `keep` (read case-insensitively, see [`CheckAction::parse`]). A
    /// string on the wire so a reader can name an unknown value in its refusal.
    pub action: String,
    /// Rows removed (`rowsRemoved` is accepted too).
    #[serde(default, alias = "rowsRemoved")]
    pub removed: i64,
}

impl CheckReport {
    pub fn new(found: i64, action: CheckAction, removed: i64) -> CheckReport {
        CheckReport { found, action: action.as_str().into(), removed }
    }
}

/// What a data check does with the rows it flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckAction {
    /// The run fails.
    Fail,
    /// The flagged rows are removed.
    Drop,
    /// The flagged rows are kept and only reported.
    Keep,
}

impl CheckAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckAction::Fail => "fail",
            CheckAction::Drop => "drop",
            CheckAction::Keep => "keep",
        }
    }

    /// `fail`, `drop` or `keep`, in any case.
    pub fn parse(value: &str) -> Option<CheckAction> {
        match value.to_ascii_lowercase().as_str() {
            "fail" => Some(CheckAction::Fail),
            "drop" => Some(CheckAction::Drop),
            "keep" => Some(CheckAction::Keep),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
