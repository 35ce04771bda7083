//! One pass of the InferenceService controller, pure: from everything the shell read
//! ([`Inputs`]) and the clock to the [`Outcome`]: every desired child, the status to
//! write, the Events to publish and when to look again. [`rollout::plan`] is the state
//! machine inside; this wraps it with the version resolution, the pod health it is fed
//! and the desired-children builders.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;

use super::{desired, readiness_gate};
use crate::{
    analysis::health::version_health,
    api::{
        self, InferenceService, ModelVersion,
        common::annotation_pending,
        conditions::{self as cond},
        inference_service::InferenceServiceStatus,
    },
    controllers::{Result, apply::Child, model_version::quality_gates},
    rollout::{self, Delivered, Health, Manual, Measured, Note, Observed, Target},
};

/// What one pass read, before anything is decided.
pub struct Inputs {
    /// The object as last written (never the watch cache's copy: the state lives in
    /// status, and planning from an older status would replay the last transition).
    pub isvc: InferenceService,
    /// The Deployments the service controls (carrying its label and its controller
    /// reference: an object with our labels alone is not ours).
    pub deployments: Vec<Deployment>,
    /// The pods of those Deployments ([`pods_of`]), read only when something looks at them
    /// ([`needs_pods`]).
    pub pods: Vec<Pod>,
    /// The ModelVersions the pass may serve, by name: the pin (or every version of the
    /// model), and the versions the status names.
    pub versions: BTreeMap<String, ModelVersion>,
    /// Fresh metric-check measurements of the canary, taken only when due.
    pub measurements: Vec<Measured>,
    /// The operator honours `mlops.dev/test-fault-env` (`--enable-fault-injection`).
    pub fault_injection: bool,
}

/// What the pass decided.
pub struct Outcome {
    /// Every child that should exist: Deployments, Services, the HTTPRoute, the
    /// autoscaler.
    pub children: Vec<Child>,
    /// `(kind, name)` of what prune keeps: the children, and a Deployment renamed by an
    /// upgrade until its successor is Ready ([`predecessors_kept`]). Anything else the
    /// service controls is pruned.
    pub keep: BTreeSet<(String, String)>,
    pub status: InferenceServiceStatus,
    /// Events to publish, one per transition.
    pub notes: Vec<Note>,
    /// For the delivery metrics.
    pub delivered: Vec<Delivered>,
    pub requeue: Duration,
}

/// Ready replicas of `version`'s Deployments.
pub fn ready_replicas(deployments: &[Deployment], version: Option<&str>) -> i32 {
    let Some(v) = version else { return 0 };
    deployments
        .iter()
        .filter(|d| d.labels().get(api::LABEL_MODEL_VERSION).map(String::as_str) == Some(v))
        .filter_map(|d| d.status.as_ref()?.ready_replicas)
        .sum()
}

/// The pods of `deployments` among `pods`: those whose controller is one of their
/// ReplicaSets (`<deployment>-<pod-template-hash>`). A pod that only carries the service's
/// labels is not one of its own: it is neither judged for health nor has its readiness
/// gate opened.
pub fn pods_of(deployments: &[Deployment], pods: Vec<Pod>) -> Vec<Pod> {
    let names: BTreeSet<String> = deployments.iter().map(|d| d.name_any()).collect();
    pods.into_iter()
        .filter(|p| {
            let Some(hash) = p.labels().get("pod-template-hash") else { return false };
            p.owner_references().iter().any(|r| {
                r.controller == Some(true)
                    && r.kind == "ReplicaSet"
                    && r.name
                        .strip_suffix(hash.as_str())
                        .and_then(|d| d.strip_suffix('-'))
                        .is_some_and(|d| names.contains(d))
            })
        })
        .collect()
}

/// Deployments the service controls that serve a version under another name than the one
/// it now has (an upgrade changed how Deployments are named): each is kept until the
/// Deployment now desired for its version has all its replicas Ready, so that a rename
/// never leaves a version without serving pods; then prune deletes it.
pub fn predecessors_kept(observed: &[Deployment], desired: &[Deployment]) -> Vec<String> {
    let version = |d: &Deployment| d.labels().get(api::LABEL_MODEL_VERSION).cloned();
    let ready = |name: &str| {
        observed
            .iter()
            .find(|d| d.name_any() == name)
            .and_then(|d| d.status.as_ref()?.ready_replicas)
            .unwrap_or(0)
    };
    observed
        .iter()
        .filter(|old| old.metadata.deletion_timestamp.is_none())
        .filter(|old| desired.iter().all(|d| d.name_any() != old.name_any()))
        .filter(|old| {
            desired.iter().any(|d| {
                let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                version(d) == version(old) && wanted > 0 && ready(&d.name_any()) < wanted
            })
        })
        .map(|old| old.name_any())
        .collect()
}

