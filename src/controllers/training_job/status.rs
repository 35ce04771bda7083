//! The TrainingJob state machine as a pure function: from the resource and what was
//! observed (its runs' Jobs and the trainer results read from their pods) to the new
//! status, the run to start, the ModelVersions to create and the Events to publish.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::batch::v1::Job,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::ResourceExt;

use super::{
    desired::{ANNOTATION_GENERATION, ANNOTATION_RUN_RECIPE, RunRecipe, RunRef, run_name},
    result::{self, TrainerResult},
    triggers::{self, Readings},
};
use crate::api::{
    self, ModelVersion, ModelVersionSpec, TrainingJob, TrainingJobStatus,
    common::annotation_pending,
    conditions::{self as cond, new_condition, set_condition},
    model_version::{DatasetLineage, Lineage},
    training_job::{RUN_HISTORY_LIMIT, RunOutcome, RunRecord, RunTrigger, TriggerType},
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

/// What the I/O shell observed for one TrainingJob.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The Jobs labelled with this TrainingJob, by name.
    pub jobs: BTreeMap<String, Job>,
    /// For finished Jobs: what their trainer pod left behind, by Job name.
    pub pods: BTreeMap<String, PodOutcome>,
    pub now: Option<Time>,
    /// Drift and dataset measurements taken for the retrain triggers this reconcile.
    pub readings: Readings,
    /// The `Validated` verdict of `status.latestModelVersion`, once it has one.
    pub latest_version: Option<Verdict>,
    /// ModelVersions the API server would not take, by name, learnt on creating them: the
    /// shell plans again with these, and their runs fail instead of succeeding.
    pub refused_versions: BTreeMap<String, Refusal>,
}

/// Run failure reason: the API server refused the run's ModelVersion (422), a bound the
/// result checks do not know of.
pub const REASON_VERSION_REJECTED: &str = "ModelVersionRejected";
/// Run failure reason: a ModelVersion with the run's name exists and is not the run's.
pub const REASON_VERSION_NAME_TAKEN: &str = "ModelVersionNameTaken";
/// Condition reason and Event reason of a spec only the controller can find wrong.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

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
/// lineage name them.
pub fn made_by(mv: &ModelVersion, tj: &TrainingJob, run: &str) -> bool {
    let labels = mv.labels();
    let by_labels = labels.get(api::LABEL_RUN).is_some_and(|r| r == run)
        && labels.get(api::LABEL_TRAINING_JOB).is_some_and(|t| *t == tj.name_any());
    let by_owner = tj.uid().is_some_and(|uid| mv.owner_references().iter().any(|o| o.uid == uid));
    let by_lineage = mv.spec.lineage.as_ref().is_some_and(|l| {
        l.run.as_deref() == Some(run) && l.training_job.as_deref() == Some(tj.name_any().as_str())
    });
    by_labels || by_owner || by_lineage
}

/// A produced ModelVersion's `Validated` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub model_version: String,
    pub validated: bool,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Everything the shell must do, in order: apply the new run's children, create the
/// ModelVersions, suspend/resume active Jobs, then write the status and publish Events.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub start_run: Option<RunRef>,
    pub create_versions: Vec<ModelVersion>,
    /// Active Jobs whose `spec.suspend` must change, with the value to set.
    pub set_suspend: Vec<(String, bool)>,
    pub status: TrainingJobStatus,
    pub events: Vec<EventNote>,
    /// A spec problem only the controller can see: `Stalled=True`, no run started.
    pub spec_error: Option<String>,
    /// Runs that finished in this reconcile (for the training metrics).
    pub finished_runs: Vec<RunRecord>,
    /// When the retrain triggers want another look (next cron time, next check, cooldown end).
    pub requeue_after: Option<std::time::Duration>,
}

fn job_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_ && c.status == "True")
}

fn number_of(job: &Job) -> Option<i64> {
    let run = job.labels().get(api::LABEL_RUN)?;
    run.rsplit_once("-r")?.1.parse().ok()
}

fn generation_of(job: &Job) -> Option<i64> {
    job.annotations().get(ANNOTATION_GENERATION)?.parse().ok()
}

