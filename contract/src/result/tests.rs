use super::*;

/// A result as the reference trainer builds it (see runtime/src/trainer.rs).
fn written() -> TrainerResult {
    TrainerResult {
        version: VERSION,
        metrics: BTreeMap::from([("accuracy".into(), 0.96), ("latencyP99Ms".into(), 0.02)]),
        artifact: ArtifactRef {
            uri: "s3://models/iris-r1/model.json".into(),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            format: Some("mlops-runtime-json/v1".into()),
        },
        dataset: Some(DatasetRef::new(
            Some("s3://data/iris.csv".into()),
            format!("sha256:{}", "b".repeat(64)),
            RowCounts { total: 150, train: 104, validation: 23, test: 23 },
        )),
        validation: BTreeMap::from([
            ("missing".into(), CheckReport::new(2, CheckAction::Drop, 2)),
            ("duplicates".into(), CheckReport::new(1, CheckAction::Keep, 0)),
        ]),
    }
}

#[test]
fn what_a_trainer_writes_a_reader_parses_unchanged() {
    let json = serde_json::to_string(&written()).unwrap();
    assert!(json.len() <= MAX_RESULT_BYTES, "{} bytes", json.len());
    let read: TrainerResult = serde_json::from_str(&json).unwrap();
    assert_eq!(read, written());
    let dataset = read.dataset.unwrap();
    assert_eq!(dataset.row_counts(), Some(RowCounts { total: 150, train: 104, validation: 23, test: 23 }));
    assert_eq!(CheckAction::parse(&read.validation["missing"].action), Some(CheckAction::Drop));
}

#[test]
fn the_wire_shape_is_the_documented_one() {
    let v = serde_json::to_value(written()).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["dataset"]["total"], 150);
    assert_eq!(v["dataset"].get("rows"), None, "flat counts only");
    assert_eq!(v["validation"]["missing"], serde_json::json!({"found": 2, "action": "drop", "removed": 2}));
    assert_eq!(v["artifact"]["format"], "mlops-runtime-json/v1");
}

#[test]
fn optional_parts_may_be_absent_and_unknown_top_level_fields_are_refused() {
    let minimal: TrainerResult =
        serde_json::from_str(r#"{"version":1,"artifact":{"uri":"s3://b/k"}}"#).unwrap();
    assert_eq!((minimal.dataset, minimal.metrics.len(), minimal.validation.len()), (None, 0, 0));
    let err = serde_json::from_str::<TrainerResult>(r#"{"version":1,"artifact":{"uri":"s3://b/k"},"x":1}"#)
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `x`"), "{err}");
}

#[test]
fn nested_or_partial_row_counts() {
    let nested: DatasetRef =
        serde_json::from_str(r#"{"rows":{"total":4,"train":2,"validation":1,"test":1}}"#).unwrap();
    assert_eq!(nested.row_counts().map(|r| r.total), Some(4));
    let partial: DatasetRef = serde_json::from_str(r#"{"total":4,"train":2}"#).unwrap();
    assert_eq!(partial.row_counts(), None);
}

#[test]
fn actions_read_in_any_case_and_removed_has_an_alias() {
    assert_eq!(CheckAction::parse("Keep"), Some(CheckAction::Keep));
    assert_eq!(CheckAction::parse("burn"), None);
    let c: CheckReport = serde_json::from_str(r#"{"action":"drop","rowsRemoved":3}"#).unwrap();
    assert_eq!((c.found, c.removed), (0, 3));
}
