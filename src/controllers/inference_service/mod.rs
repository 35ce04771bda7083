//! InferenceService controller: the I/O shell around the pure [`plan`]. A pass reads
//! everything it needs into [`Inputs`] (the object as last written, its Deployments, its
//! pods when something looks at them, the ModelVersions it may serve, the metric checks'
//! measurements when due), plans, then applies every desired child with the shared
//! [`Applier`] and prunes every child it controls that is no longer desired (Deployments,
//! Services, the HTTPRoute, the autoscaler). Then it opens the pods' readiness gates,
//! writes status and publishes Events. A failed pass shows as a condition and a Warning
//! Event ([`Context::report_failure`]).

pub mod desired;
pub mod plan;
pub mod readiness_gate;
#[cfg(test)]
mod shell_tests;

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, events::EventType, reflector::ObjectRef, watcher},
};
use tracing::{debug, instrument};

use self::plan::Inputs;
use super::{
    Context, Error, Result,
    apply::Applier,
    apply_status,
    ownership::{Owner, controlled_by},
};
use crate::{
    analysis,
    api::{self, InferenceService, ModelVersion, inference_service::InferenceServiceStatus},
    rollout::{self, Measured, Sample, Settings},
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

/// The kinds of child an InferenceService has; any of them it controls and no longer
/// wants is pruned.
fn child_kinds() -> [ApiResource; 3] {
    [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
    ]
}

#[instrument(skip_all, fields(inferenceservice = %isvc.name_any(), namespace = isvc.namespace().unwrap_or_default()))]
async fn reconcile(isvc: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    ctx.reported(isvc.as_ref(), reconcile_at(&isvc, &ctx, &now).await).await
}

/// One pass at `now`: read, plan, apply and prune, open readiness gates, write status.
async fn reconcile_at(isvc: &InferenceService, ctx: &Context, now: &Time) -> Result<Action> {
    if isvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(inputs) = read_inputs(ctx, isvc, now).await? else {
        return Ok(Action::await_change());
    };
    let outcome = plan::plan(&inputs, now)?;
    let isvc = &inputs.isvc;
    let ns = isvc.namespace().unwrap_or_default();
    let name = isvc.name_any();

    let applier = Applier::new(ctx.client.clone(), &ns, Owner::of(isvc), &desired::selector_string(isvc));
    // Children as they are (one metadata list per kind), then only what changed is applied
    // and what is no longer desired is deleted. Without the Gateway API's CRDs there are no
    // HTTPRoutes: observe treats the kind as empty.
    let kinds: Vec<_> = child_kinds().into_iter().chain([desired::http_route_resource()]).collect();
    applier.observed(&inputs.deployments);
    applier.observe(&kinds).await?;
    applier.apply_all(&outcome.children).await?;
    applier.prune(&kinds, &outcome.keep).await?;

    let gate_recheck = open_readiness_gates(ctx, isvc, &inputs.pods, &outcome.status, now).await?;

    if isvc.status.as_ref() != Some(&outcome.status) {
        let api = Api::<InferenceService>::namespaced(ctx.client.clone(), &ns);
        apply_status(&api, isvc, &outcome.status).await?;
    }
    for note in outcome.notes {
        let type_ = if note.warning { EventType::Warning } else { EventType::Normal };
        ctx.event(isvc, type_, note.reason, "Rollout", note.message).await;
    }
    ctx.metrics.for_live_object(isvc.uid().as_deref(), |m| {
        for d in &outcome.delivered {
            m.delivered(&ns, &name, d);
        }
    });
    // A canary held at its readiness gate is looked at again when it may open.
    let requeue = gate_recheck.map_or(outcome.requeue, |r| outcome.requeue.min(r));
    Ok(Action::requeue(requeue))
}

/// Everything a pass needs, read before anything is decided; `None` when the object is
/// gone or going.
async fn read_inputs(ctx: &Context, cached: &InferenceService, now: &Time) -> Result<Option<Inputs>> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let client = ctx.client.clone();
    // The state lives in status, so plan from the status as last written, never from the
    // watch cache: a pass woken by our own Deployment writes can run before the cache has
    // our previous status write, and planning from that older status would replay or undo
    // the last transition (a step going back, an Event published twice).
    let isvc = match Api::<InferenceService>::namespaced(client.clone(), &ns).get_opt(&name).await {
        Ok(Some(isvc)) if isvc.metadata.deletion_timestamp.is_none() => isvc,
        Ok(_) => return Ok(None),
        Err(e) => return Err(Error::child("get", "InferenceService", &name, e)),
    };
    let selector = desired::selector_string(&isvc);
    let uid = isvc.uid().unwrap_or_default();
    // Our labels are a filter, not a proof: only what the service controls is its own.
    let deployments: Vec<Deployment> = Api::<Deployment>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::child("list", "Deployment", &selector, e))?
        .items
        .into_iter()
        .filter(|d| controlled_by(&d.metadata, &uid))
        .collect();
    let pods = if plan::needs_pods(&isvc, &deployments) {
        let listed = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| Error::child("list", "Pod", &selector, e))?
            .items;
        plan::pods_of(&deployments, listed)
    } else {
        Vec::new()
    };

    // The versions it may serve: every version of the model unless one is pinned, then
    // any version the status names that is not among them.
    let versions_api: Api<ModelVersion> = Api::namespaced(client.clone(), &ns);
    let mut versions = BTreeMap::new();
    if isvc.spec.version.is_none() {
        let model = &isvc.spec.model;
        let by_model = format!("spec.model={model}");
        let listed = versions_api
            .list(&ListParams::default().fields(&by_model))
            .await
            .map_err(|e| Error::child("list", "ModelVersion", &by_model, e))?;
        versions.extend(listed.items.into_iter().map(|mv| (mv.name_any(), mv)));
    }
    for version in plan::version_names(&isvc) {
        if versions.contains_key(&version) {
            continue;
        }
        match versions_api.get_opt(&version).await {
            Ok(Some(mv)) => {
                versions.insert(version, mv);
            }
            Ok(None) => {}
            Err(e) => return Err(Error::child("get", "ModelVersion", &version, e)),
        }
    }

    let status = isvc.status.clone().unwrap_or_default();
    let mut measurements = Vec::new();
    if let Some(canary) = &status.canary
        && rollout::metrics_due(&isvc.spec, &status, now)
    {
        // All checks at once: a pass waits for the slowest query, not for their sum.
        let measured = Settings::of(&isvc.spec).metrics.iter().map(|check| async {
            let query = analysis::render_query(&check.query, &ns, &name, &canary.version, api::ROLE_CANARY);
            let sample = match &ctx.prometheus {
                Some(p) => p.query(&ns, &query).await,
                None => {
                    Sample::Error("no Prometheus configured: start the operator with --prometheus-url".into())
                }
            };
            debug!(check = %check.name, version = %canary.version, ?sample, "measured");
            Measured { check: check.name.clone(), sample }
        });
        measurements = futures::future::join_all(measured).await;
    }
    Ok(Some(Inputs { isvc, deployments, pods, versions, measurements, fault_injection: ctx.fault_injection }))
}

