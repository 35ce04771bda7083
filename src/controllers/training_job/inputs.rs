//! What one pass reads, and the reading (the I/O half before the pure [`super::plan`]):
//! the TrainingJob's Jobs, what the pods of newly finished ones left, the ModelVersions
//! already holding a finishing run's name, the latest version's verdict, and the retrain
//! triggers' measurements that are due (a drift query, a `file://` dataset's digest).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{Api, ResourceExt, api::ListParams};

use super::{data_check, desired, triggers, triggers::Reading};
use crate::{
    api::{self, InferenceService, ModelVersion, TrainingJob},
    controllers::{Context, Error, Result},
    rollout::Sample,
};

/// What the trainer pod of a finished Job left behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodOutcome {
    /// The trainer container's termination message (the result JSON, or the reason).
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    /// The kubelet's reason (`Completed`, `Error`, `OOMKilled`, ...).
    pub reason: Option<String>,
    /// The image digest the trainer ran (`imageID`).
    pub image_id: Option<String>,
}

/// A produced ModelVersion's `Validated` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub model_version: String,
    pub validated: bool,
    pub message: String,
}

/// Everything a pass needs besides the TrainingJob and the time.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The runs' Jobs (labelled with this TrainingJob), by name.
    pub jobs: BTreeMap<String, Job>,
    /// The dataset check Jobs ([`data_check`]).
    pub checks: Vec<Job>,
    /// What the pods of finished Jobs left behind, by Job name: runs whose record is not
    /// finished yet, and finished checks.
    pub pods: BTreeMap<String, PodOutcome>,
    /// ModelVersions that already hold the name of a run whose Job completed: the plan
    /// decides whether each is the run's own (made before a failed status write) or
    /// someone else's (the run fails, the version is left alone).
    pub versions: BTreeMap<String, ModelVersion>,
    /// The `Validated` verdict of `status.latestModelVersion`, once it has one.
    pub latest_version: Option<Verdict>,
    /// The drift trigger's measurement, when it was due.
    pub drift: Option<Reading<f64>>,
    /// The image dataset check Jobs run (the reference runtime).
    pub runtime_image: String,
}

/// Reads the inputs of one pass over `tj` (as last written) at `now`.
pub async fn fetch(ctx: &Context, tj: &TrainingJob, now: Timestamp) -> Result<Inputs> {
    let ns = tj.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let versions_api: Api<ModelVersion> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{}={}", api::LABEL_TRAINING_JOB, tj.name_any());
    let (checks, runs): (Vec<Job>, Vec<Job>) = jobs_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::child("list", "Job", &selector, e))?
        .into_iter()
        .partition(data_check::is_data_check);
    let mut inputs = Inputs {
        jobs: runs.into_iter().map(|j| (j.name_any(), j)).collect(),
        runtime_image: ctx.runtime_image.clone(),
        ..Inputs::default()
    };

    let recorded_finished = |name: &str| {
        tj.status
            .as_ref()
            .is_some_and(|s| s.runs.iter().any(|r| r.job_name == name && r.outcome.is_finished()))
    };
    for job in inputs.jobs.values().filter(|j| finished(j).is_some()) {
        let name = job.name_any();
        if recorded_finished(&name) {
            continue;
        }
        inputs.pods.insert(name.clone(), trainer_outcome(&pods_api, job).await?);
        if finished(job) == Some(true)
            && let Some(existing) = versions_api
                .get_opt(&name)
                .await
                .map_err(|e| Error::child("get", "ModelVersion", &name, e))?
        {
            inputs.versions.insert(name, existing);
        }
    }

    let (drift_due, _) = triggers::checks_due(
        tj.spec.retrain.as_ref(),
        tj.status.as_ref().and_then(|s| s.triggers.as_ref()),
        now,
    );
    if drift_due {
        inputs.drift = Some(measure_drift(ctx, tj, &ns).await?);
    }
    for job in checks.iter().filter(|j| data_check::is_finished(j)) {
        inputs.pods.insert(job.name_any(), trainer_outcome(&pods_api, job).await?);
    }
    inputs.checks = checks;

    if let Some(name) = tj.status.as_ref().and_then(|s| s.latest_model_version.clone()) {
        let latest =
            versions_api.get_opt(&name).await.map_err(|e| Error::child("get", "ModelVersion", &name, e))?;
        inputs.latest_version = latest.and_then(|mv| {
            let c = mv.status?.conditions.into_iter().find(|c| c.type_ == api::conditions::VALIDATED)?;
            Some(Verdict { model_version: name, validated: c.status == "True", message: c.message })
        });
    }
    Ok(inputs)
}

