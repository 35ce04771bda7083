//! The pass as a pure function: which children it wants, and that every one of them can be
//! found again (and pruned) by the owner's label and controller reference.

use serde_json::json;

use super::*;
use crate::controllers::ownership::controlled_by;

fn t(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
}

fn version(name: &str, validated: bool) -> ModelVersion {
    serde_json::from_value(json!({
        "apiVersion": api::API_VERSION, "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"model": "iris", "artifact": {"uri": "s3://models/iris/model.json"}},
        "status": {"conditions": [{"type": "Validated", "status": if validated { "True" } else { "Unknown" },
                                   "reason": "R", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    }))
    .unwrap()
}

fn inputs(spec: serde_json::Value, status: serde_json::Value) -> Inputs {
    let isvc = serde_json::from_value(json!({
        "apiVersion": api::API_VERSION, "kind": "InferenceService",
        "metadata": {"name": "web", "namespace": "ml", "uid": "isvc-uid", "generation": 3},
        "spec": spec, "status": status,
    }))
    .unwrap();
    let versions = ["iris-v1", "iris-v2"].map(|v| (v.to_string(), version(v, true))).into_iter().collect();
    Inputs { isvc, deployments: vec![], pods: vec![], versions, measurements: vec![], fault_injection: false }
}

fn gateway_canary() -> Inputs {
    inputs(
        json!({"model": "iris", "track": "LatestValidated", "replicas": 2,
               "autoscaling": {"maxReplicas": 4},
               "rollout": {"steps": [{"weight": 30, "pauseSeconds": 600}],
                           "trafficRouting": {"gatewayAPI": {"gatewayRef": {"name": "public"}}}}}),
        json!({"stable": {"version": "iris-v1", "weight": 70},
               "canary": {"version": "iris-v2", "step": 0, "phase": "Progressing", "weight": 30,
                          "startTime": t(0), "stepStartTime": t(0)}}),
    )
}

fn kinds_and_names(outcome: &Outcome) -> Vec<(String, String)> {
    outcome.children.iter().map(Child::key).collect()
}

#[test]
fn every_child_carries_the_owner_label_and_controller_reference() {
    let outcome = plan(&gateway_canary(), &t(10)).unwrap();
    let pairs =
        |v: &[(&str, &str)]| v.iter().map(|(k, n)| (k.to_string(), n.to_string())).collect::<Vec<_>>();
    assert_eq!(
        kinds_and_names(&outcome),
        pairs(&[
            ("Deployment", &desired::deployment_name("web", "iris-v1")),
            ("Deployment", &desired::deployment_name("web", "iris-v2")),
            ("Service", "web"),
            ("Service", &desired::role_service_name("web", "stable")),
            ("Service", &desired::role_service_name("web", "canary")),
            ("HTTPRoute", "web"),
            ("HorizontalPodAutoscaler", "web"),
        ])
    );
    assert_eq!(outcome.keep, outcome.children.iter().map(Child::key).collect(), "prune keeps the children");
    for child in &outcome.children {
        let meta = &child.object.metadata;
        assert_eq!(
            meta.labels.as_ref().and_then(|l| l.get(api::LABEL_INFERENCE_SERVICE)).map(String::as_str),
            Some("web"),
            "{:?} must match the prune selector",
            child.key()
        );
        assert!(controlled_by(meta, "isvc-uid"), "{:?} must be controlled by the service", child.key());
    }
}

#[test]
fn replica_routing_wants_no_route_and_no_role_services() {
    let mut inputs = gateway_canary();
    inputs.isvc.spec.rollout.as_mut().unwrap().traffic_routing = None;
    inputs.isvc.spec.autoscaling = None;
    let outcome = plan(&inputs, &t(10)).unwrap();
    let kinds: Vec<String> = kinds_and_names(&outcome).into_iter().map(|(k, n)| format!("{k}/{n}")).collect();
    let deployment = |v: &str| format!("Deployment/{}", desired::deployment_name("web", v));
    assert_eq!(kinds, [deployment("iris-v1"), deployment("iris-v2"), "Service/web".to_string()]);
}

#[test]
fn two_services_whose_joined_names_are_equal_get_children_of_their_own() {
    // `web` serving `canary-v1` and `web-canary` serving `v1`: `web-canary-v1` both ways.
    assert_ne!(desired::deployment_name("web", "canary-v1"), desired::deployment_name("web-canary", "v1"));
    // `web`'s stable Service is not the Service of an InferenceService named `web-stable`.
    let stable = desired::role_service_name("web", "stable");
    assert_ne!(stable, "web-stable");
    assert!(stable.starts_with("web-stable-"), "still readable: {stable}");
    // Long names still fit: pod names stay a DNS label, Services are one.
    let long = "a".repeat(63);
    assert!(desired::deployment_name(&long, &"v".repeat(60)).len() <= 52);
    assert!(desired::role_service_name(&long, "canary").len() <= 63);
}

fn observed_deployment(name: &str, version: &str, ready: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {api::LABEL_MODEL_VERSION: version}},
        "spec": {"replicas": 2, "selector": {}, "template": {}},
        "status": {"readyReplicas": ready}
    }))
    .unwrap()
}