/// Opens the `mlops.dev/scraped` readiness gates that may open ([`readiness_gate`]);
/// while one stays closed, when to look again.
async fn open_readiness_gates(
    ctx: &Context,
    isvc: &InferenceService,
    pods: &[Pod],
    status: &InferenceServiceStatus,
    now: &Time,
) -> Result<Option<std::time::Duration>> {
    if !readiness_gate::enabled(isvc) {
        return Ok(None);
    }
    let ns = isvc.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let stable = status.stable.as_ref().map(|s| s.version.as_str());
    let mut recheck: Option<std::time::Duration> = None;
    for pod in readiness_gate::closed_gates(pods) {
        let name = pod.name_any();
        let scrapes = match &ctx.prometheus {
            Some(p) if readiness_gate::needs_scrape_check(pod, stable, now) => {
                // A failed query keeps the gate closed; the 60 s bound still opens it.
                p.sample_times(&ns, &readiness_gate::up_query(&ns, &name)).await.unwrap_or_default()
            }
            _ => Vec::new(),
        };
        match readiness_gate::gate_opening(pod, stable, &scrapes, ctx.prometheus.is_some(), now) {
            Some((reason, message)) => {
                let patch = readiness_gate::open_gate_patch(reason, &message, now);
                match pods_api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                    Ok(_) => debug!(pod = %name, reason, "opened the readiness gate"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(Error::child("open the readiness gate of", "Pod", &name, e)),
                }
            }
            None => {
                let again = readiness_gate::recheck_in(&scrapes, now);
                recheck = Some(recheck.map_or(again, |r| r.min(again)));
            }
        }
    }
    Ok(recheck)
}
