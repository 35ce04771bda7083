//! TrainingJob controller: the I/O shell. It lists the runs' Jobs, reads the trainer
//! results of finished ones from their pods, asks the pure [`status::plan`] what to do,
//! and does it: create the new run's Job (and headless Service), create ModelVersions,
//! then write status and Events.

pub mod desired;
pub mod result;
pub mod status;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{Controller, controller::Action, events::EventType, watcher},
};
use tracing::{info, instrument};

use self::status::{Observed, PodOutcome};
use super::{Context, Error, Result, apply, apply_status};
use crate::api::{self, ModelVersion, TrainingJob};

pub const CONTROLLER: &str = "trainingjob";

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    Controller::new(ctx.watched::<TrainingJob>(), watcher::Config::default().any_semantic())
        .owns(ctx.watched::<Job>(), watcher::Config::default().labels(api::LABEL_TRAINING_JOB))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, |tj, err, ctx| ctx.error_action(CONTROLLER, tj.as_ref(), err), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[instrument(skip_all, fields(trainingjob = %tj.name_any(), namespace = tj.namespace().unwrap_or_default()))]
async fn reconcile(tj: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    if tj.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove Jobs and Services.
        return Ok(Action::await_change());
    }
    let ns = tj.namespace().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    let selector = format!("{}={}", api::LABEL_TRAINING_JOB, tj.name_any());
    let jobs: BTreeMap<String, Job> = jobs_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .into_iter()
        .map(|j| (j.name_any(), j))
        .collect();
    let mut pods = BTreeMap::new();
    for job in jobs.values().filter(|j| is_finished(j)) {
        let followed = tj
            .status
            .as_ref()
            .is_some_and(|s| s.runs.iter().any(|r| r.job_name == job.name_any() && r.outcome.is_finished()));
        if !followed {
            pods.insert(job.name_any(), trainer_outcome(&pods_api, &job.name_any()).await?);
        }
    }
    let observed = Observed { jobs, pods, now: Some(Time(k8s_openapi::jiff::Timestamp::now())) };
    let plan =
        status::plan(&tj, &observed, |run| desired::desired_job(&tj, run).err().map(|e| e.to_string()));

    if let Some(run) = &plan.start_run {
        if let Some(svc) = desired::desired_service(&tj, run) {
            apply(&Api::<Service>::namespaced(ctx.client.clone(), &ns), &svc).await?;
        }
        // plan() only starts a run whose Job builds.
        if let Ok(job) = desired::desired_job(&tj, run) {
            apply(&jobs_api, &job).await?;
            info!(run = %run.name, "started a training run");
        }
    }
    let versions: Api<ModelVersion> = Api::namespaced(ctx.client.clone(), &ns);
    for mv in &plan.create_versions {
        match versions
            .create(&PostParams { field_manager: Some(api::FIELD_MANAGER.into()), ..Default::default() }, mv)
            .await
        {
            // The name is deterministic: a retried reconcile finds the one it made before.
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    for (job, suspend) in &plan.set_suspend {
        let patch = serde_json::json!({"spec": {"suspend": suspend}});
        jobs_api.patch(job, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    if tj.status.as_ref() != Some(&plan.status) {
        apply_status(&Api::<TrainingJob>::namespaced(ctx.client.clone(), &ns), tj.as_ref(), &plan.status)
            .await?;
    }
    for ev in plan.events {
        let type_ = if ev.warning { EventType::Warning } else { EventType::Normal };
        ctx.event(tj.as_ref(), type_, ev.reason, "Reconcile", ev.note).await;
    }
    ctx.reset_failures(tj.as_ref());
    // Watches drive progress; the periodic requeue is only a safety net for missed events.
    let active = !plan.status.active_runs.is_empty();
    Ok(Action::requeue(Duration::from_secs(if active { 30 } else { 600 })))
}

fn is_finished(job: &Job) -> bool {
    job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    })
}

/// What the trainer container of a finished Job's pods left: the succeeded pod of index 0
/// (or any succeeded pod) when there is one, else the most recently failed pod.
async fn trainer_outcome(pods: &Api<Pod>, job: &str) -> Result<PodOutcome> {
    let list =
        pods.list(&ListParams::default().labels(&format!("{}={job}", desired::LABEL_JOB_NAME))).await?;
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
