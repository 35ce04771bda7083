//! TrainingJob controller: the I/O shell. It lists the runs' Jobs, reads the trainer
//! results of finished ones from their pods, asks the pure [`status::plan`] what to do,
//! and does it: create the new run's Job (and headless Service), create ModelVersions,
//! then write status and Events.

pub mod data_check;
pub mod desired;
pub mod result;
pub mod status;
pub mod triggers;

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
    runtime::{
        Controller, WatchStreamExt, controller::Action, events::EventType, reflector::ObjectRef, watcher,
    },
};
use tracing::{info, instrument};

use self::{
    status::{Observed, PodOutcome, Refusal},
    triggers::Reading,
};
use super::{Context, Error, Result, apply, apply_status};
use crate::{
    api::{
        self, InferenceService, ModelVersion, TrainingJob,
        training_job::{RunOutcome, TriggerType},
    },
    rollout::Sample,
};

pub const CONTROLLER: &str = "trainingjob";

/// Runs the controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let controller = Controller::new(ctx.watched::<TrainingJob>(), watcher::Config::default().any_semantic())
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
        .for_each(|_| futures::future::ready(()));
    // Ends with the controller (at shutdown); the deletion watch never ends by itself.
    tokio::select! {
        _ = controller => {}
        _ = forget_deleted(&ctx) => {}
    }
}

/// A deleted TrainingJob's gauges go with it (the controller is not called for objects
/// that are gone, and TrainingJobs have no finalizer to hold them back).
async fn forget_deleted(ctx: &Context) {
    // Metadata only: nothing else of the object is needed.
    let api = ctx.watched::<kube::core::PartialObjectMeta<TrainingJob>>();
    let deletions = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(deletions);
    while let Some(event) = deletions.next().await {
        if let Ok(watcher::Event::Delete(gone)) = event {
            ctx.metrics
                .forget_training_job(gone.namespace().as_deref().unwrap_or_default(), &gone.name_any());
        }
    }
}

