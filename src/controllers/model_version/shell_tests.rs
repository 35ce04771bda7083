//! The ModelVersion shell against a scripted API server: the requests one pass makes in
//! the main scenarios, and how a failed pass shows on the version.

use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use serde_json::{Value, json};

use super::reconcile;
use crate::{
    api::{
        FINALIZER_PROTECT_SERVING, ModelVersion,
        conditions::{self as cond},
    },
    controllers::{
        Context,
        mock_api::{self, Call},
        test_settings,
    },
    metrics::Metrics,
};

const VERSION: &str = "/apis/mlops.dev/v1alpha1/namespaces/ns/modelversions/iris-r1";
const SERVICES: &str = "/apis/mlops.dev/v1alpha1/namespaces/ns/inferenceservices";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

/// A tiny API server holding one ModelVersion and a list of InferenceServices.
struct Fake {
    version: Value,
    services: Vec<Value>,
    /// Answer the InferenceService list with a 500.
    list_fails: bool,
    /// Refuse every status write except the failure report (the condition path).
    status_refused: bool,
}

impl Fake {
    fn respond(&mut self, call: &Call) -> mock_api::Reply {
        let path = call.uri.split('?').next().unwrap_or_default();
        match (call.method.as_str(), path) {
            ("GET", VERSION) => (200, self.version.clone()),
            ("GET", SERVICES) if self.list_fails => mock_api::status(500, "InternalError", "etcd timeout"),
            ("GET", SERVICES) => mock_api::list("InferenceService", self.services.clone()),
            ("PATCH", p) if p == format!("{VERSION}/status") => {
                let body = call.body.clone().unwrap_or_default();
                if self.status_refused && !body.to_string().contains("ChildRejected") {
                    return mock_api::status(422, "Invalid", "status.servingIn: Too many: 99");
                }
                self.version["status"] = body["status"].clone();
                (200, self.version.clone())
            }
            ("PATCH", VERSION) => {
                let finalizers = call.body.as_ref().map(|b| b["metadata"]["finalizers"].clone());
                self.version["metadata"]["finalizers"] = finalizers.unwrap_or_default();
                (200, self.version.clone())
            }
            ("POST", EVENTS) => mock_api::echo(call),
            _ => mock_api::status(405, "MethodNotAllowed", "unexpected request"),
        }
    }
}

fn version(finalizers: &[&str], deleting: bool) -> Value {
    let mut v = json!({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
        "metadata": {"name": "iris-r1", "namespace": "ns", "uid": "uid-1", "generation": 1,
                     "resourceVersion": "7", "finalizers": finalizers},
        "spec": {"model": "iris", "artifact": {"uri": "s3://models/iris-r1/model.json"},
                 "metrics": {"accuracy": 0.97},
                 "gates": [{"metric": "accuracy", "op": ">=", "value": 0.9}]}
    });
    if deleting {
        v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
    }
    v
}

fn serving(version: &str) -> Value {
    json!({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"model": "iris", "track": "LatestValidated", "runtime": {"preset": "MlopsRuntime"}},
        "status": {"stable": {"version": version, "weight": 100}}
    })
}

type Log = Arc<Mutex<Vec<Call>>>;

/// One context and client over the fake, as the controller keeps across passes.
struct Harness {
    fake: Arc<Mutex<Fake>>,
    ctx: Arc<Context>,
    log: Log,
}

impl Harness {
    fn new(version: Value, services: Vec<Value>) -> Harness {
        let fake = Arc::new(Mutex::new(Fake { version, services, list_fails: false, status_refused: false }));
        let responder = fake.clone();
        let (client, log) = mock_api::client(move |call| responder.lock().unwrap().respond(call));
        let ctx = Context::new(client, Metrics::new(), "test".into(), test_settings());
        Harness { fake, ctx, log }
    }

    /// One pass over the version the fake holds (as the watch would deliver it); the
    /// outcome and the requests of this pass only.
    async fn pass(&self) -> (Result<(), String>, Log) {
        self.log.lock().unwrap().clear();
        let mv: ModelVersion = serde_json::from_value(self.fake.lock().unwrap().version.clone()).unwrap();
        let result = reconcile(Arc::new(mv), self.ctx.clone()).await.map(|_| ()).map_err(|e| e.to_string());
        (result, Arc::new(Mutex::new(self.log.lock().unwrap().clone())))
    }

    fn stored(&self) -> ModelVersion {
        serde_json::from_value(self.fake.lock().unwrap().version.clone()).unwrap()
    }

    fn set(&self, change: impl FnOnce(&mut Fake)) {
        change(&mut self.fake.lock().unwrap());
    }
}

