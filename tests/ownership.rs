//! Ownership of children end to end: an InferenceService writes only objects it controls.
//! Objects a user made under the names it wants are left as they are (and survive it), and
//! two InferenceServices whose joined names are equal (`web` + `canary-v1`, `web-canary` +
//! `v1`; `web`'s stable Service, `web-stable`'s Service) each get children of their own.

mod inference_harness;

use std::net::SocketAddr;

use inference_harness::{
    SHORT, Setup, apply, condition, import_version, inference_service, load::infer_once, service_address,
    settled, setup, wait_serving,
};
use k8s_openapi::api::{
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, Service},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use mlops_operator::api::{InferenceService, conditions as cond};
use serde_json::json;
use testkit::{TestEnv, wait_for, wait_until};

/// What a user's object must still be: its own spec and no owner (the operator's owner
/// reference would let the garbage collector delete it with the InferenceService), and no
/// field written by the operator.
fn untouched(meta: &kube::api::ObjectMeta, what: &str) {
    assert!(meta.owner_references.as_ref().is_none_or(Vec::is_empty), "{what}: {:?}", meta.owner_references);
    let managers: Vec<&str> =
        meta.managed_fields.iter().flatten().filter_map(|f| f.manager.as_deref()).collect();
    assert!(!managers.contains(&"mlops-operator"), "{what} was written by the operator: {managers:?}");
}

async fn check_users_objects(env: &TestEnv) {
    let svc = env.api::<Service>().get("frontend").await.expect("the user's Service");
    let selector = svc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    assert_eq!(selector, [("app".to_string(), "shop".to_string())].into(), "the Service's selector");
    untouched(&svc.metadata, "Service frontend");
    let hpa = env.api::<HorizontalPodAutoscaler>().get("frontend").await.expect("the user's autoscaler");
    let target = hpa.spec.as_ref().map(|s| s.scale_target_ref.clone()).unwrap();
    assert_eq!(
        (target.kind.as_str(), target.name.as_str()),
        ("Deployment", "shop"),
        "the autoscaler's target"
    );
    untouched(&hpa.metadata, "HorizontalPodAutoscaler frontend");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn objects_a_user_made_under_the_names_it_wants_are_left_alone_and_outlive_it() {
    let Setup { env, op, uri, release: _release } = setup("ownership-foreign").await;
    // The user's Service and autoscaler, made the way a user makes them (a named port: a
    // server-side apply over the Service would merge its own port in, not be refused).
    apply(
        &env,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "frontend"},
                "spec": {"selector": {"app": "shop"}, "ports": [{"name": "web", "port": 80, "targetPort": 8080}]}}),
    );
    apply(
        &env,
        &json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "frontend"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop"},
                         "minReplicas": 1, "maxReplicas": 3}}),
    );
    import_version(&env, &uri, "iris-v1", None).await;
    apply(&env, &inference_service("frontend", json!({"replicas": 1, "autoscaling": {"maxReplicas": 2}})));

    // Once the operator has looked at the InferenceService and has nothing left to do, the
    // user's objects are as the user made them.
    settled(&env, &op, "frontend").await;
    check_users_objects(&env).await;
    let isvcs: Api<InferenceService> = env.api();
    let refused = wait_for(&isvcs, "frontend", SHORT, "Ready=False, reason ChildConflict", |i| {
        i.status
            .as_ref()
            .and_then(|s| cond::find(&s.conditions, cond::READY))
            .is_some_and(|c| c.reason == "ChildConflict")
    })
    .await;
    let (ready, _, message) = condition(&refused, cond::READY);
    assert_eq!(ready, "False");
    for named in ["Service/frontend (no controller)", "HorizontalPodAutoscaler/frontend (no controller)"] {
        assert!(message.contains(named), "{named}: {message}");
    }
    assert_eq!(condition(&refused, cond::STALLED).0, "True", "a human must act");
    let event = env.wait_event("ChildConflict", "Service/frontend", SHORT).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.unwrap_or_default().contains("HorizontalPodAutoscaler/frontend"));

    // The InferenceService goes; so does everything it controls, which the garbage
    // collector shows on a witness it controls (a ConfigMap made for that). The user's
    // objects stay as they were.
    let uid = refused.uid().unwrap();
    apply(
        &env,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gc-witness", "ownerReferences": [
            {"apiVersion": InferenceService::api_version(&()), "kind": "InferenceService", "name": "frontend",
             "uid": uid, "controller": true}]}}),
    );
    let out = env.kubectl(&["delete", "isvc", "frontend", "--wait=true", "--timeout=60s"], None);
    assert!(out.status.success(), "{}", testkit::output_text(&out));
    let witness: Api<ConfigMap> = env.api();
    wait_until(SHORT, "the garbage collector to delete the InferenceService's dependents", || async {
        witness.get_opt("gc-witness").await.ok()?.is_none().then_some(())
    })
    .await;
    check_users_objects(&env).await;
}

