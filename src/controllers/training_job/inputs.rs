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
    controllers::{Context, Error, Result, ownership::controlled_by, pod_security::policy::Level},
    rollout::Sample,
};

/// What the trainer pod of a finished Job left behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodOutcome {
    /// The trainer container's termination message (the result JSON, or the reason): only
    /// what the trainer wrote, never a fallback to its logs.
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    /// The signal that ended it, when the runtime reports one.
    pub signal: Option<i32>,
    /// The kubelet's reason (`Completed`, `Error`, `OOMKilled`, ...).
    pub reason: Option<String>,
    /// The image digest the trainer ran (`imageID`).
    pub image_id: Option<String>,
}

impl PodOutcome {
    /// How the container ended, for a message: `exited 1`, `exited 137 (OOMKilled)`,
    /// `exited 143 (signal 15, SIGTERM)`; `None` when it has not ended.
    pub fn exit(&self) -> Option<String> {
        let code = self.exit_code?;
        // A shell reports death by signal N as 128 + N.
        let signal = self.signal.or((129..=192).contains(&code).then(|| code - 128));
        let mut why: Vec<String> = Vec::new();
        if let Some(reason) = self.reason.as_deref().filter(|r| !["Error", "Completed"].contains(r)) {
            why.push(reason.to_string());
        }
        if let Some(n) = signal {
            why.push(match signal_name(n) {
                Some(name) => format!("signal {n}, {name}"),
                None => format!("signal {n}"),
            });
        }
        Some(if why.is_empty() {
            format!("exited {code}")
        } else {
            format!("exited {code} ({})", why.join(", "))
        })
    }
}

fn signal_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => return None,
    })
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
    /// The pod policy of the TrainingJob's namespace.
    pub pod_security_level: Level,
}

/// Reads the inputs of one pass over `tj` (as last written) at `now`.
pub async fn fetch(ctx: &Context, tj: &TrainingJob, now: Timestamp) -> Result<Inputs> {
    let ns = tj.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let versions_api: Api<ModelVersion> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{}={}", api::LABEL_TRAINING_JOB, tj.name_any());
    let uid = tj.uid().unwrap_or_default();
    // Our labels are a filter, not a proof: a Job is the TrainingJob's only under its
    // controller reference (a Job labelled alike is neither followed as a run nor pruned).
    let (checks, runs): (Vec<Job>, Vec<Job>) = jobs_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::child("list", "Job", &selector, e))?
        .into_iter()
        .filter(|j| controlled_by(&j.metadata, &uid))
        .partition(data_check::is_data_check);
    let mut inputs = Inputs {
        jobs: runs.into_iter().map(|j| (j.name_any(), j)).collect(),
        runtime_image: ctx.runtime_image.clone(),
        pod_security_level: ctx.pod_policy.level(&ns),
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
    Ok(chosen.map(pod_outcome).unwrap_or_default())
}

/// What the trainer container of `pod` left: the container named `trainer`, else the
/// pod's first (as the run's Job defines it). Its termination message counts only when
/// the trainer wrote it: under `FallbackToLogsOnError` (a Job made by an older operator)
/// the message of a failed container may be the tail of its logs, and is dropped.
pub fn pod_outcome(pod: &Pod) -> PodOutcome {
    let spec_containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let trainer =
        spec_containers.iter().find(|c| c.name == desired::TRAINER_CONTAINER).or(spec_containers.first());
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
    let Some(cs) = statuses.iter().find(|c| trainer.is_some_and(|t| t.name == c.name)) else {
        return PodOutcome::default();
    };
    let terminated = cs.state.as_ref().and_then(|s| s.terminated.as_ref());
    let exit_code = terminated.map(|t| t.exit_code);
    let logs_possible = trainer.and_then(|t| t.termination_message_policy.as_deref())
        == Some("FallbackToLogsOnError")
        && exit_code != Some(0);
    PodOutcome {
        message: terminated.and_then(|t| t.message.clone()).filter(|_| !logs_possible),
        exit_code,
        signal: terminated.and_then(|t| t.signal),
        reason: terminated.and_then(|t| t.reason.clone()),
        image_id: Some(cs.image_id.clone()),
    }
}

/// Whether `job` is `pod`'s controller (by UID, as the Job controller sets it).
pub fn owned_by(pod: &Pod, job: &Job) -> bool {
    let uid = job.metadata.uid.as_deref();
    uid.is_some()
        && pod.owner_references().iter().any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(containers: serde_json::Value, statuses: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"spec": {"containers": containers},
                                      "status": {"phase": "Failed", "containerStatuses": statuses}}))
        .unwrap()
    }

    fn terminated(name: &str, code: i32, message: &str) -> serde_json::Value {
        json!({"name": name, "image": "i", "imageID": "sha256:1", "ready": false, "restartCount": 0,
               "state": {"terminated": {"exitCode": code, "reason": "Error", "message": message}}})
    }

    #[test]
    fn the_outcome_is_the_trainer_containers_and_never_a_log_fallback() {
        // The trainer by name, whatever the order of the statuses.
        let p = pod(
            json!([{"name": "shipper"}, {"name": "trainer", "terminationMessagePolicy": "File"}]),
            json!([terminated("shipper", 2, "shipper's"), terminated("trainer", 3, "bad data")]),
        );
        let out = pod_outcome(&p);
        assert_eq!((out.exit_code, out.message.as_deref()), (Some(3), Some("bad data")));
        // Otherwise the Job's first container, not the first status.
        let p = pod(
            json!([{"name": "main"}, {"name": "sidecar"}]),
            json!([terminated("sidecar", 2, "sidecar's"), terminated("main", 1, "main's")]),
        );
        assert_eq!(pod_outcome(&p).message.as_deref(), Some("main's"));
        // A failed container under FallbackToLogsOnError may carry its logs: dropped. On
        // success there is no fallback, so the result is still read.
        let logs = |code| {
            pod(
                json!([{"name": "trainer", "terminationMessagePolicy": "FallbackToLogsOnError"}]),
                json!([terminated("trainer", code, "TOKEN=hunter2")]),
            )
        };
        let failed = pod_outcome(&logs(1));
        assert_eq!((failed.exit_code, failed.message), (Some(1), None));
        assert_eq!(pod_outcome(&logs(0)).message.as_deref(), Some("TOKEN=hunter2"));
    }

    #[test]
    fn an_exit_says_its_code_and_why() {
        let exit = |code, reason: &str, signal| {
            PodOutcome { exit_code: Some(code), reason: Some(reason.into()), signal, ..PodOutcome::default() }
                .exit()
                .unwrap()
        };
        assert_eq!(exit(1, "Error", None), "exited 1");
        assert_eq!(exit(137, "OOMKilled", None), "exited 137 (OOMKilled, signal 9, SIGKILL)");
        assert_eq!(exit(143, "Error", None), "exited 143 (signal 15, SIGTERM)");
        assert_eq!(exit(2, "Error", Some(6)), "exited 2 (signal 6, SIGABRT)");
        assert_eq!(exit(200, "ContainerCannotRun", None), "exited 200 (ContainerCannotRun)");
        assert_eq!(PodOutcome::default().exit(), None);
    }

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