#[instrument(skip_all, fields(trainingjob = %tj.name_any(), namespace = tj.namespace().unwrap_or_default()))]
async fn reconcile(tj: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    if tj.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove Jobs and Services.
        return Ok(Action::await_change());
    }
    let ns = tj.namespace().unwrap_or_default();
    // Plan from the status as last written, never from the watch cache: a cache that has
    // not caught up with our previous write would replay its transition (a triggered run
    // whose trigger is not yet consumed would start a second time).
    let Some(tj) = Api::<TrainingJob>::namespaced(ctx.client.clone(), &ns).get_opt(&tj.name_any()).await?
    else {
        return Ok(Action::await_change());
    };
    if tj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let tj = Arc::new(tj);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    let selector = format!("{}={}", api::LABEL_TRAINING_JOB, tj.name_any());
    let (checks, runs): (Vec<Job>, Vec<Job>) = jobs_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .into_iter()
        .partition(data_check::is_data_check);
    let jobs: BTreeMap<String, Job> = runs.into_iter().map(|j| (j.name_any(), j)).collect();
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
    let now = k8s_openapi::jiff::Timestamp::now();
    let retrain = tj.spec.retrain.as_ref();
    let (drift_due, data_due) =
        triggers::checks_due(retrain, tj.status.as_ref().and_then(|s| s.triggers.as_ref()), now);
    let mut readings = triggers::Readings::default();
    if drift_due {
        readings.drift = Some(measure_drift(&ctx, &tj, &ns).await?);
    }
    let (dataset, finished_checks) =
        check_dataset(&ctx, &tj, &jobs_api, &pods_api, checks, data_due, now).await?;
    readings.dataset = dataset;
    let latest_version = match tj.status.as_ref().and_then(|s| s.latest_model_version.clone()) {
        Some(name) => {
            Api::<ModelVersion>::namespaced(ctx.client.clone(), &ns).get_opt(&name).await?.and_then(|mv| {
                let c = mv
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == crate::api::conditions::VALIDATED)?;
                Some(status::Verdict {
                    model_version: name,
                    validated: c.status == "True",
                    message: c.message,
                })
            })
        }
        None => None,
    };
    let mut observed =
        Observed { jobs, pods, now: Some(Time(now)), readings, latest_version, ..Observed::default() };
    let spec_check = |run: &desired::RunRef| desired::desired_job(&tj, run).err().map(|e| e.to_string());
    let mut plan = status::plan(&tj, &observed, spec_check);

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
    let refused = create_versions(&versions, &tj, &plan.create_versions).await?;
    if !refused.is_empty() {
        // Those runs fail instead of succeeding. The plan is pure and `now` is the same, so
        // planning again changes only them (the run started above is the same run).
        observed.refused_versions = refused;
        plan = status::plan(&tj, &observed, spec_check);
    }
    for (job, suspend) in &plan.set_suspend {
        let patch = serde_json::json!({"spec": {"suspend": suspend}});
        jobs_api.patch(job, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    if tj.status.as_ref() != Some(&plan.status) {
        apply_status(&Api::<TrainingJob>::namespaced(ctx.client.clone(), &ns), tj.as_ref(), &plan.status)
            .await?;
    }
    // Read into the status just written: a check Job is done with.
    for name in &finished_checks {
        crate::controllers::delete_if_present(&jobs_api, name).await?;
    }
    for ev in plan.events.iter().cloned() {
        let type_ = if ev.warning { EventType::Warning } else { EventType::Normal };
        ctx.event(tj.as_ref(), type_, ev.reason, "Reconcile", ev.note).await;
    }
    record_metrics(&ctx, &tj, &ns, &plan);
    ctx.reset_failures(tj.as_ref());
    // Watches drive progress; the periodic requeue is only a safety net for missed events,
    // except for the retrain triggers, which are due at times no watch announces.
    let active = !plan.status.active_runs.is_empty();
    let safety_net = Duration::from_secs(if active { 30 } else { 600 });
    Ok(Action::requeue(plan.requeue_after.map_or(safety_net, |t| t.min(safety_net))))
}

/// Creates the runs' ModelVersions and returns the ones the API server would not take, by
/// name, with why: their runs fail (with a Warning Event) rather than retry forever.
async fn create_versions(
    api: &Api<ModelVersion>,
    tj: &TrainingJob,
    versions: &[ModelVersion],
) -> Result<BTreeMap<String, Refusal>> {
    let params = PostParams { field_manager: Some(api::FIELD_MANAGER.into()), ..Default::default() };
    let mut refused = BTreeMap::new();
    for mv in versions {
        let name = mv.name_any();
        match api.create(&params, mv).await {
            Ok(_) => {}
            // The name is deterministic: a retried reconcile finds the one it made before. A
            // version imported under that name is someone else's and is left alone.
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
                Some(existing) if status::made_by(&existing, tj, &name) => {}
                Some(existing) => {
                    refused.insert(name.clone(), Refusal::name_taken(&existing, tj, &name));
                }
                // Deleted since the conflict: the retry creates it.
                None => return Err(Error::Kube(kube::Error::Api(s))),
            },
            // Invalid: result::parse checks the schema's bounds, this is the safety net.
            Err(kube::Error::Api(s)) if s.code == 422 => {
                refused.insert(name.clone(), Refusal::rejected(&name, &s.message));
            }
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    Ok(refused)
}

fn record_metrics(ctx: &Context, tj: &TrainingJob, ns: &str, plan: &status::Plan) {
    let name = tj.name_any();
    if let Some(run) = &plan.start_run {
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
    Ok(match prometheus.query(&query).await {
        Sample::Value(v) => Reading::Value(v),
        Sample::NoData => Reading::NoData(format!("{query} returned no series")),
        Sample::Error(e) => Reading::Error(e),
    })
}

/// The data trigger's reading this reconcile and the check Jobs read (to delete once the
/// status holds their result). `file://` datasets are hashed here; `s3://` and `pvc://`
/// ones by a check Job ([`data_check`]), whose result arrives on a later reconcile.
async fn check_dataset(
    ctx: &Context,
    tj: &TrainingJob,
    jobs_api: &Api<Job>,
    pods_api: &Api<Pod>,
    mut checks: Vec<Job>,
    due: bool,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<(Option<Reading<String>>, Vec<String>)> {
    let uri = &tj.spec.dataset.uri;
    let wanted = tj.spec.retrain.as_ref().is_some_and(|r| r.data.is_some());
    if !wanted || !data_check::needs_job(uri) {
        // Leftovers of a trigger removed or a dataset moved to file://.
        let leftovers = checks.iter().map(|j| j.name_any()).collect();
        let reading = if wanted && due { Some(dataset_digest(uri).await) } else { None };
        return Ok((reading, leftovers));
    }
    checks.sort_by_key(|j| j.metadata.creation_timestamp.clone());
    let (mut reading, mut finished, mut running) = (None, Vec::new(), false);
    for job in &checks {
        if !data_check::is_finished(job) {
            running = true;
            continue;
        }
        // Oldest first, so the newest finished check's reading is the one kept.
        let outcome = trainer_outcome(pods_api, &job.name_any()).await?;
        reading = data_check::reading(job, &outcome, uri).or(reading);
        finished.push(job.name_any());
    }
    if reading.is_none() && due {
        if !running {
            let name = data_check::job_name(&tj.name_any(), now.as_second());
            let job = data_check::desired_job(tj, &ctx.runtime_image, &name);
            let params = PostParams { field_manager: Some(api::FIELD_MANAGER.into()), ..Default::default() };
            match jobs_api.create(&params, &job).await {
                Ok(_) => info!(job = %name, "started a dataset check"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(Error::Kube(e)),
            }
        }
        // Started now or still running: either way the check is under way.
        reading = Some(Reading::Pending);
    }
    Ok((reading, finished))
}

/// The dataset's digest, `sha256:<hex>` of the file for `file://`, as the operator's
/// filesystem sees it (the local platform's case, or a shared mount).
async fn dataset_digest(uri: &str) -> Reading<String> {
    if let Some(path) = uri.strip_prefix("file://") {
        let path = path.to_string();
        return match tokio::task::spawn_blocking(move || triggers::file_digest(std::path::Path::new(&path)))
            .await
        {
            Ok(Ok(digest)) => Reading::Value(digest),
            Ok(Err(e)) => Reading::Error(e),
            Err(e) => Reading::Error(format!("hashing the dataset: {e}")),
        };
    }
    Reading::Error(format!("the data trigger cannot check {uri:?}: expected s3://, pvc:// or file://"))
}

fn is_finished(job: &Job) -> bool {
    job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    })
}

/// What the trainer container (or a check Job's only container) of a finished Job's pods
/// left: the succeeded pod of index 0 (or any succeeded pod) when there is one, else the
/// most recently failed pod.
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
