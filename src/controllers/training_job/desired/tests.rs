use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};

use super::*;
use crate::{
    api::{
        common::LocalRef,
        training_job::{DataAction, DataCheck, OutlierCheck, TriggerType},
    },
    controllers::pod_security::{
        self,
        policy::{Level, restricted_violations},
    },
};

/// A TrainingJob as the API server returns it, with `spec` merged over a minimal one.
fn tj(spec: Value) -> TrainingJob {
    let mut base = json!({"model": "iris", "dataset": {"uri": "file:///data/iris.csv"},
                          "trainer": {"image": "trainer:1"}, "output": {"uri": "file:///out/"}});
    for (k, v) in spec.as_object().unwrap() {
        base[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u1", "generation": 2},
        "spec": base,
    }))
    .unwrap()
}

fn run() -> RunRef {
    RunRef {
        name: run_name("iris", 3),
        number: 3,
        generation: 2,
        trigger: RunTrigger { type_: TriggerType::Manual, ..RunTrigger::default() },
    }
}

fn pod_spec(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn trainer(job: &Job) -> &Container {
    pod_spec(job).containers.iter().find(|c| c.name == TRAINER_CONTAINER).unwrap()
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref().unwrap().iter().find(|e| e.name == name)
}

fn value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    env(c, name).and_then(|e| e.value.as_deref())
}

#[test]
fn a_single_worker_run_is_a_plain_job_owned_by_its_training_job() {
    let tj = tj(json!({"hyperparameters": {"algorithm": "linear"}}));
    let job = desired_job(&tj, &run()).unwrap();
    assert_eq!(job.metadata.name.as_deref(), Some("iris-r3"));
    assert_eq!(job.metadata.namespace.as_deref(), Some("ml"));
    assert_eq!(job.metadata.labels.as_ref(), Some(&run_labels(&tj, "iris-r3")));
    let labels = job.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels[api::LABEL_RUN], "iris-r3");
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("TrainingJob", "u1", Some(true))
    );
    let annotations = job.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[ANNOTATION_GENERATION], "2");
    let recipe: RunRecipe = serde_json::from_str(&annotations[ANNOTATION_RUN_RECIPE]).unwrap();
    assert_eq!(recipe, super::recipe(&tj, &run()));
    assert_eq!(recipe.image.as_deref(), Some("trainer:1"));
    assert_eq!(recipe.trigger.type_, TriggerType::Manual);

    let spec = job.spec.as_ref().unwrap();
    assert_eq!((spec.completions, spec.parallelism), (Some(1), Some(1)));
    assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
    assert_eq!(spec.backoff_limit, Some(api::training_job::DEFAULT_BACKOFF_LIMIT));
    assert_eq!(
        (spec.suspend, spec.active_deadline_seconds, spec.ttl_seconds_after_finished),
        (Some(false), None, Some(api::training_job::DEFAULT_TTL_SECONDS_AFTER_FINISHED)),
    );
    assert_eq!(pod_spec(&job).restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod_spec(&job).subdomain, None);
    let c = trainer(&job);
    assert_eq!(c.image.as_deref(), Some("trainer:1"));
    assert_eq!(c.termination_message_policy.as_deref(), Some("File"), "never the logs");
    assert_eq!(pod_spec(&job).automount_service_account_token, Some(false));
    assert!(desired_service(&tj, &run()).is_none());
}