/// Waits until `addr` answers, then asks a few times more: every answer must come from
/// `version` (one InferenceService's pods), never from another's.
async fn answers_only(addr: SocketAddr, version: &str, what: &str) {
    let first = wait_until(SHORT, &format!("an answer from {what}"), || async move {
        let (code, answered) = tokio::task::spawn_blocking(move || infer_once(addr)).await.ok()?;
        (code == 200).then_some(answered)
    })
    .await;
    let mut answers = vec![first];
    for _ in 0..9 {
        let (code, answered) = tokio::task::spawn_blocking(move || infer_once(addr)).await.unwrap();
        assert_eq!(code, 200, "{what}");
        answers.push(answered);
    }
    assert!(answers.iter().all(|a| a == version), "{what} must answer with {version} only: {answers:?}");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn inference_services_whose_joined_names_are_equal_each_serve_their_own_version() {
    let Setup { env, op: _op, uri, release: _release } = setup("ownership-names").await;
    for version in ["canary-v1", "v1", "v2"] {
        import_version(&env, &uri, version, None).await;
    }
    // `web` + `canary-v1` and `web-canary` + `v1` once both wanted Deployment `web-canary-v1`;
    // `web`'s stable Service (Gateway API routing) and `web-stable`'s own were both
    // `web-stable`.
    let gateway = json!({"trafficRouting": {"gatewayAPI": {"gatewayRef": {"name": "public"}}}});
    apply(
        &env,
        &inference_service("web", json!({"version": "canary-v1", "replicas": 1, "rollout": gateway})),
    );
    apply(&env, &inference_service("web-canary", json!({"version": "v1", "replicas": 1})));
    apply(&env, &inference_service("web-stable", json!({"version": "v2", "replicas": 1})));
    for (name, version) in [("web", "canary-v1"), ("web-canary", "v1"), ("web-stable", "v2")] {
        wait_serving(&env, name, version).await;
    }

    // The Service `web`'s route sends its stable traffic to.
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let routes: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &ApiResource::from_gvk(&gvk));
    let route =
        wait_until(SHORT, "web's HTTPRoute", || async { routes.get_opt("web").await.ok().flatten() }).await;
    let backend = route.data["spec"]["rules"][0]["backendRefs"][0]["name"].as_str().unwrap().to_string();
    assert_ne!(backend, "web-stable", "web's stable Service is not web-stable's Service");

    for (service, version) in
        [("web", "canary-v1"), (backend.as_str(), "canary-v1"), ("web-canary", "v1"), ("web-stable", "v2")]
    {
        let addr = service_address(&env, service).await;
        answers_only(addr, version, &format!("Service {service}")).await;
    }
    // None of them reports a conflict: each one's children are its own.
    let isvcs: Api<InferenceService> = env.api();
    for (name, version) in [("web", "canary-v1"), ("web-canary", "v1"), ("web-stable", "v2")] {
        let i = isvcs.get(name).await.unwrap();
        assert_eq!(condition(&i, cond::READY).0, "True", "{name}");
        assert_eq!(i.status.unwrap().stable.unwrap().version, version);
    }
}
