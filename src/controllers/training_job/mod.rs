//! TrainingJob controller: the I/O shell around one pipeline per pass. It reads what the
//! pass needs ([`inputs::fetch`]), asks the pure [`plan::plan`] for the [`plan::Outcome`],
//! and carries it out: apply the new run's children with the shared applier, create
//! ModelVersions, write the status, prune the children no longer kept, publish Events.

pub mod data_check;
pub mod desired;
pub mod inputs;
pub mod model_version;
pub mod plan;
pub mod result;
pub mod retention;
pub mod triggers;

#[cfg(test)]
mod shell_tests;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::{
    api::{batch::v1::Job, core::v1::Service},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{Controller, controller::Action, events::EventType, reflector::ObjectRef, watcher},
};
use tracing::{info, instrument};

use super::{Context, Error, Result, apply::Applier, apply_status, ownership::Owner};
use crate::api::{
    self, ModelVersion, TrainingJob,
    training_job::{RunOutcome, TriggerType},
};

pub const CONTROLLER: &str = "trainingjob";

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    Controller::new(ctx.watched::<TrainingJob>(), watcher::Config::default().any_semantic())
        .owns(ctx.watched::<Job>(), watcher::Config::default().labels(api::LABEL_TRAINING_JOB))
        // A produced version's validation verdict is reported on its TrainingJob.
        .watches(
            ctx.watched::<ModelVersion>(),
            watcher::Config::default().labels(api::LABEL_TRAINING_JOB),
            |mv: ModelVersion| {
                let ns = mv.namespace().unwrap_or_default();
                mv.labels().get(api::LABEL_TRAINING_JOB).map(|n| ObjectRef::new(n).within(&ns))
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, |tj, err, ctx| ctx.error_action(CONTROLLER, tj.as_ref(), err), ctx.clone())
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[instrument(skip_all, fields(trainingjob = %tj.name_any(), namespace = tj.namespace().unwrap_or_default()))]
async fn reconcile(tj: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    // Every failed pass is visible on the object (a condition and a Warning Event), not
    // only in the operator's log.
    ctx.reported(tj.as_ref(), reconcile_pass(&tj, &ctx, Timestamp::now()).await).await
}

/// One pass: fetch the inputs, plan, apply the outcome.
async fn reconcile_pass(tj: &TrainingJob, ctx: &Context, now: Timestamp) -> Result<Action> {
    if tj.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove Jobs and Services.
        return Ok(Action::await_change());
    }
    let ns = tj.namespace().unwrap_or_default();
    // Plan from the status as last written, never from the watch cache: a cache that has
    // not caught up with our previous write would replay its transition (a triggered run
    // whose trigger is not yet consumed would start a second time).
    let tjs: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(tj) = tjs.get_opt(&tj.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if tj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let inputs = inputs::fetch(ctx, &tj, now).await?;
    let mut outcome = plan::plan(&tj, &inputs, now);

    let selector = format!("{}={}", api::LABEL_TRAINING_JOB, tj.name_any());
    let applier = Applier::new(ctx.client.clone(), &ns, Owner::of(&tj), &selector);
    let kinds = [ApiResource::erase::<Job>(&()), ApiResource::erase::<Service>(&())];
    // The Jobs were read in full with the same selector: only Services are listed.
    applier.observed(inputs.jobs.values().chain(&inputs.checks));
    applier.observe(&kinds).await?;
    applier.apply_all(&outcome.children).await?;
    if let Some(run) = &outcome.started {
        info!(run = %run.name, "started a training run");
    }
    let versions: Api<ModelVersion> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PostParams { field_manager: Some(api::FIELD_MANAGER.into()), ..Default::default() };
    let mut produced = false;
    for mv in std::mem::take(&mut outcome.creates) {
        let name = mv.name_any();
        match versions.create(&params, &mv).await {
            Ok(_) => produced = true,
            // Invalid: result::parse checks the schema's bounds, this is the safety net.
            // The run fails instead of retrying forever.
            Err(kube::Error::Api(s)) if s.code == 422 => {
                plan::version_refused(&mut outcome, &tj, &name, &s.message, now);
            }
            // A 409 is a version made since the inputs were read: the next pass reads it.
            Err(e) => return Err(Error::child("create", "ModelVersion", &name, e)),
        }
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    for (job, suspend) in &outcome.suspend {
        // The UID binds the patch to the Job the pass read (one of ours), not to whatever
        // holds its name by the time it is sent.
        let mut patch = serde_json::json!({"spec": {"suspend": suspend}});
        if let Some(uid) = inputs.jobs.get(job).and_then(|j| j.uid()) {
            patch["metadata"] = serde_json::json!({"uid": uid});
        }
        jobs.patch(job, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::child("suspend", "Job", job, e))?;
    }
    if tj.status.as_ref() != Some(&outcome.status) {
        apply_status(&tjs, &tj, &outcome.status).await?;
    }
    // After the status write: a finished check's reading is in the status before its Job
    // goes, and a run's Job is kept while its record is.
    applier.prune(&kinds, &outcome.keep).await?;
    for ev in outcome.events.iter().cloned() {
        let type_ = if ev.warning { EventType::Warning } else { EventType::Normal };
        ctx.event(&tj, type_, ev.reason, "Reconcile", ev.note).await;
    }
    if produced {
        prune_versions(ctx, &tj, &versions).await?;
    }
    // A pass in flight when the TrainingJob was deleted must not bring its series back.
    ctx.metrics.for_live_object(tj.uid().as_deref(), |_| record_metrics(ctx, &tj, &ns, &outcome));
    Ok(Action::requeue(outcome.requeue))
}

/// Retention ([`retention`]), applied when a run produced a version: the registry of a
/// frequent schedule stays bounded without a read on every pass.
async fn prune_versions(ctx: &Context, tj: &TrainingJob, api: &Api<ModelVersion>) -> Result<()> {
    let selector = format!("{}={}", api::LABEL_TRAINING_JOB, tj.name_any());
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::child("list", "ModelVersion", &selector, e))?;
    let expired = retention::expired(tj, &listed.items);
    for name in &expired {
        // The UID precondition: a version re-created under the same name is not this one.
        let uid = listed.items.iter().find(|mv| &mv.name_any() == name).and_then(|mv| mv.uid());
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid, resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(Error::child("delete", "ModelVersion", name, e)),
        }
    }
    if !expired.is_empty() {
        info!(versions = ?expired, "retention deleted old versions");
        let note = format!(
            "deleted {} (retention keeps the last {} versions not in use)",
            expired.join(", "),
            retention::keep_last(tj)
        );
        ctx.event(tj, EventType::Normal, "VersionsDeleted", "Retention", note).await;
    }
    Ok(())
}