/// Computes the plan. `spec_error` is the result of building the desired Job for a new
/// run (checked by the caller with `desired::desired_job`), so the state machine knows
/// whether a run can start.
pub fn plan(tj: &TrainingJob, observed: &Observed, spec_check: impl Fn(&RunRef) -> Option<String>) -> Plan {
    let now = observed.now.clone().unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    let generation = tj.metadata.generation.unwrap_or(0);
    let mut status = tj.status.clone().unwrap_or_default();
    let mut plan = Plan::default();

    // 0. Adopt a run whose Job exists but whose record was lost (the status write after
    //    creating the Job failed): it is followed like any other, never started twice.
    let recorded = status.last_run_number.unwrap_or(0);
    for job in observed.jobs.values() {
        let (Some(number), name) = (number_of(job), job.name_any()) else { continue };
        if number > recorded && !status.runs.iter().any(|r| r.job_name == name) {
            let recipe: Option<RunRecipe> =
                job.annotations().get(ANNOTATION_RUN_RECIPE).and_then(|r| serde_json::from_str(r).ok());
            status.runs.push(RunRecord {
                name: name.clone(),
                number,
                job_name: name,
                generation: generation_of(job),
                trigger: recipe.map(|r| r.trigger).unwrap_or_default(),
                start_time: job.metadata.creation_timestamp.clone(),
                outcome: RunOutcome::Pending,
                ..RunRecord::default()
            });
            status.last_run_number = Some(number.max(status.last_run_number.unwrap_or(0)));
        }
    }
    status.runs.sort_by_key(|r| r.number);

    // 1. Follow the runs in flight.
    for run in status.runs.iter_mut().filter(|r| !r.outcome.is_finished()) {
        let job = observed.jobs.get(&run.job_name);
        let before = run.outcome;
        match job {
            None => finish(
                run,
                RunOutcome::Failed,
                "JobDeleted",
                "the run's Job was deleted before it finished",
                &now,
            ),
            Some(job) => follow(run, job, observed, &now, &mut plan, tj),
        }
        if run.outcome != before && run.outcome.is_finished() {
            plan.finished_runs.push(run.clone());
            plan.events.push(match run.outcome {
                RunOutcome::Succeeded => EventNote {
                    warning: false,
                    reason: "RunSucceeded",
                    note: format!(
                        "run {} succeeded and produced ModelVersion {}",
                        run.name,
                        run.model_version.as_deref().unwrap_or("-")
                    ),
                },
                _ => EventNote {
                    warning: true,
                    reason: "RunFailed",
                    note: format!(
                        "run {} failed ({}): {}",
                        run.name,
                        run.reason.as_deref().unwrap_or("Unknown"),
                        run.message.as_deref().unwrap_or("")
                    ),
                },
            });
        }
        if let Some(job) = job {
            let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
            if !run.outcome.is_finished() && suspended != tj.spec.suspend {
                plan.set_suspend.push((run.job_name.clone(), tj.spec.suspend));
            }
        }
    }

    // 2. Start a run when this generation has none yet, a retry was asked for, or a
    //    retrain trigger wants one. At most one run starts per reconcile, and it covers
    //    every trigger pending now (de-duplication).
    let known_generation = status.runs.iter().any(|r| r.generation == Some(generation))
        || observed.jobs.values().any(|j| generation_of(j) == Some(generation));
    let retry_value = tj.annotations().get(api::ANNOTATION_RETRY).cloned();
    let handled_retry = status.manual_actions.as_ref().and_then(|m| m.retry.clone());
    let retry = annotation_pending(retry_value.as_deref(), handled_retry.as_deref());
    let active = status.runs.iter().filter(|r| !r.outcome.is_finished()).count();
    let max_active =
        tj.spec.retrain.as_ref().and_then(|r| r.max_concurrent_runs).unwrap_or(1).max(1) as usize;
    let can_start = active < max_active && !tj.spec.suspend;
    let assessment = triggers::assess(
        tj.spec.retrain.as_ref(),
        status.triggers.as_ref(),
        &observed.readings,
        tj.metadata.creation_timestamp.as_ref().map(|t| t.0),
        now.0,
        can_start,
    );
    plan.events.extend(assessment.events.iter().cloned());
    plan.requeue_after = assessment.requeue_after;
    let mut trigger_state = assessment.state.clone();
    if let Some(err) = &assessment.spec_error {
        plan.spec_error = Some(err.clone());
    }
    let wants = !known_generation || retry || assessment.wanted.is_some();
    let mut waiting_for_slot = false;
    if wants && !tj.spec.suspend && plan.spec_error.is_none() {
        if active >= max_active {
            waiting_for_slot = true;
        } else {
            let number = status
                .last_run_number
                .unwrap_or(0)
                .max(observed.jobs.values().filter_map(number_of).max().unwrap_or(0))
                + 1;
            let trigger = if !known_generation || retry {
                let manual = retry && known_generation;
                let mut message = if manual {
                    format!(
                        "{} annotation set to {:?}",
                        api::ANNOTATION_RETRY,
                        retry_value.clone().unwrap_or_default()
                    )
                } else {
                    format!("generation {generation}")
                };
                if let Some(covered) = assessment.wanted.as_ref().and_then(|w| w.message.as_deref()) {
                    message =
                        crate::controllers::truncate(format!("{message}; also covers: {covered}"), 1000);
                }
                RunTrigger {
                    type_: if manual { TriggerType::Manual } else { TriggerType::Spec },
                    time: Some(now.clone()),
                    message: Some(message),
                    ..RunTrigger::default()
                }
            } else {
                assessment.wanted.clone().unwrap_or_default()
            };
            let run = RunRef { name: run_name(&tj.name_any(), number), number, generation, trigger };
            match spec_check(&run) {
                Some(err) => plan.spec_error = Some(err),
                None => {
                    status.last_run_number = Some(number);
                    status.runs.push(RunRecord {
                        name: run.name.clone(),
                        number,
                        job_name: run.name.clone(),
                        generation: Some(generation),
                        trigger: run.trigger.clone(),
                        start_time: Some(now.clone()),
                        outcome: RunOutcome::Pending,
                        ..RunRecord::default()
                    });
                    if retry {
                        status.manual_actions.get_or_insert_with(Default::default).retry =
                            retry_value.clone();
                    }
                    triggers::consume(&mut trigger_state, &assessment, &run.trigger, now.0);
                    plan.events.push(match run.trigger.type_ {
                        TriggerType::Spec | TriggerType::Manual => EventNote {
                            warning: false,
                            reason: "RunStarted",
                            note: format!("started run {} ({:?} trigger)", run.name, run.trigger.type_),
                        },
                        t => EventNote {
                            warning: false,
                            reason: "RunTriggered",
                            note: format!(
                                "started run {} ({t:?} trigger): {}",
                                run.name,
                                run.trigger.message.as_deref().unwrap_or("")
                            ),
                        },
                    });
                    plan.start_run = Some(run);
                }
            }
        }
    }
    status.triggers = (tj.spec.retrain.is_some() || status.triggers.is_some())
        .then_some(trigger_state)
        .filter(|s| !triggers::is_empty(s));

    // 3. Bounded history: drop the oldest finished runs.
    while status.runs.len() > RUN_HISTORY_LIMIT {
        match status.runs.iter().position(|r| r.outcome.is_finished()) {
            Some(i) => {
                status.runs.remove(i);
            }
            None => break,
        }
    }
    status.active_runs =
        status.runs.iter().filter(|r| !r.outcome.is_finished()).map(|r| r.name.clone()).collect();
    let latest_finished = status.runs.iter().rev().find(|r| r.outcome.is_finished()).cloned();
    status.last_run = status.runs.last().map(|r| r.outcome);
    if let Some(mv) = status.runs.iter().rev().find_map(|r| r.model_version.clone()) {
        status.latest_model_version = Some(mv);
    }

    // 4. Conditions.
    let g = Some(generation);
    let mut conds = std::mem::take(&mut status.conditions);
    if let Some(err) = &plan.spec_error {
        // An Event on the way into this stall (or to another spec error), not each reconcile.
        let stalled_already = cond::find(&conds, cond::STALLED).is_some_and(|c| {
            c.status == cond::STATUS_TRUE && c.reason == REASON_INVALID_SPEC && c.message == *err
        });
        if !stalled_already {
            plan.events.push(EventNote { warning: true, reason: REASON_INVALID_SPEC, note: err.clone() });
        }
    }
    let mut set = |type_: &str, value: &str, reason: &str, message: String| {
        set_condition(&mut conds, new_condition(type_, value, reason, message, g, now.clone()), now.clone());
    };
    // Triggered runs say what started them (`iris-r4 (Drift trigger)`).
    let active_names = status
        .runs
        .iter()
        .filter(|r| !r.outcome.is_finished())
        .map(|r| match r.trigger.type_ {
            TriggerType::Spec | TriggerType::Manual => r.name.clone(),
            t => format!("{} ({t:?} trigger)", r.name),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(err) = &plan.spec_error {
        set(cond::STALLED, cond::STATUS_TRUE, REASON_INVALID_SPEC, err.clone());
        set(
            cond::RECONCILING,
            cond::STATUS_FALSE,
            REASON_INVALID_SPEC,
            "waiting for the spec to be fixed".into(),
        );
        set(cond::READY, cond::STATUS_FALSE, REASON_INVALID_SPEC, err.clone());
    } else if !status.active_runs.is_empty() || waiting_for_slot {
        let msg = if waiting_for_slot && status.active_runs.is_empty() {
            "a new run is waiting".to_string()
        } else if waiting_for_slot {
            format!("run {active_names} in progress; a new run starts when it finishes")
        } else {
            format!("run {active_names} in progress")
        };
        set(cond::RECONCILING, cond::STATUS_TRUE, "RunInProgress", msg.clone());
        set(cond::STALLED, cond::STATUS_FALSE, "RunInProgress", msg.clone());
        set(cond::READY, cond::STATUS_FALSE, "RunInProgress", msg);
    } else if tj.spec.suspend && latest_finished.is_none() {
        let msg = "suspended: no run starts until spec.suspend is false".to_string();
        set(cond::RECONCILING, cond::STATUS_FALSE, "Suspended", msg.clone());
        set(cond::STALLED, cond::STATUS_FALSE, "Suspended", msg.clone());
        set(cond::READY, cond::STATUS_FALSE, "Suspended", msg);
    } else {
        set(cond::RECONCILING, cond::STATUS_FALSE, "Idle", "no run in progress".into());
    }
    if plan.spec_error.is_none()
        && let Some(run) = &latest_finished
    {
        let ok = run.outcome == RunOutcome::Succeeded;
        let (reason, msg) = if ok {
            let mv = run.model_version.as_deref().unwrap_or("-");
            // A rejected version is the loop working (nothing is deployed), not a failed
            // run; the message says why so `kubectl get tj -o wide` tells the story.
            let verdict = match &observed.latest_version {
                Some(v) if v.model_version == mv && !v.validated => {
                    format!(", which failed validation: {}", v.message)
                }
                _ => String::new(),
            };
            ("RunSucceeded", format!("run {} produced ModelVersion {mv}{verdict}", run.name))
        } else {
            (
                run.reason.as_deref().unwrap_or("RunFailed"),
                format!("run {} failed: {}", run.name, run.message.as_deref().unwrap_or("no details")),
            )
        };
        set(cond::SUCCEEDED, cond::status_str(ok), reason, msg.clone());
        set(cond::FAILED, cond::status_str(!ok), reason, msg.clone());
        if status.active_runs.is_empty() && !waiting_for_slot {
            set(cond::READY, cond::status_str(ok), reason, msg.clone());
            // A failed run needs a human (a new spec, data, or the retry annotation).
            set(cond::STALLED, cond::status_str(!ok), reason, msg);
        }
    }
    status.conditions = conds;
    status.observed_generation = g;
    plan.status = status;
    plan
}

fn finish(run: &mut RunRecord, outcome: RunOutcome, reason: &str, message: impl Into<String>, now: &Time) {
    run.outcome = outcome;
    run.completion_time = Some(now.clone());
    if outcome == RunOutcome::Failed {
        run.reason = Some(reason.into());
        run.message = Some(crate::controllers::truncate(message.into(), 1024));
    }
}

fn follow(
    run: &mut RunRecord,
    job: &Job,
    observed: &Observed,
    now: &Time,
    plan: &mut Plan,
    tj: &TrainingJob,
) {
    let pod = observed.pods.get(&run.job_name);
    if job_condition(job, "Complete").is_some() {
        match result::parse(pod.and_then(|p| p.message.as_deref())) {
            Ok(res) => {
                let mv = model_version(tj, run, job, &res, pod, now);
                if let Some(refusal) =
                    mv.metadata.name.as_ref().and_then(|n| observed.refused_versions.get(n))
                {
                    finish(run, RunOutcome::Failed, refusal.reason, refusal.message.clone(), now);
                    return;
                }
                run.model_version = mv.metadata.name.clone();
                finish(run, RunOutcome::Succeeded, "", "", now);
                plan.events.push(EventNote {
                    warning: false,
                    reason: "ModelVersionCreated",
                    note: format!("created ModelVersion {} from run {}", run.name, run.name),
                });
                plan.create_versions.push(mv);
            }
            Err(e) => finish(run, RunOutcome::Failed, e.reason(), e.to_string(), now),
        }
    } else if let Some(c) = job_condition(job, "Failed") {
        let reason = c.reason.clone().unwrap_or_else(|| "JobFailed".into());
        let mut message = c.message.clone().unwrap_or_default();
        if let Some(p) = pod {
            let detail = p.message.as_deref().map(str::trim).filter(|m| !m.is_empty());
            message = match (p.exit_code, detail) {
                (Some(code), Some(d)) => format!("trainer exited {code}: {d}"),
                (Some(code), None) => format!("trainer exited {code} ({message})"),
                (None, Some(d)) => d.to_string(),
                (None, None) => message,
            };
            run.exit_code = p.exit_code;
        }
        finish(run, RunOutcome::Failed, &reason, message, now);
    } else {
        let s = job.status.as_ref();
        let started = s.and_then(|s| s.active).unwrap_or(0) > 0 || s.and_then(|s| s.ready).unwrap_or(0) > 0;
        if started {
            run.outcome = RunOutcome::Running;
        }
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
            ..ObjectMeta::default()
        },
        spec: ModelVersionSpec {
            model: recipe.model.clone(),
            artifact: res.artifact.clone(),
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

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::batch::v1::{JobCondition, JobStatus},
        jiff::{SignedDuration, Timestamp},
    };

    use super::*;
    use crate::{
        api::{
            common::LocalRef,
            training_job::{DataTrigger, DriftTrigger, Retrain},
        },
        controllers::training_job::{
            desired,
            triggers::{Reading, Readings},
        },
    };

    fn at(secs: i64) -> Time {
        Time("2025-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_secs(secs))
    }

    fn tj(retrain: Retrain) -> TrainingJob {
        let mut tj: TrainingJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u1", "generation": 1,
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"model": "iris", "dataset": {"uri": "file:///d.csv"},
                     "trainer": {"image": "mlops-runtime:dev"}, "output": {"uri": "file:///out"}}
        }))
        .unwrap();
        tj.spec.retrain = Some(retrain);
        tj
    }

    fn job(tj: &TrainingJob, run: &RunRef, condition: Option<&str>) -> Job {
        let mut job = desired::desired_job(tj, run).unwrap();
        job.status = Some(JobStatus {
            active: Some(i32::from(condition.is_none())),
            conditions: condition.map(|c| {
                vec![JobCondition { type_: c.into(), status: "True".into(), ..JobCondition::default() }]
            }),
            ..JobStatus::default()
        });
        job
    }

    fn reconcile(
        tj: &mut TrainingJob,
        jobs: &mut BTreeMap<String, Job>,
        readings: Readings,
        now: Time,
    ) -> Plan {
        let observed = Observed { jobs: jobs.clone(), now: Some(now), readings, ..Observed::default() };
        let plan = plan(tj, &observed, |_| None);
        if let Some(run) = &plan.start_run {
            jobs.insert(run.name.clone(), job(tj, run, None));
        }
        tj.status = Some(plan.status.clone());
        plan
    }

    fn drift(v: f64) -> Readings {
        Readings { drift: Some(Reading::Value(v)), dataset: None }
    }

    #[test]
    fn a_drift_storm_gives_one_triggered_run_that_records_its_trigger() {
        let mut tj = tj(Retrain {
            drift: Some(DriftTrigger {
                inference_service_ref: Some(LocalRef::new("iris")),
                threshold: 0.2,
                for_seconds: Some(20),
                check_interval_seconds: Some(10),
                ..DriftTrigger::default()
            }),
            cooldown_seconds: Some(600),
            ..Retrain::default()
        });
        let mut jobs = BTreeMap::new();
        // Generation 1 starts its Spec run; it finishes.
        let p = reconcile(&mut tj, &mut jobs, drift(0.05), at(0));
        assert_eq!(p.start_run.as_ref().unwrap().trigger.type_, TriggerType::Spec);
        let r1 = p.start_run.unwrap();
        jobs.insert(r1.name.clone(), job(&tj, &r1, Some("Failed")));
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(5));
        assert!(p.start_run.is_none());
        assert_eq!(p.finished_runs.len(), 1);

        // Drift rises and holds; the run starts once the hold is over, and only once.
        let mut started = Vec::new();
        for (sec, value) in [(10, 0.3), (20, 0.4), (30, 0.5), (40, 0.6), (50, 0.7), (60, 0.8)] {
            let p = reconcile(&mut tj, &mut jobs, drift(value), at(sec));
            if let Some(run) = p.start_run.clone() {
                assert!(
                    p.events.iter().any(|e| e.reason == "RunTriggered" && e.note.contains("Drift trigger"))
                );
                started.push((sec, run));
            }
        }
        assert_eq!(started.len(), 1, "{started:?}");
        let (sec, run) = &started[0];
        assert_eq!(*sec, 30, "armed at 10 s, held for 20 s");
        assert_eq!((run.trigger.type_, run.trigger.drift_value), (TriggerType::Drift, Some(0.5)));
        assert_eq!(run.trigger.time, Some(at(30)));
        let status = tj.status.clone().unwrap();
        assert_eq!(status.runs.last().unwrap().trigger, run.trigger);
        let reconciling = status.conditions.iter().find(|c| c.type_ == cond::RECONCILING).unwrap();
        assert_eq!(reconciling.status, "True");
        assert!(reconciling.message.contains("iris-r2 (Drift trigger)"), "{}", reconciling.message);
        let triggers = status.triggers.unwrap();
        assert_eq!(triggers.last_trigger_time, Some(at(30)));
        assert!(triggers.message.unwrap().contains("cooldown"));

        // The run succeeds: the ModelVersion's lineage names the trigger.
        let mut done = job(&tj, run, Some("Complete"));
        done.status.as_mut().unwrap().active = Some(0);
        let result = result::parse(Some(
            r#"{"version":1,"metrics":{"accuracy":0.9},"artifact":{"uri":"file:///out/iris-r2/model.json"}}"#,
        ))
        .unwrap();
        let record = tj.status.as_ref().unwrap().runs.last().cloned().unwrap();
        let mv = model_version(&tj, &record, &done, &result, None, &at(70));
        assert_eq!(mv.spec.lineage.unwrap().trigger, Some(run.trigger.clone()));
    }

    #[test]
    fn triggers_wait_for_a_free_slot_and_a_suspended_job_starts_nothing() {
        let mut tj = tj(Retrain {
            data: Some(DataTrigger { check_interval_seconds: Some(10) }),
            cooldown_seconds: Some(0),
            ..Retrain::default()
        });
        let mut jobs = BTreeMap::new();
        let digest = |d: &str| Readings { drift: None, dataset: Some(Reading::Value(d.into())) };
        let p = reconcile(&mut tj, &mut jobs, digest("sha256:a"), at(0));
        assert_eq!(p.start_run.unwrap().trigger.type_, TriggerType::Spec);
        // A new digest while the Spec run is active: waits, says so.
        let p = reconcile(&mut tj, &mut jobs, digest("sha256:b"), at(10));
        assert!(p.start_run.is_none());
        let ready = p.status.conditions.iter().find(|c| c.type_ == cond::READY).unwrap();
        assert!(ready.message.contains("a new run starts when it finishes"), "{}", ready.message);
        // The Spec run finishes; the pending data change starts exactly one run.
        let r1 = tj.status.as_ref().unwrap().runs[0].name.clone();
        let finished = {
            let mut j = jobs[&r1].clone();
            j.status = Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    ..JobCondition::default()
                }]),
                ..JobStatus::default()
            });
            j
        };
        jobs.insert(r1, finished);
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(15));
        let run = p.start_run.unwrap();
        assert_eq!(
            (run.trigger.type_, run.trigger.dataset_digest.as_deref()),
            (TriggerType::Data, Some("sha256:b"))
        );
        let p = reconcile(&mut tj, &mut jobs, digest("sha256:b"), at(25));
        assert!(p.start_run.is_none(), "the change is covered");

        // Suspended: the trigger stays pending, no run.
        tj.spec.suspend = true;
        let r2 = run.name.clone();
        let mut j = jobs[&r2].clone();
        j.status.as_mut().unwrap().conditions = Some(vec![JobCondition {
            type_: "Failed".into(),
            status: "True".into(),
            ..JobCondition::default()
        }]);
        jobs.insert(r2, j);
        let p = reconcile(&mut tj, &mut jobs, digest("sha256:c"), at(35));
        assert!(p.start_run.is_none());
        tj.spec.suspend = false;
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(36));
        assert_eq!(p.start_run.unwrap().trigger.dataset_digest.as_deref(), Some("sha256:c"));
    }

    #[test]
    fn a_rejected_version_is_reported_on_the_training_job() {
        let mut tj = tj(Retrain { data: Some(DataTrigger::default()), ..Retrain::default() });
        let mut jobs = BTreeMap::new();
        let run = reconcile(&mut tj, &mut jobs, Readings::default(), at(0)).start_run.unwrap();
        let mut done = job(&tj, &run, Some("Complete"));
        done.status.as_mut().unwrap().active = Some(0);
        jobs.insert(run.name.clone(), done);
        let result =
            r#"{"version":1,"metrics":{"f1":0.3},"artifact":{"uri":"file:///out/iris-r1/model.json"}}"#;
        let observed = Observed {
            jobs,
            pods: BTreeMap::from([(
                run.name.clone(),
                PodOutcome { message: Some(result.into()), ..PodOutcome::default() },
            )]),
            now: Some(at(10)),
            latest_version: Some(Verdict {
                model_version: "iris-r1".into(),
                validated: false,
                message: "gate f1 >= serving - 0.05 failed: 0.3 < 0.92".into(),
            }),
            ..Observed::default()
        };
        let p = plan(&tj, &observed, |_| None);
        let ready = p.status.conditions.iter().find(|c| c.type_ == cond::READY).unwrap();
        assert_eq!(ready.status, "True");
        assert!(
            ready.message.contains("produced ModelVersion iris-r1, which failed validation: gate f1"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn a_bad_schedule_stalls_without_starting_runs() {
        let mut tj = tj(Retrain {
            schedule: Some("0 3 * * *".into()),
            time_zone: Some("Mars/Olympus".into()),
            ..Retrain::default()
        });
        let mut jobs = BTreeMap::new();
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(0));
        assert!(p.start_run.is_none());
        let stalled = p.status.conditions.iter().find(|c| c.type_ == cond::STALLED).unwrap();
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "InvalidSpec"));
        assert!(stalled.message.contains("unknown time zone"), "{}", stalled.message);
    }

    #[test]
    fn a_schedule_fires_on_time_and_requeues_for_the_next_time() {
        let mut tj = tj(Retrain { schedule: Some("*/10 * * * *".into()), ..Retrain::default() });
        let mut jobs = BTreeMap::new();
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(0));
        let r1 = p.start_run.unwrap();
        assert_eq!(r1.trigger.type_, TriggerType::Spec);
        assert_eq!(p.requeue_after, Some(std::time::Duration::from_secs(600)));
        jobs.insert(r1.name.clone(), job(&tj, &r1, Some("Failed")));
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(601));
        let run = p.start_run.unwrap();
        assert_eq!(run.trigger.type_, TriggerType::Schedule);
        assert_eq!(run.trigger.schedule_time, Some(at(600)));
        let t = p.status.triggers.unwrap();
        assert_eq!((t.last_schedule_time, t.next_schedule_time), (Some(at(600)), Some(at(1200))));
    }

    /// A TrainingJob without retrain triggers.
    fn plain() -> TrainingJob {
        let mut t = tj(Retrain::default());
        t.spec.retrain = None;
        t
    }

    fn condition<'a>(p: &'a Plan, type_: &str) -> &'a api::conditions::Condition {
        p.status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}"))
    }

    /// A finished Job of `run`: `Complete`, or `Failed` with the Job controller's reason.
    fn finished(tj: &TrainingJob, run: &RunRef, failed: Option<(&str, &str)>) -> Job {
        let mut j = job(tj, run, None);
        j.status = Some(JobStatus {
            active: Some(0),
            start_time: Some(at(1)),
            completion_time: failed.is_none().then(|| at(50)),
            conditions: Some(vec![JobCondition {
                type_: if failed.is_some() { "Failed" } else { "Complete" }.into(),
                status: "True".into(),
                reason: failed.map(|f| f.0.to_string()),
                message: failed.map(|f| f.1.to_string()),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        j
    }

    /// Starts the first run of `tj` and returns it with the Jobs seen.
    fn first_run(tj: &mut TrainingJob) -> (RunRef, BTreeMap<String, Job>) {
        let mut jobs = BTreeMap::new();
        let run = reconcile(tj, &mut jobs, Readings::default(), at(0)).start_run.unwrap();
        (run, jobs)
    }

    fn observed(jobs: BTreeMap<String, Job>, pods: Vec<(&str, PodOutcome)>, now: Time) -> Observed {
        let pods = pods.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Observed { jobs, pods, now: Some(now), ..Observed::default() }
    }

    const RESULT: &str =
        r#"{"version":1,"metrics":{"accuracy":0.9},"artifact":{"uri":"file:///out/iris-r1/m.json"}}"#;

    #[test]
    fn a_failed_run_records_the_exit_code_and_the_trainers_message() {
        let mut tj = plain();
        let (run, mut jobs) = first_run(&mut tj);
        jobs.insert(
            run.name.clone(),
            finished(
                &tj,
                &run,
                Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit")),
            ),
        );
        let pod = PodOutcome {
            message: Some("bad data: column x is not numeric\n".into()),
            exit_code: Some(2),
            reason: Some("Error".into()),
            image_id: None,
        };
        let p = plan(&tj, &observed(jobs.clone(), vec![("iris-r1", pod)], at(10)), |_| None);
        let r = &p.status.runs[0];
        assert_eq!((r.outcome, r.exit_code), (RunOutcome::Failed, Some(2)));
        assert_eq!(r.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(r.message.as_deref(), Some("trainer exited 2: bad data: column x is not numeric"));
        assert_eq!((r.completion_time.clone(), r.model_version.clone()), (Some(at(10)), None));
        assert!(p.start_run.is_none() && p.create_versions.is_empty());
        assert_eq!(p.finished_runs, vec![r.clone()]);
        assert_eq!(p.status.last_run, Some(RunOutcome::Failed));
        assert!(p.status.active_runs.is_empty());
        let ev = p.events.iter().find(|e| e.reason == "RunFailed").unwrap();
        assert!(ev.warning);
        assert_eq!(
            ev.note,
            "run iris-r1 failed (BackoffLimitExceeded): trainer exited 2: bad data: column x is not numeric"
        );
        for (type_, status) in [
            (cond::FAILED, "True"),
            (cond::SUCCEEDED, "False"),
            (cond::READY, "False"),
            (cond::STALLED, "True"),
        ] {
            let c = condition(&p, type_);
            assert_eq!((c.status.as_str(), c.reason.as_str()), (status, "BackoffLimitExceeded"), "{type_}");
        }
        assert_eq!(condition(&p, cond::RECONCILING).status, "False");

        // Killed without a message (OOM): the exit code and the Job's words.
        let pod =
            PodOutcome { exit_code: Some(137), reason: Some("OOMKilled".into()), ..PodOutcome::default() };
        let p = plan(&tj, &observed(jobs, vec![("iris-r1", pod)], at(10)), |_| None);
        assert_eq!(
            p.status.runs[0].message.as_deref(),
            Some("trainer exited 137 (Job has reached the specified backoff limit)")
        );
    }

    #[test]
    fn a_run_past_its_deadline_fails_with_the_jobs_reason() {
        let mut tj = plain();
        tj.spec.active_deadline_seconds = Some(60);
        let (run, mut jobs) = first_run(&mut tj);
        jobs.insert(
            run.name.clone(),
            finished(&tj, &run, Some(("DeadlineExceeded", "Job was active longer than specified deadline"))),
        );
        // The killed pod left no terminated state.
        let p = plan(&tj, &observed(jobs, vec![("iris-r1", PodOutcome::default())], at(70)), |_| None);
        let r = &p.status.runs[0];
        assert_eq!((r.outcome, r.reason.as_deref()), (RunOutcome::Failed, Some("DeadlineExceeded")));
        assert_eq!(r.message.as_deref(), Some("Job was active longer than specified deadline"));
        assert_eq!(r.exit_code, None);
        assert_eq!(condition(&p, cond::READY).reason, "DeadlineExceeded");
    }

    #[test]
    fn a_finished_runs_job_may_go_and_the_run_is_never_started_again() {
        for failed in [None, Some(("BackoffLimitExceeded", "backoff"))] {
            let mut tj = plain();
            let (run, mut jobs) = first_run(&mut tj);
            jobs.insert(run.name.clone(), finished(&tj, &run, failed));
            let p = reconcile_with_pods(&mut tj, &mut jobs, vec![("iris-r1", RESULT)], at(60));
            let done = p.status.runs[0].clone();
            assert!(done.outcome.is_finished());
            // ttlSecondsAfterFinished removes the Job (and its pods).
            jobs.clear();
            for t in [120, 600, 3600] {
                let p = reconcile_with_pods(&mut tj, &mut jobs, vec![], at(t));
                assert!(p.start_run.is_none(), "{failed:?} at {t}");
                assert!(p.events.is_empty() && p.finished_runs.is_empty() && p.create_versions.is_empty());
                assert_eq!(p.status.runs, vec![done.clone()]);
            }
        }
    }

    /// `reconcile` with trainer messages for finished Jobs.
    fn reconcile_with_pods(
        tj: &mut TrainingJob,
        jobs: &mut BTreeMap<String, Job>,
        messages: Vec<(&str, &str)>,
        now: Time,
    ) -> Plan {
        let pods = messages
            .into_iter()
            .map(|(job, m)| {
                (job, PodOutcome { message: Some(m.into()), exit_code: Some(0), ..PodOutcome::default() })
            })
            .collect();
        let p = plan(tj, &observed(jobs.clone(), pods, now), |_| None);
        tj.status = Some(p.status.clone());
        p
    }

    #[test]
    fn a_job_deleted_before_it_finished_fails_its_run() {
        let mut tj = plain();
        let (_, mut jobs) = first_run(&mut tj);
        jobs.clear();
        let p = reconcile_with_pods(&mut tj, &mut jobs, vec![], at(5));
        let r = &p.status.runs[0];
        assert_eq!((r.outcome, r.reason.as_deref()), (RunOutcome::Failed, Some("JobDeleted")));
        assert!(p.start_run.is_none(), "the generation has had its run");
    }

    #[test]
    fn the_model_version_records_the_whole_lineage_of_what_ran() {
        let mut tj = plain();
        tj.spec.hyperparameters = BTreeMap::from([("algorithm".into(), "linear".into())]);
        tj.spec.source = Some(api::training_job::Source {
            repository: "https://git.example/iris".into(),
            revision: Some("abc123".into()),
            commit_time: Some(at(-100)),
        });
        tj.spec.model_version = Some(api::training_job::ModelVersionTemplate {
            labels: BTreeMap::from([("team".into(), "a".into())]),
            gates: vec![api::Gate::absolute("accuracy", api::model_version::GateOp::Ge, 0.8)],
        });
        let (run, mut jobs) = first_run(&mut tj);
        let recipe = desired::recipe(&tj, &run);
        jobs.insert(run.name.clone(), finished(&tj, &run, None));
        // The spec changes while the run trains: the version records what ran (the recipe
        // on the Job).
        tj.spec.hyperparameters.insert("algorithm".into(), "tree".into());
        tj.spec.trainer.image = Some("trainer:next".into());
        tj.spec.model_version.as_mut().unwrap().gates.clear();
        let result = r#"{"version":1,"metrics":{"accuracy":0.96,"f1":0.95},
            "artifact":{"uri":"file:///out/iris-r1/model.json","format":"mlops-linear-v1",
                        "digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
            "dataset":{"digest":"sha256:bbbb","total":150,"train":105,"validation":22,"test":23},
            "validation":{"missing":{"found":2,"action":"drop","removed":2}}}"#;
        let pod = PodOutcome {
            message: Some(result.into()),
            exit_code: Some(0),
            reason: Some("Completed".into()),
            image_id: Some("docker.io/library/trainer@sha256:cccc".into()),
        };
        let p = plan(&tj, &observed(jobs, vec![("iris-r1", pod)], at(60)), |_| None);
        assert_eq!(p.create_versions.len(), 1);
        let mv = &p.create_versions[0];
        assert_eq!(
            (mv.metadata.name.as_deref(), mv.metadata.namespace.as_deref()),
            (Some("iris-r1"), Some("ml"))
        );
        let labels = mv.metadata.labels.clone().unwrap();
        for (k, v) in [
            ("team", "a"),
            (api::LABEL_MODEL, "iris"),
            (api::LABEL_TRAINING_JOB, "iris"),
            (api::LABEL_RUN, "iris-r1"),
            (api::LABEL_APP_MANAGED_BY, api::MANAGED_BY),
            (api::LABEL_APP_PART_OF, api::PART_OF),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        let parsed = result::parse(Some(result)).unwrap();
        let expected = ModelVersionSpec {
            model: "iris".into(),
            artifact: parsed.artifact.clone(),
            metrics: parsed.metrics.clone(),
            gates: recipe.gates.clone(),
            lineage: Some(Lineage {
                training_job: Some("iris".into()),
                run: Some("iris-r1".into()),
                image: Some("mlops-runtime:dev".into()),
                image_digest: Some("docker.io/library/trainer@sha256:cccc".into()),
                dataset: Some(DatasetLineage {
                    uri: "file:///d.csv".into(),
                    digest: Some("sha256:bbbb".into()),
                    rows: parsed.rows.clone(),
                    validation_report: parsed.validation.clone(),
                }),
                hyperparameters: BTreeMap::from([("algorithm".into(), "linear".into())]),
                source: tj.spec.source.clone(),
                trigger: Some(run.trigger.clone()),
                start_time: Some(at(1)),
                completion_time: Some(at(50)),
            }),
        };
        assert_eq!(mv.spec, expected);
        assert_eq!(mv.spec.lineage.as_ref().unwrap().trigger.as_ref().unwrap().type_, TriggerType::Spec);
        let r = &p.status.runs[0];
        assert_eq!((r.outcome, r.model_version.as_deref()), (RunOutcome::Succeeded, Some("iris-r1")));
        assert_eq!(p.status.latest_model_version.as_deref(), Some("iris-r1"));
        assert!(p.events.iter().any(|e| e.reason == "ModelVersionCreated" && !e.warning));
        assert!(p.events.iter().any(|e| e.reason == "RunSucceeded" && !e.warning));
    }

    #[test]
    fn history_keeps_the_newest_finished_runs_and_every_active_one() {
        let mut tj = plain();
        let record = |n: i64, outcome| RunRecord {
            name: run_name("iris", n),
            number: n,
            job_name: run_name("iris", n),
            generation: Some(1),
            outcome,
            ..RunRecord::default()
        };
        let total = RUN_HISTORY_LIMIT as i64 + 4;
        let mut jobs = BTreeMap::new();
        let mut runs = Vec::new();
        for n in 1..=total {
            // The two oldest are still running.
            let active = n <= 2;
            runs.push(record(n, if active { RunOutcome::Running } else { RunOutcome::Failed }));
            if active {
                let r = RunRef {
                    name: run_name("iris", n),
                    number: n,
                    generation: 1,
                    trigger: RunTrigger::default(),
                };
                jobs.insert(r.name.clone(), job(&tj, &r, None));
            }
        }
        tj.status =
            Some(TrainingJobStatus { runs, last_run_number: Some(total), ..TrainingJobStatus::default() });
        let p = plan(&tj, &observed(jobs, vec![], at(0)), |_| None);
        let kept: Vec<i64> = p.status.runs.iter().map(|r| r.number).collect();
        let mut expected = vec![1, 2];
        expected.extend(total - RUN_HISTORY_LIMIT as i64 + 3..=total);
        assert_eq!(kept, expected);
        assert_eq!(p.status.runs.len(), RUN_HISTORY_LIMIT);
        assert_eq!(p.status.active_runs, vec!["iris-r1".to_string(), "iris-r2".to_string()]);
    }

    #[test]
    fn conditions_carry_the_generation_and_keep_their_transition_time() {
        let mut tj = plain();
        let mut jobs = BTreeMap::new();
        let fail = |tj: &TrainingJob, jobs: &mut BTreeMap<String, Job>, run: &RunRef| {
            jobs.insert(run.name.clone(), finished(tj, run, Some(("BackoffLimitExceeded", "backoff"))));
        };
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(0));
        let r1 = p.start_run.clone().unwrap();
        assert_eq!(p.status.observed_generation, Some(1));
        for c in &p.status.conditions {
            assert_eq!(c.observed_generation, Some(1), "{}", c.type_);
        }
        assert_eq!(condition(&p, cond::RECONCILING).status, "True");

        // A new generation waits for the run in flight: every condition says generation 2,
        // and Reconciling, still True, keeps its transition time.
        tj.metadata.generation = Some(2);
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(30));
        assert!(p.start_run.is_none());
        assert_eq!(p.status.observed_generation, Some(2));
        for c in &p.status.conditions {
            assert_eq!(c.observed_generation, Some(2), "{}", c.type_);
        }
        let reconciling = condition(&p, cond::RECONCILING);
        assert!(reconciling.message.contains("a new run starts when it finishes"), "{}", reconciling.message);
        assert_eq!(reconciling.last_transition_time, at(0), "still True: no transition");

        // The first run fails, the second starts: still reconciling.
        fail(&tj, &mut jobs, &r1);
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(60));
        let r2 = p.start_run.clone().unwrap();
        assert_eq!(r2.generation, 2);
        assert_eq!(condition(&p, cond::RECONCILING).last_transition_time, at(0));
        // It fails too: Reconciling turns False now, and Failed keeps its time from r1.
        fail(&tj, &mut jobs, &r2);
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(90));
        let reconciling = condition(&p, cond::RECONCILING);
        assert_eq!(
            (reconciling.status.as_str(), reconciling.last_transition_time.clone()),
            ("False", at(90))
        );
        assert_eq!(condition(&p, cond::FAILED).last_transition_time, at(60));
        assert!(p.status.conditions.iter().all(|c| c.observed_generation == Some(2)));
    }

    #[test]
    fn a_version_the_api_server_refuses_fails_its_run_instead_of_retrying() {
        let mut tj = plain();
        let (run, mut jobs) = first_run(&mut tj);
        jobs.insert(run.name.clone(), finished(&tj, &run, None));
        let pods = vec![("iris-r1", PodOutcome { message: Some(RESULT.into()), ..PodOutcome::default() })];
        let mut seen = observed(jobs, pods, at(60));
        assert_eq!(plan(&tj, &seen, |_| None).create_versions.len(), 1);

        let api_message = format!("ModelVersion.mlops.dev \"iris-r1\" is invalid: {}", "x".repeat(2000));
        seen.refused_versions =
            BTreeMap::from([("iris-r1".to_string(), Refusal::rejected("iris-r1", &api_message))]);
        let p = plan(&tj, &seen, |_| None);
        assert!(p.create_versions.is_empty() && p.start_run.is_none());
        let r = &p.status.runs[0];
        assert_eq!((r.outcome, r.reason.as_deref()), (RunOutcome::Failed, Some(REASON_VERSION_REJECTED)));
        assert!(
            r.message
                .as_deref()
                .unwrap()
                .starts_with("the API server refused ModelVersion iris-r1: ModelVersion.mlops.dev")
        );
        let message = r.message.as_deref().unwrap();
        assert!(message.ends_with('…') && message.len() <= 512 + '…'.len_utf8(), "cut short");
        assert_eq!((r.model_version.clone(), p.status.latest_model_version.clone()), (None, None));
        assert_eq!(p.finished_runs[0].outcome, RunOutcome::Failed);
        let reasons: Vec<_> = p.events.iter().map(|e| (e.reason, e.warning)).collect();
        assert_eq!(reasons, vec![("RunFailed", true)]);
        assert!(p.events[0].note.contains(REASON_VERSION_REJECTED));
        assert_eq!(condition(&p, cond::STALLED).reason, REASON_VERSION_REJECTED);
    }

    #[test]
    fn a_version_name_taken_by_an_import_fails_the_run_and_names_the_clash() {
        let mut tj = plain();
        let (run, mut jobs) = first_run(&mut tj);
        jobs.insert(run.name.clone(), finished(&tj, &run, None));
        let pods = vec![("iris-r1", PodOutcome { message: Some(RESULT.into()), ..PodOutcome::default() })];
        let mut seen = observed(jobs, pods, at(60));
        let ours = plan(&tj, &seen, |_| None).create_versions[0].clone();
        assert!(made_by(&ours, &tj, "iris-r1"), "what this run makes is its own");

        let imported: ModelVersion = serde_json::from_value(serde_json::json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "iris-r1", "namespace": "ml"},
            "spec": {"model": "iris", "artifact": {"uri": "s3://elsewhere/m"}},
        }))
        .unwrap();
        assert!(!made_by(&imported, &tj, "iris-r1"));
        seen.refused_versions =
            BTreeMap::from([("iris-r1".to_string(), Refusal::name_taken(&imported, &tj, "iris-r1"))]);
        let p = plan(&tj, &seen, |_| None);
        let r = &p.status.runs[0];
        assert_eq!((r.outcome, r.reason.as_deref()), (RunOutcome::Failed, Some(REASON_VERSION_NAME_TAKEN)));
        let ev = p.events.iter().find(|e| e.warning && e.reason == "RunFailed").unwrap();
        for words in [
            "ModelVersion iris-r1 already exists",
            "not made by run iris-r1 of TrainingJob iris",
            "imported",
            api::ANNOTATION_RETRY,
        ] {
            assert!(ev.note.contains(words), "{words}: {}", ev.note);
        }
        assert!(p.create_versions.is_empty());
        assert_eq!(p.status.latest_model_version, None);
    }

    #[test]
    fn a_version_is_ours_by_its_labels_owner_or_lineage() {
        let tj = plain();
        let mv = |labels: serde_json::Value,
                  owners: serde_json::Value,
                  lineage: serde_json::Value|
         -> ModelVersion {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
                "metadata": {"name": "iris-r1", "labels": labels, "ownerReferences": owners},
                "spec": {"model": "iris", "artifact": {"uri": "s3://b/k"}, "lineage": lineage},
            }))
            .unwrap()
        };
        let none = serde_json::json!({});
        let owner = |uid: &str| serde_json::json!([{"apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob", "name": "iris", "uid": uid}]);
        let labels =
            |tj: &str, run: &str| serde_json::json!({api::LABEL_TRAINING_JOB: tj, api::LABEL_RUN: run});
        let lineage = |tj: &str, run: &str| serde_json::json!({"trainingJob": tj, "run": run});
        assert!(made_by(&mv(labels("iris", "iris-r1"), owner("other"), none.clone()), &tj, "iris-r1"));
        assert!(made_by(&mv(none.clone(), owner("u1"), none.clone()), &tj, "iris-r1"));
        assert!(made_by(
            &mv(none.clone(), serde_json::json!([]), lineage("iris", "iris-r1")),
            &tj,
            "iris-r1"
        ));
        for (l, o, g) in [
            (labels("iris", "iris-r2"), owner("other"), lineage("iris", "iris-r2")),
            (labels("other", "iris-r1"), serde_json::json!([]), lineage("other", "iris-r1")),
            (serde_json::json!({api::LABEL_RUN: "iris-r1"}), serde_json::json!([]), none.clone()),
            (none.clone(), serde_json::json!([]), none.clone()),
        ] {
            assert!(!made_by(&mv(l.clone(), o, g.clone()), &tj, "iris-r1"), "{l} {g}");
        }
    }

    #[test]
    fn an_invalid_spec_is_an_event_on_the_transition_only() {
        let mut tj = tj(Retrain {
            schedule: Some("0 3 * * *".into()),
            time_zone: Some("Mars/Olympus".into()),
            ..Retrain::default()
        });
        let mut jobs = BTreeMap::new();
        let invalid = |p: &Plan| {
            p.events.iter().filter(|e| e.reason == REASON_INVALID_SPEC).cloned().collect::<Vec<_>>()
        };
        let p = reconcile(&mut tj, &mut jobs, Readings::default(), at(0));
        let events = invalid(&p);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning && events[0].note.contains("Mars/Olympus"), "{events:?}");
        for t in [30, 60, 600] {
            assert!(invalid(&reconcile(&mut tj, &mut jobs, Readings::default(), at(t))).is_empty());
        }
        // Another spec error is another transition.
        tj.spec.retrain.as_mut().unwrap().time_zone = Some("Venus/Maxwell".into());
        let events = invalid(&reconcile(&mut tj, &mut jobs, Readings::default(), at(700)));
        assert_eq!(events.len(), 1);
        assert!(events[0].note.contains("Venus/Maxwell"));

        // A spec the Job builder refuses: once, however often it is seen.
        let mut tj = plain();
        for t in [0, 30, 60] {
            let p = plan(&tj, &observed(BTreeMap::new(), vec![], at(t)), |_| {
                Some("modelVersion.labels: bad".into())
            });
            assert!(p.start_run.is_none());
            assert_eq!(invalid(&p).len(), usize::from(t == 0), "at {t}");
            tj.status = Some(p.status);
        }
    }
}
