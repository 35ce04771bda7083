//! The trainer's result: a JSON document of at most 4 KiB written to the
//! termination message path, which the operator turns into a ModelVersion.
//!
//! ```json
//! {"version": 1,
//!  "metrics": {"accuracy": 0.97, "f1": 0.97, "latencyP99Ms": 0.001, ...},
//!  "artifact": {"uri": "s3://…/model.json", "digest": "sha256:…", "format": "mlops-runtime-json/v1"},
//!  "dataset": {"uri": "…", "digest": "sha256:…", "total": 150, "train": 104, "validation": 23, "test": 23},
//!  "validation": {"missing": {"found": 0, "action": "drop", "removed": 0}, ...}}
//! ```
//!
//! On failure the same path receives one line: the reason.

use crate::evaluate::Metrics;
use crate::validate::Report;
use serde::Serialize;
use std::path::Path;

/// Kubernetes reads at most 4096 bytes of a termination message.
pub const MAX_MESSAGE_BYTES: usize = 4096;
pub const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";

#[derive(Debug, Clone, Serialize)]
pub struct ArtifactRef {
    pub uri: String,
    pub digest: String,
    pub format: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    pub digest: String,
    pub total: usize,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainResult {
    pub version: u32,
    pub metrics: Metrics,
    pub artifact: ArtifactRef,
    pub dataset: DatasetRef,
    pub validation: Report,
}

/// Renders the result within the 4 KiB budget, leaving out the dataset URI
/// (also in the TrainingJob spec) if that is what it takes.
pub fn render(result: &TrainResult) -> Result<String, String> {
    let json = serde_json::to_string(result).expect("result serialises");
    if json.len() <= MAX_MESSAGE_BYTES {
        return Ok(json);
    }
    let mut slim = result.clone();
    slim.dataset.uri = None;
    let json = serde_json::to_string(&slim).expect("result serialises");
    if json.len() <= MAX_MESSAGE_BYTES {
        return Ok(json);
    }
    Err(format!(
        "result JSON is {} bytes, more than the {MAX_MESSAGE_BYTES}-byte termination message",
        json.len()
    ))
}

/// One line, at most 4 KiB (cut on a character boundary).
pub fn failure_line(reason: &str) -> String {
    let mut line: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

pub fn write_message(path: &Path, message: &str) -> std::io::Result<()> {
    std::fs::write(path, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Action, CheckReport};

    fn result(uri_len: usize) -> TrainResult {
        TrainResult {
            version: 1,
            metrics: Metrics::from([("accuracy".into(), 0.9)]),
            artifact: ArtifactRef {
                uri: "s3://b/model.json".into(),
                digest: "sha256:ab".into(),
                format: "f".into(),
            },
            dataset: DatasetRef {
                uri: Some("x".repeat(uri_len)),
                digest: "sha256:cd".into(),
                total: 10,
                train: 6,
                validation: 2,
                test: 2,
            },
            validation: Report::from([(
                "missing",
                CheckReport { found: 1, action: Action::Drop, removed: 1 },
            )]),
        }
    }

    #[test]
    fn renders_the_contract_shape() {
        let v: serde_json::Value = serde_json::from_str(&render(&result(3)).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["dataset"]["total"], 10);
        assert_eq!(v["validation"]["missing"]["action"], "drop");
        assert_eq!(v["artifact"]["digest"], "sha256:ab");
    }

    #[test]
    fn stays_within_four_kib_or_fails() {
        let json = render(&result(4000)).unwrap();
        assert!(json.len() <= MAX_MESSAGE_BYTES && !json.contains("xxxx"));
        let mut huge = result(1);
        huge.artifact.uri = "y".repeat(5000);
        assert!(render(&huge).is_err());
    }

    #[test]
    fn failure_lines_are_single_and_bounded() {
        assert_eq!(failure_line("a\nb"), "a b");
        let long = "é".repeat(3000);
        let line = failure_line(&long);
        assert!(line.len() <= MAX_MESSAGE_BYTES && line.ends_with('é'));
    }
}
