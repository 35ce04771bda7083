//! The TrainingJob pass as a pure function: from the resource, what the shell read
//! ([`Inputs`]) and the time, to the [`Outcome`]: the children to apply and keep, the
//! ModelVersions to create, the new status, the Events and when to look again.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Service},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{Resource, ResourceExt};

use super::{
    data_check,
    desired::{self, ANNOTATION_GENERATION, ANNOTATION_RUN_RECIPE, RunRecipe, RunRef, run_name},
    inputs::{Inputs, PodOutcome, Verdict},
    model_version::{Refusal, made_by, model_version},
    result,
    triggers::{self, Readings},
};
use crate::{
    api::{
        self, ModelVersion, TrainingJob, TrainingJobStatus,
        common::annotation_pending,
        conditions::{self as cond, new_condition, set_condition},
        training_job::{RUN_HISTORY_LIMIT, RunOutcome, RunRecord, RunTrigger, TriggerType},
    },
    controllers::{apply::Child, pod_security::policy},
};

/// Condition reason and Event reason of a spec only the controller can find wrong.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Requeue while a run is active, and otherwise: watches drive progress, this is only a
/// safety net for missed events (retrain triggers ask for their own times).
const SAFETY_NET_ACTIVE: Duration = Duration::from_secs(30);
const SAFETY_NET_IDLE: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, PartialEq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Everything one pass does, in the order the shell does it: apply `children`, create
/// the ModelVersions, set `suspend` on active Jobs, write `status`, prune every child not
/// in `keep`, publish `events`, requeue after `requeue`.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Server-side applied, in order: a new dataset check Job, the new run's headless
    /// Service (distributed runs) and its Job.
    pub children: Vec<Child>,
    /// ModelVersions of runs that succeeded. Created, never applied: a version of the
    /// same name that is not the run's is left alone.
    pub creates: Vec<ModelVersion>,
    /// `(kind, name)` of the children to keep; every other Job and Service this
    /// TrainingJob controls is deleted (see [`keep_set`]).
    pub keep: BTreeSet<(String, String)>,
    /// Active Jobs whose `spec.suspend` must change, with the value to set.
    pub suspend: Vec<(String, bool)>,
    pub status: TrainingJobStatus,
    pub events: Vec<EventNote>,
    pub requeue: Duration,
    /// The run started by this pass, and the runs that finished in it (for the metrics).
    pub started: Option<RunRef>,
    pub finished_runs: Vec<RunRecord>,
    /// What the conditions were decided from, so a refused version can be folded in.
    basis: Basis,
}

/// A spec problem only the controller can see: `Stalled=True` with its reason, no run
/// started, until the spec changes.
#[derive(Clone, Debug, PartialEq)]
struct Stall {
    reason: &'static str,
    message: String,
}

impl Stall {
    fn invalid(message: impl Into<String>) -> Stall {
        Stall { reason: REASON_INVALID_SPEC, message: message.into() }
    }
}

