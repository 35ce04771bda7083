use super::*;
use kube::CustomResourceExt;
use serde_json::json;

#[test]
fn spec_round_trips() {
    let yaml = r#"
model: iris
artifact: {uri: "s3://models/iris/v1", digest: "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", format: mlops-linear-v1}
metrics: {accuracy: 0.95, latencyP99Ms: 3}
lineage:
  trainingJob: iris
  run: iris-r1
  dataset: {uri: "file:///data/iris.csv", rows: {total: 150, train: 105, validation: 22, test: 23},
            validationReport: [{check: missing, found: 2, action: Drop, rowsRemoved: 2}]}
  trigger: {type: Schedule, scheduleTime: "2025-01-01T00:00:00Z"}
gates:
  - {metric: accuracy, op: ">=", value: 0.9}
  - {metric: f1, op: ">=", relativeTo: Serving, tolerance: 0.01}
"#;
    let spec: ModelVersionSpec = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(spec.gates[0], Gate::absolute("accuracy", GateOp::Ge, 0.9));
    assert_eq!(spec.gates[1], Gate::relative("f1", GateOp::Ge, 0.01));
    assert_eq!(spec.metrics["latencyP99Ms"], 3.0);
    let back: ModelVersionSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    // Unset optionals are not serialized, so server-side apply sends only what we own.
    let v = serde_json::to_value(Gate::absolute("a", GateOp::Lt, 1.0)).unwrap();
    assert_eq!(v, json!({"metric": "a", "op": "<", "value": 1.0}));
}

#[test]
fn gate_bounds_and_ops() {
    let g = Gate::relative("f1", GateOp::Ge, 0.01);
    assert_eq!(g.bound(None), None);
    assert!((g.bound(Some(0.9)).unwrap() - 0.89).abs() < 1e-12);
    assert!((Gate::relative("lat", GateOp::Le, 1.0).bound(Some(5.0)).unwrap() - 6.0).abs() < 1e-12);
    assert_eq!(Gate::absolute("a", GateOp::Gt, 0.5).bound(Some(9.0)), Some(0.5));
    assert!(GateOp::Ge.holds(0.9, 0.9));
    assert!(!GateOp::Gt.holds(0.9, 0.9));
    assert!(GateOp::Le.holds(1.0, 1.0));
    assert!(!GateOp::Lt.holds(f64::NAN, 1.0));
    assert_eq!(Gate::absolute("accuracy", GateOp::Ge, 0.9).describe(), "accuracy >= 0.9");
    assert_eq!(g.describe(), "f1 >= serving - 0.01");
}

#[test]
fn crd_has_immutability_and_gate_rules() {
    let crd = serde_json::to_string(&ModelVersion::crd()).unwrap();
    assert!(crd.contains(r#""rule":"self == oldSelf""#));
    assert!(crd.contains("ModelVersion spec is immutable"));
    assert!(crd.contains("has(self.value) != has(self.relativeTo)"));
    assert!(crd.contains(STORAGE_URI_RULE));
    assert!(crd.contains(DIGEST_RULE));
    assert!(crd.contains(r#""enum":[">=","<=",">","<"]"#));
    assert!(crd.contains(r#""shortNames":["mv"]"#));
}

/// The CEL rule spells its digit count out; the schema's maxLength comes from the constant.
#[test]
fn digest_rule_and_max_length_agree() {
    let digits = MAX_DIGEST_LEN - "sha256:".len();
    assert!(DIGEST_RULE.contains(&format!("^sha256:[0-9a-f]{{{digits}}}$")), "{DIGEST_RULE}");
}
