//! InferenceService controller: the I/O shell around the pure rollout state machine. It
//! resolves the version to serve, observes Deployments and canary pods (pod watch events
//! wake it), measures the metric checks when due, asks [`rollout::plan`] what to do, then
//! applies Deployments, Services, the HTTPRoute and the autoscaler, removes what is no
//! longer needed, and writes status and Events.

pub mod desired;
pub mod gate;

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use k8s_openapi::{
    api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, events::EventType, reflector::ObjectRef, watcher},
};
use tracing::{debug, instrument};

use super::{Context, Result, apply, apply_status, delete_if_present};
use crate::{
    analysis::{self, health::version_health},
    api::{
        self, InferenceService, ModelVersion,
        common::annotation_pending,
        conditions::{self as cond},
        inference_service::InferenceServiceStatus,
    },
    rollout::{self, Health, Manual, Measured, Observed, Sample, Settings, Target},
};

pub const CONTROLLER: &str = "inferenceservice";

pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let controller =
        Controller::new(ctx.watched::<InferenceService>(), watcher::Config::default().any_semantic());
    let store = controller.store();
    let by_model = store.clone();
    controller
        .owns(ctx.watched::<Deployment>(), watcher::Config::default().labels(api::LABEL_INFERENCE_SERVICE))
        // Canary health is driven by pod events, not by polling.
        .watches(
            ctx.watched::<Pod>(),
            watcher::Config::default().labels(api::LABEL_INFERENCE_SERVICE),
            |pod: Pod| {
                let ns = pod.namespace().unwrap_or_default();
                pod.labels().get(api::LABEL_INFERENCE_SERVICE).map(|n| ObjectRef::new(n).within(&ns))
            },
        )
        // A new or newly validated version wakes the services of its model.
        .watches(ctx.watched::<ModelVersion>(), watcher::Config::default(), move |mv: ModelVersion| {
            let ns = mv.namespace();
            by_model
                .state()
                .iter()
                .filter(|s| s.namespace() == ns && s.spec.model == mv.spec.model)
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, |isvc, err, ctx| ctx.error_action(CONTROLLER, isvc.as_ref(), err), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Where a change began, for lead time: the retrain trigger (the schedule time, else when
/// drift or new data started the run), else the source commit, else the training run's start, else the
/// version's creation.
fn origin(mv: &ModelVersion) -> Option<Time> {
    use crate::api::training_job::TriggerType;
    let lineage = mv.spec.lineage.as_ref();
    // A re-training started by a schedule, drift or new data is delivered from that
    // moment: the code did not change, the world did.
    let trigger = lineage
        .and_then(|l| l.trigger.as_ref())
        .filter(|t| matches!(t.type_, TriggerType::Schedule | TriggerType::Drift | TriggerType::Data));
    trigger
        .and_then(|t| t.schedule_time.clone().or_else(|| t.time.clone()))
        .or_else(|| lineage.and_then(|l| l.source.as_ref()?.commit_time.clone()))
        .or_else(|| lineage.and_then(|l| l.start_time.clone()))
        .or_else(|| mv.metadata.creation_timestamp.clone())
}

struct Resolved {
    target: Option<Target>,
    problem: Option<String>,
    stalled: bool,
}

/// The version the service should serve: the pin, or the newest validated version.
async fn resolve(isvc: &InferenceService, versions: &Api<ModelVersion>) -> Result<Resolved> {
    let model = &isvc.spec.model;
    if let Some(pin) = &isvc.spec.version {
        let none =
            |problem: String, stalled: bool| Ok(Resolved { target: None, problem: Some(problem), stalled });
        let Some(mv) = versions.get_opt(pin).await? else {
            return none(format!("pinned ModelVersion {pin} does not exist"), true);
        };
        if &mv.spec.model != model {
            return none(
                format!("pinned ModelVersion {pin} belongs to model {}, not {model}", mv.spec.model),
                true,
            );
        }
        let conds = mv.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]);
        if cond::is_false(conds, cond::VALIDATED) {
            let why = cond::find(conds, cond::VALIDATED).map(|c| c.message.clone()).unwrap_or_default();
            return none(format!("pinned ModelVersion {pin} is not validated: {why}"), true);
        }
        if !cond::is_true(conds, cond::VALIDATED) {
            return none(format!("waiting for pinned ModelVersion {pin} to be validated"), false);
        }
        return Ok(Resolved {
            target: Some(Target { version: pin.clone(), origin: origin(&mv) }),
            problem: None,
            stalled: false,
        });
    }
    let list = versions.list(&ListParams::default().fields(&format!("spec.model={model}"))).await?;
    let newest = list
        .items
        .into_iter()
        .filter(|mv| mv.metadata.deletion_timestamp.is_none())
        .filter(|mv| mv.status.as_ref().is_some_and(|s| cond::is_true(&s.conditions, cond::VALIDATED)))
        .max_by(|a, b| {
            (a.metadata.creation_timestamp.clone(), a.name_any())
                .cmp(&(b.metadata.creation_timestamp.clone(), b.name_any()))
        });
    Ok(match newest {
        Some(mv) => Resolved {
            target: Some(Target { version: mv.name_any(), origin: origin(&mv) }),
            problem: None,
            stalled: false,
        },
        None => Resolved {
            target: None,
            problem: Some(format!("no validated ModelVersion of model {model} yet")),
            stalled: false,
        },
    })
}

fn manual(isvc: &InferenceService) -> Manual {
    let handled = isvc.status.as_ref().and_then(|s| s.manual_actions.clone()).unwrap_or_default();
    let pending = |key: &str, done: &Option<String>| {
        let v = isvc.annotations().get(key).cloned();
        annotation_pending(v.as_deref(), done.as_deref()).then(|| v.unwrap_or_default())
    };
    Manual {
        promote: pending(api::ANNOTATION_PROMOTE, &handled.promote),
        abort: pending(api::ANNOTATION_ABORT, &handled.abort),
        retry: pending(api::ANNOTATION_RETRY, &handled.retry),
    }
}

#[instrument(skip_all, fields(inferenceservice = %isvc.name_any(), namespace = isvc.namespace().unwrap_or_default()))]
async fn reconcile(isvc: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    if isvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = isvc.namespace().unwrap_or_default();
    let name = isvc.name_any();
    let client = ctx.client.clone();
    // The state lives in status, so plan from the status as last written, never from the
    // watch cache: a pass woken by our own Deployment writes can run before the cache has
    // our previous status write, and planning from that older status would replay or undo
    // the last transition (a step going back, an Event published twice).
    let Some(isvc) = Api::<InferenceService>::namespaced(client.clone(), &ns).get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if isvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let isvc = Arc::new(isvc);
    let versions: Api<ModelVersion> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let status = isvc.status.clone().unwrap_or_default();
    let now = now();

    let resolved = resolve(&isvc, &versions).await?;
    let selector = desired::selector_string(&isvc);
    let owned: Vec<Deployment> = deployments.list(&ListParams::default().labels(&selector)).await?.items;
    let ready_of = |version: Option<&str>| -> i32 {
        let Some(v) = version else { return 0 };
        owned
            .iter()
            .filter(|d| d.labels().get(api::LABEL_MODEL_VERSION).map(String::as_str) == Some(v))
            .filter_map(|d| d.status.as_ref()?.ready_replicas)
            .sum()
    };
    let stable_version = status.stable.as_ref().map(|s| s.version.clone());
    let canary_version = status.canary.as_ref().map(|c| c.version.clone());

    // One list of the service's pods per pass, and only when something looks at them: the
    // canary's health, the stable's problem while none of its pods is Ready, the gates.
    let stable_unready = stable_version.as_deref().is_some_and(|v| ready_of(Some(v)) == 0);
    let service_pods: Vec<Pod> = if canary_version.is_some() || stable_unready || gate::enabled(&isvc) {
        pods.list(&ListParams::default().labels(&selector)).await?.items
    } else {
        Vec::new()
    };
    let pods_of = |version: &str| -> Vec<Pod> {
        service_pods
            .iter()
            .filter(|p| p.labels().get(api::LABEL_MODEL_VERSION).map(String::as_str) == Some(version))
            .cloned()
            .collect()
    };
    let health_check =
        isvc.spec.rollout.as_ref().and_then(|r| r.analysis.as_ref()).and_then(|a| a.health.as_ref());
    let health = match &canary_version {
        Some(v) => version_health(&pods_of(v), health_check, &now),
        None => Health::Pending("no canary".into()),
    };
    // While none of the stable's pods is Ready, Ready=False can say why (a crash loop, an
    // image that cannot be pulled) instead of "not yet".
    let stable_problem = match (&stable_version, stable_unready) {
        (Some(v), true) => match version_health(&pods_of(v), health_check, &now) {
            Health::Failed { message, .. } => Some(message),
            _ => None,
        },
        _ => None,
    };

    let mut measurements = Vec::new();
    if let (Some(v), true) = (&canary_version, rollout::metrics_due(&isvc.spec, &status, &now)) {
        let settings = Settings::of(&isvc.spec);
        for check in settings.metrics {
            let query = analysis::render_query(&check.query, &ns, &name, v, api::ROLE_CANARY);
            let sample = match &ctx.prometheus {
                Some(p) => p.query(&query).await,
                None => {
                    Sample::Error("no Prometheus configured: start the operator with --prometheus-url".into())
                }
            };
            debug!(check = %check.name, version = %v, ?sample, "measured");
            measurements.push(Measured { check: check.name.clone(), sample });
        }
    }

    let observed = Observed {
        target: resolved.target,
        target_problem: resolved.problem,
        target_problem_is_stalled: resolved.stalled,
        stable_ready: ready_of(stable_version.as_deref()),
        stable_problem,
        canary_ready: ready_of(canary_version.as_deref()),
        canary_health: health,
        measurements,
        manual: manual(&isvc),
        now: now.clone(),
    };
    let mut plan = rollout::plan(&isvc.spec, &status, &observed, isvc.metadata.generation);
    plan.status.url = Some(desired::url(&isvc));
    plan.status.selector = Some(selector.clone());

    // Children: a Deployment per version that keeps one, then the routing objects.
    let mut keep = Vec::new();
    let placements = plan
        .traffic
        .stable
        .iter()
        .chain(plan.traffic.canary.iter())
        .map(|p| (p.version.clone(), p.replicas))
        .chain(plan.traffic.standby.iter().map(|v| (v.clone(), 0)));
    let mut cache: BTreeMap<String, ModelVersion> = BTreeMap::new();
    for (version, replicas) in placements {
        let mv = match cache.get(&version) {
            Some(mv) => mv.clone(),
            None => match versions.get_opt(&version).await? {
                Some(mv) => {
                    cache.insert(version.clone(), mv.clone());
                    mv
                }
                // Protected by its finalizer while referenced; gone means nothing to run.
                None => continue,
            },
        };
        let d = desired::deployment(&isvc, &mv, replicas);
        keep.push(d.name_any());
        apply(&deployments, &d).await?;
    }
    for d in owned.iter().filter(|d| !keep.contains(&d.name_any())) {
        delete_if_present(&deployments, &d.name_any()).await?;
    }
    let services = Api::namespaced(client.clone(), &ns);
    for svc in desired::services(&isvc, &plan.traffic) {
        apply(&services, &svc).await?;
    }
    if let Some(route) = desired::http_route(&isvc, &plan.traffic) {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        let routes: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk(&gvk));
        apply(&routes, &route).await?;
    }
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    match desired::autoscaler(&isvc) {
        Some(hpa) => {
            apply(&hpas, &hpa).await?;
        }
        None => delete_if_present(&hpas, &name).await?,
    }

    let gate_recheck = open_gates(&ctx, &isvc, &pods, &service_pods, &plan.status, &now).await?;

    if isvc.status.as_ref() != Some(&plan.status) {
        apply_status(&Api::<InferenceService>::namespaced(client, &ns), isvc.as_ref(), &plan.status).await?;
    }
    for note in plan.notes {
        let type_ = if note.warning { EventType::Warning } else { EventType::Normal };
        ctx.event(isvc.as_ref(), type_, note.reason, "Rollout", note.message).await;
    }
    for d in &plan.delivered {
        ctx.metrics.delivered(&ns, &name, d);
    }
    ctx.reset_failures(isvc.as_ref());
    // A canary held at its readiness gate is looked at again when it may open.
    let requeue = gate_recheck.map_or(plan.requeue, |r| plan.requeue.min(r));
    Ok(Action::requeue(requeue))
}

