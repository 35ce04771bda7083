//! The ModelVersion a successful run produces, as pure functions: the builder (the recipe
//! stored on the run's Job, the trainer's result, the pod's image digest), whether an
//! existing version of the run's name is the run's own, and why a version was refused.

use k8s_openapi::{
    api::batch::v1::Job,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::ResourceExt;

use super::{
    desired::{ANNOTATION_RUN_RECIPE, RunRecipe},
    inputs::PodOutcome,
    result::TrainerResult,
};
use crate::api::{
    self, ModelVersion, ModelVersionSpec, TrainingJob,
    model_version::{DatasetLineage, Lineage},
    training_job::RunRecord,
};

/// result checks do not know of.
pub const REASON_VERSION_REJECTED: &str = "ModelVersionRejected";
/// Annotation on a produced ModelVersion: the UID of the TrainingJob that made it. Names
/// and labels say which TrainingJob of that name; only the UID says which one, so that a
/// TrainingJob deleted and re-created under the same name does not count (and prune) the
/// earlier one's versions as its own.
pub const ANNOTATION_TRAINING_JOB_UID: &str = "mlops.dev/training-job-uid";
/// Run failure reason: a ModelVersion with the run's name exists and is not the run's.
pub const REASON_VERSION_NAME_TAKEN: &str = "ModelVersionNameTaken";

/// Why a run's ModelVersion could not be created; the run fails with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    /// The API server answered 422 (Invalid); its message is kept, cut short.
    pub fn rejected(name: &str, api_message: &str) -> Self {
        Refusal {
            reason: REASON_VERSION_REJECTED,
            message: crate::controllers::truncate(
                format!("the API server refused ModelVersion {name}: {api_message}"),
                512,
            ),
        }
    }

    /// `existing` holds the run's name but was not made by it (see [`made_by`]): an
    /// imported version, or one of another TrainingJob.
    pub fn name_taken(existing: &ModelVersion, tj: &TrainingJob, run: &str) -> Self {
        let lineage = existing.spec.lineage.as_ref();
        let origin =
            match (lineage.and_then(|l| l.training_job.as_deref()), lineage.and_then(|l| l.run.as_deref())) {
                (Some(t), Some(r)) => format!("its lineage names run {r} of TrainingJob {t}"),
                (Some(t), None) => format!("its lineage names TrainingJob {t}"),
                _ => "it has no lineage: an imported version".to_string(),
            };
        Refusal {
            reason: REASON_VERSION_NAME_TAKEN,
            message: format!(
                "ModelVersion {run} already exists and was not made by run {run} of TrainingJob {} \
                 ({origin}); it is left alone. Set the {} annotation to train again: the next run \
                 has a new name",
                tj.name_any(),
                api::ANNOTATION_RETRY
            ),
        }
    }
}

/// Whether `mv` is the version run `run` of `tj` made (a retried reconcile finds it after
/// a 409): its `mlops.dev/run` and `mlops.dev/training-job` labels, its owner, or its
/// lineage name them, and it was created no earlier than the run's `job`. Names and labels
/// alone would also fit a version an earlier TrainingJob of the same name made (deleted and
/// re-created, it numbers its runs from 1 again), or one made ahead to pass for the run's:
/// both exist before the run's Job, and the run's own version is only made once the Job
/// has completed.
pub fn made_by(mv: &ModelVersion, tj: &TrainingJob, run: &str, job: &Job) -> bool {
    let labels = mv.labels();
    let by_labels = labels.get(api::LABEL_RUN).is_some_and(|r| r == run)
        && labels.get(api::LABEL_TRAINING_JOB).is_some_and(|t| *t == tj.name_any());
    let by_owner = tj.uid().is_some_and(|uid| mv.owner_references().iter().any(|o| o.uid == uid));
    let by_lineage = mv.spec.lineage.as_ref().is_some_and(|l| {
        l.run.as_deref() == Some(run) && l.training_job.as_deref() == Some(tj.name_any().as_str())
    });
    let since_the_job = match (&mv.metadata.creation_timestamp, &job.metadata.creation_timestamp) {
        (Some(made), Some(started)) => made.0 >= started.0,
        _ => false,
    };
    (by_labels || by_owner || by_lineage) && since_the_job
}

/// A produced ModelVersion's `Validated` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub model_version: String,
    pub validated: bool,
    pub message: String,
}