#[test]
fn a_deployment_renamed_by_an_upgrade_serves_until_its_successor_is_ready_then_is_pruned() {
    let mut inputs = inputs(
        json!({"model": "iris", "version": "iris-v1", "replicas": 2}),
        json!({"stable": {"version": "iris-v1", "weight": 100}}),
    );
    let new = desired::deployment_name("web", "iris-v1");
    let legacy = ("Deployment".to_string(), "web-iris-v1".to_string());
    // The name an older operator gave it; ours (the shell hands the plan only what it controls).
    inputs.deployments = vec![observed_deployment("web-iris-v1", "iris-v1", 2)];
    assert!(plan(&inputs, &t(10)).unwrap().keep.contains(&legacy), "no successor yet");
    inputs.deployments.push(observed_deployment(&new, "iris-v1", 1));
    assert!(plan(&inputs, &t(11)).unwrap().keep.contains(&legacy), "successor not all Ready");
    inputs.deployments[1] = observed_deployment(&new, "iris-v1", 2);
    let outcome = plan(&inputs, &t(12)).unwrap();
    assert!(!outcome.keep.contains(&legacy), "successor Ready: the old one goes");
    assert!(outcome.keep.contains(&("Deployment".to_string(), new)));
    // A Deployment of a version no longer served is not kept either.
    inputs.deployments = vec![observed_deployment("web-iris-v0", "iris-v0", 2)];
    assert!(!plan(&inputs, &t(13)).unwrap().keep.iter().any(|(_, n)| n == "web-iris-v0"));
}

#[test]
fn only_pods_of_our_deployments_count() {
    let deployment = desired::deployment_name("web", "iris-v1");
    let pod = |name: &str, owner: serde_json::Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name,
            "labels": {api::LABEL_INFERENCE_SERVICE: "web", "pod-template-hash": "5d8f7c"},
            "ownerReferences": owner}}))
        .unwrap()
    };
    let rs = |name: &str| json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": "rs", "controller": true}]);
    let pods = vec![
        pod("ours", rs(&format!("{deployment}-5d8f7c"))),
        pod("labelled-alike", json!([])),
        pod("other-replicaset", rs("shop-5d8f7c")),
    ];
    let kept: Vec<String> = pods_of(&[observed_deployment(&deployment, "iris-v1", 1)], pods)
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(kept, ["ours"]);
}

