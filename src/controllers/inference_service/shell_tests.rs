//! The InferenceService shell against a scripted API server: one real reconcile per test,
//! and the requests it made. The fake server keeps what the shell applies, so a second
//! pass sees the first one's children and status, as a real one would.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};

use super::*;
use crate::{
    controllers::{
        mock_api::{self, Call, Reply},
        test_settings,
    },
    metrics::Metrics,
};

const ISVC: &str = "/apis/mlops.dev/v1alpha1/namespaces/ns/inferenceservices/iris";
const VERSIONS: &str = "/apis/mlops.dev/v1alpha1/namespaces/ns/modelversions";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/ns/deployments";
const SERVICES: &str = "/api/v1/namespaces/ns/services";
const HPAS: &str = "/apis/autoscaling/v2/namespaces/ns/horizontalpodautoscalers";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes";
const PODS: &str = "/api/v1/namespaces/ns/pods";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

/// What the fake API server stores.
struct Cluster {
    isvc: Value,
    /// Collection path → objects by name.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// Whether the Gateway API's CRDs are installed.
    gateway_crds: bool,
    /// A Deployment apply the API server refuses, with its message.
    refuse: Option<(String, String)>,
}

fn owned(name: &str, uid: &str, kind: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {
        "name": name, "namespace": "ns", "labels": {api::LABEL_INFERENCE_SERVICE: "iris"},
        "ownerReferences": [{"apiVersion": api::API_VERSION, "kind": "InferenceService", "name": "iris",
                             "uid": uid, "controller": true}]}})
}

