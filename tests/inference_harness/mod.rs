//! Shared harness of the InferenceService end-to-end tests (`inference_promotion.rs`,
//! `inference_rollback.rs`, `inference_bench.rs`): real `mlops-runtime serve` pods (the
//! runtime image on the local node), scraped every 2 s by the local Prometheus, real
//! inference traffic sent by the test to the Service's ClusterIP (kube-proxy), and an
//! operator scoped to the test namespace.
//!
//! Each test trains the iris model once with `mlops-runtime train` into its work claim
//! (`pvc://work/model.json`) and imports ModelVersions that point at it (no gates: the
//! ModelVersion controller validates them as imported). Bad versions get the test-only
//! `mlops.dev/test-fault-env` annotation, which the controller copies into that version's
//! server pods only.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod load;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use mlops_operator::api::{
    InferenceService, ModelVersion,
    conditions::{self as cond},
    inference_service::{InferenceServiceStatus, RolloutOutcome},
};
use serde_json::{Value, json};
use testkit::{
    Operator, TestEnv, install_crds, kubectl_in, output_text, wait_condition, wait_for, wait_until,
};

pub const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");
/// Generous: the tests share two cores with other test binaries and builds.
pub const LONG: Duration = Duration::from_secs(240);
pub const SHORT: Duration = Duration::from_secs(60);

/// Errors over all inference requests of the version under test, over 10 s.
pub const ERROR_RATE: &str = r#"sum(rate(mlops_requests_total{namespace="{{namespace}}",model_version="{{modelVersion}}",code=~"5.."}[10s])) / sum(rate(mlops_requests_total{namespace="{{namespace}}",model_version="{{modelVersion}}"}[10s]))"#;

// ---------------------------------------------------------------------------------------
// Fixtures

/// Trains iris once for this test; returns the artifact URI.
pub fn train_model(ns: &str) -> String {
    testkit::train_iris(ns)
}

pub fn apply(env: &TestEnv, doc: &Value) {
    let out = env.kubectl(&["apply", "-f", "-"], Some(&doc.to_string()));
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
}

/// Imports a ModelVersion of model `iris` (no gates: valid as imported), optionally with
/// test-only fault variables for its server pods, and waits until it is validated.
pub async fn import_version(env: &TestEnv, uri: &str, name: &str, fault: Option<Value>) -> ModelVersion {
    let mut annotations = BTreeMap::new();
    if let Some(f) = fault {
        annotations.insert("mlops.dev/test-fault-env", f.to_string());
    }
    apply(
        env,
        &json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"model": "iris", "artifact": {"uri": uri, "format": "mlops-runtime-json/v1"},
                     "metrics": {"accuracy": 0.97}}
        }),
    );
    wait_condition(&env.api::<ModelVersion>(), name, cond::VALIDATED, "True", SHORT).await
}

pub fn error_rate_check(on_no_data: &str) -> Value {
    json!({"name": "error-rate", "query": ERROR_RATE, "max": 0.05, "onNoData": on_no_data})
}

/// An InferenceService of model `iris` on the reference runtime; `spec` is merged in.
pub fn inference_service(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "model": "iris", "runtime": {"preset": "MlopsRuntime"}, "replicas": 2,
    });
    let b = base.as_object_mut().unwrap();
    for (k, v) in spec.as_object().unwrap() {
        b.insert(k.clone(), v.clone());
    }
    if !b.contains_key("version") {
        b.insert("track".into(), json!("LatestValidated"));
    }
    json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService",
           "metadata": {"name": name}, "spec": base})
}

pub fn status(isvc: &InferenceService) -> InferenceServiceStatus {
    isvc.status.clone().unwrap_or_default()
}

pub fn stable_is(isvc: &InferenceService, version: &str) -> bool {
    let s = status(isvc);
    s.stable.as_ref().is_some_and(|x| x.version == version && x.ready_replicas >= 1) && s.canary.is_none()
}

pub fn history_has(isvc: &InferenceService, version: &str, outcome: RolloutOutcome) -> usize {
    status(isvc).history.iter().filter(|h| h.version == version && h.outcome == outcome).count()
}

/// Waits until the service serves `version` alone, with Ready pods.
pub async fn wait_serving(env: &TestEnv, name: &str, version: &str) -> InferenceService {
    wait_for(&env.api::<InferenceService>(), name, LONG, &format!("{version} serving alone"), |i| {
        stable_is(i, version) && cond::is_true(&status(i).conditions, cond::READY)
    })
    .await
}