/// Opens the `mlops.dev/scraped` readiness gates that may open ([`gate`]); while one stays
/// closed, when to look again.
async fn open_gates(
    ctx: &Context,
    isvc: &InferenceService,
    pods: &Api<Pod>,
    list: &[Pod],
    status: &InferenceServiceStatus,
    now: &Time,
) -> Result<Option<std::time::Duration>> {
    if !gate::enabled(isvc) {
        return Ok(None);
    }
    let stable = status.stable.as_ref().map(|s| s.version.as_str());
    let mut recheck: Option<std::time::Duration> = None;
    for pod in gate::closed(list) {
        let name = pod.name_any();
        let scrapes = match &ctx.prometheus {
            Some(p) if gate::needs_scrape_check(pod, stable, now) => {
                let ns = isvc.namespace().unwrap_or_default();
                // A failed query keeps the gate closed; the 60 s bound still opens it.
                p.sample_times(&gate::up_query(&ns, &name)).await.unwrap_or_default()
            }
            _ => Vec::new(),
        };
        match gate::opening(pod, stable, &scrapes, ctx.prometheus.is_some(), now) {
            Some((reason, message)) => {
                let patch = gate::open_patch(reason, &message, now);
                match pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                    Ok(_) => debug!(pod = %name, reason, "opened the readiness gate"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                let again = gate::recheck_in(&scrapes, now);
                recheck = Some(recheck.map_or(again, |r| r.min(again)));
            }
        }
    }
    Ok(recheck)
}
