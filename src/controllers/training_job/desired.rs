//! Desired children of a TrainingJob run, as pure functions: the `batch/v1` Job (Indexed
//! for `workers > 1`) and, for distributed runs, the headless Service the workers
//! rendezvous through. Everything the pod needs is in the environment contract
//! (`contract::trainer_env`).

use std::collections::BTreeMap;

use contract::trainer_env;
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Container, EnvVar, EnvVarSource, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSpec,
            PodTemplateSpec, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    api::{
        self, Gate, TrainingJob,
        training_job::{DEFAULT_MASTER_PORT, DataValidation, OutlierMethod, RunTrigger, Source, Split},
    },
    controllers::{
        names,
        pod_security::{
            self,
            policy::{self, Level},
        },
    },
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

/// `<trainingjob>-r<number>`: the run's id, Job name and ModelVersion name. No two
/// TrainingJobs share one: the number is the name's trailing digits and the TrainingJob's
/// name what stands before `-r`. Nor is one a dataset check's (`<trainingjob>-dc-<seconds>`,
/// whose trailing digits follow a `-`, not an `r`).
pub fn run_name(tj_name: &str, number: i64) -> String {
    format!("{tj_name}-r{number}")
}

/// The headless Service a distributed run's workers resolve each other through:
/// `<run>-<hash>` ([`names`]), not the run's own name, which an InferenceService named after
/// a version (`iris-r1`) would hold for its Service.
pub fn rendezvous_service_name(run: &str) -> String {
    names::unique(run, &["rendezvous", run], 63)
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
            spec.subdomain = Some(rendezvous_service_name(&run.name));
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
            ttl_seconds_after_finished: Some(
                tj.spec
                    .ttl_seconds_after_finished
                    .unwrap_or(api::training_job::DEFAULT_TTL_SECONDS_AFTER_FINISHED),
            ),
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
            name: Some(rendezvous_service_name(&run.name)),
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
    for (volume, mut mount) in [dataset_volume, output_volume].into_iter().flatten() {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        // One claim is one volume, however many mounts use it: a kubelet never finishes
        // mounting a pod with two volumes of the same claim. Written through any mount, the
        // volume is read-write; each mount keeps its own read-only flag.
        let claim = |v: &Volume| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone());
        if let Some(same) = volumes.iter_mut().find(|v| v.name == volume.name || claim(v) == claim(&volume)) {
            if let (Some(existing), Some(new)) =
                (same.persistent_volume_claim.as_mut(), volume.persistent_volume_claim.as_ref())
                && new.read_only == Some(false)
            {
                existing.read_only = Some(false);
            }
            mount.name = same.name.clone();
        } else {
            volumes.push(volume);
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
    // Only what the trainer writes becomes its message: never its logs, which may hold
    // anything it printed (a secret from its environment included).
    c.termination_message_policy = Some("File".into());
    c.volume_mounts.get_or_insert_with(Vec::new).extend(mounts);

    let mut ours = contract_env(tj, run, &dataset_uri, &output_uri);
    ours.push(termination_message_env(c));
    let mut env: Vec<EnvVar> = c.env.take().unwrap_or_default();
    env.extend(trainer.env.iter().cloned());
    // The contract variables win over anything the user set with the same name.
    env.retain(|e| !ours.iter().any(|o| o.name == e.name));
    env.extend(ours);
    c.env = Some(env);

    let trainer_name = c.name.clone();
    pod_security::secure_pod(spec, pod_security::NONROOT, &[&trainer_name]);
    Ok(template)
}

/// Where the trainer's pod template sits in a TrainingJob: the prefix of every field the
/// pod policy names.
pub const TEMPLATE_PATH: &str = "spec.trainer.template.";

/// The message refusing the pods of `tj`'s runs under the namespace's pod policy `level`,
/// naming each field of `trainer.template` it does not allow; `None` when they may run.
/// Judged on the pod a run gets (the template with the operator's additions and secure
/// defaults), which keeps the template's indices: the operator only appends.
pub fn pod_policy_refusal(tj: &TrainingJob, level: Level) -> Option<String> {
    let probe = RunRef {
        name: run_name(&tj.name_any(), 0),
        number: 0,
        generation: 0,
        trigger: RunTrigger::default(),
    };
    // A template the operator cannot complete fails as a spec error when the run starts.
    let template = pod_template(tj, &probe, &BTreeMap::new()).ok()?;
    let found = policy::violations(level, &template);
    policy::refusal(&found, TEMPLATE_PATH, level, &tj.namespace().unwrap_or_default())
}

/// `MLOPS_TERMINATION_MESSAGE_PATH`: the file the kubelet reads the container's termination
/// message from (its `terminationMessagePath`, by default `/dev/termination-log`, which the
/// kubelet mounts writable for any user even on a read-only root), so the result goes where
/// the operator reads it.
pub(super) fn termination_message_env(c: &Container) -> EnvVar {
    let path = c.termination_message_path.as_deref().filter(|p| !p.is_empty());
    literal(
        trainer_env::TERMINATION_MESSAGE_PATH,
        path.unwrap_or(trainer_env::DEFAULT_TERMINATION_MESSAGE_PATH),
    )
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

/// The trainer environment (`contract::trainer_env`), plus rendezvous variables for distributed runs
/// and S3 credentials taken from a Secret by reference (their values never pass through
/// the operator).
pub fn contract_env(tj: &TrainingJob, run: &RunRef, dataset_uri: &str, output_uri: &str) -> Vec<EnvVar> {
    let spec = &tj.spec;
    let mut env = vec![
        literal(trainer_env::MODEL_NAME, &spec.model),
        literal(trainer_env::RUN_ID, &run.name),
        literal(trainer_env::DATASET_URI, dataset_uri),
        literal(trainer_env::OUTPUT_URI, output_uri),
        literal(trainer_env::SPLIT, split_json(spec.dataset.split.as_ref())),
        literal(
            trainer_env::HYPERPARAMETERS,
            serde_json::to_string(&spec.hyperparameters).unwrap_or_default(),
        ),
    ];
    if let Some(d) = &spec.dataset.digest {
        env.push(literal(trainer_env::DATASET_DIGEST, d));
    }
    if let Some(l) = &spec.dataset.label_column {
        env.push(literal(trainer_env::LABEL_COLUMN, l));
    }
    if let Some(v) = &spec.dataset.validation {
        env.push(literal(trainer_env::VALIDATION, validation_json(v)));
    }
    if spec.workers > 1 {
        env.extend([
            literal(trainer_env::WORKERS, spec.workers.to_string()),
            literal("WORLD_SIZE", spec.workers.to_string()),
            from_field("RANK", "metadata.annotations['batch.kubernetes.io/job-completion-index']"),
            from_field(trainer_env::RANK, "metadata.annotations['batch.kubernetes.io/job-completion-index']"),
            literal("MASTER_ADDR", format!("{}-0.{}", run.name, rendezvous_service_name(&run.name))),
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
        env.extend(crate::controllers::s3_credentials_env(trainer_env::OUTPUT_CREDENTIALS_PREFIX, o));
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
mod tests;