/// The artifact's address for everyone else: a trainer sees a `pvc://` output as a
/// `file://` path below the claim's mount, which means nothing outside its pod. A path
/// below a mount of a claim in the trainer container (ours or the template's) becomes
/// `pvc://<claim>/<path>`; any other URI is kept as written.
pub fn uri_outside_pod(uri: &str, job: &Job) -> String {
    let Some(path) = uri.strip_prefix("file://") else { return uri.to_string() };
    let Some(spec) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else { return uri.to_string() };
    let trainer = spec
        .containers
        .iter()
        .find(|c| c.name == super::desired::TRAINER_CONTAINER)
        .or(spec.containers.first());
    let claim_of = |volume: &str| {
        spec.volumes.iter().flatten().find(|v| v.name == volume)?.persistent_volume_claim.as_ref()
    };
    // The deepest mount wins: a claim may be mounted inside another volume.
    let best = trainer
        .into_iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| m.sub_path_expr.is_none())
        .filter_map(|m| {
            let rest = path.strip_prefix(m.mount_path.trim_end_matches('/'))?;
            let rest = rest.strip_prefix('/').or(rest.is_empty().then_some(""))?;
            let sub = m.sub_path.as_deref().unwrap_or("").trim_matches('/');
            let rest = if sub.is_empty() { rest.to_string() } else { format!("{sub}/{rest}") };
            Some((m.mount_path.len(), claim_of(&m.name)?.claim_name.clone(), rest))
        })
        .max_by_key(|(len, _, _)| *len);
    match best {
        Some((_, claim, rest)) => format!("pvc://{claim}/{rest}"),
        None => uri.to_string(),
    }
}

/// The ModelVersion of a successful run: the recipe stored on the Job, the trainer's
/// result, and the pod's image digest.
pub fn model_version(
    tj: &TrainingJob,
    run: &RunRecord,
    job: &Job,
    res: &TrainerResult,
    pod: Option<&PodOutcome>,
    now: &Time,
) -> ModelVersion {
    let recipe: RunRecipe = job
        .annotations()
        .get(ANNOTATION_RUN_RECIPE)
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_else(|| RunRecipe {
            model: tj.spec.model.clone(),
            dataset_uri: tj.spec.dataset.uri.clone(),
            trigger: run.trigger.clone(),
            ..RunRecipe::default()
        });
    let mut labels = recipe.labels.clone();
    labels.extend([
        (api::LABEL_MODEL.to_string(), recipe.model.clone()),
        (api::LABEL_TRAINING_JOB.to_string(), tj.name_any()),
        (api::LABEL_RUN.to_string(), run.name.clone()),
        (api::LABEL_APP_MANAGED_BY.to_string(), api::MANAGED_BY.to_string()),
        (api::LABEL_APP_PART_OF.to_string(), api::PART_OF.to_string()),
    ]);
    let start = job.status.as_ref().and_then(|s| s.start_time.clone()).or(run.start_time.clone());
    let end = job.status.as_ref().and_then(|s| s.completion_time.clone()).or(Some(now.clone()));
    ModelVersion {
        metadata: ObjectMeta {
            name: Some(run.name.clone()),
            namespace: tj.namespace(),
            labels: Some(labels),
            annotations: tj.uid().map(|uid| {
                std::collections::BTreeMap::from([(ANNOTATION_TRAINING_JOB_UID.to_string(), uid)])
            }),
            ..ObjectMeta::default()
        },
        spec: ModelVersionSpec {
            model: recipe.model.clone(),
            artifact: api::model_version::Artifact {
                uri: uri_outside_pod(&res.artifact.uri, job),
                ..res.artifact.clone()
            },
            metrics: res.metrics.clone(),
            lineage: Some(Lineage {
                training_job: Some(tj.name_any()),
                run: Some(run.name.clone()),
                image: recipe.image.clone(),
                image_digest: pod.and_then(|p| p.image_id.clone()).filter(|i| !i.is_empty()),
                dataset: Some(DatasetLineage {
                    uri: recipe.dataset_uri.clone(),
                    digest: res.dataset_digest.clone(),
                    rows: res.rows.clone(),
                    validation_report: res.validation.clone(),
                }),
                hyperparameters: recipe.hyperparameters.clone(),
                source: recipe.source.clone(),
                trigger: Some(recipe.trigger.clone()),
                start_time: start,
                completion_time: end,
            }),
            gates: recipe.gates.clone(),
        },
        status: None,
    }
}
