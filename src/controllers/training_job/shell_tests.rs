//! The I/O shell against a scripted API server: one real reconcile per scenario, and the
//! exact requests it makes.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::batch::v1::{Job, JobCondition, JobStatus},
    jiff::Timestamp,
};
use serde_json::{Value, json};

use super::{desired::RunRef, inputs::Inputs, plan, reconcile};
use crate::{
    api::{
        TrainingJob,
        training_job::{RunOutcome, RunTrigger, TriggerType},
    },
    controllers::{
        Context,
        mock_api::{self, Call, Reply},
        test_settings,
    },
    metrics::Metrics,
};

const TJ: &str = "/apis/mlops.dev/v1alpha1/namespaces/ns/trainingjobs/iris";
const TJ_STATUS: &str = "/apis/mlops.dev/v1alpha1/namespaces/ns/trainingjobs/iris/status";
const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";
const SERVICES: &str = "/api/v1/namespaces/ns/services";
const PODS: &str = "/api/v1/namespaces/ns/pods";
const VERSIONS: &str = "/apis/mlops.dev/v1alpha1/namespaces/ns/modelversions";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

const RESULT: &str =
    r#"{"version":1,"metrics":{"accuracy":0.9},"artifact":{"uri":"file:///out/iris-r1/m.json"}}"#;

fn training_job(workers: i32) -> TrainingJob {
    serde_json::from_value(json!({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "iris", "namespace": "ns", "uid": "u1", "generation": 1,
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"model": "iris", "dataset": {"uri": "file:///d.csv"}, "workers": workers,
                 "trainer": {"image": "mlops-runtime:dev"}, "output": {"uri": "file:///out"}}
    }))
    .unwrap()
}

fn run1() -> RunRef {
    RunRef {
        name: "iris-r1".into(),
        number: 1,
        generation: 1,
        trigger: RunTrigger { type_: TriggerType::Spec, ..RunTrigger::default() },
    }
}

/// The run's Job as the API server shows it: `active` while it runs, else `Complete`.
fn run_job(tj: &TrainingJob, complete: bool) -> Job {
    let mut job = super::desired::desired_job(tj, &run1()).unwrap();
    job.metadata.uid = Some("job-uid-1".into());
    job.status = Some(JobStatus {
        active: Some(i32::from(!complete)),
        conditions: complete.then(|| {
            vec![JobCondition { type_: "Complete".into(), status: "True".into(), ..JobCondition::default() }]
        }),
        ..JobStatus::default()
    });
    job
}

/// `tj` after the passes that started run 1 and saw its Job running: its steady state.
fn steady(tj: &TrainingJob) -> TrainingJob {
    let mut tj = tj.clone();
    let now = Timestamp::now();
    let first = plan::plan(&tj, &Inputs::default(), now);
    tj.status = Some(first.status);
    let inputs =
        Inputs { jobs: BTreeMap::from([("iris-r1".into(), run_job(&tj, false))]), ..Inputs::default() };
    tj.status = Some(plan::plan(&tj, &inputs, now).status);
    assert_eq!(tj.status.as_ref().unwrap().runs[0].outcome, RunOutcome::Running);
    tj
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

/// A child with our label and the controller reference of `uid`.
fn labelled(kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": if kind == "Job" { "batch/v1" } else { "v1" }, "kind": kind,
           "metadata": {"name": name, "namespace": "ns", "labels": {"mlops.dev/training-job": "iris"},
                        "ownerReferences": [{"apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
                                             "name": "iris", "uid": uid, "controller": true}]}})
}

fn path(call: &Call) -> &str {
    call.uri.split('?').next().unwrap_or_default()
}

/// The API server of a namespace holding `tj`, `jobs`, `services`, and `pods`; anything
/// not listed here is answered by `extra` first.
fn server(
    tj: TrainingJob,
    jobs: Vec<Value>,
    services: Vec<Value>,
    pods: Vec<Value>,
    extra: impl Fn(&Call) -> Option<Reply> + Send + Sync + 'static,
) -> impl Fn(&Call) -> Reply + Send + Sync + 'static {
    move |call: &Call| {
        if let Some(reply) = extra(call) {
            return reply;
        }
        match (call.method.as_str(), path(call)) {
            ("GET", TJ) => (200, to_json(&tj)),
            // The object with the status written.
            ("PATCH", TJ_STATUS) => {
                let mut obj = to_json(&tj);
                obj["status"] = call.body.as_ref().map_or(Value::Null, |b| b["status"].clone());
                (200, obj)
            }
            ("GET", JOBS) => mock_api::list("Job", jobs.clone()),
            ("GET", SERVICES) => mock_api::list("Service", services.clone()),
            // A read by name (the applier's claim of a name no list showed).
            ("GET", p) if p.starts_with(JOBS) || p.starts_with(SERVICES) => {
                let name = p.rsplit('/').next().unwrap_or_default();
                match jobs.iter().chain(&services).find(|o| o["metadata"]["name"] == name) {
                    Some(o) => (200, o.clone()),
                    None => mock_api::not_found(),
                }
            }
            ("GET", PODS) => mock_api::list("Pod", pods.clone()),
            ("GET", p) if p.starts_with(VERSIONS) => mock_api::not_found(),
            ("PATCH", _) | ("POST", _) => mock_api::echo(call),
            ("DELETE", _) => (200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
            _ => mock_api::status(405, "MethodNotAllowed", "unexpected"),
        }
    }
}