#[test]
fn the_contract_environment_is_set_and_wins_over_the_users() {
    let tj = tj(json!({
        "hyperparameters": {"algorithm": "linear", "epochs": "5"},
        "dataset": {"uri": "s3://data/iris.csv", "digest": "sha256:abc", "labelColumn": "species",
                    "validation": {"missing": {"action": "Drop"}}},
        "trainer": {"image": "trainer:1", "env": [{"name": "MLOPS_RUN_ID", "value": "mine"},
                                                  {"name": "FOO", "value": "bar"}]},
    }));
    let job = desired_job(&tj, &run()).unwrap();
    let c = trainer(&job);
    assert_eq!(value(c, "MLOPS_MODEL_NAME"), Some("iris"));
    assert_eq!(value(c, "MLOPS_RUN_ID"), Some("iris-r3"));
    assert_eq!(c.env.as_ref().unwrap().iter().filter(|e| e.name == "MLOPS_RUN_ID").count(), 1);
    assert_eq!(value(c, "FOO"), Some("bar"));
    assert_eq!(value(c, "MLOPS_DATASET_URI"), Some("s3://data/iris.csv"));
    // The output of a run is its own folder under spec.output.uri.
    assert_eq!(value(c, "MLOPS_OUTPUT_URI"), Some("file:///out/iris-r3"));
    assert_eq!(value(c, "MLOPS_DATASET_DIGEST"), Some("sha256:abc"));
    assert_eq!(value(c, "MLOPS_LABEL_COLUMN"), Some("species"));
    assert_eq!(value(c, "MLOPS_SPLIT"), Some(split_json(None).as_str()));
    assert_eq!(value(c, "MLOPS_VALIDATION"), Some(r#"{"missing":{"action":"drop"}}"#));
    let hp: Value = serde_json::from_str(value(c, "MLOPS_HYPERPARAMETERS").unwrap()).unwrap();
    assert_eq!(hp, json!({"algorithm": "linear", "epochs": "5"}));
    for absent in ["MLOPS_WORKERS", "WORLD_SIZE", "RANK", "MASTER_ADDR", "AWS_ACCESS_KEY_ID"] {
        assert!(env(c, absent).is_none(), "{absent}");
    }
}

#[test]
fn split_and_validation_are_json_in_contract_names() {
    let split: Value = serde_json::from_str(&split_json(None)).unwrap();
    assert_eq!(split, json!({"train": 0.7, "validation": 0.15, "test": 0.15, "seed": 42}));
    let custom = Split { train: 0.8, validation: 0.1, test: 0.1, seed: None };
    let split: Value = serde_json::from_str(&split_json(Some(&custom))).unwrap();
    assert_eq!(split, json!({"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 42}));

    let v = DataValidation {
        missing: Some(DataCheck { action: DataAction::Drop, max_fraction: Some(0.1) }),
        duplicates: Some(DataCheck { action: DataAction::Keep, max_fraction: None }),
        outliers: Some(OutlierCheck {
            action: DataAction::Fail,
            method: Some(OutlierMethod::Iqr),
            threshold: Some(1.5),
            max_fraction: Some(0.05),
        }),
    };
    let v: Value = serde_json::from_str(&validation_json(&v)).unwrap();
    assert_eq!(
        v,
        json!({
            "missing": {"action": "drop", "maxFraction": 0.1},
            "duplicates": {"action": "keep"},
            "outliers": {"action": "fail", "method": "iqr", "threshold": 1.5, "maxFraction": 0.05},
        })
    );
    let only_outliers = DataValidation {
        outliers: Some(OutlierCheck { action: DataAction::Drop, ..OutlierCheck::default() }),
        ..DataValidation::default()
    };
    assert_eq!(validation_json(&only_outliers), r#"{"outliers":{"action":"drop","method":"zscore"}}"#);
}

fn mount_paths(c: &Container) -> Vec<&str> {
    c.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect()
}

#[test]
fn a_root_trainer_image_runs_restricted_as_an_unprivileged_user_on_a_read_only_root() {
    let tj = tj(json!({"trainer": {"image": "python:3.11", "command": ["python", "train.py"]}}));
    let job = desired_job(&tj, &run()).unwrap();
    let pod = pod_spec(&job);
    assert_eq!(restricted_violations(pod), Vec::<String>::new());
    let sc = pod.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.run_as_non_root, sc.run_as_user, sc.run_as_group, sc.fs_group),
        (Some(true), Some(65532), Some(65532), Some(65532))
    );
    let c = trainer(&job);
    assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    assert_eq!(mount_paths(c), [pod_security::TMP_DIR, pod_security::HOME_DIR]);
    assert_eq!(value(c, "HOME"), Some(pod_security::HOME_DIR));
    // The result goes to the file the kubelet reads, which it mounts writable.
    assert_eq!(c.termination_message_path, None);
    assert_eq!(value(c, "MLOPS_TERMINATION_MESSAGE_PATH"), Some("/dev/termination-log"));
}

#[test]
fn distributed_and_templated_pods_run_restricted_init_containers_included() {
    let tj = tj(json!({
        "workers": 4,
        "dataset": {"uri": "pvc://data/iris.csv"}, "output": {"uri": "pvc://models/iris"},
        "trainer": {"image": "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime", "template": {"spec": {
            "initContainers": [{"name": "fetch-code", "image": "alpine/git"}],
            "containers": [{"name": "trainer"}, {"name": "log-shipper", "image": "fluent-bit:3"}],
            "volumes": [{"name": "code", "emptyDir": {}}],
        }}},
    }));
    let job = desired_job(&tj, &run()).unwrap();
    assert_eq!(job.spec.as_ref().unwrap().completion_mode.as_deref(), Some("Indexed"));
    assert_eq!(restricted_violations(pod_spec(&job)), Vec::<String>::new());
    // Only the trainer, which the operator defines, gets the read-only root and scratch.
    let shipper = &pod_spec(&job).containers[1];
    assert_eq!(shipper.security_context.as_ref().unwrap().read_only_root_filesystem, None);
    assert_eq!(shipper.volume_mounts, None);
}

#[test]
fn what_the_template_sets_is_kept_field_by_field() {
    let tj = tj(json!({"trainer": {
        "env": [{"name": "HOME", "value": "/workspace"}],
        "template": {"spec": {
            "securityContext": {"runAsUser": 1000},
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}],
            "containers": [{"name": "trainer", "image": "t:2",
                            "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
                            "securityContext": {"readOnlyRootFilesystem": false, "runAsUser": 1001}}],
        }},
    }}));
    let job = desired_job(&tj, &run()).unwrap();
    let pod = pod_spec(&job);
    let sc = pod.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(1000), "the template's user");
    assert_eq!((sc.run_as_group, sc.fs_group), (Some(65532), Some(65532)), "what it left unset");
    let c = trainer(&job);
    let csc = c.security_context.as_ref().unwrap();
    assert_eq!((csc.run_as_user, csc.read_only_root_filesystem), (Some(1001), Some(false)));
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    // Its own /tmp, once (a duplicate mountPath is a kubelet error), and its own HOME.
    assert_eq!(mount_paths(c), ["/tmp"]);
    assert_eq!(value(c, "HOME"), Some("/workspace"));
    let volumes: Vec<&str> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(volumes, ["scratch"]);
    assert_eq!(c.image.as_deref(), Some("t:2"), "the template's image when trainer.image is unset");
    assert_eq!(restricted_violations(pod), Vec::<String>::new());

    // A template asking for more than restricted keeps it; the pod policy decides.
    let privileged = tj_with_trainer_security(json!({"privileged": true}));
    let job = desired_job(&privileged, &run()).unwrap();
    assert_eq!(
        restricted_violations(pod_spec(&job)),
        [
            "spec.containers[0].securityContext.privileged: true",
            "spec.containers[0].securityContext.allowPrivilegeEscalation: unset (must be false)"
        ]
    );
}

#[test]
fn the_trainers_termination_message_is_never_its_logs() {
    // A user's FallbackToLogsOnError would put its logs in status: the trainer's is File.
    let fallback = tj(json!({"trainer": {"image": "t:1", "template": {"spec": {"containers": [
        {"name": "trainer", "terminationMessagePolicy": "FallbackToLogsOnError"}]}}}}));
    let job = desired_job(&fallback, &run()).unwrap();
    assert_eq!(trainer(&job).termination_message_policy.as_deref(), Some("File"));
}

/// The template of finding 3: a privileged root sidecar with SYS_ADMIN, the host's `/`,
/// host network and PIDs.
fn host_takeover() -> TrainingJob {
    tj(json!({"trainer": {"image": "t:1", "template": {"spec": {
        "hostNetwork": true, "hostPID": true,
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [
            {"name": "trainer"},
            {"name": "helper", "image": "busybox",
             "volumeMounts": [{"name": "host", "mountPath": "/host"}],
             "securityContext": {"privileged": true, "runAsUser": 0,
                                 "capabilities": {"add": ["SYS_ADMIN"]}}},
        ],
    }}}}))
}

#[test]
fn the_pod_policy_names_each_field_of_the_template_it_refuses() {
    let refusal = pod_policy_refusal(&host_takeover(), Level::Restricted).unwrap();
    let sidecar = "spec.trainer.template.spec.containers[1].securityContext";
    for field in [
        "spec.trainer.template.spec.hostNetwork: true".to_string(),
        "spec.trainer.template.spec.hostPID: true".into(),
        "spec.trainer.template.spec.volumes[0].hostPath.path: /".into(),
        format!("{sidecar}.privileged: true"),
        format!("{sidecar}.capabilities.add[0]: SYS_ADMIN"),
        format!("{sidecar}.runAsUser: 0"),
    ] {
        assert!(refusal.contains(&field), "{field} in {refusal}");
    }
    assert!(refusal.ends_with("are not allowed by the restricted pod policy of namespace ml"), "{refusal}");
    assert!(!refusal.contains("containers[0]"), "the trainer itself is fine: {refusal}");

    // Baseline allows root but none of the host access.
    let baseline = pod_policy_refusal(&host_takeover(), Level::Baseline).unwrap();
    assert!(!baseline.contains("runAsUser") && baseline.contains("privileged: true"), "{baseline}");
    // Privileged allows it all, and the Job is what the template says (no default the API
    // server would refuse beside `privileged`).
    assert_eq!(pod_policy_refusal(&host_takeover(), Level::Privileged), None);
    let job = desired_job(&host_takeover(), &run()).unwrap();
    let helper = &pod_spec(&job).containers[1];
    let sc = helper.security_context.as_ref().unwrap();
    assert_eq!((sc.privileged, sc.allow_privilege_escalation, sc.run_as_user), (Some(true), None, Some(0)));
    assert_eq!(pod_spec(&job).host_network, Some(true));

    // The operator's own pods pass every level.
    for level in [Level::Restricted, Level::Baseline] {
        let plain = tj(json!({"workers": 2, "dataset": {"uri": "pvc://data/iris.csv"}}));
        assert_eq!(pod_policy_refusal(&plain, level), None, "{level}");
    }
}

#[test]
fn a_root_trainer_runs_as_root_where_the_level_allows_it() {
    for security_context in [
        json!({"runAsNonRoot": false, "runAsUser": 0}),
        json!({"runAsNonRoot": false}),
        json!({"runAsUser": 0}),
    ] {
        let root = tj(json!({"trainer": {"image": "python:3.11", "template": {"spec": {
            "securityContext": security_context, "containers": [{"name": "trainer"}]}}}}));
        let job = desired_job(&root, &run()).unwrap();
        let sc = pod_spec(&job).security_context.clone().unwrap();
        assert_ne!(sc.run_as_non_root, Some(true), "{security_context}: never contradicted");
        assert_ne!(sc.run_as_user, Some(65532), "{security_context}: the image's user or root");
        assert_eq!(pod_policy_refusal(&root, Level::Baseline), None, "{security_context}");
        let refusal = pod_policy_refusal(&root, Level::Restricted).unwrap();
        assert!(refusal.starts_with("spec.trainer.template.spec.securityContext.run"), "{refusal}");
    }
}

fn tj_with_trainer_security(security_context: Value) -> TrainingJob {
    tj(json!({"trainer": {"image": "t:1", "template": {"spec": {"containers": [
        {"name": "trainer", "securityContext": security_context}]}}}}))
}

#[test]
fn the_termination_message_variable_follows_a_custom_path() {
    let tj = tj(json!({"trainer": {
        "image": "t:1",
        // The contract variable wins over the user's.
        "env": [{"name": "MLOPS_TERMINATION_MESSAGE_PATH", "value": "/elsewhere"}],
        "template": {"spec": {"containers": [{"name": "trainer", "terminationMessagePath": "/tmp/result"}]}},
    }}));
    let job = desired_job(&tj, &run()).unwrap();
    let c = trainer(&job);
    assert_eq!(c.termination_message_path.as_deref(), Some("/tmp/result"));
    assert_eq!(value(c, "MLOPS_TERMINATION_MESSAGE_PATH"), Some("/tmp/result"));
    assert_eq!(c.env.iter().flatten().filter(|e| e.name == "MLOPS_TERMINATION_MESSAGE_PATH").count(), 1);
}

#[test]
fn the_trainer_is_the_container_named_trainer_of_a_template() {
    let tj = tj(json!({"trainer": {"image": "t:3", "command": ["python"], "args": ["train.py"],
    "template": {"spec": {"containers": [
        {"name": "sidecar", "image": "s:1"},
        {"name": "trainer", "image": "old"},
    ]}}}}));
    let job = desired_job(&tj, &run()).unwrap();
    let c = trainer(&job);
    assert_eq!(c.image.as_deref(), Some("t:3"), "trainer.image wins");
    assert_eq!(
        (c.command.clone(), c.args.clone()),
        (Some(vec!["python".into()]), Some(vec!["train.py".into()]))
    );
    let sidecar = &pod_spec(&job).containers[0];
    assert_eq!((sidecar.image.as_deref(), sidecar.env.as_ref()), (Some("s:1"), None));
}

#[test]
fn job_settings_of_the_spec_are_honoured() {
    let tj = tj(json!({"backoffLimit": 3, "activeDeadlineSeconds": 600,
                       "ttlSecondsAfterFinished": 60, "suspend": true}));
    let spec = desired_job(&tj, &run()).unwrap().spec.unwrap();
    assert_eq!(spec.backoff_limit, Some(3));
    assert_eq!(spec.active_deadline_seconds, Some(600));
    assert_eq!(spec.ttl_seconds_after_finished, Some(60));
    assert_eq!(spec.suspend, Some(true));
}

#[test]
fn several_workers_are_an_indexed_job_behind_a_headless_service() {
    let tj = tj(json!({"workers": 3}));
    let job = desired_job(&tj, &run()).unwrap();
    let spec = job.spec.as_ref().unwrap();
    assert_eq!((spec.completions, spec.parallelism), (Some(3), Some(3)));
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    let service = rendezvous_service_name("iris-r3");
    assert!(service.starts_with("iris-r3-"), "{service}");
    assert_eq!(pod_spec(&job).subdomain.as_deref(), Some(service.as_str()));
    let c = trainer(&job);
    assert_eq!(value(c, "MLOPS_WORKERS"), Some("3"));
    assert_eq!(value(c, "WORLD_SIZE"), Some("3"));
    assert_eq!(value(c, "MASTER_ADDR"), Some(format!("iris-r3-0.{service}").as_str()));
    assert_eq!(value(c, "MASTER_PORT"), Some("29500"));
    for rank in ["RANK", "MLOPS_RANK"] {
        let field = env(c, rank).and_then(|e| e.value_from.as_ref()?.field_ref.as_ref()).unwrap();
        assert_eq!(field.field_path, "metadata.annotations['batch.kubernetes.io/job-completion-index']");
    }

    let svc = desired_service(&tj, &run()).unwrap();
    assert_eq!(svc.metadata.name.as_deref(), Some(service.as_str()));
    assert_eq!(svc.metadata.owner_references.as_ref().unwrap()[0].uid, "u1");
    let s = svc.spec.unwrap();
    assert_eq!(s.cluster_ip.as_deref(), Some("None"));
    assert_eq!(s.publish_not_ready_addresses, Some(true));
    assert_eq!(s.selector.unwrap()[LABEL_JOB_NAME], "iris-r3");
    assert_eq!(s.ports.unwrap()[0].port, DEFAULT_MASTER_PORT);
}

/// A kubelet never finishes mounting a pod that has two volumes of one claim: data and
/// models on the same claim share one read-write volume, mounted twice.
#[test]
fn one_claim_for_data_and_models_is_one_volume_mounted_twice() {
    let tj = tj(json!({"dataset": {"uri": "pvc://work/iris.csv"}, "output": {"uri": "pvc://work/models"}}));
    let job = desired_job(&tj, &run()).unwrap();
    let claims: Vec<_> = pod_spec(&job)
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.persistent_volume_claim.as_ref()?.read_only)))
        .collect();
    assert_eq!(claims, [("dataset-pvc", Some(false))]);
    let mounts: Vec<_> = trainer(&job)
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name == "dataset-pvc")
        .map(|m| (m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(mounts, [("/mnt/mlops/dataset", Some(true)), ("/mnt/mlops/output", Some(false))]);
}

#[test]
fn pvc_uris_become_mounted_claims_and_local_paths() {
    let tj =
        tj(json!({"dataset": {"uri": "pvc://data/sets/iris.csv"}, "output": {"uri": "pvc://models/out"}}));
    let job = desired_job(&tj, &run()).unwrap();
    let volumes = pod_spec(&job).volumes.as_ref().unwrap();
    let claim = |name: &str| {
        let v = volumes.iter().find(|v| v.name == name).unwrap();
        let c = v.persistent_volume_claim.as_ref().unwrap();
        (c.claim_name.as_str(), c.read_only)
    };
    assert_eq!(claim("dataset-pvc"), ("data", Some(true)));
    assert_eq!(claim("output-pvc"), ("models", Some(false)));
    let c = trainer(&job);
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("dataset-pvc", "/mnt/mlops/dataset", Some(true)),
            ("output-pvc", "/mnt/mlops/output", Some(false)),
            ("mlops-tmp", "/tmp", None),
            ("mlops-home", "/home/mlops", None),
        ]
    );
    assert_eq!(value(c, "MLOPS_DATASET_URI"), Some("file:///mnt/mlops/dataset/sets/iris.csv"));
    assert_eq!(value(c, "MLOPS_OUTPUT_URI"), Some("file:///mnt/mlops/output/out/iris-r3"));

    // Other schemes pass through; a bare claim is its root.
    for uri in ["s3://b/k", "file:///x"] {
        assert_eq!(local_uri(uri, "dataset", true), (uri.to_string(), None));
    }
    assert_eq!(local_uri("pvc://c", "output", false).0, "file:///mnt/mlops/output/");
}

