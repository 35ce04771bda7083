//! Desired children of a TrainingJob run, as pure functions: the `batch/v1` Job (Indexed
//! for `workers > 1`) and, for distributed runs, the headless Service the workers
//! rendezvous through. Everything the pod needs is in the environment contract of
//! DESIGN.md §3.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Container, EnvVar, EnvVarSource, ObjectFieldSelector, PersistentVolumeClaimVolumeSource,
            PodSecurityContext, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{
    self, Gate, TrainingJob,
    training_job::{DEFAULT_MASTER_PORT, DataValidation, OutlierMethod, RunTrigger, Source, Split},
};

/// Name of the trainer container (also the one looked up in a user's pod template).
pub const TRAINER_CONTAINER: &str = "trainer";
/// Annotation on a run's Job: the recipe the run was started with, so the ModelVersion it
/// produces records what really ran even if the TrainingJob changed since.
pub const ANNOTATION_RUN_RECIPE: &str = "mlops.dev/run-recipe";
/// Annotation on a run's Job: the TrainingJob generation it was started from.
pub const ANNOTATION_GENERATION: &str = "mlops.dev/generation";
/// Label the Job controller puts on the pods of a Job.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// Where `pvc://` volumes are mounted in training pods.
const PVC_MOUNT_ROOT: &str = "/mnt/mlops";
/// Longest run name: Job names become pod label values (63) with a suffix added.
pub const MAX_RUN_NAME: usize = 52;

/// The run being materialised.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRef {
    pub name: String,
    pub number: i64,
    pub generation: i64,
    pub trigger: RunTrigger,
}

/// What a run was started with; stored on its Job, read back into the ModelVersion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecipe {
    pub model: String,
    pub image: Option<String>,
    pub dataset_uri: String,
    #[serde(default)]
    pub hyperparameters: BTreeMap<String, String>,
    #[serde(default)]
    pub source: Option<Source>,
    #[serde(default)]
    pub gates: Vec<Gate>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub trigger: RunTrigger,
}

/// A spec problem only the controller can see (the schema caught everything else).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("trainer.template has no containers and no trainer.image is set")]
    NoTrainerContainer,
    #[error("trainer has no image: set trainer.image or an image in the template's container")]
    NoImage,
    #[error("the TrainingJob name is {0} characters; at most {MAX_RUN_NAME} - 8 fit in a run name")]
    NameTooLong(usize),
    /// The API server would refuse every produced ModelVersion: better stalled before
    /// training than failed after it.
    #[error("modelVersion.labels: {0}")]
    InvalidLabel(String),
}

/// `<trainingjob>-r<number>`: the run's id, Job name and ModelVersion name.
pub fn run_name(tj_name: &str, number: i64) -> String {
    format!("{tj_name}-r{number}")
}

/// Labels shared by every child of a TrainingJob run.
pub fn run_labels(tj: &TrainingJob, run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (api::LABEL_APP_NAME.into(), "mlops-trainer".into()),
        (api::LABEL_APP_INSTANCE.into(), tj.name_any()),
        (api::LABEL_APP_COMPONENT.into(), api::COMPONENT_TRAINER.into()),
        (api::LABEL_APP_MANAGED_BY.into(), api::MANAGED_BY.into()),
        (api::LABEL_APP_PART_OF.into(), api::PART_OF.into()),
        (api::LABEL_MODEL.into(), tj.spec.model.clone()),
        (api::LABEL_TRAINING_JOB.into(), tj.name_any()),
        (api::LABEL_RUN.into(), run.into()),
    ])
}

pub(super) fn owner(tj: &TrainingJob) -> OwnerReference {
    // A TrainingJob read from the API always has a name and uid.
    tj.controller_owner_ref(&()).expect("TrainingJob from the API server has metadata")
}

pub fn recipe(tj: &TrainingJob, run: &RunRef) -> RunRecipe {
    let template = tj.spec.model_version.clone().unwrap_or_default();
    RunRecipe {
        model: tj.spec.model.clone(),
        image: trainer_image(tj),
        dataset_uri: tj.spec.dataset.uri.clone(),
        hyperparameters: tj.spec.hyperparameters.clone(),
        source: tj.spec.source.clone(),
        gates: template.gates,
        labels: template.labels,
        trigger: run.trigger.clone(),
    }
}

fn trainer_image(tj: &TrainingJob) -> Option<String> {
    tj.spec.trainer.image.clone().or_else(|| {
        let spec = tj.spec.trainer.template.as_ref()?.spec.as_ref()?;
        let c = spec.containers.iter().find(|c| c.name == TRAINER_CONTAINER).or(spec.containers.first())?;
        c.image.clone()
    })
}