fn context(client: kube::Client) -> Arc<Context> {
    Context::new(client, Metrics::new(), "test".into(), test_settings())
}

fn status_written(calls: &[Call]) -> Value {
    let c = calls.iter().find(|c| path(c) == TJ_STATUS).expect("a status write");
    c.body.as_ref().unwrap()["status"].clone()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap()
}

#[tokio::test]
async fn first_pass_applies_the_job_and_service_then_writes_the_status() {
    let tj = training_job(2);
    let (client, log) = mock_api::client(server(tj.clone(), vec![], vec![], vec![], |_| None));
    reconcile(Arc::new(tj), context(client)).await.unwrap();
    let service = super::desired::rendezvous_service_name("iris-r1");
    assert_eq!(
        mock_api::lines(&log),
        vec![
            format!("GET {TJ}"),
            format!("GET {JOBS}"),
            // The applier lists the Services (the Jobs were read in full) before applying,
            // and reads the names no list showed: both free.
            format!("GET {SERVICES}"),
            format!("GET {SERVICES}/{service}"),
            format!("GET {JOBS}/iris-r1"),
            format!("PATCH {SERVICES}/{service}"),
            format!("PATCH {JOBS}/iris-r1"),
            format!("PATCH {TJ_STATUS}"),
            format!("POST {EVENTS}"),
        ]
    );
    let calls = mock_api::writes(&log);
    assert!(calls[0].uri.contains("fieldManager=mlops-operator"), "{}", calls[0].uri);
    let job = calls[1].body.as_ref().unwrap();
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "u1");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let status = status_written(&calls);
    assert_eq!(status["runs"][0]["name"], "iris-r1");
    assert_eq!(condition(&status, "Reconciling")["status"], "True");
    assert_eq!(calls[3].body.as_ref().unwrap()["reason"], "RunStarted");
}

#[tokio::test]
async fn steady_state_writes_nothing() {
    let tj = steady(&training_job(2));
    let jobs = vec![to_json(&run_job(&tj, false))];
    let services = vec![labelled("Service", &super::desired::rendezvous_service_name("iris-r1"), "u1")];
    let (client, log) = mock_api::client(server(tj.clone(), jobs, services, vec![], |_| None));
    reconcile(Arc::new(tj), context(client)).await.unwrap();
    assert_eq!(
        mock_api::lines(&log),
        vec![format!("GET {TJ}"), format!("GET {JOBS}"), format!("GET {SERVICES}")]
    );
    assert!(mock_api::writes(&log).is_empty());
}

#[tokio::test]
async fn a_refused_job_is_a_condition_and_a_warning_event_and_the_error_is_returned() {
    let tj = training_job(1);
    let refuse = |call: &Call| {
        (call.method == "PATCH" && path(call) == format!("{JOBS}/iris-r1"))
            .then(|| mock_api::status(422, "Invalid", "Job.batch \"iris-r1\" is invalid: spec.template: bad"))
    };
    let (client, log) = mock_api::client(server(tj.clone(), vec![], vec![], vec![], refuse));
    let err = reconcile(Arc::new(tj), context(client)).await.unwrap_err();
    assert_eq!(err.to_string(), "apply Job iris-r1: Job.batch \"iris-r1\" is invalid: spec.template: bad");
    assert_eq!(
        mock_api::lines(&log),
        vec![
            format!("GET {TJ}"),
            format!("GET {JOBS}"),
            format!("GET {SERVICES}"),
            format!("GET {JOBS}/iris-r1"),
            format!("PATCH {JOBS}/iris-r1"),
            // report_failure: the status as it is, the failure's conditions, one Event.
            format!("GET {TJ}"),
            format!("PATCH {TJ_STATUS}"),
            format!("POST {EVENTS}"),
        ]
    );
    let calls = mock_api::writes(&log);
    let status = status_written(&calls);
    let ready = condition(&status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ChildRejected")));
    assert!(ready["message"].as_str().unwrap().starts_with("apply Job iris-r1: "));
    assert_eq!(condition(&status, "Stalled")["status"], "True");
    let event = calls[2].body.as_ref().unwrap();
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("ChildRejected")));
}