#[test]
fn s3_credentials_are_secret_references_never_values() {
    let secret_of = |c: &Container, name: &str| {
        let e = env(c, name).unwrap_or_else(|| panic!("{name} is set"));
        assert_eq!(e.value, None, "{name} must not be a literal");
        let r = e.value_from.as_ref().unwrap().secret_key_ref.clone().unwrap();
        (r.name, r.key, r.optional)
    };
    let tj2 = tj(json!({
        "dataset": {"uri": "s3://data/iris.csv", "credentialsSecretRef": {"name": "data-creds"}},
        "output": {"uri": "s3://models/", "credentialsSecretRef": {"name": "model-creds"}},
    }));
    let job = desired_job(&tj2, &run()).unwrap();
    let c = trainer(&job);
    assert_eq!(
        secret_of(c, "AWS_ACCESS_KEY_ID"),
        ("data-creds".into(), "AWS_ACCESS_KEY_ID".into(), Some(false))
    );
    assert_eq!(secret_of(c, "AWS_SECRET_ACCESS_KEY").2, Some(false));
    assert_eq!(secret_of(c, "AWS_REGION").2, Some(true));
    assert_eq!(secret_of(c, "AWS_ENDPOINT_URL").2, Some(true));
    assert_eq!(
        secret_of(c, "MLOPS_OUTPUT_AWS_SECRET_ACCESS_KEY"),
        ("model-creds".into(), "AWS_SECRET_ACCESS_KEY".into(), Some(false))
    );
    // Temporary credentials: the session token of each Secret, optional.
    assert_eq!(
        secret_of(c, "AWS_SESSION_TOKEN"),
        ("data-creds".into(), "AWS_SESSION_TOKEN".into(), Some(true))
    );
    assert_eq!(
        secret_of(c, "MLOPS_OUTPUT_AWS_SESSION_TOKEN"),
        ("model-creds".into(), "AWS_SESSION_TOKEN".into(), Some(true))
    );
    for e in c.env.iter().flatten().filter(|e| e.name.contains("AWS_")) {
        assert!(e.value.is_none(), "{} is a literal", e.name);
    }

    // One Secret for both, or only the output's: no second set.
    let mut tj1 = tj2.clone();
    tj1.spec.output.credentials_secret_ref = Some(LocalRef::new("data-creds"));
    let job = desired_job(&tj1, &run()).unwrap();
    assert!(env(trainer(&job), "MLOPS_OUTPUT_AWS_ACCESS_KEY_ID").is_none());
    tj1.spec.dataset.credentials_secret_ref = None;
    tj1.spec.output.credentials_secret_ref = Some(LocalRef::new("model-creds"));
    let job = desired_job(&tj1, &run()).unwrap();
    assert_eq!(secret_of(trainer(&job), "AWS_ACCESS_KEY_ID").0, "model-creds");
    assert!(env(trainer(&job), "MLOPS_OUTPUT_AWS_ACCESS_KEY_ID").is_none());
}