fn record_metrics(ctx: &Context, tj: &TrainingJob, ns: &str, plan: &plan::Outcome) {
    let name = tj.name_any();
    if let Some(run) = &plan.started {
        ctx.metrics.training_run_started(ns, &name, trigger_label(run.trigger.type_));
    }
    for run in &plan.finished_runs {
        let outcome = if run.outcome == RunOutcome::Succeeded { "succeeded" } else { "failed" };
        ctx.metrics.training_run_finished(ns, &name, trigger_label(run.trigger.type_), outcome);
    }
    let last_success = plan
        .status
        .runs
        .iter()
        .filter(|r| r.outcome == RunOutcome::Succeeded)
        .filter_map(|r| r.completion_time.as_ref())
        .map(|t| t.0.as_millisecond() as f64 / 1000.0)
        .reduce(f64::max);
    if last_success.is_some() {
        ctx.metrics.training_last_success(ns, &name, last_success);
    }
    let drift = tj
        .spec
        .retrain
        .as_ref()
        .and_then(|r| r.drift.as_ref())
        .map(|d| (plan.status.triggers.as_ref().and_then(|t| t.drift_value), d.threshold));
    ctx.metrics.retrain_drift(ns, &name, drift);
}

fn trigger_label(t: TriggerType) -> &'static str {
    match t {
        TriggerType::Spec => "spec",
        TriggerType::Manual => "manual",
        TriggerType::Schedule => "schedule",
        TriggerType::Drift => "drift",
        TriggerType::Data => "data",
    }
}