/// The facts besides the runs that the conditions depend on.
#[derive(Clone, Debug, Default)]
struct Basis {
    spec_error: Option<Stall>,
    /// A run is wanted but every slot is taken.
    waiting_for_slot: bool,
    verdict: Option<Verdict>,
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

fn key<K: Resource<DynamicType = ()>>(name: &str) -> (String, String) {
    (K::kind(&()).to_string(), name.to_string())
}

/// The children prune keeps: the Job of every recorded run (finished ones are history,
/// removed by their own `ttlSecondsAfterFinished`), a run's headless Service as long as
/// its Job is there (the pods it names may still be read), and the dataset checks still
/// running. A Job whose run fell out of the bounded history, the Service of a run whose
/// Job is gone, and a check whose reading was taken are deleted. `jobs_present` maps each
/// present Job to the Service its pods resolve through (their `subdomain`): the one it was
/// started with, whatever the name of a new run's Service is now.
pub fn keep_set(
    status: &TrainingJobStatus,
    jobs_present: &BTreeMap<String, Option<String>>,
    running_checks: &[String],
) -> BTreeSet<(String, String)> {
    let mut keep: BTreeSet<_> = status.runs.iter().map(|r| key::<Job>(&r.job_name)).collect();
    keep.extend(
        status.runs.iter().filter_map(|r| jobs_present.get(&r.job_name)?.as_deref()).map(key::<Service>),
    );
    keep.extend(running_checks.iter().map(|n| key::<Job>(n)));
    keep
}

/// The Service a Job's pods resolve each other through, if any.
fn rendezvous_service(job: &Job) -> Option<String> {
    job.spec.as_ref()?.template.spec.as_ref()?.subdomain.clone()
}

/// Computes the pass.
pub fn plan(tj: &TrainingJob, inputs: &Inputs, now: Timestamp) -> Outcome {
    let now = Time(now);
    let generation = tj.metadata.generation.unwrap_or(0);
    let mut status = tj.status.clone().unwrap_or_default();
    let mut plan = Outcome::default();
    let mut spec_error: Option<Stall> = None;
    // Pods the namespace's pod policy refuses are never created: no run, no dataset check.
    let refused = desired::pod_policy_refusal(tj, inputs.pod_security_level);

    // Readings of the retrain triggers: the drift the shell measured, the dataset check.
    let (_, data_due) = triggers::checks_due(tj.spec.retrain.as_ref(), status.triggers.as_ref(), now.0);
    let check = data_check::plan(tj, inputs, data_due && refused.is_none(), now.0);
    let readings = Readings { drift: inputs.drift.clone(), dataset: check.reading.clone() };
    if let Some(job) = &check.start {
        push_child(&mut plan.children, job, &mut spec_error);
    }

    // 0. Adopt a run whose Job exists but whose record was lost (the status write after
    //    creating the Job failed): it is followed like any other, never started twice.
    let recorded = status.last_run_number.unwrap_or(0);
    for job in inputs.jobs.values() {
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
        let job = inputs.jobs.get(&run.job_name);
        let before = run.outcome;
        match job {
            None => finish(
                run,
                RunOutcome::Failed,
                "JobDeleted",
                "the run's Job was deleted before it finished",
                &now,
            ),
            Some(job) => follow(run, job, inputs, &now, &mut plan, tj),
        }
        if run.outcome != before && run.outcome.is_finished() {
            plan.finished_runs.push(run.clone());
            plan.events.push(finished_event(run));
        }
        if let Some(job) = job {
            let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
            if !run.outcome.is_finished() && suspended != tj.spec.suspend {
                plan.suspend.push((run.job_name.clone(), tj.spec.suspend));
            }
        }
    }

    // 2. Start a run when this generation has none yet, a retry was asked for, or a
    //    retrain trigger wants one. At most one run starts per reconcile, and it covers
    //    every trigger pending now (de-duplication).
    let known_generation = status.runs.iter().any(|r| r.generation == Some(generation))
        || inputs.jobs.values().any(|j| generation_of(j) == Some(generation));
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
        &readings,
        tj.metadata.creation_timestamp.as_ref().map(|t| t.0),
        now.0,
        can_start,
    );
    plan.events.extend(assessment.events.iter().cloned());
    let mut trigger_state = assessment.state.clone();
    if let Some(err) = &assessment.spec_error {
        spec_error = Some(Stall::invalid(err.clone()));
    }
    if let Some(message) = refused {
        spec_error = Some(Stall { reason: policy::REASON, message });
    }
    let wants = !known_generation || retry || assessment.wanted.is_some();
    let mut waiting_for_slot = false;
    if wants && !tj.spec.suspend && spec_error.is_none() {
        if active >= max_active {
            waiting_for_slot = true;
        } else {
            let number = status
                .last_run_number
                .unwrap_or(0)
                .max(inputs.jobs.values().filter_map(number_of).max().unwrap_or(0))
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
            match desired::desired_job(tj, &run) {
                Err(err) => spec_error = Some(Stall::invalid(err.to_string())),
                Ok(job) => {
                    // Built once: the Job the run starts with is the one applied.
                    if let Some(service) = desired::desired_service(tj, &run) {
                        push_child(&mut plan.children, &service, &mut spec_error);
                    }
                    push_child(&mut plan.children, &job, &mut spec_error);
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
                    plan.started = Some(run);
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
    status.last_run = status.runs.last().map(|r| r.outcome);
    if let Some(mv) = status.runs.iter().rev().find_map(|r| r.model_version.clone()) {
        status.latest_model_version = Some(mv);
    }
    let started = plan.started.as_ref().map(|run| {
        let service = (tj.spec.workers > 1).then(|| desired::rendezvous_service_name(&run.name));
        (run.name.clone(), service)
    });
    let present: BTreeMap<String, Option<String>> = inputs
        .jobs
        .iter()
        .map(|(name, job)| (name.clone(), rendezvous_service(job)))
        .chain(started)
        .collect();
    plan.keep = keep_set(&status, &present, &check.running);

    // 4. Conditions, and an Event on the way into a spec stall (or to another spec
    //    error), not each reconcile.
    if let Some(err) = &spec_error {
        let stalled_already = cond::find(&status.conditions, cond::STALLED).is_some_and(|c| {
            c.status == cond::STATUS_TRUE && c.reason == err.reason && c.message == err.message
        });
        if !stalled_already {
            plan.events.push(EventNote { warning: true, reason: err.reason, note: err.message.clone() });
        }
    }
    plan.basis = Basis { spec_error, waiting_for_slot, verdict: inputs.latest_version.clone() };
    set_conditions(&mut status, tj, &plan.basis, &now);
    let safety_net = if status.active_runs.is_empty() { SAFETY_NET_IDLE } else { SAFETY_NET_ACTIVE };
    plan.requeue = assessment.requeue_after.map_or(safety_net, |t| t.min(safety_net));
    plan.status = status;
    plan
}

/// The Ready, Stalled, Reconciling, Succeeded and Failed conditions from the runs and the
/// [`Basis`]. Ready, Stalled and Reconciling are set on every path, so a failed pass's
/// conditions (see `Context::report_failure`) never outlive a pass that succeeds.
fn set_conditions(status: &mut TrainingJobStatus, tj: &TrainingJob, basis: &Basis, now: &Time) {
    let g = Some(tj.metadata.generation.unwrap_or(0));
    let latest_finished = status.runs.iter().rev().find(|r| r.outcome.is_finished()).cloned();
    let mut conds = std::mem::take(&mut status.conditions);
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
    if let Some(err) = &basis.spec_error {
        set(cond::STALLED, cond::STATUS_TRUE, err.reason, err.message.clone());
        set(cond::RECONCILING, cond::STATUS_FALSE, err.reason, "waiting for the spec to be fixed".into());
        set(cond::READY, cond::STATUS_FALSE, err.reason, err.message.clone());
    } else if !status.active_runs.is_empty() || basis.waiting_for_slot {
        let msg = if basis.waiting_for_slot && status.active_runs.is_empty() {
            "a new run is waiting".to_string()
        } else if basis.waiting_for_slot {
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
        if latest_finished.is_none() {
            // Ready and Stalled are always decided, so a failure a pass reported is replaced.
            let msg = "no run has finished yet".to_string();
            set(cond::READY, cond::STATUS_FALSE, "NoRun", msg.clone());
            set(cond::STALLED, cond::STATUS_FALSE, "NoRun", msg);
        }
    }
    if basis.spec_error.is_none()
        && let Some(run) = &latest_finished
    {
        let ok = run.outcome == RunOutcome::Succeeded;
        let (reason, msg) = if ok {
            let mv = run.model_version.as_deref().unwrap_or("-");
            // A rejected version is the loop working (nothing is deployed), not a failed
            // run; the message says why so `kubectl get tj -o wide` tells the story.
            let verdict = match &basis.verdict {
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
        if status.active_runs.is_empty() && !basis.waiting_for_slot {
            set(cond::READY, cond::status_str(ok), reason, msg.clone());
            // A failed run needs a human (a new spec, data, or the retry annotation).
            set(cond::STALLED, cond::status_str(!ok), reason, msg);
        }
    }
    status.conditions = conds;
    status.observed_generation = g;
}

fn finish(run: &mut RunRecord, outcome: RunOutcome, reason: &str, message: impl Into<String>, now: &Time) {
    run.outcome = outcome;
    run.completion_time = Some(now.clone());
    if outcome == RunOutcome::Failed {
        run.reason = Some(reason.into());
        run.message = Some(crate::controllers::truncate(message.into(), 1024));
    }
}

fn follow(run: &mut RunRecord, job: &Job, inputs: &Inputs, now: &Time, plan: &mut Outcome, tj: &TrainingJob) {
    let pod = inputs.pods.get(&run.job_name);
    if job_condition(job, "Complete").is_some() {
        match result::parse(pod.and_then(|p| p.message.as_deref())) {
            Ok(res) => {
                // The name is deterministic: a version of it made by this run is the one a
                // pass made before (its status write failed); any other is not ours.
                let mv = model_version(tj, run, job, &res, pod, now);
                let exists = inputs.versions.get(&run.name);
                if let Some(existing) = exists.filter(|v| !made_by(v, tj, &run.name, job)) {
                    let refusal = Refusal::name_taken(existing, tj, &run.name);
                    finish(run, RunOutcome::Failed, refusal.reason, refusal.message, now);
                    return;
                }
                run.model_version = Some(run.name.clone());
                finish(run, RunOutcome::Succeeded, "", "", now);
                if exists.is_none() {
                    plan.events.push(version_created(&run.name));
                    plan.creates.push(mv);
                }
            }
            Err(e) => finish(run, RunOutcome::Failed, e.reason(), e.to_string(), now),
        }
    } else if let Some(c) = job_condition(job, "Failed") {
        let reason = c.reason.clone().unwrap_or_else(|| "JobFailed".into());
        let ns = tj.namespace().unwrap_or_default();
        let message = failure_message(&run.job_name, &ns, c.message.as_deref().unwrap_or_default(), pod);
        run.exit_code = pod.and_then(|p| p.exit_code);
        finish(run, RunOutcome::Failed, &reason, message, now);
    } else {
        let s = job.status.as_ref();
        let started = s.and_then(|s| s.active).unwrap_or(0) > 0 || s.and_then(|s| s.ready).unwrap_or(0) > 0;
        if started {
            run.outcome = RunOutcome::Running;
        }
    }
}

/// Longest trainer message kept (the kubelet allows 4 KiB): a run's message is one line
/// of status, not a log.
const TRAINER_MESSAGE_LIMIT: usize = 512;

/// Why a run's Job failed, from what the trainer chose to say and never from its output:
/// its termination message after the exit code (`trainer exited 2: schema check failed`);
/// without one, the exit code, what ended it and where its output is
/// (`kubectl logs job/<run> -n <ns>`), which only those allowed to read pods can follow.
/// Pods gone (a deadline): the Job's own words.
fn failure_message(job: &str, ns: &str, job_message: &str, pod: Option<&PodOutcome>) -> String {
    let Some(exit) = pod.and_then(PodOutcome::exit) else { return job_message.to_string() };
    match pod.and_then(|p| p.message.as_deref()).map(str::trim).filter(|m| !m.is_empty()) {
        Some(said) => {
            format!(
                "trainer {exit}: {}",
                crate::controllers::truncate(said.to_string(), TRAINER_MESSAGE_LIMIT)
            )
        }
        None => format!(
            "trainer {exit} without a termination message; its output: kubectl logs job/{job} -n {ns}"
        ),
    }
}

fn version_created(run: &str) -> EventNote {
    EventNote {
        warning: false,
        reason: "ModelVersionCreated",
        note: format!("created ModelVersion {run} from run {run}"),
    }
}

fn finished_event(run: &RunRecord) -> EventNote {
    match run.outcome {
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
    }
}

/// A child for the applier; serializing a typed object does not fail in practice, and if
/// it did the pass would stall with the reason rather than skip the child silently.
fn push_child<K>(children: &mut Vec<Child>, obj: &K, spec_error: &mut Option<Stall>)
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    match Child::of(obj) {
        Ok(child) => children.push(child),
        Err(e) => {
            *spec_error = Some(Stall::invalid(format!(
                "{} {}: {e}",
                K::kind(&()),
                obj.meta().name.as_deref().unwrap_or("")
            )))
        }
    }
}

/// Folds a ModelVersion the API server refused (422, a bound the result checks do not
/// know of) into the outcome: its run fails instead of succeeding, with the server's
/// message, and is never retried (the next pass sees it finished). No second plan: only
/// that run, the Events about it and the conditions change.
pub fn version_refused(
    outcome: &mut Outcome,
    tj: &TrainingJob,
    name: &str,
    api_message: &str,
    now: Timestamp,
) {
    let now = Time(now);
    let refusal = Refusal::rejected(name, api_message);
    outcome.creates.retain(|mv| mv.metadata.name.as_deref() != Some(name));
    let status = &mut outcome.status;
    let Some(run) = status.runs.iter_mut().find(|r| r.model_version.as_deref() == Some(name)) else { return };
    let before = [version_created(name), finished_event(run)];
    run.model_version = None;
    finish(run, RunOutcome::Failed, refusal.reason, refusal.message, &now);
    let failed = run.clone();
    outcome.events.retain(|e| !before.contains(e));
    outcome.events.push(finished_event(&failed));
    for r in outcome.finished_runs.iter_mut().filter(|r| r.name == failed.name) {
        *r = failed.clone();
    }
    if status.latest_model_version.as_deref() == Some(name) {
        let previous = tj.status.as_ref().and_then(|s| s.latest_model_version.clone());
        status.latest_model_version =
            status.runs.iter().rev().find_map(|r| r.model_version.clone()).or(previous);
    }
    status.last_run = status.runs.last().map(|r| r.outcome);
    set_conditions(status, tj, &outcome.basis, &now);
}

#[cfg(test)]
mod tests;