/// The Service's `clusterIP:port` (the host reaches ClusterIPs through the node's kube-proxy).
pub async fn service_address(env: &TestEnv, name: &str) -> SocketAddr {
    let services: Api<Service> = env.api();
    wait_until(SHORT, "the Service's ClusterIP", || async {
        testkit::service_socket(&services.get_opt(name).await.ok()??)
    })
    .await
}

pub fn condition(isvc: &InferenceService, type_: &str) -> (String, String, String) {
    let s = status(isvc);
    let c = cond::find(&s.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition: {s:?}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// The service's Events, oldest first, as (reason, note, count).
pub async fn events(env: &TestEnv, name: &str) -> Vec<(String, String, i32)> {
    let api: Api<Event> = env.api();
    let mut list: Vec<Event> = api
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    list.sort_by_key(|e| {
        (e.event_time.as_ref().map(|t| t.0), e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    list.into_iter()
        .map(|e| {
            let count = e.series.as_ref().map(|s| s.count).unwrap_or(1);
            (e.reason.unwrap_or_default(), e.note.unwrap_or_default(), count)
        })
        .collect()
}

pub fn count_reason(events: &[(String, String, i32)], reason: &str, containing: &str) -> i32 {
    events.iter().filter(|(r, n, _)| r == reason && n.contains(containing)).map(|(_, _, c)| c).sum()
}

/// Deployments the service owns, by name → spec.replicas.
pub async fn deployments(env: &TestEnv, name: &str) -> BTreeMap<String, i32> {
    env.api::<Deployment>()
        .list(&ListParams::default().labels(&format!("mlops.dev/inference-service={name}")))
        .await
        .expect("listing Deployments")
        .items
        .into_iter()
        .map(|d| (d.name_any(), d.spec.and_then(|s| s.replicas).unwrap_or(0)))
        .collect()
}

/// Makes the operator look at InferenceService `name` as it is now and waits until it has
/// nothing more to do: the positive proof a negative check ("not retried") stands on.
pub async fn settled(env: &TestEnv, op: &Operator, name: &str) {
    const CONTROLLER: &str = "inferenceservice";
    let started = op.reconciles_started(CONTROLLER).expect("the operator's metrics");
    env.poke(&format!("inferenceservice/{name}"));
    op.wait_pass(CONTROLLER, started, &format!("a change to {name}"), SHORT).await;
    op.wait_idle(CONTROLLER, Duration::from_secs(2), SHORT).await;
}

pub async fn annotate(env: &TestEnv, name: &str, key: &str, value: &str) {
    env.api::<InferenceService>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .expect("annotating the InferenceService");
}

/// Everything a rollout test needs: namespace, operator, the trained artifact, and the
/// guard that lets the namespace go when the test ends.
pub struct Setup {
    pub env: TestEnv,
    pub op: Operator,
    pub uri: String,
    pub release: Release,
}

/// ModelVersions carry the `mlops.dev/protect-serving` finalizer, which only an operator
/// releases; the test's operator is gone once the test ends, which would leave the
/// namespace Terminating for ever. Bound last in each test so that it drops first, while the
/// operator usually still runs: it deletes the InferenceServices, then the ModelVersions
/// (the operator releases them as nothing serves them any more), then clears whatever
/// finalizer is left (a killed operator, a failed test).
pub struct Release(pub String);

impl Drop for Release {
    fn drop(&mut self) {
        let ns = Some(self.0.as_str());
        kubectl_in(ns, &["delete", "inferenceservices", "--all", "--wait=true", "--timeout=15s"], None);
        kubectl_in(ns, &["delete", "modelversions", "--all", "--wait=true", "--timeout=15s"], None);
        let left = kubectl_in(ns, &["get", "modelversions", "-o", "name"], None);
        for name in String::from_utf8_lossy(&left.stdout).lines().filter(|l| !l.is_empty()) {
            kubectl_in(
                ns,
                &["patch", name, "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#],
                None,
            );
        }
    }
}

pub async fn setup(test: &str) -> Setup {
    setup_with(test, &[]).await
}

/// [`setup`] with extra arguments for the operator.
pub async fn setup_with(test: &str, operator_args: &[&str]) -> Setup {
    let env = TestEnv::start(test).await;
    install_crds();
    let uri = train_model(&env.namespace);
    let op = Operator::start(OPERATOR, &env.namespace, operator_args);
    let release = Release(env.namespace.clone());
    Setup { env, op, uri, release }
}