/// Whether the pass looks at pods: the canary's health, the stable's problem while none
/// of its pods is Ready, the readiness gates.
pub fn needs_pods(isvc: &InferenceService, deployments: &[Deployment]) -> bool {
    let status = isvc.status.as_ref();
    let stable = status.and_then(|s| s.stable.as_ref()).map(|s| s.version.as_str());
    let canary = status.and_then(|s| s.canary.as_ref());
    let stable_unready = stable.is_some() && ready_replicas(deployments, stable) == 0;
    canary.is_some() || stable_unready || readiness_gate::enabled(isvc)
}

/// The names of the ModelVersions a pass may need a Deployment for: the pin, and every
/// version the status names (stable, canary, the previous stable kept for a revert).
pub fn version_names(isvc: &InferenceService) -> Vec<String> {
    let status = isvc.status.as_ref();
    let mut names: Vec<String> = isvc.spec.version.iter().cloned().collect();
    names.extend(status.and_then(|s| s.stable.as_ref()).map(|s| s.version.clone()));
    names.extend(status.and_then(|s| s.canary.as_ref()).map(|c| c.version.clone()));
    names.extend(status.and_then(|s| s.rollback_target.clone()));
    names.sort();
    names.dedup();
    names
}

/// Where a change began, for lead time: the retrain trigger (the schedule time, else when
/// drift or new data started the run), else the source commit, else the training run's
/// start, else the version's creation.
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

/// The version to serve, or why there is none (and whether that needs a human).
#[derive(Debug, PartialEq)]
pub struct Resolved {
    pub target: Option<Target>,
    pub problem: Option<String>,
    pub stalled: bool,
}