/// `Some(true)` for a Complete Job, `Some(false)` for a Failed one, `None` while it runs.
fn finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_ == "Complete")
}

/// The drift trigger's value: its query, or by default the highest feature PSI of the
/// referenced InferenceService's stable version.
async fn measure_drift(ctx: &Context, tj: &TrainingJob, ns: &str) -> Result<Reading<f64>> {
    let Some(drift) = tj.spec.retrain.as_ref().and_then(|r| r.drift.as_ref()) else {
        return Ok(Reading::NoData("no drift trigger".into()));
    };
    let Some(prometheus) = &ctx.prometheus else {
        return Ok(Reading::Error("the operator runs without --prometheus-url".into()));
    };
    let service = drift.inference_service_ref.as_ref().map(|r| r.name.clone());
    let stable = match &service {
        Some(name) => Api::<InferenceService>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?
            .and_then(|i| i.status?.stable.map(|s| s.version)),
        None => None,
    };
    let query = match (&drift.query, &service, &stable) {
        (Some(q), _, _) => {
            triggers::drift_query(q, ns, service.as_deref(), &tj.spec.model, stable.as_deref())
        }
        (None, Some(_), Some(version)) => triggers::default_drift_query(ns, version),
        (None, Some(name), None) => {
            return Ok(Reading::NoData(format!("InferenceService {name} serves no version yet")));
        }
        (None, None, _) => return Ok(Reading::Error("drift needs inferenceServiceRef or query".into())),
    };
    Ok(match prometheus.query(ns, &query).await {
        Sample::Value(v) => Reading::Value(v),
        Sample::NoData => Reading::NoData(format!("{query} returned no series")),
        Sample::Error(e) => Reading::Error(e),
    })
}

/// What the trainer container (or a check Job's only container) of a finished Job's pods
/// left: the succeeded pod of index 0 (or any succeeded pod) when there is one, else the
/// most recently failed pod. Only pods the Job controls count: anyone who may create pods
/// can copy the job-name label, and a result read from such a pod would be forged.
async fn trainer_outcome(pods: &Api<Pod>, job: &Job) -> Result<PodOutcome> {
    let selector = format!("{}={}", desired::LABEL_JOB_NAME, job.name_any());
    let mut list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::child("list", "Pod", &selector, e))?;
    list.items.retain(|p| owned_by(p, job));
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let index = |p: &Pod| p.annotations().get("batch.kubernetes.io/job-completion-index").cloned();
    let mut candidates: Vec<&Pod> = list.items.iter().filter(|p| phase(p) == "Succeeded").collect();
    candidates.sort_by_key(|p| index(p).as_deref() != Some("0"));
    let chosen = candidates.first().copied().or_else(|| {
        list.items
            .iter()
            .filter(|p| phase(p) == "Failed")
            .max_by_key(|p| p.metadata.creation_timestamp.clone())
    });
    let Some(pod) = chosen else { return Ok(PodOutcome::default()) };
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
    let Some(cs) = statuses.iter().find(|c| c.name == desired::TRAINER_CONTAINER).or(statuses.first()) else {
        return Ok(PodOutcome::default());
    };
    let terminated = cs.state.as_ref().and_then(|s| s.terminated.as_ref());
    Ok(PodOutcome {
        message: terminated.and_then(|t| t.message.clone()),
        exit_code: terminated.map(|t| t.exit_code),
        reason: terminated.and_then(|t| t.reason.clone()),
        image_id: Some(cs.image_id.clone()),
    })
}

/// Whether `job` is `pod`'s controller (by UID, as the Job controller sets it).
pub fn owned_by(pod: &Pod, job: &Job) -> bool {
    let uid = job.metadata.uid.as_deref();
    uid.is_some()
        && pod.owner_references().iter().any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    #[test]
    fn only_a_pod_the_job_controls_is_its_own() {
        let mut job = Job::default();
        job.metadata.uid = Some("job-uid".into());
        let pod = |uid: &str, controller: bool| {
            let mut p = Pod::default();
            p.metadata.owner_references = Some(vec![OwnerReference {
                uid: uid.into(),
                controller: Some(controller),
                ..OwnerReference::default()
            }]);
            p
        };
        assert!(owned_by(&pod("job-uid", true), &job));
        assert!(!owned_by(&pod("job-uid", false), &job), "an owner that is not the controller");
        assert!(!owned_by(&pod("other", true), &job), "another object's pod with the label copied");
        assert!(!owned_by(&Pod::default(), &job), "a bare pod with the label copied");
        assert!(!owned_by(&pod("", true), &Job::default()), "no UID matches nothing");
    }
}
