//! A cluster shared by teams: what a tenant writes in its own namespace cannot make the
//! operator read a file, inject faults into serving, grow without bound, skip a service's
//! validation or forge a training result. Each test asserts the absence of the harm.

mod inference_harness;

use std::time::Duration;

use inference_harness::{Release, import_version, inference_service, service_address, wait_serving};
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, core::v1::Pod};
use kube::{Api, ResourceExt, api::ListParams};
use mlops_operator::api::{
    ANNOTATION_RETRY, InferenceService, ModelVersion, TrainingJob, conditions as cond,
    training_job::{DEFAULT_TTL_SECONDS_AFTER_FINISHED, RunOutcome},
};
use serde_json::json;
use testkit::{Operator, TestEnv, install_crds, output_text, wait_condition, wait_for, wait_until};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");
const TRAINING: Duration = Duration::from_secs(120);
const SERVING: Duration = Duration::from_secs(120);

fn apply(env: &TestEnv, doc: &serde_json::Value) -> std::process::Output {
    env.kubectl(&["apply", "-f", "-"], Some(&doc.to_string()))
}

fn training_job(name: &str, ns: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "model": "iris",
        "dataset": {"uri": testkit::work_iris(ns), "labelColumn": "species"},
        "hyperparameters": {"algorithm": "logistic_regression"},
        "trainer": {"image": "ghcr.io/mlops-dev/mlops-runtime:0.1.0", "args": ["train"]},
        "output": {"uri": "pvc://work/models"},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec})
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the operator's /proc stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_data_trigger_on_a_file_is_refused_and_the_operator_reads_no_file() {
    let env = TestEnv::start("tenant-file").await;
    install_crds();
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    // file:///dev/zero once had the operator hash an endless file in its own process.
    let zero = json!({"uri": "file:///dev/zero", "labelColumn": "species"});
    let out =
        apply(&env, &training_job("zero", &env.namespace, json!({"dataset": zero, "retrain": {"data": {}}})));
    assert!(!out.status.success(), "a data trigger on a file:// dataset was accepted");
    let message = output_text(&out);
    assert!(message.contains("retrain.data watches s3:// and pvc:// datasets"), "{message}");

    // The same dataset without the trigger is the trainer's business: the operator passes
    // over it without reading it (no CPU burnt while it is idle).
    let before = op.reconciles_finished("trainingjob").unwrap_or(0.0);
    let out = apply(&env, &training_job("zero", &env.namespace, json!({"dataset": zero})));
    assert!(out.status.success(), "{}", output_text(&out));
    op.wait_pass("trainingjob", before, "a pass over the TrainingJob", Duration::from_secs(30)).await;
    op.wait_idle("trainingjob", Duration::from_secs(3), Duration::from_secs(60)).await;
    let cpu = cpu_seconds(op.pid());
    op.wait_idle("trainingjob", Duration::from_secs(5), Duration::from_secs(60)).await;
    let burnt = cpu_seconds(op.pid()) - cpu;
    assert!(burnt < 2.0, "the idle operator burnt {burnt:.1} CPU seconds in 5 s");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_fault_annotation_does_nothing_without_the_fault_injection_flag() {
    let env = TestEnv::start("tenant-fault").await;
    install_crds();
    let uri = testkit::train_iris(&env.namespace);
    // As a production install runs: no --enable-fault-injection.
    let _op = Operator::start_as(OPERATOR, &env.namespace, &[]);
    let _release = Release(env.namespace.clone());
    import_version(&env, &uri, "v1", Some(json!({"MLOPS_FAULT_ERROR_RATE": "1.0"}))).await;
    // A short header timeout, set as any user would, for the slow client below.
    let runtime =
        json!({"preset": "MlopsRuntime", "env": [{"name": "MLOPS_HEADER_TIMEOUT_SECONDS", "value": "2"}]});
    let out = apply(&env, &inference_service("web", json!({"replicas": 1, "runtime": runtime})));
    assert!(out.status.success(), "{}", output_text(&out));
    wait_serving(&env, "web", "v1").await;

    let deployments: Api<Deployment> = env.api();
    for d in deployments.list(&ListParams::default().labels("mlops.dev/inference-service=web")).await.unwrap()
    {
        let pod = d.spec.unwrap().template.spec.unwrap();
        let env_names: Vec<String> =
            pod.containers.iter().flat_map(|c| c.env.iter().flatten()).map(|e| e.name.clone()).collect();
        assert!(
            !env_names.iter().any(|n| n.starts_with("MLOPS_FAULT_")),
            "fault env reached {}: {env_names:?}",
            d.metadata.name.unwrap_or_default()
        );
    }
    let addr = service_address(&env, "web").await;
    let body = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[5.9,3.0,5.1,1.8]}]}"#;
    // The Service answers once kube-proxy has its endpoints.
    let post = || testkit::http_post(addr, "/v2/models/iris/infer", body);
    wait_until(Duration::from_secs(30), "the Service to answer", || async { post() }).await;
    for _ in 0..20 {
        let (code, text) = post().expect("the service answers");
        assert_eq!(code, 200, "{text}");
    }

    // A client that trickles its headers is cut off by the serving pod, not held for ever.
    let slow = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let start = std::time::Instant::now();
        for byte in b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if s.write_all(&[*byte]).is_err() {
                return start.elapsed();
            }
            let mut buf = [0u8; 256];
            match s.read(&mut buf) {
                Ok(0) => return start.elapsed(),
                Ok(_) => return start.elapsed(),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return start.elapsed(),
            }
        }
        panic!("still connected after {:?} of trickled headers", start.elapsed());
    });
    let cut = slow.await.unwrap();
    assert!(cut < Duration::from_secs(10), "the slow client was held {cut:?}");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn retention_bounds_the_versions_a_job_keeps_and_its_traces_go_with_it() {
    let env = TestEnv::start("tenant-retention").await;
    install_crds();
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    let retention = json!({"modelVersion": {"retention": {"keepLast": 1}}});
    let out = apply(&env, &training_job("often", &env.namespace, retention));
    assert!(out.status.success(), "{}", output_text(&out));
    let tjs: Api<TrainingJob> = env.api();
    let mvs: Api<ModelVersion> = env.api();
    // Three runs, as a frequent schedule would start them.
    for run in 1..=3 {
        let name = format!("often-r{run}");
        wait_for(&tjs, "often", TRAINING, &format!("{name} to succeed"), |tj| {
            tj.status
                .as_ref()
                .is_some_and(|s| s.runs.iter().any(|r| r.name == name && r.outcome == RunOutcome::Succeeded))
        })
        .await;
        if run < 3 {
            env.merge_patch(
                "trainingjob",
                "often",
                &json!({"metadata": {"annotations": {ANNOTATION_RETRY: format!("again-{run}")}}}),
            );
        }
    }
    // Only the newest stays: nothing serves or holds the older ones.
    let left = wait_until(Duration::from_secs(30), "retention to delete the older versions", || async {
        let names: Vec<String> =
            mvs.list(&ListParams::default()).await.ok()?.items.iter().map(|m| m.name_any()).collect();
        (names == ["often-r3"]).then_some(names)
    })
    .await;
    assert_eq!(left, ["often-r3"]);
    let jobs: Api<Job> = env.api();
    let job = jobs.get("often-r3").await.unwrap();
    assert_eq!(
        job.spec.unwrap().ttl_seconds_after_finished,
        Some(DEFAULT_TTL_SECONDS_AFTER_FINISHED),
        "a default TTL"
    );

    // Deleted, the job leaves no series on the operator's /metrics.
    let series = "training_job=\"often\"";
    assert!(op.metrics().unwrap().contains(series), "the job's series exist while it does");
    let out = env.kubectl(&["delete", "trainingjob", "often", "--wait=true"], None);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_until(Duration::from_secs(30), "the deleted job's series to go", || async {
        (!op.metrics()?.contains(series)).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_service_deploys_only_versions_that_pass_its_own_gates() {
    let env = TestEnv::start("tenant-gates").await;
    install_crds();
    let uri = testkit::train_iris(&env.namespace);
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let _release = Release(env.namespace.clone());
    // A version with no gates of its own is Validated at once (accuracy 0.97)...
    import_version(&env, &uri, "weak", None).await;
    // ...but this service asks for more.
    let gates = json!([{"metric": "accuracy", "op": ">=", "value": 0.99}]);
    let out = apply(&env, &inference_service("strict", json!({"replicas": 1, "gates": gates})));
    assert!(out.status.success(), "{}", output_text(&out));
    let isvcs: Api<InferenceService> = env.api();
    let refused = wait_for(&isvcs, "strict", Duration::from_secs(30), "the weak version passed over", |i| {
        i.status
            .as_ref()
            .and_then(|s| cond::find(&s.conditions, cond::READY))
            .is_some_and(|c| c.message.contains("passed over"))
    })
    .await;
    let ready = cond::find(&refused.status.as_ref().unwrap().conditions, cond::READY).unwrap().clone();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("weak") && ready.message.contains("accuracy"), "{}", ready.message);
    let deployments: Api<Deployment> = env.api();
    let listed =
        deployments.list(&ListParams::default().labels("mlops.dev/inference-service=strict")).await.unwrap();
    assert!(listed.items.is_empty(), "a version failing the service's gates was deployed");

    // A version that passes them is served.
    inference_harness::apply(
        &env,
        &json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "strong"},
                "spec": {"model": "iris", "artifact": {"uri": uri, "format": "mlops-runtime-json/v1"},
                         "metrics": {"accuracy": 0.995}}}),
    );
    wait_condition(&env.api::<ModelVersion>(), "strong", cond::VALIDATED, "True", Duration::from_secs(30))
        .await;
    wait_for(&isvcs, "strict", SERVING, "strong serving", |i| {
        i.status.as_ref().and_then(|s| s.stable.as_ref()).is_some_and(|s| s.version == "strong")
    })
    .await;
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_pod_that_copies_a_runs_label_cannot_forge_its_result() {
    let env = TestEnv::start("tenant-forge").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    // The real trainer trains nothing and writes no result, slowly.
    let trainer =
        json!({"image": "python:3.11", "command": ["python3", "-c", "import time; time.sleep(20)"]});
    let out = apply(&env, &training_job("forge", &env.namespace, json!({"trainer": trainer})));
    assert!(out.status.success(), "{}", output_text(&out));
    let jobs: Api<Job> = env.api();
    wait_until(Duration::from_secs(30), "the run's Job", || async { jobs.get_opt("forge-r1").await.ok()? })
        .await;
    // Anyone who may create pods can copy the run's labels and leave a glowing result.
    let result =
        r#"{"version":1,"metrics":{"accuracy":0.999},"artifact":{"uri":"pvc://work/forged/model.json"}}"#;
    let forged = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a-forged", "labels": {"batch.kubernetes.io/job-name": "forge-r1", "job-name": "forge-r1"}},
        "spec": {"restartPolicy": "Never",
                 "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "trainer", "image": "python:3.11",
                                 "command": ["python3", "-c", format!("open('/dev/termination-log','w').write({result:?})")],
                                 "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}});
    let out = apply(&env, &forged);
    assert!(out.status.success(), "{}", output_text(&out));
    let pods: Api<Pod> = env.api();
    wait_for(&pods, "a-forged", Duration::from_secs(60), "the forged pod to finish", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    })
    .await;

    let tjs: Api<TrainingJob> = env.api();
    let tj = wait_for(&tjs, "forge", TRAINING, "the run to finish", |tj| {
        tj.status
            .as_ref()
            .is_some_and(|s| s.runs.iter().any(|r| r.name == "forge-r1" && r.outcome.is_finished()))
    })
    .await;
    let run = tj.status.unwrap().runs.into_iter().find(|r| r.name == "forge-r1").unwrap();
    assert_ne!(run.outcome, RunOutcome::Succeeded, "the forged result was taken: {run:?}");
    let mvs: Api<ModelVersion> = env.api();
    assert!(mvs.get_opt("forge-r1").await.unwrap().is_none(), "a version was made from the forged result");
}
