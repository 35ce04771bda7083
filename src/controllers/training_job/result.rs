//! The trainer's result: the contract's document (`contract::result`, version 1) that
//! the trainer writes to its termination message, read into what a ModelVersion needs.
//! Parsing is pure and strict: a missing, oversized or malformed result fails the run
//! with a reason instead of producing a half-filled ModelVersion.

use std::collections::BTreeMap;

use contract::result::{
    self as wire, CheckAction, MAX_CHECK_NAME_LEN, MAX_DIGEST_LEN, MAX_FORMAT_LEN, MAX_METRICS,
    MAX_RESULT_BYTES, MAX_URI_LEN, MAX_VALIDATION_CHECKS,
};

use crate::api::{
    model_version::{Artifact, PVC_URI_MESSAGE, RowCounts, ValidationReport},
    training_job::DataAction,
};

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
    #[error("the trainer's result has version {0}; this operator understands version {supported}", supported = wire::VERSION)]
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

/// Parses a termination message into a result.
pub fn parse(message: Option<&str>) -> Result<TrainerResult, ResultError> {
    let text = message.map(str::trim).filter(|m| !m.is_empty()).ok_or(ResultError::Missing)?;
    if text.len() > MAX_RESULT_BYTES {
        return Err(ResultError::TooLarge(text.len()));
    }
    // serde's messages name the field and position, which is what a user needs.
    let doc: wire::TrainerResult =
        serde_json::from_str(text).map_err(|e| ResultError::Malformed(e.to_string()))?;
    if doc.version != wire::VERSION {
        return Err(ResultError::UnsupportedVersion(doc.version));
    }
    let validation = doc
        .validation
        .into_iter()
        .map(|(check, c)| {
            let action = match CheckAction::parse(&c.action) {
                Some(CheckAction::Fail) => DataAction::Fail,
                Some(CheckAction::Drop) => DataAction::Drop,
                Some(CheckAction::Keep) => DataAction::Keep,
                None => {
                    let other = c.action.to_ascii_lowercase();
                    return Err(ResultError::Invalid(format!(
                        "validation.{check}.action {other:?} is unknown"
                    )));
                }
            };
            Ok(ValidationReport { check, found: c.found, action, rows_removed: c.removed })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (dataset_digest, rows) = match doc.dataset {
        None => (None, None),
        Some(d) => {
            let rows = d.row_counts().map(|r| RowCounts {
                total: r.total,
                train: r.train,
                validation: r.validation,
                test: r.test,
            });
            (d.digest, rows)
        }
    };
    let result = TrainerResult {
        metrics: doc.metrics,
        artifact: Artifact {
            uri: doc.artifact.uri.trim().to_string(),
            digest: doc.artifact.digest,
            format: doc.artifact.format,
        },
        dataset_digest,
        rows,
        validation,
    };
    check_schema_bounds(&result)?;
    Ok(result)
}

/// Every bound the ModelVersion schema puts on a field copied from the result (the
/// contract's constants, which that schema is generated from). A result the API server would refuse with 422
/// fails the run here, naming the field, instead of failing every ModelVersion create.
/// Metric names have no bound in the schema (only the count of metrics has), and the
/// integers (`found`, `removed`, row counts) are int64 there as here.
fn check_schema_bounds(r: &TrainerResult) -> Result<(), ResultError> {
    let uri = &r.artifact.uri;
    at_most("artifact.uri", uri, MAX_URI_LEN)?;
    if !["s3://", "pvc://", "file://"].iter().any(|s| uri.starts_with(s)) {
        return invalid(format!("artifact.uri {} must start with s3://, pvc:// or file://", shown(uri)));
    }
    if !is_pvc_uri(uri) {
        return invalid(format!(
            "artifact.uri {}: {PVC_URI_MESSAGE} (a claim name of a-z, 0-9, '-' and '.')",
            shown(uri)
        ));
    }
    if let Some(d) = &r.artifact.digest
        && !is_sha256_digest(d)
    {
        return invalid(format!("artifact.digest {} is not sha256:<64 lowercase hex digits>", shown(d)));
    }
    if let Some(format) = &r.artifact.format {
        at_most("artifact.format", format, MAX_FORMAT_LEN)?;
    }
    if let Some(digest) = &r.dataset_digest {
        at_most("dataset.digest", digest, MAX_DIGEST_LEN)?;
    }
    if r.metrics.len() > MAX_METRICS {
        return invalid(format!(
            "metrics has {} entries; a ModelVersion holds at most {MAX_METRICS}",
            r.metrics.len()
        ));
    }
    if let Some((name, v)) = r.metrics.iter().find(|(_, v)| !v.is_finite()) {
        return invalid(format!("metric {} is {v}, not a finite number", shown(name)));
    }
    if r.validation.len() > MAX_VALIDATION_CHECKS {
        return invalid(format!(
            "validation has {} checks; a ModelVersion holds at most {MAX_VALIDATION_CHECKS}",
            r.validation.len()
        ));
    }
    for v in &r.validation {
        at_most(&format!("validation check name {}", shown(&v.check)), &v.check, MAX_CHECK_NAME_LEN)?;
    }
    Ok(())
}

fn invalid(message: String) -> Result<(), ResultError> {
    Err(ResultError::Invalid(message))
}

/// The schema's `maxLength`, which the API server counts in characters, not bytes.
fn at_most(field: &str, value: &str, max: usize) -> Result<(), ResultError> {
    let n = value.chars().count();
    if n > max {
        return invalid(format!("{field} is {n} characters long; a ModelVersion allows at most {max}"));
    }
    Ok(())
}

/// A value quoted for a message, cut short: a result may be up to 4 KiB.
fn shown(value: &str) -> String {
    const KEEP: usize = 64;
    if value.chars().count() <= KEEP {
        return format!("{value:?}");
    }
    format!("{:?}...", value.chars().take(KEEP).collect::<String>())
}

/// The schema's `PVC_URI_RULE`: non-`pvc://` URIs pass; a `pvc://` one
/// needs a claim of lowercase letters, digits, `-` and `.` that starts and ends with a
/// letter or digit, then nothing or `/` and a path without a newline (the rule's `.*`).
fn is_pvc_uri(uri: &str) -> bool {
    let Some((claim, path)) = crate::api::model_version::pvc_parts(uri) else { return true };
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = claim.as_bytes();
    !b.is_empty()
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter().all(|&c| edge(c) || c == b'-' || c == b'.')
        && !path.contains('\n')
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

    /// A result with `artifact` and the extra top-level fields in `rest` (JSON, may be empty).
    fn result(artifact: &str, rest: &str) -> String {
        let rest = if rest.is_empty() { String::new() } else { format!(",{rest}") };
        format!(r#"{{"version":1,"artifact":{artifact}{rest}}}"#)
    }

    fn checks(n: usize) -> String {
        let entries: Vec<String> = (0..n).map(|i| format!(r#""c{i}":{{"action":"keep"}}"#)).collect();
        format!(r#""validation":{{{}}}"#, entries.join(","))
    }

    fn metrics(n: usize) -> String {
        let entries: Vec<String> = (0..n).map(|i| format!(r#""m{i}":{i}"#)).collect();
        format!(r#""metrics":{{{}}}"#, entries.join(","))
    }

    /// Each bound of the ModelVersion schema on a copied field: one past it is refused with
    /// `ResultInvalid` and a message naming the field and the bound; at the bound it parses.
    #[test]
    fn each_schema_bound_is_refused_with_the_field_and_bound() {
        let s3 = r#"{"uri":"s3://b/k"}"#;
        let cases: Vec<(String, String, &str)> = vec![
            (
                result(&format!(r#"{{"uri":"s3://b/{}"}}"#, "k".repeat(2048 - 7)), ""),
                result(&format!(r#"{{"uri":"s3://b/{}"}}"#, "k".repeat(2048 - 6)), ""),
                "artifact.uri is 2049 characters long; a ModelVersion allows at most 2048",
            ),
            (
                result(r#"{"uri":"pvc://claim-1.a/models/m.json"}"#, ""),
                result(r#"{"uri":"pvc://Claim/models/m.json"}"#, ""),
                "a pvc:// uri must look like pvc://<claim-name>/<path>",
            ),
            (
                result(r#"{"uri":"pvc://claim"}"#, ""),
                result(r#"{"uri":"pvc://claim-/m"}"#, ""),
                "artifact.uri \"pvc://claim-/m\"",
            ),
            (
                result(r#"{"uri":"pvc://c/a b"}"#, ""),
                result(r#"{"uri":"pvc://c/a\nb"}"#, ""),
                "pvc://<claim-name>/<path>",
            ),
            (
                result(r#"{"uri":"pvc://c/m"}"#, ""),
                result(r#"{"uri":"pvc:///m"}"#, ""),
                "pvc://<claim-name>/<path>",
            ),
            (
                result(&format!(r#"{{"uri":"s3://b/k","digest":"sha256:{}"}}"#, "0".repeat(64)), ""),
                result(&format!(r#"{{"uri":"s3://b/k","digest":"sha256:{}"}}"#, "A".repeat(64)), ""),
                "artifact.digest \"sha256:AAAA",
            ),
            (
                result(&format!(r#"{{"uri":"s3://b/k","format":"{}"}}"#, "f".repeat(63)), ""),
                result(&format!(r#"{{"uri":"s3://b/k","format":"{}"}}"#, "f".repeat(64)), ""),
                "artifact.format is 64 characters long; a ModelVersion allows at most 63",
            ),
            (
                result(s3, &format!(r#""dataset":{{"digest":"{}"}}"#, "d".repeat(71))),
                result(s3, &format!(r#""dataset":{{"digest":"{}"}}"#, "d".repeat(72))),
                "dataset.digest is 72 characters long; a ModelVersion allows at most 71",
            ),
            (
                result(s3, &metrics(64)),
                result(s3, &metrics(65)),
                "metrics has 65 entries; a ModelVersion holds at most 64",
            ),
            (
                result(s3, &checks(8)),
                result(s3, &checks(9)),
                "validation has 9 checks; a ModelVersion holds at most 8",
            ),
            (
                result(s3, &format!(r#""validation":{{"{}":{{"action":"keep"}}}}"#, "c".repeat(63))),
                result(s3, &format!(r#""validation":{{"{}":{{"action":"keep"}}}}"#, "c".repeat(64))),
                "is 64 characters long; a ModelVersion allows at most 63",
            ),
        ];
        for (good, bad, words) in &cases {
            assert!(parse(Some(good)).is_ok(), "{good}: {:?}", parse(Some(good)));
            let err = parse(Some(bad)).unwrap_err();
            assert_eq!(err.reason(), "ResultInvalid", "{bad}");
            assert!(err.to_string().contains(words), "{bad}: {err}");
        }
    }

    #[test]
    fn lengths_are_counted_in_characters_like_the_api_server() {
        // 63 two-byte characters: 126 bytes, within maxLength 63.
        let text = result(&format!(r#"{{"uri":"s3://b/k","format":"{}"}}"#, "é".repeat(63)), "");
        assert!(parse(Some(&text)).is_ok());
    }

    #[test]
    fn long_values_are_cut_short_in_the_message() {
        let text = result(&format!(r#"{{"uri":"s3://b/k","digest":"{}"}}"#, "x".repeat(1000)), "");
        let err = parse(Some(&text)).unwrap_err().to_string();
        assert!(err.contains("artifact.digest") && err.contains("..."), "{err}");
        assert!(err.len() < 200, "{err}");
    }

    /// What the reference trainer writes (the contract's types, serialized) is what this
    /// parser reads, field for field.
    #[test]
    fn a_result_written_with_the_contract_types_parses() {
        use contract::result::{ArtifactRef, CheckReport, DatasetRef};
        let written = wire::TrainerResult {
            version: wire::VERSION,
            metrics: BTreeMap::from([("accuracy".into(), 0.96)]),
            artifact: ArtifactRef {
                uri: "s3://models/iris-r1/model.json".into(),
                digest: Some(format!("sha256:{}", "a".repeat(64))),
                format: Some("mlops-runtime-json/v1".into()),
            },
            dataset: Some(DatasetRef::new(
                Some("s3://data/iris.csv".into()),
                "sha256:bbbb".into(),
                wire::RowCounts { total: 150, train: 104, validation: 23, test: 23 },
            )),
            validation: BTreeMap::from([("missing".into(), CheckReport::new(2, CheckAction::Drop, 2))]),
        };
        let r = parse(Some(&serde_json::to_string(&written).unwrap())).unwrap();
        assert_eq!(r.metrics, written.metrics);
        assert_eq!(r.artifact.uri, written.artifact.uri);
        assert_eq!(r.artifact.digest, written.artifact.digest);
        assert_eq!(r.dataset_digest.as_deref(), Some("sha256:bbbb"));
        assert_eq!(r.rows, Some(RowCounts { total: 150, train: 104, validation: 23, test: 23 }));
        assert_eq!(
            r.validation,
            [ValidationReport {
                check: "missing".into(),
                found: 2,
                action: DataAction::Drop,
                rows_removed: 2
            }]
        );
    }

    /// The CRD schema's bounds and the contract's are one set of numbers: a result the
    /// parser accepts is never refused by the API server.
    #[test]
    fn the_schema_bounds_are_the_contracts() {
        use crate::api::model_version as mv;
        assert_eq!(
            [
                mv::MAX_METRICS,
                mv::MAX_URI_LEN,
                mv::MAX_DIGEST_LEN,
                mv::MAX_FORMAT_LEN,
                mv::MAX_VALIDATION_CHECKS,
                mv::MAX_CHECK_NAME_LEN
            ],
            [
                MAX_METRICS,
                MAX_URI_LEN,
                MAX_DIGEST_LEN,
                MAX_FORMAT_LEN,
                MAX_VALIDATION_CHECKS,
                MAX_CHECK_NAME_LEN
            ]
        );
    }
}