/// The version the service should serve: the pin, or the newest validated version that
/// also passes the service's own gates (`spec.gates`).
pub fn resolve(isvc: &InferenceService, versions: &BTreeMap<String, ModelVersion>) -> Resolved {
    let model = &isvc.spec.model;
    let none = |problem: String, stalled: bool| Resolved { target: None, problem: Some(problem), stalled };
    let validated =
        |mv: &ModelVersion| mv.status.as_ref().is_some_and(|s| cond::is_true(&s.conditions, cond::VALIDATED));
    if let Some(pin) = &isvc.spec.version {
        let Some(mv) = versions.get(pin) else {
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
        if !validated(mv) {
            return none(format!("waiting for pinned ModelVersion {pin} to be validated"), false);
        }
        if let Err(why) = service_gates(isvc, mv, versions) {
            return none(format!("pinned ModelVersion {pin} fails this service's gates: {why}"), true);
        }
        return Resolved {
            target: Some(Target { version: pin.clone(), origin: origin(mv) }),
            problem: None,
            stalled: false,
        };
    }
    let mut candidates: Vec<&ModelVersion> = versions
        .values()
        .filter(|mv| &mv.spec.model == model && mv.metadata.deletion_timestamp.is_none())
        .filter(|mv| validated(mv))
        .collect();
    // Newest first: latest creation time, then the greatest name in the same second.
    candidates.sort_by(|a, b| {
        (b.metadata.creation_timestamp.clone(), b.name_any())
            .cmp(&(a.metadata.creation_timestamp.clone(), a.name_any()))
    });
    // A version failing the service's gates is passed over; the newest one passed over is
    // reported while an older version serves.
    let mut passed_over = None;
    for mv in candidates {
        match service_gates(isvc, mv, versions) {
            Ok(()) => {
                return Resolved {
                    target: Some(Target { version: mv.name_any(), origin: origin(mv) }),
                    problem: passed_over,
                    stalled: false,
                };
            }
            Err(why) => {
                passed_over.get_or_insert(format!(
                    "{} passed over: fails this service's gates: {why}",
                    mv.name_any()
                ));
            }
        }
    }
    none(passed_over.unwrap_or_else(|| format!("no validated ModelVersion of model {model} yet")), false)
}

/// The service's own gates on `mv`'s metrics; relative gates compare with the version this
/// service serves now. `Err` carries the failed gates' summary.
fn service_gates(
    isvc: &InferenceService,
    mv: &ModelVersion,
    versions: &BTreeMap<String, ModelVersion>,
) -> std::result::Result<(), String> {
    if isvc.spec.gates.is_empty() {
        return Ok(());
    }
    let stable = isvc.status.as_ref().and_then(|s| s.stable.as_ref()).map(|s| s.version.as_str());
    let baseline = stable
        .filter(|v| *v != mv.name_any())
        .and_then(|v| Some(quality_gates::Baseline { version: v, metrics: &versions.get(v)?.spec.metrics }));
    let results = quality_gates::evaluate(&isvc.spec.gates, &mv.spec.metrics, baseline.as_ref());
    match quality_gates::summary(&results) {
        (true, _) => Ok(()),
        (false, why) => Err(why),
    }
}

/// Manual-control annotations not yet handled.
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

/// The pass: the rollout's next state, and the children that carry it out.
pub fn plan(inputs: &Inputs, now: &Time) -> Result<Outcome> {
    let isvc = &inputs.isvc;
    let status = isvc.status.clone().unwrap_or_default();
    let resolved = resolve(isvc, &inputs.versions);
    let stable_version = status.stable.as_ref().map(|s| s.version.as_str());
    let canary_version = status.canary.as_ref().map(|c| c.version.as_str());
    let stable_ready = ready_replicas(&inputs.deployments, stable_version);

    let pods_of = |version: &str| -> Vec<Pod> {
        inputs
            .pods
            .iter()
            .filter(|p| p.labels().get(api::LABEL_MODEL_VERSION).map(String::as_str) == Some(version))
            .cloned()
            .collect()
    };
    let health_check =
        isvc.spec.rollout.as_ref().and_then(|r| r.analysis.as_ref()).and_then(|a| a.health.as_ref());
    let canary_health = match canary_version {
        Some(v) => version_health(&pods_of(v), health_check, now),
        None => Health::Pending("no canary".into()),
    };
    // While none of the stable's pods is Ready, Ready=False can say why (a crash loop, an
    // image that cannot be pulled) instead of "not yet".
    let stable_problem = match stable_version {
        Some(v) if stable_ready == 0 => match version_health(&pods_of(v), health_check, now) {
            Health::Failed { message, .. } => Some(message),
            _ => None,
        },
        _ => None,
    };
    let observed = Observed {
        target: resolved.target,
        target_problem: resolved.problem,
        target_problem_is_stalled: resolved.stalled,
        stable_ready,
        stable_problem,
        canary_ready: ready_replicas(&inputs.deployments, canary_version),
        canary_health,
        measurements: inputs.measurements.clone(),
        manual: manual(isvc),
        now: now.clone(),
    };
    let mut next = rollout::plan(&isvc.spec, &status, &observed, isvc.metadata.generation);
    next.status.url = Some(desired::url(isvc));
    next.status.selector = Some(desired::selector_string(isvc));

    // A Deployment per version that keeps one, then the routing objects.
    let traffic = &next.traffic;
    let placements = traffic
        .stable
        .iter()
        .chain(traffic.canary.iter())
        .map(|p| (p.version.as_str(), p.replicas))
        .chain(traffic.standby.iter().map(|v| (v.as_str(), 0)));
    // Protected by its finalizer while referenced; gone means nothing to run.
    let deployments: Vec<Deployment> = placements
        .filter_map(|(version, replicas)| {
            let mv = inputs.versions.get(version)?;
            let mut deployment = desired::deployment(isvc, mv, replicas);
            if inputs.fault_injection {
                desired::inject_faults(&mut deployment, mv);
            }
            Some(deployment)
        })
        .collect();
    let mut children = Vec::new();
    for deployment in &deployments {
        children.push(Child::of(deployment)?);
    }
    for svc in desired::services(isvc, traffic) {
        children.push(Child::of(&svc)?);
    }
    if let Some(route) = desired::http_route(isvc, traffic) {
        children.push(Child::dynamic(desired::http_route_resource(), route)?);
    }
    if let Some(hpa) = desired::autoscaler(isvc) {
        children.push(Child::of(&hpa)?);
    }
    let mut keep = crate::controllers::apply::keys(&children);
    keep.extend(
        predecessors_kept(&inputs.deployments, &deployments)
            .into_iter()
            .map(|n| ("Deployment".to_string(), n)),
    );
    Ok(Outcome {
        children,
        keep,
        status: next.status,
        notes: next.notes,
        delivered: next.delivered,
        requeue: next.requeue,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