#[tokio::test]
async fn children_no_longer_desired_are_pruned_and_others_left_alone() {
    let tj = steady(&training_job(1));
    let jobs = vec![
        to_json(&run_job(&tj, false)),
        // Ours, but no run of this TrainingJob records it.
        labelled("Job", "iris-stray", "u1"),
        // Our label, someone else's controller: not ours.
        labelled("Job", "theirs", "other"),
    ];
    let services = vec![labelled("Service", "iris-r0", "u1"), labelled("Service", "foreign", "other")];
    let (client, log) = mock_api::client(server(tj.clone(), jobs, services, vec![], |_| None));
    reconcile(Arc::new(tj), context(client)).await.unwrap();
    let writes: Vec<String> = mock_api::writes(&log).iter().map(Call::line).collect();
    assert_eq!(writes, vec![format!("DELETE {JOBS}/iris-stray"), format!("DELETE {SERVICES}/iris-r0")]);
}

#[tokio::test]
async fn a_refused_model_version_fails_its_run_once_and_is_not_retried() {
    let tj = steady(&training_job(1));
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "iris-r1-abc", "namespace": "ns",
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "iris-r1",
                                          "uid": "job-uid-1", "controller": true}]},
        "spec": {"containers": [{"name": "trainer", "image": "mlops-runtime:dev", "terminationMessagePolicy": "File"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{
            "name": "trainer", "image": "mlops-runtime:dev", "imageID": "sha256:cccc", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": RESULT}}}]}});
    let refuse = |call: &Call| {
        (call.method == "POST" && path(call) == VERSIONS).then(|| {
            mock_api::status(422, "Invalid", "ModelVersion.mlops.dev \"iris-r1\" is invalid: spec: too big")
        })
    };
    let jobs = vec![to_json(&run_job(&tj, true))];
    let (client, log) = mock_api::client(server(tj.clone(), jobs.clone(), vec![], vec![pod.clone()], refuse));
    reconcile(Arc::new(tj.clone()), context(client)).await.unwrap();
    assert_eq!(
        mock_api::lines(&log),
        vec![
            format!("GET {TJ}"),
            format!("GET {JOBS}"),
            format!("GET {PODS}"),
            format!("GET {VERSIONS}/iris-r1"),
            format!("GET {SERVICES}"),
            format!("POST {VERSIONS}"),
            format!("PATCH {TJ_STATUS}"),
            format!("POST {EVENTS}"),
        ]
    );
    let calls = mock_api::writes(&log);
    let status = status_written(&calls);
    let run = &status["runs"][0];
    assert_eq!(
        (run["outcome"].as_str(), run["reason"].as_str()),
        (Some("Failed"), Some("ModelVersionRejected"))
    );
    assert!(status.get("latestModelVersion").is_none_or(Value::is_null), "{status}");
    let event = calls.last().unwrap().body.as_ref().unwrap();
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("RunFailed")));

    // The next pass sees the run finished: no second create.
    let mut after = tj;
    after.status = Some(serde_json::from_value(status).unwrap());
    let (client, log) = mock_api::client(server(after.clone(), jobs, vec![], vec![pod], refuse));
    reconcile(Arc::new(after), context(client)).await.unwrap();
    assert!(mock_api::writes(&log).is_empty(), "{:?}", mock_api::lines(&log));
}

#[tokio::test]
async fn a_job_that_only_looks_like_a_run_is_neither_followed_nor_written() {
    let tj = training_job(1);
    // Named and labelled like run 1 of `iris`, but under another TrainingJob `iris` (an
    // earlier one of that name): not a run to follow, and not ours to apply over.
    let mut lookalike = labelled("Job", "iris-r1", "earlier");
    lookalike["metadata"]["labels"]["mlops.dev/run"] = "iris-r1".into();
    let (client, log) = mock_api::client(server(tj.clone(), vec![lookalike], vec![], vec![], |_| None));
    let err = reconcile(Arc::new(tj), context(client)).await.unwrap_err();
    assert!(
        err.to_string().contains("Job/iris-r1 (controlled by another TrainingJob/iris, uid earlier)"),
        "{err}"
    );
    let calls = mock_api::writes(&log);
    let writes: Vec<String> = calls.iter().map(Call::line).collect();
    assert_eq!(writes, [format!("PATCH {TJ_STATUS}"), format!("POST {EVENTS}")], "nothing but the report");
    let status = status_written(&calls);
    assert!(
        status.get("runs").is_none_or(|r| r.as_array().is_none_or(Vec::is_empty)),
        "not adopted: {status}"
    );
    let ready = condition(&status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ChildConflict")));
}