#[test]
fn spec_problems_the_schema_cannot_see_are_errors() {
    let mut long = tj(json!({}));
    long.metadata.name = Some("a".repeat(MAX_RUN_NAME - 7));
    assert_eq!(desired_job(&long, &run()), Err(SpecError::NameTooLong(MAX_RUN_NAME - 7)));
    long.metadata.name = Some("a".repeat(MAX_RUN_NAME - 8));
    assert!(desired_job(&long, &run()).is_ok());

    let no_container = tj(json!({"trainer": {"template": {"spec": {"containers": []}}}}));
    assert_eq!(desired_job(&no_container, &run()), Err(SpecError::NoTrainerContainer));
    let no_image = tj(json!({"trainer": {"template": {"spec": {"containers": [{"name": "trainer"}]}}}}));
    assert_eq!(desired_job(&no_image, &run()), Err(SpecError::NoImage));
}

#[test]
fn model_version_labels_must_be_kubernetes_labels() {
    let with = |labels: Value| desired_job(&tj(json!({"modelVersion": {"labels": labels}})), &run());
    assert!(with(json!({"team": "a", "example.com/tier": "gold_1.x", "A-b_c.d": "", "x": "Z9"})).is_ok());
    let bad = [
        (json!({"team a": "x"}), "key \"team a\""),
        (json!({"-team": "x"}), "key \"-team\""),
        (json!({"": "x"}), "key \"\""),
        (json!({"Example.com/tier": "x"}), "prefix before '/'"),
        (json!({"example..com/tier": "x"}), "prefix before '/'"),
        (json!({"example.com/": "x"}), "key \"example.com/\""),
        (json!({"a/b/c": "x"}), "key \"a/b/c\""),
        (json!({&"k".repeat(64): "x"}), "the name must be at most 63"),
        (json!({"team": "a b"}), "the value \"a b\" of \"team\""),
        (json!({"team": "gold-"}), "the value \"gold-\""),
    ];
    for (labels, words) in bad {
        let err = with(labels.clone()).unwrap_err();
        assert!(matches!(err, SpecError::InvalidLabel(_)), "{labels}: {err:?}");
        assert!(err.to_string().contains(words), "{labels}: {err}");
        assert!(err.to_string().starts_with("modelVersion.labels: "), "{err}");
    }
}