fn event_reasons(log: &Log) -> Vec<String> {
    mock_api::writes(log)
        .iter()
        .filter(|c| c.method == "POST")
        .map(|c| c.body.as_ref().unwrap()["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn the_first_pass_adds_the_finalizer_then_writes_the_status() {
    let h = Harness::new(version(&[], false), vec![]);
    let (result, log) = h.pass().await;
    assert_eq!(result, Ok(()));
    assert_eq!(
        mock_api::lines(&log),
        vec![
            format!("GET {VERSION}"),
            format!("GET {SERVICES}"),
            format!("PATCH {VERSION}"),
            format!("PATCH {VERSION}/status"),
            format!("POST {EVENTS}"),
        ]
    );
    let mv = h.stored();
    assert_eq!(mv.finalizers(), [FINALIZER_PROTECT_SERVING]);
    assert!(cond::is_true(&mv.status.unwrap().conditions, cond::READY));
    assert_eq!(event_reasons(&log), ["Validated"]);
}

#[tokio::test]
async fn a_settled_version_is_read_and_nothing_is_written() {
    let h = Harness::new(version(&[], false), vec![]);
    h.pass().await.0.unwrap();
    let (result, log) = h.pass().await;
    assert_eq!(result, Ok(()));
    assert_eq!(mock_api::lines(&log), vec![format!("GET {VERSION}"), format!("GET {SERVICES}")]);
}

#[tokio::test]
async fn deleting_a_served_version_is_blocked_with_one_warning_and_no_error() {
    let h = Harness::new(version(&[FINALIZER_PROTECT_SERVING], false), vec![serving("iris-r1")]);
    h.pass().await.0.unwrap();
    h.set(|f| f.version["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into());

    let (result, log) = h.pass().await;
    assert_eq!(result, Ok(()), "a blocked deletion is a state, not a reconcile error");
    assert_eq!(event_reasons(&log), ["DeletionBlocked"]);
    let mv = h.stored();
    assert_eq!(mv.finalizers(), [FINALIZER_PROTECT_SERVING], "the finalizer stays");
    let blocked = cond::find(&mv.status.as_ref().unwrap().conditions, cond::DELETION_BLOCKED).unwrap();
    assert!(blocked.message.contains("served by InferenceService web"), "{}", blocked.message);

    let (result, log) = h.pass().await;
    assert_eq!(result, Ok(()));
    assert!(mock_api::writes(&log).is_empty(), "still blocked: no second Warning, no write");
}

#[tokio::test]
async fn deleting_an_unused_version_removes_only_our_finalizer() {
    let h = Harness::new(
        version(&[FINALIZER_PROTECT_SERVING, "example.com/other"], true),
        vec![serving("iris-r9")],
    );
    let (result, log) = h.pass().await;
    assert_eq!(result, Ok(()));
    let writes = mock_api::writes(&log);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].line(), format!("PATCH {VERSION}"));
    assert_eq!(
        writes[0].body.as_ref().unwrap()["metadata"],
        json!({"finalizers": ["example.com/other"], "resourceVersion": "7"})
    );
}

#[tokio::test]
async fn an_api_error_becomes_a_condition_and_one_event_and_a_later_pass_clears_it() {
    let h = Harness::new(version(&[FINALIZER_PROTECT_SERVING], false), vec![]);
    h.set(|f| f.list_fails = true);
    let (result, log) = h.pass().await;
    let err = result.unwrap_err();
    assert_eq!(err, "list InferenceServices in namespace ns: etcd timeout");
    assert_eq!(event_reasons(&log), ["ReconcileFailed"]);
    let conditions = h.stored().status.unwrap().conditions;
    assert!(cond::is_false(&conditions, cond::READY));
    assert!(cond::is_true(&conditions, cond::RECONCILING));
    assert_eq!(cond::find(&conditions, cond::READY).unwrap().message, err);

    // The same failure again: no second Event, no rewrite of the same condition.
    let (_, log) = h.pass().await;
    assert!(mock_api::writes(&log).is_empty(), "{:?}", mock_api::lines(&log));

    h.set(|f| f.list_fails = false);
    assert_eq!(h.pass().await.0, Ok(()));
    let conditions = h.stored().status.unwrap().conditions;
    assert!(cond::is_true(&conditions, cond::READY), "{conditions:?}");
    assert!(cond::is_false(&conditions, cond::RECONCILING));
}

#[tokio::test]
async fn a_refused_status_write_is_reported_as_child_rejected() {
    let h = Harness::new(version(&[FINALIZER_PROTECT_SERVING], false), vec![]);
    h.set(|f| f.status_refused = true);
    let (result, log) = h.pass().await;
    let err = result.unwrap_err();
    assert_eq!(err, "write the status of ModelVersion iris-r1: status.servingIn: Too many: 99");
    assert_eq!(event_reasons(&log), ["ChildRejected"]);
    let conditions = h.stored().status.unwrap().conditions;
    assert!(cond::is_true(&conditions, cond::STALLED));
    assert_eq!(cond::find(&conditions, cond::READY).unwrap().message, err);
}