fn validated(name: &str) -> Value {
    json!({"apiVersion": api::API_VERSION, "kind": "ModelVersion",
           "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                        "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"model": "iris", "artifact": {"uri": "s3://models/iris/model.json"}},
           "status": {"conditions": [{"type": "Validated", "status": "True", "reason": "Passed",
                                      "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
}

impl Cluster {
    fn new(spec: Value) -> Cluster {
        let isvc = json!({"apiVersion": api::API_VERSION, "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": "ns", "uid": "isvc-uid", "generation": 1},
            "spec": spec});
        let mut objects: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
        for path in [VERSIONS, DEPLOYMENTS, SERVICES, HPAS, ROUTES, PODS] {
            objects.insert(path, BTreeMap::new());
        }
        objects.get_mut(VERSIONS).unwrap().insert("iris-v1".into(), validated("iris-v1"));
        Cluster { isvc, objects, gateway_crds: true, refuse: None }
    }

    fn respond(&mut self, call: &Call) -> Reply {
        let path = call.uri.split('?').next().unwrap_or_default().to_string();
        let method = call.method.as_str();
        if path == ISVC && method == "GET" {
            return (200, self.isvc.clone());
        }
        if path == format!("{ISVC}/status") && method == "PATCH" {
            self.isvc["status"] = call.body.as_ref().map(|b| b["status"].clone()).unwrap_or_default();
            return (200, self.isvc.clone());
        }
        if path == EVENTS && method == "POST" {
            return mock_api::echo(call);
        }
        if path.starts_with(ROUTES) && !self.gateway_crds {
            return mock_api::not_found();
        }
        let Some((collection, store)) = self.objects.iter_mut().find(|(p, _)| path.starts_with(**p)) else {
            return mock_api::status(404, "NotFound", &format!("no such path {path}"));
        };
        let name = path[collection.len()..].trim_start_matches('/').to_string();
        match (method, name.is_empty()) {
            ("GET", true) => mock_api::list("Object", store.values().cloned().collect()),
            ("GET", false) => match store.get(&name) {
                Some(obj) => (200, obj.clone()),
                None => mock_api::not_found(),
            },
            ("PATCH", false) => {
                if let Some((refused, message)) = &self.refuse
                    && refused == &name
                {
                    return mock_api::status(422, "Invalid", message);
                }
                let (code, obj) = mock_api::echo(call);
                // Keep a status the test gave (a Ready Deployment) across applies.
                let mut obj = obj;
                if let Some(status) = store.get(&name).and_then(|o| o.get("status")) {
                    obj["status"] = status.clone();
                }
                store.insert(name, obj.clone());
                (code, obj)
            }
            ("DELETE", false) => match store.remove(&name) {
                Some(_) => (200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
                None => mock_api::not_found(),
            },
            _ => mock_api::status(405, "MethodNotAllowed", "unexpected"),
        }
    }

    fn store(&mut self, collection: &'static str) -> &mut BTreeMap<String, Value> {
        self.objects.get_mut(collection).unwrap()
    }
}

type Log = Arc<Mutex<Vec<Call>>>;

/// One reconcile against `cluster`; the result and the requests it made.
async fn pass(cluster: &Arc<Mutex<Cluster>>) -> (Result<Action>, Log) {
    let state = cluster.clone();
    let (client, log) = mock_api::client(move |call: &Call| state.lock().unwrap().respond(call));
    let ctx = Context::new(client, Metrics::new(), "test".into(), test_settings());
    let isvc: InferenceService = serde_json::from_value(cluster.lock().unwrap().isvc.clone()).unwrap();
    let result = reconcile(Arc::new(isvc), ctx).await;
    (result, log)
}

fn replica_spec() -> Value {
    json!({"model": "iris", "track": "LatestValidated", "replicas": 1})
}

fn gateway_spec() -> Value {
    json!({"model": "iris", "track": "LatestValidated", "replicas": 1,
           "rollout": {"trafficRouting": {"gatewayAPI": {"gatewayRef": {"name": "public"}}}}})
}

/// The reads of every pass that needs no pods, in order.
fn reads(listed_versions: bool) -> Vec<String> {
    let mut r = vec![format!("GET {ISVC}"), format!("GET {DEPLOYMENTS}")];
    if listed_versions {
        r.push(format!("GET {VERSIONS}"));
    }
    r
}

/// The applier's lists of the kinds not read already (the Deployments were, in full).
fn prune_lists() -> Vec<String> {
    [SERVICES, HPAS, ROUTES].iter().map(|p| format!("GET {p}")).collect()
}

/// The Deployment of `iris-v1`.
fn v1() -> String {
    desired::deployment_name("iris", "iris-v1")
}

#[tokio::test]
async fn a_first_pass_applies_the_children_then_writes_status_and_an_event() {
    let cluster = Arc::new(Mutex::new(Cluster::new(replica_spec())));
    let (result, log) = pass(&cluster).await;
    result.unwrap();
    let mut expected = reads(true);
    expected.extend(prune_lists());
    // Names no list showed are read: free, they are created, bound to a UID no object has.
    expected.extend([format!("GET {DEPLOYMENTS}/{}", v1()), format!("GET {SERVICES}/iris")]);
    expected.extend([format!("PATCH {DEPLOYMENTS}/{}", v1()), format!("PATCH {SERVICES}/iris")]);
    expected.extend([format!("PATCH {ISVC}/status"), format!("POST {EVENTS}")]);
    assert_eq!(mock_api::lines(&log), expected);
    let c = cluster.lock().unwrap();
    assert_eq!(c.isvc["status"]["stable"]["version"], "iris-v1");
    let event = mock_api::writes(&log).last().unwrap().body.clone().unwrap();
    assert_eq!(event["reason"], "Promoted");
}

#[tokio::test]
async fn in_steady_state_a_pass_only_reads() {
    let cluster = Arc::new(Mutex::new(Cluster::new(replica_spec())));
    pass(&cluster).await.0.unwrap();
    // The Deployment becomes Ready; the next pass records it, the one after has nothing to do.
    cluster.lock().unwrap().store(DEPLOYMENTS).get_mut(&v1()).unwrap()["status"] =
        json!({"readyReplicas": 1, "replicas": 1});
    pass(&cluster).await.0.unwrap();
    let (result, log) = pass(&cluster).await;
    result.unwrap();
    // The children carry the digest of what was applied: nothing is applied again, and
    // there is no status write, no Event, no delete.
    let mut expected = reads(true);
    expected.extend(prune_lists());
    assert_eq!(mock_api::lines(&log), expected);
}

#[tokio::test]
async fn a_refused_child_fails_the_pass_with_a_stalled_condition_and_one_warning_event() {
    let cluster = Arc::new(Mutex::new(Cluster::new(replica_spec())));
    let message = format!(
        "Deployment.apps \"{}\" is invalid: spec.template.spec.containers[0].resources.requests[cpu]: Invalid value: \"half\"",
        v1()
    );
    cluster.lock().unwrap().refuse = Some((v1(), message.clone()));
    let (result, log) = pass(&cluster).await;
    let err = result.unwrap_err();
    assert_eq!(err.to_string(), format!("apply Deployment {}: {message}", v1()));
    let mut expected = reads(true);
    expected.extend(prune_lists());
    expected.extend([
        format!("GET {DEPLOYMENTS}/{}", v1()),
        format!("GET {SERVICES}/iris"),
        format!("PATCH {DEPLOYMENTS}/{}", v1()),
        // report_failure: the object as it is, the failure condition, the Event.
        format!("GET {ISVC}"),
        format!("PATCH {ISVC}/status"),
        format!("POST {EVENTS}"),
    ]);
    assert_eq!(mock_api::lines(&log), expected);
    let status = cluster.lock().unwrap().isvc["status"].clone();
    let condition = |type_: &str| {
        status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).cloned().unwrap()
    };
    assert_eq!(condition("Ready")["status"], "False");
    assert_eq!(condition("Ready")["reason"], "ChildRejected");
    assert_eq!(condition("Stalled")["status"], "True");
    assert!(condition("Ready")["message"].as_str().unwrap().contains("Invalid value: \"half\""));
    let event = mock_api::writes(&log).last().unwrap().body.clone().unwrap();
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("ChildRejected")));

    // Fixed: the next pass replaces the failure's conditions with its own.
    cluster.lock().unwrap().refuse = None;
    pass(&cluster).await.0.unwrap();
    let status = cluster.lock().unwrap().isvc["status"].clone();
    let reasons: Vec<(String, String)> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "Ready" || c["type"] == "Stalled")
        .map(|c| (c["type"].as_str().unwrap().into(), c["status"].as_str().unwrap().into()))
        .collect();
    assert!(reasons.contains(&("Stalled".into(), "False".into())), "{reasons:?}");
    assert!(!status.to_string().contains("ChildRejected"));
}

