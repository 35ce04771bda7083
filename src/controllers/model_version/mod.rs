//! ModelVersion controller: one pass is fetch → [`plan::plan`] (pure) → apply. It reads
//! the version and the InferenceServices of its namespace (who serves it, who keeps it as
//! a rollback target, what serves the same model), and guards deletion with a finalizer
//! while the version is in use.
//!
//! The finalizer is hand-written rather than kube's `runtime::finalizer` helper: there a
//! cleanup either succeeds (the finalizer goes) or fails (a reconcile error, retried with
//! backoff). A deletion that must wait for an InferenceService is neither: it is a normal
//! state, shown as `DeletionBlocked` and one Warning Event, not an error storm.

pub mod plan;
pub mod quality_gates;
#[cfg(test)]
mod shell_tests;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use tracing::{info, instrument};

use self::plan::{FinalizerChange, Inputs, Outcome};
use super::{Context, Error, Result, apply_status};
use crate::api::{FINALIZER_PROTECT_SERVING, InferenceService, ModelVersion};

pub const CONTROLLER: &str = "modelversion";
const KIND: &str = "ModelVersion";

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

/// One pass; a failure is shown on the version (condition and Event) before it goes to
/// the retry policy, and the next successful pass rewrites those conditions.
#[instrument(skip_all, fields(modelversion = %mv.name_any(), namespace = mv.namespace().unwrap_or_default()))]
async fn reconcile(mv: Arc<ModelVersion>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    ctx.reported(mv.as_ref(), pass(&mv, &ctx).await).await
}

async fn pass(mv: &ModelVersion, ctx: &Context) -> Result<Action> {
    let versions: Api<ModelVersion> =
        Api::namespaced(ctx.client.clone(), &mv.namespace().unwrap_or_default());
    let Some(inputs) = fetch(ctx, &versions, &mv.name_any()).await? else {
        return Ok(Action::await_change()); // gone: nothing to protect
    };
    let outcome = plan::plan(&inputs, Time(k8s_openapi::jiff::Timestamp::now()));
    apply(ctx, &versions, &inputs.version, outcome).await
}

/// Reads what the plan needs: the version fresh from the API server (the watch cache's
/// copy may predate our last status write), the namespace's InferenceServices and, when a
/// relative gate needs it, the serving version.
async fn fetch(ctx: &Context, versions: &Api<ModelVersion>, name: &str) -> Result<Option<Inputs>> {
    let Some(version) = versions.get_opt(name).await.map_err(|e| Error::child("get", KIND, name, e))? else {
        return Ok(None);
    };
    let ns = version.namespace().unwrap_or_default();
    let services = Api::<InferenceService>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::child("list", "InferenceServices in namespace", &ns, e))?
        .items;
    let baseline = match plan::baseline_name(&version, &services) {
        Some(serving) => {
            versions.get_opt(serving).await.map_err(|e| Error::child("get", KIND, serving, e))?
        }
        None => None,
    };
    Ok(Some(Inputs { version, services, baseline }))
}

/// Carries out the plan: the finalizer first (a version is protected before anything
/// may serve it), then the status, the Events, and last the finalizer's removal.
async fn apply(
    ctx: &Context,
    versions: &Api<ModelVersion>,
    mv: &ModelVersion,
    outcome: Outcome,
) -> Result<Action> {
    let name = mv.name_any();
    if outcome.finalizer == FinalizerChange::Add {
        // Server-side apply under a manager of its own: finalizers are a set, so this adds
        // ours without touching anyone else's.
        let patch = serde_json::json!({
            "apiVersion": crate::api::API_VERSION, "kind": KIND,
            "metadata": {"finalizers": [FINALIZER_PROTECT_SERVING]},
        });
        let params = PatchParams::apply(&format!("{}-finalizer", crate::api::FIELD_MANAGER)).force();
        versions
            .patch(&name, &params, &Patch::Apply(&patch))
            .await
            .map_err(|e| Error::child("add the finalizer to", KIND, &name, e))?;
    }
    if let Some(status) = &outcome.status {
        apply_status(versions, mv, status).await?;
    }
    for ev in outcome.events {
        ctx.event(mv, ev.type_, ev.reason, ev.action, ev.note).await;
    }
    if outcome.finalizer == FinalizerChange::Remove {
        // The resourceVersion makes this a compare-and-swap: a finalizer someone added
        // meanwhile is not dropped (the conflict is retried).
        let remaining: Vec<String> =
            mv.finalizers().iter().filter(|f| *f != FINALIZER_PROTECT_SERVING).cloned().collect();
        let patch = serde_json::json!({"metadata": {"finalizers": remaining, "resourceVersion": mv.resource_version()}});
        versions
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::child("remove the finalizer from", KIND, &name, e))?;
        info!("no InferenceService uses the version any more; deletion may proceed");
    }
    Ok(Action::requeue(outcome.requeue))
}
