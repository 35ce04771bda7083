//! The trainer's result: the contract's document (`contract::result`), at most 4 KiB,
//! written to the termination message path; the operator turns it into a ModelVersion.
//!
//! The document's shape is in `contract::result`.
//!
//! On failure the same path receives one line: the reason.

pub use contract::result::{
    ArtifactRef, CheckReport, DatasetRef, MAX_RESULT_BYTES, RowCounts, TrainerResult,
};
pub use contract::trainer_env::DEFAULT_TERMINATION_MESSAGE_PATH as DEFAULT_TERMINATION_PATH;
use std::path::Path;

/// Kubernetes reads at most 4096 bytes of a termination message: a failure line too.
pub const MAX_MESSAGE_BYTES: usize = MAX_RESULT_BYTES;

/// Renders the result within the 4 KiB budget, leaving out the dataset URI
/// (also in the TrainingJob spec) if that is what it takes.
pub fn render(result: &TrainerResult) -> Result<String, String> {
    let json = serde_json::to_string(result).expect("result serialises");
    if json.len() <= MAX_MESSAGE_BYTES {
        return Ok(json);
    }
    let mut slim = result.clone();
    if let Some(dataset) = &mut slim.dataset {
        dataset.uri = None;
    }
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
    use contract::result::{CheckAction, VERSION};

    fn result(uri_len: usize) -> TrainerResult {
        TrainerResult {
            version: VERSION,
            metrics: [("accuracy".into(), 0.9)].into(),
            artifact: ArtifactRef {
                uri: "s3://b/model.json".into(),
                digest: Some("sha256:ab".into()),
                format: Some("f".into()),
            },
            dataset: Some(DatasetRef::new(
                Some("x".repeat(uri_len)),
                "sha256:cd".into(),
                RowCounts { total: 10, train: 6, validation: 2, test: 2 },
            )),
            validation: [("missing".into(), CheckReport::new(1, CheckAction::Drop, 1))].into(),
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