/// What the trainer reports as a path below a claim's mount is recorded as that claim's
/// `pvc://` URI, which serving pods can mount; other URIs are kept.
#[test]
fn artifact_paths_below_a_claim_mount_become_pvc_uris() {
    use crate::controllers::training_job::model_version::uri_outside_pod;
    let tj = tj(json!({"dataset": {"uri": "pvc://data/iris.csv"}, "output": {"uri": "pvc://models/iris"},
        "trainer": {"template": {"spec": {
            "containers": [{"name": "trainer", "image": "t:1", "volumeMounts": [
                {"name": "extra", "mountPath": "/mnt/mlops/output/deeper"},
                {"name": "sub", "mountPath": "/sub", "subPath": "team/a"}]}],
            "volumes": [{"name": "extra", "persistentVolumeClaim": {"claimName": "deep"}},
                        {"name": "sub", "persistentVolumeClaim": {"claimName": "shared"}}]}}}}));
    let job = desired_job(&tj, &run()).unwrap();
    let cases = [
        ("file:///mnt/mlops/output/iris/iris-r3/model.json", "pvc://models/iris/iris-r3/model.json"),
        ("file:///mnt/mlops/output/deeper/m.onnx", "pvc://deep/m.onnx"),
        ("file:///sub/m.json", "pvc://shared/team/a/m.json"),
        ("file:///mnt/mlops/outputx/m.json", "file:///mnt/mlops/outputx/m.json"),
        ("file:///tmp/m.json", "file:///tmp/m.json"),
        ("s3://b/k", "s3://b/k"),
    ];
    for (inside, outside) in cases {
        assert_eq!(uri_outside_pod(inside, &job), outside, "{inside}");
    }
}