/// The Job of one run.
pub fn desired_job(tj: &TrainingJob, run: &RunRef) -> Result<Job, SpecError> {
    let name_len = tj.name_any().len();
    if name_len + 8 > MAX_RUN_NAME {
        return Err(SpecError::NameTooLong(name_len));
    }
    for (key, value) in tj.spec.model_version.iter().flat_map(|t| &t.labels) {
        check_label(key, value).map_err(SpecError::InvalidLabel)?;
    }
    let labels = run_labels(tj, &run.name);
    let workers = tj.spec.workers.max(1);
    let mut pod = pod_template(tj, run, &labels)?;
    if workers > 1 {
        // Indexed Job pods get the hostname `<job>-<index>`; with `subdomain` set to the
        // headless Service they resolve as `<job>-<index>.<service>`.
        if let Some(spec) = pod.spec.as_mut() {
            spec.subdomain = Some(run.name.clone());
        }
    }
    let recipe = serde_json::to_string(&recipe(tj, run)).unwrap_or_default();
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(run.name.clone()),
            namespace: tj.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_RUN_RECIPE.into(), recipe),
                (ANNOTATION_GENERATION.into(), run.generation.to_string()),
            ])),
            owner_references: Some(vec![owner(tj)]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(tj.spec.backoff_limit()),
            active_deadline_seconds: tj.spec.active_deadline_seconds,
            ttl_seconds_after_finished: tj.spec.ttl_seconds_after_finished,
            suspend: Some(tj.spec.suspend),
            completions: Some(workers),
            parallelism: Some(workers),
            completion_mode: Some(if workers > 1 { "Indexed" } else { "NonIndexed" }.into()),
            template: pod,
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// Kubernetes label syntax: the key an optional DNS subdomain prefix (at most 253) and `/`,
/// then a name; the name and the value (which may be empty) at most 63 of `A-Za-z0-9-_.`
/// starting and ending with a letter or digit.
fn check_label(key: &str, value: &str) -> Result<(), String> {
    let syntax = "at most 63 of A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit";
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(format!("key {key:?}: the prefix before '/' must be a lowercase DNS subdomain"));
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(format!("key {key:?}: the name must be {syntax}"));
    }
    if !value.is_empty() && !is_label_name(value) {
        return Err(format!("the value {value:?} of {key:?} must be empty or {syntax}"));
    }
    Ok(())
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    b.len() <= 63
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            b.first().is_some_and(edge)
                && b.last().is_some_and(edge)
                && b.iter().all(|c| edge(c) || *c == b'-')
        })
}

