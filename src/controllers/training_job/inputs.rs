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
    /// The digest of a `file://` dataset, when the data trigger's check was due.
    pub dataset_file: Option<Reading<String>>,
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
        inputs.pods.insert(name.clone(), trainer_outcome(&pods_api, &name).await?);
        if finished(job) == Some(true)
            && let Some(existing) = versions_api
                .get_opt(&name)
                .await
                .map_err(|e| Error::child("get", "ModelVersion", &name, e))?
        {
            inputs.versions.insert(name, existing);
        }
    }

    let (drift_due, data_due) = triggers::checks_due(
        tj.spec.retrain.as_ref(),
        tj.status.as_ref().and_then(|s| s.triggers.as_ref()),
        now,
    );
    if drift_due {
        inputs.drift = Some(measure_drift(ctx, tj, &ns).await?);
    }
    let data_wanted = tj.spec.retrain.as_ref().is_some_and(|r| r.data.is_some());
    if data_wanted
        && data_due
        && let Some(path) = tj.spec.dataset.uri.strip_prefix("file://")
    {
        inputs.dataset_file = Some(file_digest(path).await);
    }
    for job in checks.iter().filter(|j| data_check::is_finished(j)) {
        inputs.pods.insert(job.name_any(), trainer_outcome(&pods_api, &job.name_any()).await?);
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

/// `sha256:<hex>` of a `file://` dataset as the operator's filesystem sees it (the local
/// platform's case, or a shared mount), hashed off the async runtime.
async fn file_digest(path: &str) -> Reading<String> {
    let path = std::path::PathBuf::from(path);
    match tokio::task::spawn_blocking(move || hash_file(&path)).await {
        Ok(Ok(digest)) => Reading::Value(digest),
        Ok(Err(e)) => Reading::Error(e),
        Err(e) => Reading::Error(format!("hashing the dataset: {e}")),
    }
}

/// `sha256:<hex>` of a file, read in chunks (the same digest form the trainer reports).
pub fn hash_file(path: &std::path::Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// What the trainer container (or a check Job's only container) of a finished Job's pods
/// left: the succeeded pod of index 0 (or any succeeded pod) when there is one, else the
/// most recently failed pod.
async fn trainer_outcome(pods: &Api<Pod>, job: &str) -> Result<PodOutcome> {
    let selector = format!("{}={job}", desired::LABEL_JOB_NAME);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::child("list", "Pod", &selector, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_hashed_as_the_trainer_reports_digests() {
        let dir = std::env::temp_dir().join(format!("mlops-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("d.csv");
        std::fs::write(&f, b"x").unwrap();
        // sha256("x")
        assert_eq!(
            hash_file(&f).unwrap(),
            "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
        );
        assert!(hash_file(&dir.join("missing.csv")).unwrap_err().contains("missing.csv"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
