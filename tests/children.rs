//! An InferenceService's children end to end: what it no longer wants is pruned, and a
//! child the API server refuses shows on the InferenceService itself (a condition and a
//! Warning Event), not only in the operator's log.

use std::time::Duration;

use k8s_openapi::api::{core::v1::Service, events::v1::Event};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
};
use mlops_operator::{
    api::{InferenceService, ModelVersion, conditions as cond},
    controllers::inference_service::desired::{deployment_name, role_service_name},
};
use serde_json::{Value, json};
use testkit::{Operator, TestEnv, install_crds, output_text, wait_condition, wait_for, wait_until};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");
/// Generous: the tests share two cores with other test binaries and builds.
const WAIT: Duration = Duration::from_secs(90);

fn apply(env: &TestEnv, doc: &Value) {
    let out = env.kubectl(&["apply", "-f", "-"], Some(&doc.to_string()));
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
}

fn patch(env: &TestEnv, name: &str, patch: &Value) {
    env.merge_patch("isvc", name, patch);
}

/// A validated version of model `iris` (no gates: valid as imported).
async fn import_version(env: &TestEnv, name: &str) {
    let artifact = testkit::train_iris(&env.namespace);
    apply(
        env,
        &json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
                "spec": {"model": "iris", "artifact": {"uri": artifact}, "metrics": {"accuracy": 0.95}}}),
    );
    wait_condition(&env.api::<ModelVersion>(), name, cond::VALIDATED, "True", WAIT).await;
}

fn condition(isvc: &InferenceService, type_: &str) -> Option<cond::Condition> {
    isvc.status.as_ref().and_then(|s| cond::find(&s.conditions, type_).cloned())
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn switching_gateway_routing_off_removes_the_route_and_the_role_services() {
    let env = TestEnv::start("children-gateway-off").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    import_version(&env, "iris-v1").await;
    apply(
        &env,
        &json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "gw"},
                "spec": {"model": "iris", "track": "LatestValidated", "replicas": 1,
                         "runtime": {"preset": "MlopsRuntime"},
                         "rollout": {"trafficRouting": {"gatewayAPI": {"gatewayRef": {"name": "public"}}}}}}),
    );
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let routes: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &ApiResource::from_gvk(&gvk));
    let services: Api<Service> = env.api();
    let (stable, canary) = (role_service_name("gw", "stable"), role_service_name("gw", "canary"));
    wait_until(WAIT, "the HTTPRoute and the stable role Service", || async {
        let route = routes.get_opt("gw").await.ok().flatten()?;
        services.get_opt(&stable).await.ok().flatten()?;
        Some(route)
    })
    .await;

    // Back to replica routing: the route and the role Services go, the main Service stays.
    patch(&env, "gw", &json!({"spec": {"rollout": {"trafficRouting": null}}}));
    wait_until(WAIT, "the HTTPRoute and the role Services to be gone", || async {
        let route = routes.get_opt("gw").await.ok()?;
        let stable = services.get_opt(&stable).await.ok()?;
        let canary = services.get_opt(&canary).await.ok()?;
        (route.is_none() && stable.is_none() && canary.is_none()).then_some(())
    })
    .await;
    assert!(services.get_opt("gw").await.unwrap().is_some(), "the Service over every version stays");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_child_the_api_server_refuses_shows_as_a_condition_and_an_event_until_fixed() {
    let env = TestEnv::start("children-refused").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    import_version(&env, "iris-v1").await;
    // The CRD's schema takes any resources; the Deployment's refuses requests above limits
    // (422). A malformed quantity is tried after the fix.
    apply(
        &env,
        &json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "web"},
                "spec": {"model": "iris", "track": "LatestValidated", "replicas": 1,
                         "runtime": {"preset": "MlopsRuntime", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}}}),
    );
    let isvcs: Api<InferenceService> = env.api();
    let refused = wait_for(&isvcs, "web", WAIT, "Stalled=True ChildRejected", |isvc| {
        condition(isvc, cond::STALLED).is_some_and(|c| c.status == "True" && c.reason == "ChildRejected")
    })
    .await;
    let ready = condition(&refused, cond::READY).expect("a Ready condition");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ChildRejected"));
    let deployment = deployment_name("web", "iris-v1");
    assert!(
        ready.message.starts_with(&format!("apply Deployment {deployment}: "))
            && ready.message.contains("must be less than or equal to cpu limit"),
        "the API server's own message, naming the step and the object: {}",
        ready.message
    );

    // Events are published after the condition: wait for it, bounded.
    let events: Api<Event> = env.api();
    let warning = wait_until(WAIT, "a ChildRejected Warning Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
                && e.reason.as_deref() == Some("ChildRejected")
        })
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.note.unwrap_or_default().contains("cpu limit"));

    // Fixed: the next pass applies the Deployment and replaces the failure's conditions.
    patch(&env, "web", &json!({"spec": {"runtime": {"resources": {"requests": {"cpu": "100m"}}}}}));
    let fixed = wait_for(&isvcs, "web", WAIT, "Stalled=False", |isvc| {
        condition(isvc, cond::STALLED).is_some_and(|c| c.status == "False")
    })
    .await;
    assert_ne!(condition(&fixed, cond::READY).map(|c| c.reason), Some("ChildRejected".into()));
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = env.api();
    assert!(deployments.get_opt(&deployment).await.unwrap().is_some());

    // A quantity that is not one (`cpu: half`) gets through the CRD's schema; the API
    // server answers the server-side apply with a 500 conversion error, which is the
    // object's fault all the same: ChildRejected, not a retry storm.
    patch(&env, "web", &json!({"spec": {"runtime": {"resources": {"requests": {"cpu": "half"}}}}}));
    let refused = wait_for(&isvcs, "web", WAIT, "Stalled=True ChildRejected for cpu: half", |isvc| {
        condition(isvc, cond::STALLED).is_some_and(|c| c.status == "True" && c.reason == "ChildRejected")
    })
    .await;
    let ready = condition(&refused, cond::READY).expect("a Ready condition");
    assert!(ready.message.starts_with(&format!("apply Deployment {deployment}: ")), "{}", ready.message);
}