/// The headless Service a distributed run's workers find each other through.
pub fn desired_service(tj: &TrainingJob, run: &RunRef) -> Option<Service> {
    if tj.spec.workers <= 1 {
        return None;
    }
    let labels = run_labels(tj, &run.name);
    Some(Service {
        metadata: ObjectMeta {
            name: Some(run.name.clone()),
            namespace: tj.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![owner(tj)]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Workers must resolve each other before they are Ready (rendezvous first).
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(LABEL_JOB_NAME.into(), run.name.clone())])),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: DEFAULT_MASTER_PORT,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn pod_template(
    tj: &TrainingJob,
    run: &RunRef,
    labels: &BTreeMap<String, String>,
) -> Result<PodTemplateSpec, SpecError> {
    let trainer = &tj.spec.trainer;
    let mut template = trainer.template.clone().unwrap_or_default();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels.get_or_insert_with(BTreeMap::new).extend(labels.clone());
    let spec = template.spec.get_or_insert_with(PodSpec::default);
    spec.restart_policy = Some("Never".into());
    let sc = spec.security_context.get_or_insert_with(PodSecurityContext::default);
    sc.run_as_non_root = Some(true);
    sc.seccomp_profile = Some(crate::controllers::runtime_default_seccomp());

    let index = match spec.containers.iter().position(|c| c.name == TRAINER_CONTAINER) {
        Some(i) => i,
        None if !spec.containers.is_empty() => 0,
        None if trainer.image.is_some() => {
            spec.containers.push(Container { name: TRAINER_CONTAINER.into(), ..Container::default() });
            0
        }
        None => return Err(SpecError::NoTrainerContainer),
    };

    let (dataset_uri, dataset_volume) = local_uri(&tj.spec.dataset.uri, "dataset", true);
    let output_base = format!("{}/{}", tj.spec.output.uri.trim_end_matches('/'), run.name);
    let (output_uri, output_volume) = local_uri(&output_base, "output", false);
    let mut mounts = Vec::new();
    for (volume, mount) in [dataset_volume, output_volume].into_iter().flatten() {
        if !spec.volumes.iter().flatten().any(|v| v.name == volume.name) {
            spec.volumes.get_or_insert_with(Vec::new).push(volume);
        }
        mounts.push(mount);
    }

    let c = &mut spec.containers[index];
    if let Some(image) = &trainer.image {
        c.image = Some(image.clone());
    }
    if c.image.is_none() {
        return Err(SpecError::NoImage);
    }
    if !trainer.command.is_empty() {
        c.command = Some(trainer.command.clone());
    }
    if !trainer.args.is_empty() {
        c.args = Some(trainer.args.clone());
    }
    if let Some(r) = &trainer.resources {
        c.resources = Some(r.clone());
    }
    c.termination_message_policy = Some("FallbackToLogsOnError".into());
    c.security_context = Some(crate::controllers::restricted_container());
    c.volume_mounts.get_or_insert_with(Vec::new).extend(mounts);

    let ours = contract_env(tj, run, &dataset_uri, &output_uri);
    let mut env: Vec<EnvVar> = c.env.take().unwrap_or_default();
    env.extend(trainer.env.iter().cloned());
    // The contract variables win over anything the user set with the same name.
    env.retain(|e| !ours.iter().any(|o| o.name == e.name));
    env.extend(ours);
    c.env = Some(env);
    Ok(template)
}

/// A `pvc://claim/path` URI becomes a mounted claim and a `file://` path inside the pod;
/// `file://` and `s3://` pass through unchanged.
pub(super) fn local_uri(uri: &str, role: &str, read_only: bool) -> (String, Option<(Volume, VolumeMount)>) {
    let Some((claim, path)) = api::model_version::pvc_parts(uri) else { return (uri.to_string(), None) };
    let volume_name = format!("{role}-pvc");
    let mount_path = format!("{PVC_MOUNT_ROOT}/{role}");
    let volume = Volume {
        name: volume_name.clone(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_string(),
            read_only: Some(read_only),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: volume_name,
        mount_path: mount_path.clone(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    (format!("file://{mount_path}/{path}"), Some((volume, mount)))
}

fn literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
            ..EnvVarSource::default()
        }),
    }
}

/// The trainer environment of DESIGN.md §3, plus rendezvous variables for distributed runs
/// and S3 credentials taken from a Secret by reference (their values never pass through
/// the operator).
pub fn contract_env(tj: &TrainingJob, run: &RunRef, dataset_uri: &str, output_uri: &str) -> Vec<EnvVar> {
    let spec = &tj.spec;
    let mut env = vec![
        literal("MLOPS_MODEL_NAME", &spec.model),
        literal("MLOPS_RUN_ID", &run.name),
        literal("MLOPS_DATASET_URI", dataset_uri),
        literal("MLOPS_OUTPUT_URI", output_uri),
        literal("MLOPS_SPLIT", split_json(spec.dataset.split.as_ref())),
        literal("MLOPS_HYPERPARAMETERS", serde_json::to_string(&spec.hyperparameters).unwrap_or_default()),
    ];
    if let Some(d) = &spec.dataset.digest {
        env.push(literal("MLOPS_DATASET_DIGEST", d));
    }
    if let Some(l) = &spec.dataset.label_column {
        env.push(literal("MLOPS_LABEL_COLUMN", l));
    }
    if let Some(v) = &spec.dataset.validation {
        env.push(literal("MLOPS_VALIDATION", validation_json(v)));
    }
    if spec.workers > 1 {
        env.extend([
            literal("MLOPS_WORKERS", spec.workers.to_string()),
            literal("WORLD_SIZE", spec.workers.to_string()),
            from_field("RANK", "metadata.annotations['batch.kubernetes.io/job-completion-index']"),
            from_field("MLOPS_RANK", "metadata.annotations['batch.kubernetes.io/job-completion-index']"),
            literal("MASTER_ADDR", format!("{}-0.{}", run.name, run.name)),
            literal("MASTER_PORT", DEFAULT_MASTER_PORT.to_string()),
        ]);
    }
    let dataset_secret = spec.dataset.credentials_secret_ref.as_ref().map(|r| r.name.as_str());
    let output_secret = spec.output.credentials_secret_ref.as_ref().map(|r| r.name.as_str());
    if let Some(secret) = dataset_secret.or(output_secret) {
        env.extend(crate::controllers::s3_credentials_env("", secret));
    }
    if let (Some(d), Some(o)) = (dataset_secret, output_secret)
        && d != o
    {
        env.extend(crate::controllers::s3_credentials_env("MLOPS_OUTPUT_", o));
    }
    env
}

