//! The pod policy and what status may say (issue 14, findings 3 and 4), on the local node:
//! a trainer template asking for host access gets no Job unless the operator allows the
//! namespace `privileged`; a root trainer runs where the namespace is allowed `baseline`
//! and is refused where it is `restricted`; a trainer's output, and a Secret it printed,
//! reach neither the TrainingJob's status nor any Event.

use std::time::Duration;

use k8s_openapi::api::{batch::v1::Job, core::v1::Secret, events::v1::Event};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use mlops_operator::api::{ModelVersion, TrainingJob, conditions as cond};
use serde_json::json;
use testkit::{Operator, TestEnv, install_crds, output_text, unique_name, wait_condition, wait_for};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");
const TRAINING: Duration = Duration::from_secs(120);
const CONTROLLER: &str = "trainingjob";
const QUIET: Duration = Duration::from_secs(3);
const IDLE: Duration = Duration::from_secs(30);
const REASON: &str = "PodPolicyViolation";

fn training_job(name: &str, ns: &str, trainer: serde_json::Value) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": "iris",
            "dataset": {"uri": testkit::work_iris(ns), "labelColumn": "species"},
            "trainer": trainer,
            "output": {"uri": "pvc://work/models"},
            "backoffLimit": 0,
        }
    }))
    .unwrap()
}

fn apply(env: &TestEnv, doc: &str) {
    let out = env.kubectl(&["apply", "-f", "-"], Some(doc));
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
}

/// Finding 3's template: beside the trainer, a privileged root sidecar adding SYS_ADMIN
/// with the node's `/` mounted, in the host's network and PID namespaces.
fn host_takeover() -> serde_json::Value {
    json!({
        "image": "python:3.11", "command": ["python3", "-c", "print('trained')"],
        "template": {"spec": {
            "hostNetwork": true, "hostPID": true,
            "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
            "containers": [
                {"name": "trainer"},
                {"name": "helper", "image": "python:3.11", "command": ["true"],
                 "volumeMounts": [{"name": "host", "mountPath": "/host"}],
                 "securityContext": {"privileged": true, "runAsUser": 0,
                                     "capabilities": {"add": ["SYS_ADMIN"]}}},
            ],
        }},
    })
}

/// The Stalled condition once it carries `reason`.
async fn stalled_with(tjs: &Api<TrainingJob>, name: &str, reason: &str) -> cond::Condition {
    let tj = wait_for(tjs, name, Duration::from_secs(60), &format!("Stalled=True ({reason})"), |tj| {
        tj.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == cond::STALLED && c.status == "True" && c.reason == reason)
        })
    })
    .await;
    tj.status.unwrap().conditions.into_iter().find(|c| c.type_ == cond::STALLED).unwrap()
}

