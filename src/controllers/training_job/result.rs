//! The trainer's result: a small JSON document the trainer writes to its termination
//! message (DESIGN.md §3, contract version 1). Parsing is pure and strict: a missing,
//! oversized or malformed result fails the run with a reason instead of producing a
//! half-filled ModelVersion.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api::{
    model_version::{Artifact, RowCounts, ValidationReport},
    training_job::DataAction,
};

/// The kubelet keeps at most 4 KiB of a termination message.
pub const MAX_RESULT_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct TrainerResult {
    pub metrics: BTreeMap<String, f64>,
    pub artifact: Artifact,
    pub dataset_digest: Option<String>,
    pub rows: Option<RowCounts>,
    pub validation: Vec<ValidationReport>,
}

/// Why a result could not be used; `reason()` is the run's CamelCase failure reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResultError {
    #[error("the trainer exited 0 but wrote no result to its termination message")]
    Missing,
    #[error("the trainer's result is {0} bytes, more than the {MAX_RESULT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("the trainer's result is not valid result JSON: {0}")]
    Malformed(String),
    #[error("the trainer's result has version {0}; this operator understands version 1")]
    UnsupportedVersion(u64),
    #[error("the trainer's result is invalid: {0}")]
    Invalid(String),
}

impl ResultError {
    pub fn reason(&self) -> &'static str {
        match self {
            ResultError::Missing => "ResultMissing",
            ResultError::TooLarge(_) => "ResultTooLarge",
            _ => "ResultInvalid",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Wire {
    version: u64,
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
    artifact: WireArtifact,
    #[serde(default)]
    dataset: Option<WireDataset>,
    #[serde(default)]
    validation: BTreeMap<String, WireCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireArtifact {
    uri: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDataset {
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    total: Option<i64>,
    #[serde(default)]
    train: Option<i64>,
    #[serde(default)]
    validation: Option<i64>,
    #[serde(default)]
    test: Option<i64>,
    /// Row counts may also be nested under `rows`.
    #[serde(default)]
    rows: Option<RowCounts>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCheck {
    #[serde(default)]
    found: i64,
    action: String,
    #[serde(default, alias = "rowsRemoved")]
    removed: i64,
}

/// Parses a termination message into a result.
pub fn parse(message: Option<&str>) -> Result<TrainerResult, ResultError> {
    let text = message.map(str::trim).filter(|m| !m.is_empty()).ok_or(ResultError::Missing)?;
    if text.len() > MAX_RESULT_BYTES {
        return Err(ResultError::TooLarge(text.len()));
    }
    // serde's messages name the field and position, which is what a user needs.
    let wire: Wire = serde_json::from_str(text).map_err(|e| ResultError::Malformed(e.to_string()))?;
    if wire.version != 1 {
        return Err(ResultError::UnsupportedVersion(wire.version));
    }
    let uri = wire.artifact.uri.trim().to_string();
    if !["s3://", "pvc://", "file://"].iter().any(|s| uri.starts_with(s)) {
        return Err(ResultError::Invalid(format!(
            "artifact.uri {uri:?} must start with s3://, pvc:// or file://"
        )));
    }
    if let Some(d) = &wire.artifact.digest
        && !is_sha256_digest(d)
    {
        return Err(ResultError::Invalid(format!("artifact.digest {d:?} is not sha256:<64 hex digits>")));
    }
    if let Some((name, v)) = wire.metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(ResultError::Invalid(format!("metric {name} is {v}, not a finite number")));
    }
    if wire.metrics.len() > crate::api::model_version::MAX_METRICS {
        return Err(ResultError::Invalid(format!("{} metrics, more than the limit", wire.metrics.len())));
    }
    let validation = wire
        .validation
        .into_iter()
        .map(|(check, c)| {
            let action = match c.action.to_ascii_lowercase().as_str() {
                "fail" => DataAction::Fail,
                "drop" => DataAction::Drop,
                "keep" => DataAction::Keep,
                other => {
                    return Err(ResultError::Invalid(format!(
                        "validation.{check}.action {other:?} is unknown"
                    )));
                }
            };
            Ok(ValidationReport { check, found: c.found, action, rows_removed: c.removed })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (dataset_digest, rows) = match wire.dataset {
        None => (None, None),
        Some(d) => {
            let rows = d.rows.or(match (d.total, d.train, d.validation, d.test) {
                (Some(total), Some(train), Some(validation), Some(test)) => {
                    Some(RowCounts { total, train, validation, test })
                }
                _ => None,
            });
            (d.digest, rows)
        }
    };
    Ok(TrainerResult {
        metrics: wire.metrics,
        artifact: Artifact { uri, digest: wire.artifact.digest, format: wire.artifact.format },
        dataset_digest,
        rows,
        validation,
    })
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"version":1,
        "metrics":{"accuracy":0.96,"f1":0.95,"latencyP99Ms":0.02},
        "artifact":{"uri":"file:///tmp/out/iris-r1/model.json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","format":"mlops-model-v1"},
        "dataset":{"digest":"sha256:bbbb","total":150,"train":105,"validation":22,"test":23},
        "validation":{"missing":{"found":2,"action":"drop","removed":2},"duplicates":{"found":1,"action":"Keep","removed":0}}}"#;

    #[test]
    fn a_complete_result_parses() {
        let r = parse(Some(GOOD)).unwrap();
        assert_eq!(r.metrics["accuracy"], 0.96);
        assert_eq!(r.artifact.format.as_deref(), Some("mlops-model-v1"));
        assert_eq!(r.rows, Some(RowCounts { total: 150, train: 105, validation: 22, test: 23 }));
        assert_eq!(r.validation.len(), 2);
        assert_eq!(r.validation[0].check, "duplicates");
        assert_eq!(r.validation[1].action, DataAction::Drop);
        assert_eq!(r.validation[1].rows_removed, 2);
    }

    #[test]
    fn nested_row_counts_are_accepted() {
        let text = r#"{"version":1,"artifact":{"uri":"s3://b/k"},"dataset":{"rows":{"total":4,"train":2,"validation":1,"test":1}}}"#;
        assert_eq!(parse(Some(text)).unwrap().rows.unwrap().total, 4);
    }

    #[test]
    fn each_bad_result_has_its_reason() {
        let cases: &[(Option<&str>, &str, &str)] = &[
            (None, "ResultMissing", "wrote no result"),
            (Some("  \n"), "ResultMissing", "wrote no result"),
            (Some("bad data: column x is not numeric"), "ResultInvalid", "not valid result JSON"),
            (Some(r#"{"version":2,"artifact":{"uri":"s3://b/k"}}"#), "ResultInvalid", "version 2"),
            (Some(r#"{"version":1}"#), "ResultInvalid", "missing field `artifact`"),
            (
                Some(r#"{"version":1,"artifact":{"uri":"http://x"}}"#),
                "ResultInvalid",
                "must start with s3://",
            ),
            (
                Some(r#"{"version":1,"artifact":{"uri":"s3://b/k","digest":"md5:1"}}"#),
                "ResultInvalid",
                "sha256",
            ),
            (
                Some(r#"{"version":1,"artifact":{"uri":"s3://b/k"},"extra":1}"#),
                "ResultInvalid",
                "unknown field",
            ),
            (
                Some(
                    r#"{"version":1,"artifact":{"uri":"s3://b/k"},"validation":{"missing":{"action":"burn"}}}"#,
                ),
                "ResultInvalid",
                "burn",
            ),
        ];
        for (text, reason, words) in cases {
            let err = parse(*text).unwrap_err();
            assert_eq!(err.reason(), *reason, "{text:?}");
            assert!(err.to_string().contains(words), "{text:?}: {err}");
        }
    }

    #[test]
    fn an_oversized_result_is_refused() {
        let big = format!(r#"{{"version":1,"artifact":{{"uri":"s3://b/{}"}}}}"#, "k".repeat(5000));
        assert_eq!(parse(Some(&big)).unwrap_err().reason(), "ResultTooLarge");
    }
}