/// `MLOPS_SPLIT`: ratios and seed, defaults filled in.
pub fn split_json(split: Option<&Split>) -> String {
    let s = split.cloned().unwrap_or_default();
    json!({
        "train": s.train,
        "validation": s.validation,
        "test": s.test,
        "seed": s.seed.unwrap_or(api::training_job::DEFAULT_SPLIT_SEED),
    })
    .to_string()
}

/// `MLOPS_VALIDATION`: one entry per configured check, actions in their lowercase
/// contract names.
pub fn validation_json(v: &DataValidation) -> String {
    let mut out = serde_json::Map::new();
    for (name, check) in [("missing", &v.missing), ("duplicates", &v.duplicates)] {
        if let Some(c) = check {
            let mut e = json!({"action": c.action.contract_name()});
            if let Some(f) = c.max_fraction {
                e["maxFraction"] = json!(f);
            }
            out.insert(name.into(), e);
        }
    }
    if let Some(o) = &v.outliers {
        let method = match o.method.unwrap_or_default() {
            OutlierMethod::ZScore => "zscore",
            OutlierMethod::Iqr => "iqr",
        };
        let mut e = json!({"action": o.action.contract_name(), "method": method});
        if let Some(t) = o.threshold {
            e["threshold"] = json!(t);
        }
        if let Some(f) = o.max_fraction {
            e["maxFraction"] = json!(f);
        }
        out.insert("outliers".into(), e);
    }
    serde_json::Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;
    use serde_json::{Value, json};

    use super::*;
    use crate::api::{
        common::LocalRef,
        training_job::{DataAction, DataCheck, OutlierCheck, TriggerType},
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
            (Some(false), None, None)
        );
        assert_eq!(pod_spec(&job).restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod_spec(&job).subdomain, None);
        let c = trainer(&job);
        assert_eq!(c.image.as_deref(), Some("trainer:1"));
        assert_eq!(c.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
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

    #[test]
    fn the_pod_runs_restricted_whatever_the_template_asks() {
        let tj = tj(json!({"trainer": {"template": {"spec": {
            "securityContext": {"runAsNonRoot": false},
            "containers": [{"name": "trainer", "image": "t:2",
                            "securityContext": {"privileged": true, "allowPrivilegeEscalation": true}}],
        }}}}));
        let job = desired_job(&tj, &run()).unwrap();
        let pod = pod_spec(&job).security_context.as_ref().unwrap();
        assert_eq!(pod.run_as_non_root, Some(true));
        assert_eq!(pod.seccomp_profile, Some(crate::controllers::runtime_default_seccomp()));
        let c = trainer(&job);
        assert_eq!(c.security_context, Some(crate::controllers::restricted_container()));
        assert_eq!(c.image.as_deref(), Some("t:2"), "the template's image when trainer.image is unset");
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
        assert_eq!(pod_spec(&job).subdomain.as_deref(), Some("iris-r3"));
        let c = trainer(&job);
        assert_eq!(value(c, "MLOPS_WORKERS"), Some("3"));
        assert_eq!(value(c, "WORLD_SIZE"), Some("3"));
        assert_eq!(value(c, "MASTER_ADDR"), Some("iris-r3-0.iris-r3"));
        assert_eq!(value(c, "MASTER_PORT"), Some("29500"));
        for rank in ["RANK", "MLOPS_RANK"] {
            let field = env(c, rank).and_then(|e| e.value_from.as_ref()?.field_ref.as_ref()).unwrap();
            assert_eq!(field.field_path, "metadata.annotations['batch.kubernetes.io/job-completion-index']");
        }

        let svc = desired_service(&tj, &run()).unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("iris-r3"));
        assert_eq!(svc.metadata.owner_references.as_ref().unwrap()[0].uid, "u1");
        let s = svc.spec.unwrap();
        assert_eq!(s.cluster_ip.as_deref(), Some("None"));
        assert_eq!(s.publish_not_ready_addresses, Some(true));
        assert_eq!(s.selector.unwrap()[LABEL_JOB_NAME], "iris-r3");
        assert_eq!(s.ports.unwrap()[0].port, DEFAULT_MASTER_PORT);
    }

    #[test]
    fn pvc_uris_become_mounted_claims_and_local_paths() {
        let tj = tj(
            json!({"dataset": {"uri": "pvc://data/sets/iris.csv"}, "output": {"uri": "pvc://models/out"}}),
        );
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
                ("output-pvc", "/mnt/mlops/output", Some(false))
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
}
