use super::*;
use crate::api::LocalRef;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResourceExt;
use serde_json::json;

#[test]
fn spec_round_trips() {
    let yaml = r#"
model: iris
track: LatestValidated
runtime: {preset: MLServer, port: 9000}
replicas: 4
rollout:
  steps: [{weight: 10, pauseSeconds: 60}, {weight: 50}]
  trafficRouting:
    gatewayAPI: {gatewayRef: {name: gw}, hostnames: [iris.example]}
  bakeSeconds: 120
  analysis:
    intervalSeconds: 10
    health: {readyDeadlineSeconds: 60, maxRestarts: 0}
    metrics:
      - {name: errors, query: "sum(rate(x[1m]))", max: 0.01, onNoData: Wait}
"#;
    let spec: InferenceServiceSpec = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(spec.track, Some(TrackPolicy::LatestValidated));
    assert_eq!(spec.runtime.preset, Some(RuntimePreset::MlServer));
    assert_eq!(spec.runtime.port(), 9000);
    let routing = spec.rollout.as_ref().unwrap().traffic_routing.as_ref().unwrap();
    assert_eq!(routing.gateway_api.as_ref().unwrap().gateway_ref.name, "gw");
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v["rollout"]["trafficRouting"]["gatewayAPI"]["hostnames"], json!(["iris.example"]));
    assert_eq!(serde_json::from_value::<InferenceServiceSpec>(v).unwrap(), spec);
}

#[test]
fn runtime_credentials_and_identity_round_trip() {
    let yaml = r#"
model: iris
version: iris-r1
runtime: {credentialsSecretRef: {name: s3-creds}, serviceAccountName: model-reader}
"#;
    let spec: InferenceServiceSpec = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(spec.runtime.credentials_secret_ref, Some(LocalRef::new("s3-creds")));
    assert_eq!(spec.runtime.service_account_name.as_deref(), Some("model-reader"));
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        v["runtime"],
        json!({"credentialsSecretRef": {"name": "s3-creds"}, "serviceAccountName": "model-reader"})
    );
    assert_eq!(serde_json::from_value::<InferenceServiceSpec>(v).unwrap(), spec);
}

#[test]
fn defaults_apply() {
    let spec: InferenceServiceSpec =
        serde_json::from_value(json!({"model": "m", "version": "m-r1"})).unwrap();
    assert_eq!(spec.replicas(), DEFAULT_REPLICAS);
    assert_eq!(spec.runtime.port(), DEFAULT_PORT);
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v, json!({"model": "m", "version": "m-r1", "runtime": {}}));
    let replicas: TrafficRouting = serde_json::from_value(json!({"replicas": {}})).unwrap();
    assert_eq!(replicas.replicas, Some(ReplicasRouting {}));
}

#[test]
fn status_round_trips() {
    let t = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
    let status = InferenceServiceStatus {
        observed_generation: Some(2),
        stable: Some(StableStatus { version: "m-r1".into(), weight: 90, ..Default::default() }),
        canary: Some(CanaryStatus {
            version: "m-r2".into(),
            step: 0,
            weight: 10,
            phase: CanaryPhase::Progressing,
            analysis: vec![CheckStatus {
                name: "errors".into(),
                kind: CheckKind::Metric,
                verdict: Some(CheckVerdict::NoData),
                measurements: vec![Measurement {
                    time: t.clone(),
                    value: None,
                    verdict: CheckVerdict::NoData,
                    message: String::new(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        replicas: 4,
        selector: Some("mlops.dev/inference-service=m".into()),
        last_decision: Some(Decision {
            action: DecisionAction::Rollback,
            version: "m-r0".into(),
            check: "errors".into(),
            value: Some(0.2),
            bound: Some(0.01),
            time: t,
            reason: "MetricCheckFailed".into(),
            message: String::new(),
        }),
        delivery: Some(DeliveryStatus {
            deployments: 3,
            failed_deployments: 1,
            change_failure_rate: Some(0.25),
            ..Default::default()
        }),
        ..Default::default()
    };
    let v = serde_json::to_value(&status).unwrap();
    assert_eq!(v["lastDecision"]["time"], json!("2023-11-14T22:13:20Z"));
    assert_eq!(v["canary"]["analysis"][0]["verdict"], json!("NoData"));
    assert_eq!(serde_json::from_value::<InferenceServiceStatus>(v).unwrap(), status);
}

#[test]
fn crd_has_rules_and_scale() {
    let crd = serde_json::to_string(&InferenceService::crd()).unwrap();
    for needle in [
        "has(self.version) != has(self.track)",
        "rollout step weights must be strictly increasing",
        "autoscaling.minReplicas must be less than or equal to maxReplicas",
        "a metric check needs min or max",
        "trafficRouting needs exactly one of replicas or gatewayAPI",
        "runtime.serviceAccountName must be a lowercase DNS subdomain",
        r#""specReplicasPath":".spec.replicas""#,
        r#""labelSelectorPath":".status.selector""#,
        r#""shortNames":["isvc"]"#,
    ] {
        assert!(crd.contains(needle), "CRD lacks {needle}");
    }
    // Every string a CEL rule reads is bounded, so the rule's cost is.
    let crd = serde_json::to_value(InferenceService::crd()).unwrap();
    let runtime = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["runtime"]["properties"];
    assert_eq!(runtime["serviceAccountName"]["maxLength"], json!(253));
    assert_eq!(runtime["credentialsSecretRef"]["properties"]["name"]["maxLength"], json!(253));
}
