use super::*;
use kube::CustomResourceExt;
use serde_json::json;

const FULL: &str = r#"
apiVersion: mlops.dev/v1alpha1
kind: TrainingJob
metadata: {name: iris, namespace: ml}
spec:
  model: iris
  dataset:
    uri: s3://data/iris.csv
    digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    labelColumn: species
    validation:
      missing: {action: Drop, maxFraction: 0.1}
      duplicates: {action: Keep}
      outliers: {action: Fail, method: IQR, threshold: 1.5}
    split: {train: 0.8, validation: 0.1, test: 0.1, seed: 7}
    credentialsSecretRef: {name: s3-creds}
  hyperparameters: {algorithm: logistic, epochs: "20"}
  source: {repository: "https://git.example/iris", revision: abc123, commitTime: "2025-01-01T00:00:00Z"}
  trainer:
    image: mlops-runtime:dev
    args: [train]
    env: [{name: LOG, value: debug}]
    resources: {limits: {cpu: "1"}}
  workers: 2
  output: {uri: "pvc://models/iris"}
  backoffLimit: 1
  activeDeadlineSeconds: 600
  ttlSecondsAfterFinished: 60
  modelVersion:
    labels: {team: a}
    gates: [{metric: accuracy, op: ">=", value: 0.9}]
  retrain:
    schedule: "0 3 * * *"
    timeZone: Europe/Paris
    missedSchedulePolicy: Skip
    drift: {inferenceServiceRef: {name: iris}, threshold: 0.2, forSeconds: 120}
    data: {checkIntervalSeconds: 60}
    cooldownSeconds: 600
    maxConcurrentRuns: 1
"#;

#[test]
fn full_object_round_trips() {
    let tj: TrainingJob = serde_yaml::from_str(FULL).unwrap();
    assert_eq!(tj.spec.workers, 2);
    assert_eq!(
        tj.spec.dataset.validation.as_ref().unwrap().outliers.as_ref().unwrap().method,
        Some(OutlierMethod::Iqr)
    );
    assert_eq!(tj.spec.retrain.as_ref().unwrap().missed_schedule_policy, Some(MissedSchedulePolicy::Skip));
    let back: TrainingJob = serde_json::from_value(serde_json::to_value(&tj).unwrap()).unwrap();
    assert_eq!(back, tj);
}

#[test]
fn defaults_apply() {
    let spec: TrainingJobSpec = serde_json::from_value(json!({
        "model": "m",
        "dataset": {"uri": "file:///d.csv"},
        "trainer": {"image": "i"},
        "output": {"uri": "file:///out"}
    }))
    .unwrap();
    assert_eq!(spec.workers, 1);
    assert!(!spec.suspend);
    assert_eq!(spec.backoff_limit(), DEFAULT_BACKOFF_LIMIT);
    assert_eq!(Split::default().seed, Some(42));
    // Defaults that are not set are not written back.
    let v = serde_json::to_value(&spec).unwrap();
    assert!(v.get("suspend").is_none());
    assert!(v.get("hyperparameters").is_none());
}

#[test]
fn status_round_trips() {
    let status = TrainingJobStatus {
        observed_generation: Some(3),
        runs: vec![RunRecord {
            name: "iris-r1".into(),
            number: 1,
            job_name: "iris-r1".into(),
            trigger: RunTrigger { type_: TriggerType::Drift, drift_value: Some(0.3), ..Default::default() },
            outcome: RunOutcome::Succeeded,
            model_version: Some("iris-r1".into()),
            ..Default::default()
        }],
        last_run_number: Some(1),
        ..Default::default()
    };
    let v = serde_json::to_value(&status).unwrap();
    assert_eq!(v["runs"][0]["trigger"], json!({"type": "Drift", "driftValue": 0.3}));
    assert_eq!(serde_json::from_value::<TrainingJobStatus>(v).unwrap(), status);
    assert!(RunOutcome::Failed.is_finished() && !RunOutcome::Running.is_finished());
    assert_eq!(DataAction::Drop.contract_name(), "drop");
}

#[test]
fn crd_has_rules() {
    let crd = serde_json::to_string(&TrainingJob::crd()).unwrap();
    for needle in [
        "split ratios train + validation + test must sum to 1",
        "dataset uri must start with s3://, pvc:// or file://",
        "trainer needs an image or a pod template",
        "retrain needs at least one trigger",
        "drift needs inferenceServiceRef or query",
        MODEL_NAME_MESSAGE,
        r#""x-kubernetes-preserve-unknown-fields":true"#,
        r#""shortNames":["tj"]"#,
    ] {
        assert!(crd.contains(needle), "CRD lacks {needle}");
    }
}