async fn events(env: &TestEnv) -> Vec<Event> {
    env.api::<Event>().list(&ListParams::default()).await.expect("listing Events").items
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_template_with_host_access_gets_no_job_and_its_status_names_the_fields() {
    let env = TestEnv::start("policy-host").await;
    install_crds();
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    apply(&env, &training_job("host", &env.namespace, host_takeover()));

    let tjs: Api<TrainingJob> = env.api();
    let stalled = stalled_with(&tjs, "host", REASON).await;
    let sidecar = "spec.trainer.template.spec.containers[1].securityContext";
    let fields = [
        "spec.trainer.template.spec.hostNetwork: true".to_string(),
        "spec.trainer.template.spec.hostPID: true".into(),
        "spec.trainer.template.spec.volumes[0].hostPath.path: /".into(),
        format!("{sidecar}.privileged: true"),
        format!("{sidecar}.capabilities.add[0]: SYS_ADMIN"),
        format!("{sidecar}.runAsUser: 0"),
    ];
    for field in &fields {
        assert!(stalled.message.contains(field.as_str()), "{field} in {}", stalled.message);
    }
    let policy = format!("not allowed by the restricted pod policy of namespace {}", env.namespace);
    assert!(stalled.message.ends_with(&policy), "{}", stalled.message);
    let event = env.wait_event(REASON, &fields[3], Duration::from_secs(30)).await;
    for field in &fields {
        assert!(event.note.as_deref().unwrap_or("").contains(field.as_str()), "{field} in {event:?}");
    }

    // Over a bounded observation the operator has passed over it (a resync forced by a
    // change of its annotations, then nothing more to do): still no Job, one Event.
    op.wait_idle(CONTROLLER, QUIET, IDLE).await;
    let started = op.reconciles_started(CONTROLLER).expect("the operator's metrics");
    env.poke("trainingjob/host");
    op.wait_pass(CONTROLLER, started, "the poke", IDLE).await;
    op.wait_idle(CONTROLLER, QUIET, IDLE).await;
    let jobs = env.api::<Job>().list(&ListParams::default()).await.unwrap().items;
    assert!(
        jobs.is_empty(),
        "no Job may carry the template: {:?}",
        jobs.iter().map(|j| &j.metadata.name).collect::<Vec<_>>()
    );
    let tj = tjs.get("host").await.unwrap();
    assert!(tj.status.as_ref().unwrap().runs.is_empty(), "no run was recorded");
    assert_eq!(
        events(&env).await.iter().filter(|e| e.reason.as_deref() == Some(REASON)).count(),
        1,
        "no retry storm"
    );
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_namespace_allowed_privileged_gets_the_job_as_its_template_says() {
    // The namespace's own admission stays `restricted`: the Job is created, its pods are
    // refused by the API server, and nothing privileged runs on the shared node.
    let env = TestEnv::start("policy-privileged").await;
    install_crds();
    let allowed = format!("{}=privileged", env.namespace);
    let _op = Operator::start(OPERATOR, &env.namespace, &["--pod-security-level", &allowed]);
    apply(&env, &training_job("host", &env.namespace, host_takeover()));

    let jobs: Api<Job> = env.api();
    let job = wait_for(&jobs, "host-r1", Duration::from_secs(60), "the run's Job", |_| true).await;
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!((pod.host_network, pod.host_pid), (Some(true), Some(true)));
    assert_eq!(pod.volumes.as_ref().unwrap()[0].host_path.as_ref().unwrap().path, "/");
    let helper = pod.containers[1].security_context.clone().unwrap();
    // No default beside `privileged: true` that the API server would refuse the Job for.
    assert_eq!((helper.privileged, helper.allow_privilege_escalation), (Some(true), None));
    let tj = env.api::<TrainingJob>().get("host").await.unwrap();
    assert!(
        tj.status.unwrap().conditions.iter().all(|c| c.reason != REASON),
        "a privileged namespace refuses nothing"
    );
    env.wait_event("FailedCreate", "violates PodSecurity", Duration::from_secs(60)).await;
}

/// A trainer reporting the user it ran as (`metrics.uid`).
fn whoami(template: serde_json::Value) -> serde_json::Value {
    let script = r#"
import json, os
result = {"version": 1, "metrics": {"uid": os.getuid()},
          "artifact": {"uri": os.environ["MLOPS_OUTPUT_URI"] + "/model.json"}}
open(os.environ["MLOPS_TERMINATION_MESSAGE_PATH"], "w").write(json.dumps(result))
"#;
    json!({"image": "python:3.11", "command": ["python3", "-c", script], "template": template})
}

/// The ways a pod asks for root: both fields on the pod, the image's own (root) user, the
/// trainer container alone.
fn root_trainers() -> [(&'static str, serde_json::Value); 3] {
    [
        (
            "root-both",
            json!({"spec": {"securityContext": {"runAsNonRoot": false, "runAsUser": 0},
                                      "containers": [{"name": "trainer"}]}}),
        ),
        (
            "root-image",
            json!({"spec": {"securityContext": {"runAsNonRoot": false},
                                       "containers": [{"name": "trainer"}]}}),
        ),
        (
            "root-container",
            json!({"spec": {"containers": [
            {"name": "trainer", "securityContext": {"runAsUser": 0}}]}}),
        ),
    ]
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_root_trainer_runs_as_root_where_the_namespace_is_allowed_baseline() {
    let env = TestEnv::start_with_pod_security("policy-root", "baseline").await;
    install_crds();
    let allowed = format!("{}=baseline", env.namespace);
    let _op = Operator::start(OPERATOR, &env.namespace, &["--pod-security-level", &allowed]);
    for (name, template) in root_trainers() {
        apply(&env, &training_job(name, &env.namespace, whoami(template)));
    }
    let tjs: Api<TrainingJob> = env.api();
    let mvs: Api<ModelVersion> = env.api();
    for (name, _) in root_trainers() {
        wait_condition(&tjs, name, cond::SUCCEEDED, "True", TRAINING).await;
        let mv = mvs.get(&format!("{name}-r1")).await.unwrap();
        assert_eq!(mv.spec.metrics["uid"], 0.0, "{name} ran as root");
    }
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_root_trainer_is_refused_in_a_restricted_namespace() {
    let env = TestEnv::start("policy-root-refused").await;
    install_crds();
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    let [(name, template), ..] = root_trainers();
    apply(&env, &training_job(name, &env.namespace, whoami(template)));
    let stalled = stalled_with(&env.api(), name, REASON).await;
    assert_eq!(
        stalled.message,
        format!(
            "spec.trainer.template.spec.securityContext.runAsNonRoot: false; \
             spec.trainer.template.spec.securityContext.runAsUser: 0 are not allowed by the \
             restricted pod policy of namespace {}",
            env.namespace
        )
    );
    op.wait_idle(CONTROLLER, QUIET, IDLE).await;
    assert!(env.api::<Job>().list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_failed_trainer_leaves_its_output_and_secrets_out_of_status_and_events() {
    let env = TestEnv::start("policy-secret").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let token = unique_name("s3cr3t-token");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "trainer-token"}, "stringData": {"token": token}
    }))
    .unwrap();
    env.api::<Secret>().create(&PostParams::default(), &secret).await.expect("creating the Secret");

    // Both print the Secret on stdout and stderr and fail; one says why in its
    // termination message.
    let leak = r#"
import os, sys
token = os.environ["TOKEN"]
print("connecting with", token); print("auth failed for", token, file=sys.stderr)
if os.environ.get("EXPLAIN"):
    open(os.environ["MLOPS_TERMINATION_MESSAGE_PATH"], "w").write("cannot read the dataset: permission denied")
    sys.exit(3)
sys.exit(1)
"#;
    let from_secret =
        json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "trainer-token", "key": "token"}}});
    for (name, explain) in [("silent", None), ("explains", Some("1"))] {
        let mut env_vars = vec![from_secret.clone()];
        if let Some(v) = explain {
            env_vars.push(json!({"name": "EXPLAIN", "value": v}));
        }
        let trainer = json!({"image": "python:3.11", "command": ["python3", "-c", leak], "env": env_vars});
        apply(&env, &training_job(name, &env.namespace, trainer));
    }

    let tjs: Api<TrainingJob> = env.api();
    let silent = wait_condition(&tjs, "silent", cond::FAILED, "True", TRAINING).await;
    let explains = wait_condition(&tjs, "explains", cond::FAILED, "True", TRAINING).await;
    let run = &silent.status.as_ref().unwrap().runs[0];
    assert_eq!(run.exit_code, Some(1));
    assert_eq!(
        run.message.as_deref(),
        Some(format!(
            "trainer exited 1 without a termination message; its output: kubectl logs job/silent-r1 -n {}",
            env.namespace
        ))
        .as_deref()
    );
    let run = &explains.status.as_ref().unwrap().runs[0];
    assert_eq!(run.message.as_deref(), Some("trainer exited 3: cannot read the dataset: permission denied"));
    env.wait_event("RunFailed", "silent-r1", Duration::from_secs(30)).await;
    env.wait_event("RunFailed", "explains-r1", Duration::from_secs(30)).await;

    // The trainer did print it (so its absence below means something), where the hint says.
    let logs = env.kubectl(&["logs", "job/silent-r1"], None);
    assert!(output_text(&logs).contains(&token), "the trainer's output: {}", output_text(&logs));
    for tj in [tjs.get("silent").await.unwrap(), tjs.get("explains").await.unwrap()] {
        let text = serde_json::to_string(&tj).unwrap();
        assert!(!text.contains(&token), "the Secret is in {}: {text}", tj.metadata.name.unwrap_or_default());
    }
    for event in events(&env).await {
        let text = serde_json::to_string(&event).unwrap();
        assert!(!text.contains(&token), "the Secret is in an Event: {text}");
    }
}