#[tokio::test]
async fn switching_gateway_routing_off_prunes_the_route_and_role_services_but_not_what_is_not_ours() {
    let cluster = Arc::new(Mutex::new(Cluster::new(gateway_spec())));
    pass(&cluster).await.0.unwrap();
    {
        let mut c = cluster.lock().unwrap();
        assert!(c.store(ROUTES).contains_key("iris"));
        assert!(c.store(SERVICES).contains_key(&desired::role_service_name("iris", "stable")));
        // The same label under another controller: not ours, never touched.
        c.store(SERVICES).insert("iris-theirs".into(), owned("iris-theirs", "someone-else", "Service"));
        c.isvc["spec"] = replica_spec();
    }
    let (result, log) = pass(&cluster).await;
    result.unwrap();
    let deletes: Vec<String> =
        mock_api::writes(&log).iter().filter(|c| c.method == "DELETE").map(Call::line).collect();
    let stable = desired::role_service_name("iris", "stable");
    assert_eq!(deletes, [format!("DELETE {SERVICES}/{stable}"), format!("DELETE {ROUTES}/iris")]);
    let mut c = cluster.lock().unwrap();
    assert!(c.store(SERVICES).contains_key("iris-theirs"));
    assert!(c.store(SERVICES).contains_key("iris"));
}

#[tokio::test]
async fn without_the_gateway_api_installed_there_is_no_route_to_prune() {
    let cluster = Arc::new(Mutex::new(Cluster::new(replica_spec())));
    cluster.lock().unwrap().gateway_crds = false;
    let (result, log) = pass(&cluster).await;
    result.unwrap();
    assert!(mock_api::lines(&log).contains(&format!("GET {ROUTES}")));
    assert!(cluster.lock().unwrap().isvc["status"]["stable"]["version"] == "iris-v1");
}

#[tokio::test]
async fn a_name_held_by_a_users_object_is_a_conflict_that_writes_nothing_until_the_object_goes() {
    let cluster = Arc::new(Mutex::new(Cluster::new(replica_spec())));
    // The user's own Service `iris`: none of our labels, no owner.
    let users = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "iris", "namespace": "ns", "uid": "users-uid"},
        "spec": {"selector": {"app": "shop"}}});
    cluster.lock().unwrap().store(SERVICES).insert("iris".into(), users.clone());
    let (result, log) = pass(&cluster).await;
    let err = result.unwrap_err();
    assert!(err.to_string().contains("Service/iris (no controller)"), "{err}");
    // Nothing applied, nothing deleted: only the failure's condition and its Event.
    let writes: Vec<String> = mock_api::writes(&log).iter().map(Call::line).collect();
    assert_eq!(writes, [format!("PATCH {ISVC}/status"), format!("POST {EVENTS}")]);
    let status = cluster.lock().unwrap().isvc["status"].clone();
    let condition = |type_: &str| {
        status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).cloned().unwrap()
    };
    assert_eq!(
        (condition("Ready")["status"].as_str(), condition("Ready")["reason"].as_str()),
        (Some("False"), Some("ChildConflict"))
    );
    assert_eq!(condition("Stalled")["status"], "True");
    let event = mock_api::writes(&log).last().unwrap().body.clone().unwrap();
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("ChildConflict")));
    assert_eq!(cluster.lock().unwrap().store(SERVICES)["iris"], users);
    assert!(cluster.lock().unwrap().store(DEPLOYMENTS).is_empty(), "no pods for a service that cannot serve");

    // The user deletes it: the next pass (the failure's backoff) goes on as usual.
    cluster.lock().unwrap().store(SERVICES).remove("iris");
    pass(&cluster).await.0.unwrap();
    let mut c = cluster.lock().unwrap();
    assert_eq!(c.store(SERVICES)["iris"]["metadata"]["ownerReferences"][0]["uid"], "isvc-uid");
    assert!(c.store(DEPLOYMENTS).contains_key(&v1()));
    assert!(!c.isvc["status"].to_string().contains("ChildConflict"));
}
