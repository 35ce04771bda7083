//! TrainingJob → Job → trainer pod (a real `mlops-runtime train` process on the local node)
//! → one ModelVersion with its lineage and gate verdicts; failures become reasons, never
//! panics or retry storms.

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Service};
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use mlops_operator::{
    api::{
        InferenceService, ModelVersion, TrainingJob,
        conditions::{self as cond},
        model_version::GateVerdict,
    },
    controllers::training_job::desired::rendezvous_service_name,
};
use serde_json::json;
use testkit::{
    Operator, TestEnv, condition_status, install_crds, output_text, wait_condition, wait_for, wait_until,
};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");
const TRAINING: Duration = Duration::from_secs(120);
const CONTROLLER: &str = "trainingjob";
/// How long without a pass counts as idle, and how long idleness may take to come.
const QUIET: Duration = Duration::from_secs(3);
const IDLE: Duration = Duration::from_secs(30);

fn training_job(name: &str, ns: &str, extra_spec: serde_json::Value) -> String {
    let mut spec = json!({
        "model": "iris",
        "dataset": {"uri": testkit::work_iris(ns), "labelColumn": "species",
                    "validation": {"missing": {"action": "Drop"}, "outliers": {"action": "Keep", "method": "IQR"}},
                    "split": {"train": 0.7, "validation": 0.15, "test": 0.15, "seed": 7}},
        "hyperparameters": {"algorithm": "logistic_regression"},
        "source": {"repository": "https://example.invalid/ml/iris", "revision": "0123abc"},
        "trainer": {"image": "ghcr.io/mlops-dev/mlops-runtime:0.1.0", "args": ["train"]},
        "output": {"uri": "pvc://work/models"},
        "modelVersion": {"gates": [{"metric": "accuracy", "op": ">=", "value": 0.9}], "labels": {"team": "e2e"}}
    });
    if let (Some(base), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_string(&json!({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

fn apply(env: &TestEnv, doc: &str) {
    let out = env.kubectl(&["apply", "-f", "-"], Some(doc));
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_training_run_produces_one_validated_model_version_with_lineage() {
    let env = TestEnv::start("train-lineage").await;
    install_crds();
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    apply(&env, &training_job("iris", &env.namespace, json!({})));

    let tjs: Api<TrainingJob> = env.api();
    let tj = wait_condition(&tjs, "iris", cond::SUCCEEDED, "True", TRAINING).await;
    let status = tj.status.clone().unwrap();
    assert_eq!(status.runs.len(), 1, "{status:?}");
    assert_eq!(status.latest_model_version.as_deref(), Some("iris-r1"));
    assert_eq!(condition_status(&tj, cond::READY).as_deref(), Some("True"));
    assert_eq!(condition_status(&tj, cond::RECONCILING).as_deref(), Some("False"));

    // The Job: owned, labelled, restricted, and carrying the environment contract.
    let job = env.api::<Job>().get("iris-r1").await.unwrap();
    assert!(
        job.metadata.owner_references.iter().flatten().any(|o| o.kind == "TrainingJob" && o.name == "iris")
    );
    assert_eq!(job.metadata.labels.as_ref().unwrap()["mlops.dev/run"], "iris-r1");
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
    assert_eq!(c.security_context.as_ref().unwrap().allow_privilege_escalation, Some(false));
    assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
    let env_of = |name: &str| c.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(env_of("MLOPS_RUN_ID").as_deref(), Some("iris-r1"));
    assert_eq!(env_of("MLOPS_LABEL_COLUMN").as_deref(), Some("species"));
    assert_eq!(
        env_of("MLOPS_SPLIT").as_deref(),
        Some(r#"{"seed":7,"test":0.15,"train":0.7,"validation":0.15}"#)
    );
    assert!(env_of("MLOPS_VALIDATION").unwrap().contains(r#""method":"iqr""#));

    // Exactly one ModelVersion, with the whole lineage and a verdict per gate.
    let mvs: Api<ModelVersion> = env.api();
    let mv = wait_condition(&mvs, "iris-r1", cond::VALIDATED, "True", Duration::from_secs(30)).await;
    assert_eq!(mvs.list(&ListParams::default()).await.unwrap().items.len(), 1);
    let lineage = mv.spec.lineage.clone().expect("lineage");
    assert_eq!(lineage.training_job.as_deref(), Some("iris"));
    assert_eq!(lineage.run.as_deref(), Some("iris-r1"));
    assert_eq!(lineage.image.as_deref(), Some("ghcr.io/mlops-dev/mlops-runtime:0.1.0"));
    assert!(
        lineage.image_digest.as_deref().is_some_and(|d| !d.is_empty()),
        "image digest from the pod status"
    );
    assert_eq!(lineage.hyperparameters["algorithm"], "logistic_regression");
    assert_eq!(lineage.source.as_ref().unwrap().revision.as_deref(), Some("0123abc"));
    assert!(lineage.start_time.is_some() && lineage.completion_time.is_some());
    let dataset = lineage.dataset.expect("dataset lineage");
    assert!(dataset.digest.as_deref().is_some_and(|d| d.starts_with("sha256:")));
    let rows = dataset.rows.expect("row counts");
    assert_eq!(rows.train + rows.validation + rows.test, rows.total);
    assert!(dataset.validation_report.iter().any(|r| r.check == "missing"));
    assert!(mv.spec.metrics["accuracy"] >= 0.9, "{:?}", mv.spec.metrics);
    assert!(mv.spec.artifact.digest.as_deref().is_some_and(|d| d.starts_with("sha256:")));
    let results = mv.status.as_ref().unwrap().gate_results.clone();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].verdict, GateVerdict::Passed);
    assert_eq!(results[0].bound, Some(0.9));
    assert_eq!(mv.metadata.labels.as_ref().unwrap()["team"], "e2e");

    // With nothing left to do the controller goes quiet; a reconcile storm never would.
    op.wait_idle(CONTROLLER, QUIET, IDLE).await;

    // A finished run whose Job disappears is never launched again: once the operator has
    // looked at the deletion (a pass after it, then nothing more to do), still one run.
    let started = op.reconciles_started(CONTROLLER).expect("the operator's metrics");
    env.api::<Job>().delete("iris-r1", &DeleteParams::background()).await.unwrap();
    op.wait_pass(CONTROLLER, started, "the Job's deletion", IDLE).await;
    op.wait_idle(CONTROLLER, QUIET, IDLE).await;
    let tj = tjs.get("iris").await.unwrap();
    assert_eq!(tj.status.unwrap().runs.len(), 1, "a deleted Job must not start a new run");
    assert!(env.api::<Job>().get_opt("iris-r2").await.unwrap().is_none());

    // Its gauges leave with the TrainingJob (dashboards and staleness alerts stop seeing it).
    let series = format!(
        "mlops_training_last_success_timestamp_seconds{{namespace=\"{}\",training_job=\"iris\"}}",
        env.namespace
    );
    assert!(op.metric(&series).is_some(), "{}", op.metrics().unwrap_or_default());
    tjs.delete("iris", &DeleteParams::default()).await.unwrap();
    wait_until(Duration::from_secs(30), "the deleted TrainingJob's gauges to go", || async {
        op.metric(&series).is_none().then_some(())
    })
    .await;
    drop(op);
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_failing_gate_gives_validated_false_naming_the_gate() {
    let env = TestEnv::start("train-gate").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let gates = json!({"modelVersion": {"gates": [
        {"metric": "accuracy", "op": ">=", "value": 0.5},
        {"metric": "accuracy", "op": ">=", "value": 0.999}
    ]}});
    apply(&env, &training_job("strict", &env.namespace, gates));
    let mvs: Api<ModelVersion> = env.api();
    let mv = wait_condition(&mvs, "strict-r1", cond::VALIDATED, "False", TRAINING).await;
    let validated =
        mv.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == cond::VALIDATED).unwrap();
    assert_eq!(validated.reason, "GateFailed");
    assert!(validated.message.contains("accuracy >= 0.999"), "{}", validated.message);
    let verdicts: Vec<_> = mv.status.unwrap().gate_results.iter().map(|g| g.verdict).collect();
    assert_eq!(verdicts, [GateVerdict::Passed, GateVerdict::Failed]);
    env.wait_event("ValidationFailed", "accuracy >= 0.999", Duration::from_secs(30)).await;
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn deleting_a_served_model_version_is_refused_until_nothing_serves_it() {
    let env = TestEnv::start("mv-protect").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    apply(
        &env,
        r#"{"apiVersion":"mlops.dev/v1alpha1","kind":"ModelVersion","metadata":{"name":"imported-v1"},
            "spec":{"model":"iris","artifact":{"uri":"file:///tmp/imported/model.json"},"metrics":{"accuracy":0.97},
                    "gates":[{"metric":"accuracy","op":">=","value":0.9}]}}"#,
    );
    let mvs: Api<ModelVersion> = env.api();
    wait_for(&mvs, "imported-v1", Duration::from_secs(30), "the protection finalizer", |mv| {
        mv.metadata.finalizers.iter().flatten().any(|f| f == "mlops.dev/protect-serving")
    })
    .await;
    wait_condition(&mvs, "imported-v1", cond::VALIDATED, "True", Duration::from_secs(30)).await;

    // The InferenceService controller serves the pinned version.
    apply(
        &env,
        r#"{"apiVersion":"mlops.dev/v1alpha1","kind":"InferenceService","metadata":{"name":"web"},
            "spec":{"model":"iris","version":"imported-v1","runtime":{"preset":"MlopsRuntime"}}}"#,
    );
    let isvcs: Api<InferenceService> = env.api();
    wait_for(&isvcs, "web", Duration::from_secs(30), "imported-v1 as the stable version", |s| {
        s.status.as_ref().and_then(|st| st.stable.as_ref()).is_some_and(|st| st.version == "imported-v1")
    })
    .await;
    wait_for(&mvs, "imported-v1", Duration::from_secs(30), "servingIn to name web", |mv| {
        mv.status.as_ref().is_some_and(|s| s.serving_in == ["web"])
    })
    .await;

    let out = env.kubectl(&["delete", "modelversion", "imported-v1", "--wait=false"], None);
    assert!(out.status.success(), "{}", output_text(&out));
    let mv =
        wait_condition(&mvs, "imported-v1", cond::DELETION_BLOCKED, "True", Duration::from_secs(30)).await;
    let blocked =
        mv.status.unwrap().conditions.into_iter().find(|c| c.type_ == cond::DELETION_BLOCKED).unwrap();
    assert!(blocked.message.contains("served by InferenceService web"), "{}", blocked.message);
    env.wait_event("DeletionBlocked", "served by InferenceService web", Duration::from_secs(30)).await;
    // The operator has refused (the condition above): the version stays, held by its finalizer.
    let held = mvs.get_opt("imported-v1").await.unwrap().expect("a served version was deleted");
    assert!(held.metadata.finalizers.iter().flatten().any(|f| f == "mlops.dev/protect-serving"));

    // Once nothing serves it, the deletion completes.
    isvcs.delete("web", &DeleteParams::default()).await.unwrap();
    wait_until(Duration::from_secs(30), "the ModelVersion to be deleted", || async {
        matches!(mvs.get_opt("imported-v1").await, Ok(None)).then_some(())
    })
    .await;
}

/// A trainer that exits 0 but leaves a bad result: the run fails with a reason.
fn fake_trainer(script: &str) -> serde_json::Value {
    json!({"trainer": {"image": "python:3.11", "command": ["python3", "-c", script]}})
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn bad_results_fail_the_run_with_a_reason_and_no_retry_storm() {
    let env = TestEnv::start("train-bad-result").await;
    install_crds();
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    let write = |text: &str| format!("import os; open('/dev/termination-log', 'w').write({text})");
    let cases = [
        ("malformed", write("'accuracy=0.9'"), &["ResultInvalid"][..]),
        (
            "oversized",
            write("'{\"version\":1,\"pad\":\"' + 'x'*6000 + '\"}'"),
            &["ResultTooLarge", "ResultInvalid"][..],
        ),
        ("missing", "print('trained, but forgot the result')".to_string(), &["ResultMissing"][..]),
        // Well-formed, but beyond what a ModelVersion may hold: refused before the API
        // server would refuse the version.
        (
            "toolong",
            write(
                "'{\"version\":1,\"artifact\":{\"uri\":\"file:///tmp/m.json\",\"format\":\"' + 'f'*100 + '\"}}'",
            ),
            &["ResultInvalid"][..],
        ),
        // A good result whose version name is already taken by a ModelVersion someone
        // imported: never adopted as this run's.
        (
            "clash",
            write(
                "'{\"version\":1,\"metrics\":{\"accuracy\":0.9},\"artifact\":{\"uri\":\"file:///tmp/m.json\"}}'",
            ),
            &["ModelVersionNameTaken"][..],
        ),
    ];
    apply(
        &env,
        r#"{"apiVersion":"mlops.dev/v1alpha1","kind":"ModelVersion","metadata":{"name":"clash-r1"},
            "spec":{"model":"other","artifact":{"uri":"file:///tmp/imported/model.json"}}}"#,
    );
    for (name, script, _) in &cases {
        apply(&env, &training_job(name, &env.namespace, fake_trainer(script)));
    }
    let tjs: Api<TrainingJob> = env.api();
    for (name, _, reasons) in &cases {
        let tj = wait_condition(&tjs, name, cond::FAILED, "True", TRAINING).await;
        let run = tj.status.as_ref().unwrap().runs[0].clone();
        let reason = run.reason.clone().unwrap_or_default();
        assert!(reasons.contains(&reason.as_str()), "{name}: reason {reason}, expected one of {reasons:?}");
        assert!(run.message.as_deref().is_some_and(|m| !m.is_empty()), "{name}: a message says why");
        assert_eq!(condition_status(&tj, cond::STALLED).as_deref(), Some("True"), "{name}: a human must act");
    }
    let versions = env.api::<ModelVersion>().list(&ListParams::default()).await.unwrap().items;
    let names: Vec<_> = versions.iter().filter_map(|v| v.metadata.name.clone()).collect();
    assert_eq!(names, ["clash-r1"], "only the imported version exists");
    assert_eq!(versions[0].spec.model, "other", "the imported version is untouched");
    // Whatever the operator would do about the failed runs, it has done once it is idle.
    op.wait_idle(CONTROLLER, QUIET, IDLE).await;
    assert_eq!(
        env.api::<Job>().list(&ListParams::default()).await.unwrap().items.len(),
        cases.len(),
        "no run was retried"
    );
    let errors = op.metrics().unwrap_or_default();
    assert!(!errors.contains("mlops_operator_reconcile_errors_total{controller=\"trainingjob\""), "{errors}");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn bad_data_fails_the_run_with_the_trainers_reason() {
    let env = TestEnv::start("train-bad-data").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let csv = testkit::put_work_file(&env.namespace, "bad.csv", b"a,b,species\n1,2,x\n3,oops,y\n5,6,x\n");
    let spec = json!({"dataset": {"uri": csv, "labelColumn": "species"}});
    apply(&env, &training_job("baddata", &env.namespace, spec));
    let tjs: Api<TrainingJob> = env.api();
    let tj = wait_condition(&tjs, "baddata", cond::FAILED, "True", TRAINING).await;
    let run = tj.status.unwrap().runs[0].clone();
    assert_eq!(run.exit_code, Some(2), "{run:?}");
    assert!(run.message.as_deref().unwrap_or("").contains("trainer exited 2"), "{run:?}");
    assert!(
        run.message.as_deref().unwrap_or("").contains("schema check failed"),
        "the trainer's one-line reason is kept: {run:?}"
    );
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_distributed_run_is_an_indexed_job_behind_a_headless_service() {
    let env = TestEnv::start("train-distributed").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    apply(&env, &training_job("dist", &env.namespace, json!({"workers": 2})));
    let tjs: Api<TrainingJob> = env.api();
    wait_condition(&tjs, "dist", cond::SUCCEEDED, "True", TRAINING).await;
    let job = env.api::<Job>().get("dist-r1").await.unwrap();
    let spec = job.spec.unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
    let pod = spec.template.spec.unwrap();
    let service = rendezvous_service_name("dist-r1");
    assert_eq!(pod.subdomain.as_deref(), Some(service.as_str()));
    let env_vars = pod.containers[0].env.clone().unwrap();
    let value = |n: &str| env_vars.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
    assert_eq!(value("WORLD_SIZE").as_deref(), Some("2"));
    assert_eq!(value("MASTER_ADDR"), Some(format!("dist-r1-0.{service}")));
    let rank = env_vars.iter().find(|e| e.name == "RANK").unwrap();
    assert!(
        rank.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .contains("job-completion-index")
    );
    let svc = env.api::<Service>().get(&service).await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    assert_eq!(env.api::<ModelVersion>().list(&ListParams::default()).await.unwrap().items.len(), 1);
}

/// A two-worker trainer: rank 1 connects to MASTER_ADDR:MASTER_PORT and reports; rank 0
/// accepts WORLD_SIZE - 1 peers, then writes the run's result.
const RENDEZVOUS: &str = r#"
import json, os, socket, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if rank == 0:
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen(world); srv.settimeout(60)
    peers = []
    for _ in range(world - 1):
        conn, _ = srv.accept(); peers.append(conn.recv(64).decode()); conn.close()
    result = {"version": 1, "metrics": {"accuracy": 0.97, "workers": world, "peers": len(peers)},
              "artifact": {"uri": os.environ["MLOPS_OUTPUT_URI"] + "/model.json", "format": "rendezvous-test"}}
    open(os.environ.get("MLOPS_TERMINATION_MESSAGE_PATH", "/dev/termination-log"), "w").write(json.dumps(result))
else:
    for attempt in range(120):
        try:
            s = socket.create_connection((addr, port), timeout=2); s.sendall(f"rank {rank}".encode()); s.close(); break
        except OSError:
            time.sleep(0.5)
    else:
        raise SystemExit(f"rank {rank} never reached {addr}:{port}")
"#;

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn distributed_workers_rendezvous_and_produce_one_model_version() {
    let env = TestEnv::start("train-rendezvous").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let spec =
        json!({"workers": 2, "trainer": {"image": "python:3.11", "command": ["python3", "-c", RENDEZVOUS]}});
    apply(&env, &training_job("ring", &env.namespace, spec));
    let tjs: Api<TrainingJob> = env.api();
    let tj = wait_condition(&tjs, "ring", cond::SUCCEEDED, "True", TRAINING).await;
    assert_eq!(tj.status.unwrap().latest_model_version.as_deref(), Some("ring-r1"));
    let mvs: Api<ModelVersion> = env.api();
    let all = mvs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 1, "one ModelVersion for the whole distributed run");
    assert_eq!(all[0].spec.metrics["peers"], 1.0, "rank 0 heard from rank 1");
    assert_eq!(all[0].spec.metrics["workers"], 2.0);
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_suspended_training_job_starts_nothing_until_resumed() {
    let env = TestEnv::start("train-suspend").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    apply(&env, &training_job("paused", &env.namespace, json!({"suspend": true})));
    let tjs: Api<TrainingJob> = env.api();
    let tj = wait_for(&tjs, "paused", Duration::from_secs(30), "a status saying it is suspended", |tj| {
        tj.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.reason == "Suspended"))
    })
    .await;
    assert!(tj.status.unwrap().runs.is_empty());
    assert!(
        env.api::<Job>().list(&ListParams::default()).await.unwrap().items.is_empty(),
        "no Job while suspended"
    );
    env.merge_patch("trainingjob", "paused", &json!({"spec": {"suspend": false}}));
    wait_condition(&tjs, "paused", cond::SUCCEEDED, "True", TRAINING).await;
}
