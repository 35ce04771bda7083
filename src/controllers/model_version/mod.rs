//! ModelVersion controller: the I/O shell. It reads the InferenceServices of the version's
//! namespace (who serves it, who keeps it as a rollback target, what serves the same model),
//! computes the status with the pure [`status::compute`], and guards deletion with a
//! finalizer while the version is in use.

pub mod gates;
pub mod status;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, events::EventType, reflector::ObjectRef, watcher},
};
use tracing::{info, instrument};

use self::gates::Baseline;
use super::{Context, Result, apply_status};
use crate::api::{FINALIZER_PROTECT_SERVING, InferenceService, ModelVersion};

pub const CONTROLLER: &str = "modelversion";

/// Runs the controller until `shutdown` resolves. A change to any InferenceService
/// re-evaluates the versions of its namespace that it names (serving, canary, rollback
/// target), so protection and `servingIn` follow rollouts.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    Controller::new(ctx.watched::<ModelVersion>(), watcher::Config::default().any_semantic())
        .watches(ctx.watched::<InferenceService>(), watcher::Config::default(), referenced_versions)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, |mv, err, ctx| ctx.error_action(CONTROLLER, mv.as_ref(), err), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The ModelVersions an InferenceService refers to, now or in its recent history.
fn referenced_versions(isvc: InferenceService) -> Vec<ObjectRef<ModelVersion>> {
    let ns = isvc.namespace().unwrap_or_default();
    let mut names: Vec<String> = isvc.spec.version.iter().cloned().collect();
    if let Some(s) = &isvc.status {
        names.extend(s.stable.iter().map(|x| x.version.clone()));
        names.extend(s.canary.iter().map(|x| x.version.clone()));
        names.extend(s.rollback_target.iter().cloned());
        names.extend(s.history.iter().map(|h| h.version.clone()));
    }
    names.sort();
    names.dedup();
    names.into_iter().map(|n| ObjectRef::new(&n).within(&ns)).collect()
}

#[instrument(skip_all, fields(modelversion = %mv.name_any(), namespace = mv.namespace().unwrap_or_default()))]
async fn reconcile(mv: Arc<ModelVersion>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let ns = mv.namespace().unwrap_or_default();
    let versions: Api<ModelVersion> = Api::namespaced(ctx.client.clone(), &ns);
    let services = Api::<InferenceService>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let deleting = mv.metadata.deletion_timestamp.is_some();
    let has_finalizer = mv.finalizers().iter().any(|f| f == FINALIZER_PROTECT_SERVING);

    if !deleting && !has_finalizer {
        // Add the finalizer first: a version must be protected before anything serves it.
        let patch = serde_json::json!({"metadata": {"finalizers": [FINALIZER_PROTECT_SERVING]}});
        let params = PatchParams::apply(&format!("{}-finalizer", crate::api::FIELD_MANAGER)).force();
        versions.patch(&mv.name_any(), &params, &Patch::Apply(&with_type(patch))).await?;
    }

    // The relative gates' baseline: the serving version's metrics, read only when needed.
    let needs_baseline = mv.spec.gates.iter().any(|g| g.relative_to.is_some());
    let serving =
        if needs_baseline { status::serving_version(&mv, &services).map(str::to_owned) } else { None };
    let serving_mv = match &serving {
        Some(name) => versions.get_opt(name).await?,
        None => None,
    };
    let baseline = serving_mv
        .as_ref()
        .map(|s| Baseline { version: s.metadata.name.as_deref().unwrap_or(""), metrics: &s.spec.metrics });

    let usage = status::usage(&mv, &services);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let computed = status::compute(&mv, &usage, baseline, now);
    let was_blocked = mv.status.as_ref().is_some_and(|s| {
        crate::api::conditions::is_true(&s.conditions, crate::api::conditions::DELETION_BLOCKED)
    });

    if mv.status.as_ref() != Some(&computed.status) && !(deleting && computed.deletion_blocked.is_none()) {
        apply_status(&versions, mv.as_ref(), &computed.status).await?;
    }
    if let Some((ok, message)) = &computed.validated_now {
        let (type_, reason) =
            if *ok { (EventType::Normal, "Validated") } else { (EventType::Warning, "ValidationFailed") };
        ctx.event(mv.as_ref(), type_, reason, "Validate", message.clone()).await;
    }

    if deleting {
        if let Some(msg) = computed.deletion_blocked {
            if !was_blocked {
                ctx.event(mv.as_ref(), EventType::Warning, "DeletionBlocked", "Delete", msg).await;
            }
            ctx.reset_failures(mv.as_ref());
            // InferenceService changes requeue us; the timer is a safety net.
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        if has_finalizer {
            let remaining: Vec<String> =
                mv.finalizers().iter().filter(|f| *f != FINALIZER_PROTECT_SERVING).cloned().collect();
            let patch = serde_json::json!({"metadata": {"finalizers": remaining, "resourceVersion": mv.resource_version()}});
            versions.patch(&mv.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            info!("no InferenceService uses the version any more; deletion may proceed");
        }
    }
    ctx.reset_failures(mv.as_ref());
    Ok(Action::requeue(Duration::from_secs(600)))
}

fn with_type(mut patch: serde_json::Value) -> serde_json::Value {
    patch["apiVersion"] = serde_json::json!(crate::api::API_VERSION);
    patch["kind"] = serde_json::json!("ModelVersion");
    patch
}