#[test]
fn the_first_validated_version_is_served_and_a_missing_one_gets_no_deployment() {
    let mut inputs = inputs(json!({"model": "iris", "track": "LatestValidated"}), json!({}));
    inputs.versions.remove("iris-v2");
    let outcome = plan(&inputs, &t(0)).unwrap();
    assert_eq!(outcome.status.stable.as_ref().unwrap().version, "iris-v1");
    assert_eq!(outcome.status.selector.as_deref(), Some("mlops.dev/inference-service=web"));
    assert!(outcome.notes.iter().any(|n| n.reason == "Promoted"));

    // The status names a version that no longer exists: nothing to run for it.
    let mut inputs = inputs_with_stable("iris-gone");
    inputs.versions.clear();
    let outcome = plan(&inputs, &t(0)).unwrap();
    assert!(outcome.children.iter().all(|c| c.resource.kind != "Deployment"));
}

fn inputs_with_stable(version: &str) -> Inputs {
    inputs(
        json!({"model": "iris", "track": "LatestValidated"}),
        json!({"stable": {"version": version, "weight": 100}}),
    )
}

#[test]
fn a_pin_is_resolved_from_what_was_read() {
    let mut inputs = inputs(json!({"model": "iris", "version": "iris-v9"}), json!({}));
    let resolved = resolve(&inputs.isvc, &inputs.versions);
    assert!(resolved.stalled);
    assert_eq!(resolved.problem.as_deref(), Some("pinned ModelVersion iris-v9 does not exist"));
    inputs.versions.insert("iris-v9".into(), version("iris-v9", false));
    let resolved = resolve(&inputs.isvc, &inputs.versions);
    assert!(!resolved.stalled, "not validated yet is a matter of time");
    assert_eq!(version_names(&inputs.isvc), ["iris-v9"]);
}

#[test]
fn pods_are_read_only_when_something_looks_at_them() {
    let idle = inputs(json!({"model": "iris", "track": "LatestValidated"}), json!({}));
    assert!(!needs_pods(&idle.isvc, &[]));
    assert!(needs_pods(&gateway_canary().isvc, &[]), "a canary's health");
    let unready = inputs_with_stable("iris-v1");
    assert!(needs_pods(&unready.isvc, &[]), "why the stable has no Ready pod");
}

fn with_accuracy(name: &str, accuracy: f64, minute: u32) -> ModelVersion {
    let mut mv = version(name, true);
    mv.spec.metrics.insert("accuracy".into(), accuracy);
    mv.metadata.creation_timestamp = Some(Time(format!("2026-01-01T00:{minute:02}:00Z").parse().unwrap()));
    mv
}

#[test]
fn the_service_gates_pass_over_a_newer_version_and_refuse_a_pin() {
    let gates = json!([{"metric": "accuracy", "op": ">=", "value": 0.9}]);
    let mut tracked = inputs(json!({"model": "iris", "track": "LatestValidated", "gates": gates}), json!({}));
    tracked.versions = [("good", 0.95, 1), ("newer-but-weak", 0.5, 2)]
        .map(|(n, a, m)| (n.to_string(), with_accuracy(n, a, m)))
        .into_iter()
        .collect();
    let r = resolve(&tracked.isvc, &tracked.versions);
    assert_eq!(r.target.map(|t| t.version).as_deref(), Some("good"));
    let why = r.problem.unwrap();
    assert!(
        why.starts_with("newer-but-weak passed over: fails this service's gates") && why.contains("accuracy"),
        "{why}"
    );

    let mut pinned = inputs(json!({"model": "iris", "version": "newer-but-weak", "gates": gates}), json!({}));
    pinned.versions = tracked.versions.clone();
    let r = resolve(&pinned.isvc, &pinned.versions);
    assert!(r.target.is_none() && r.stalled, "{r:?}");

    // Relative to what this service serves: a version worse than the stable is refused.
    let relative = json!([{"metric": "accuracy", "op": ">=", "relativeTo": "Serving", "tolerance": 0.01}]);
    let mut serving = inputs(
        json!({"model": "iris", "track": "LatestValidated", "gates": relative}),
        json!({"stable": {"version": "good", "weight": 100}}),
    );
    serving.versions = tracked.versions.clone();
    let r = resolve(&serving.isvc, &serving.versions);
    assert_eq!(r.target.map(|t| t.version).as_deref(), Some("good"), "the weaker newer version stays out");
}
