//! The ModelVersion pass as a pure function: from the version, the InferenceServices of
//! its namespace and (for relative gates) the serving version, the status to write, what
//! to do with the deletion-protection finalizer, the Events to publish and when to look
//! again. Gate verdicts are computed once per generation: a version is judged when it is
//! created, against what was serving then.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{ResourceExt, runtime::events::EventType};

use super::quality_gates::{self, Baseline};
use crate::api::{
    FINALIZER_PROTECT_SERVING, InferenceService, ModelVersion, ModelVersionStatus,
    conditions::{self as cond, new_condition, set_condition},
    inference_service::RolloutOutcome,
    model_version::{FailedIn, MAX_FAILED_IN},
};

/// Everything one pass reads.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The version as the API server has it now (not the watch cache's copy).
    pub version: ModelVersion,
    /// The InferenceServices of the version's namespace.
    pub services: Vec<InferenceService>,
    /// The serving version relative gates compare with, when a relative gate needs it and
    /// one exists (see [`baseline_name`]).
    pub baseline: Option<ModelVersion>,
}

/// What happens to the deletion-protection finalizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalizerChange {
    /// Protect the version before anything can serve it.
    Add,
    /// Deletion was asked and nothing holds the version any more: let it go.
    Remove,
    Keep,
}

/// An Event to publish about the version.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedEvent {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// What one pass does.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The status to write; `None` when the stored one is already right.
    pub status: Option<ModelVersionStatus>,
    pub finalizer: FinalizerChange,
    pub events: Vec<PlannedEvent>,
    pub requeue: Duration,
}

/// A blocked deletion is re-checked this often: InferenceService changes requeue the
/// version anyway, the timer is a safety net.
pub const BLOCKED_REQUEUE: Duration = Duration::from_secs(60);
pub const STEADY_REQUEUE: Duration = Duration::from_secs(600);

/// The version the shell must read as the baseline of relative gates, if any.
pub fn baseline_name<'a>(mv: &ModelVersion, services: &'a [InferenceService]) -> Option<&'a str> {
    let needs_baseline = mv.spec.gates.iter().any(|g| g.relative_to.is_some());
    if needs_baseline { serving_version(mv, services) } else { None }
}

/// The pass, decided.
pub fn plan(inputs: &Inputs, now: Time) -> Outcome {
    let mv = &inputs.version;
    let deleting = mv.metadata.deletion_timestamp.is_some();
    let has_finalizer = mv.finalizers().iter().any(|f| f == FINALIZER_PROTECT_SERVING);
    let baseline = inputs
        .baseline
        .as_ref()
        .map(|s| Baseline { version: s.metadata.name.as_deref().unwrap_or(""), metrics: &s.spec.metrics });
    let computed = compute(mv, &usage(mv, &inputs.services), baseline, now);
    let was_blocked =
        mv.status.as_ref().is_some_and(|s| cond::is_true(&s.conditions, cond::DELETION_BLOCKED));

    // A version about to go away gets no status write (it may be gone before it lands),
    // and so no verdict Event either.
    let releasing = deleting && computed.deletion_blocked.is_none();
    let mut events = Vec::new();
    if let Some((ok, message)) = computed.validated_now.filter(|_| !releasing) {
        let (type_, reason) =
            if ok { (EventType::Normal, "Validated") } else { (EventType::Warning, "ValidationFailed") };
        events.push(PlannedEvent { type_, reason, action: "Validate", note: message });
    }
    let status = (mv.status.as_ref() != Some(&computed.status) && !releasing).then_some(computed.status);
    let (finalizer, requeue) = match (deleting, computed.deletion_blocked) {
        (false, _) if !has_finalizer => (FinalizerChange::Add, STEADY_REQUEUE),
        (true, Some(holders)) => {
            // One Warning per block, not per pass: the condition says the rest.
            if !was_blocked {
                events.push(PlannedEvent {
                    type_: EventType::Warning,
                    reason: "DeletionBlocked",
                    action: "Delete",
                    note: holders,
                });
            }
            (FinalizerChange::Keep, BLOCKED_REQUEUE)
        }
        (true, None) if has_finalizer => (FinalizerChange::Remove, STEADY_REQUEUE),
        _ => (FinalizerChange::Keep, STEADY_REQUEUE),
    };
    Outcome { status, finalizer, events, requeue }
}

/// How InferenceServices use a version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub serving_in: Vec<String>,
    pub rollback_target_of: Vec<String>,
    pub failed_in: Vec<FailedIn>,
}

impl Usage {
    /// Whether deleting the version must wait.
    pub fn blocks_deletion(&self) -> bool {
        !self.serving_in.is_empty() || !self.rollback_target_of.is_empty()
    }

    pub fn describe_holders(&self) -> String {
        let mut parts = Vec::new();
        if !self.serving_in.is_empty() {
            parts.push(format!("served by InferenceService {}", self.serving_in.join(", ")));
        }
        if !self.rollback_target_of.is_empty() {
            parts.push(format!("rollback target of InferenceService {}", self.rollback_target_of.join(", ")));
        }
        parts.join("; ")
    }
}

pub fn usage(mv: &ModelVersion, services: &[InferenceService]) -> Usage {
    let name = mv.name_any();
    let mut u = Usage::default();
    for isvc in services {
        let Some(s) = &isvc.status else { continue };
        let serves = s.stable.as_ref().is_some_and(|st| st.version == name)
            || s.canary.as_ref().is_some_and(|c| c.version == name);
        if serves {
            u.serving_in.push(isvc.name_any());
        }
        if s.rollback_target.as_deref() == Some(name.as_str()) {
            u.rollback_target_of.push(isvc.name_any());
        }
        for h in s.history.iter().filter(|h| h.version == name && h.outcome == RolloutOutcome::RolledBack) {
            u.failed_in.push(FailedIn {
                inference_service: isvc.name_any(),
                time: h.completion_time.clone(),
                check: s
                    .last_decision
                    .as_ref()
                    .filter(|d| d.version == name)
                    .map(|d| d.check.clone())
                    .unwrap_or_default(),
                reason: h.reason.clone().unwrap_or_default(),
                message: h.message.clone().unwrap_or_default(),
            });
        }
    }
    u.serving_in.sort();
    u.rollback_target_of.sort();
    u.failed_in.sort_by(|a, b| a.time.cmp(&b.time));
    let excess = u.failed_in.len().saturating_sub(MAX_FAILED_IN);
    u.failed_in.drain(..excess);
    u
}

/// The baseline for relative gates: the stable version of an InferenceService serving the
/// same model (the most recently promoted one), never the version itself.
pub fn serving_version<'a>(mv: &ModelVersion, services: &'a [InferenceService]) -> Option<&'a str> {
    services
        .iter()
        .filter(|s| s.spec.model == mv.spec.model)
        .filter_map(|s| s.status.as_ref()?.stable.as_ref())
        .filter(|st| st.version != mv.name_any() && !st.version.is_empty())
        .max_by_key(|st| st.promotion_time.clone())
        .map(|st| st.version.as_str())
}

pub struct Computed {
    pub status: ModelVersionStatus,
    /// The verdict changed: publish `Validated` or `ValidationFailed`.
    pub validated_now: Option<(bool, String)>,
    /// Deletion is waiting; the message says who holds the version.
    pub deletion_blocked: Option<String>,
}

/// The status. `baseline` is the serving version and its metrics when a relative gate
/// needs it.
pub fn compute(mv: &ModelVersion, usage: &Usage, baseline: Option<Baseline>, now: Time) -> Computed {
    let generation = mv.metadata.generation;
    let mut status = mv.status.clone().unwrap_or_default();
    let mut validated_now = None;
    let judged =
        cond::find(&status.conditions, cond::VALIDATED).is_some_and(|c| c.observed_generation == generation);
    if !judged {
        let results = quality_gates::evaluate(&mv.spec.gates, &mv.spec.metrics, baseline.as_ref());
        let (ok, message) = quality_gates::summary(&results);
        let reason = if ok { "GatesPassed" } else { "GateFailed" };
        set_condition(
            &mut status.conditions,
            new_condition(
                cond::VALIDATED,
                cond::status_str(ok),
                reason,
                message.clone(),
                generation,
                now.clone(),
            ),
            now.clone(),
        );
        status.gate_results = results;
        validated_now = Some((ok, message));
    }
    let valid = cond::is_true(&status.conditions, cond::VALIDATED);
    let validated_message =
        cond::find(&status.conditions, cond::VALIDATED).map(|c| c.message.clone()).unwrap_or_default();
    let (ready_reason, ready_message) = if valid {
        ("Validated", "validated and ready to serve".to_string())
    } else {
        ("NotValidated", format!("not validated: {validated_message}"))
    };

    status.serving_in = usage.serving_in.clone();
    status.rollback_target_of = usage.rollback_target_of.clone();
    status.failed_in = usage.failed_in.clone();

    let deleting = mv.metadata.deletion_timestamp.is_some();
    let deletion_blocked = (deleting && usage.blocks_deletion())
        .then(|| format!("deletion waits: the version is {}", usage.describe_holders()));
    let mut set = |type_: &str, value: bool, reason: &str, message: String| {
        set_condition(
            &mut status.conditions,
            new_condition(type_, cond::status_str(value), reason, message, generation, now.clone()),
            now.clone(),
        );
    };
    set(cond::READY, valid, ready_reason, ready_message);
    set(cond::RECONCILING, false, "Reconciled", "status is up to date".into());
    set(cond::STALLED, false, "Reconciled", "nothing needs a human".into());
    match &deletion_blocked {
        Some(msg) => set(cond::DELETION_BLOCKED, true, "InUse", msg.clone()),
        None => {
            cond::remove_condition(&mut status.conditions, cond::DELETION_BLOCKED);
        }
    }
    status.observed_generation = generation;
    Computed { status, validated_now, deletion_blocked }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        Gate, GateOp, InferenceServiceStatus, ModelVersionSpec,
        inference_service::{HistoryEntry, StableStatus},
        model_version::GateVerdict,
    };
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn mv(name: &str, metrics: &[(&str, f64)], gates: Vec<Gate>) -> ModelVersion {
        let mut v = ModelVersion::new(
            name,
            ModelVersionSpec {
                model: "iris".into(),
                metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                gates,
                ..Default::default()
            },
        );
        v.metadata.generation = Some(1);
        v
    }

    fn isvc(name: &str, stable: &str, rollback: Option<&str>) -> InferenceService {
        let mut s: InferenceService = serde_json::from_value(serde_json::json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": name}, "spec": {"model": "iris", "track": "LatestValidated", "runtime": {"preset": "MlopsRuntime"}}
        }))
        .unwrap();
        s.status = Some(InferenceServiceStatus {
            stable: Some(StableStatus {
                version: stable.into(),
                weight: 100,
                promotion_time: Some(t(5)),
                ..Default::default()
            }),
            rollback_target: rollback.map(str::to_owned),
            history: vec![HistoryEntry {
                version: "iris-r9".into(),
                outcome: RolloutOutcome::RolledBack,
                reason: Some("MetricCheckFailed".into()),
                completion_time: Some(t(7)),
                ..Default::default()
            }],
            ..Default::default()
        });
        s
    }

    #[test]
    fn validation_is_computed_once_per_generation() {
        let v = mv("iris-r2", &[("accuracy", 0.5)], vec![Gate::absolute("accuracy", GateOp::Ge, 0.9)]);
        let first = compute(&v, &Usage::default(), None, t(10));
        assert_eq!(first.validated_now, Some((false, first.status.conditions[0].message.clone())));
        assert_eq!(first.status.gate_results[0].verdict, GateVerdict::Failed);
        assert!(!cond::is_true(&first.status.conditions, cond::READY));
        let mut again = v.clone();
        again.status = Some(first.status.clone());
        let second = compute(&again, &Usage::default(), None, t(20));
        assert_eq!(second.validated_now, None, "a judged version is not re-judged");
        assert_eq!(second.status, first.status, "nothing changed, nothing to write");
    }

    #[test]
    fn usage_and_deletion_protection() {
        let services = [isvc("web", "iris-r1", None), isvc("batch", "iris-r2", Some("iris-r1"))];
        let mut v = mv("iris-r1", &[], vec![]);
        let u = usage(&v, &services);
        assert_eq!(u.serving_in, ["web"]);
        assert_eq!(u.rollback_target_of, ["batch"]);
        assert!(compute(&v, &u, None, t(1)).deletion_blocked.is_none(), "not being deleted");
        v.metadata.deletion_timestamp = Some(t(2));
        let c = compute(&v, &u, None, t(3));
        let msg = c.deletion_blocked.expect("blocked");
        assert!(msg.contains("served by InferenceService web"), "{msg}");
        assert!(msg.contains("rollback target of InferenceService batch"), "{msg}");
        assert!(cond::is_true(&c.status.conditions, cond::DELETION_BLOCKED));
        let free = compute(&v, &Usage::default(), None, t(4));
        assert!(free.deletion_blocked.is_none());
    }

    #[test]
    fn failed_in_comes_from_rollback_history() {
        let services = [isvc("web", "iris-r1", None)];
        let u = usage(&mv("iris-r9", &[], vec![]), &services);
        assert_eq!(u.failed_in.len(), 1);
        assert_eq!(u.failed_in[0].inference_service, "web");
        assert_eq!(u.failed_in[0].reason, "MetricCheckFailed");
    }

    #[test]
    fn the_serving_baseline_is_another_version_of_the_same_model() {
        let services = [isvc("web", "iris-r1", None)];
        assert_eq!(serving_version(&mv("iris-r2", &[], vec![]), &services), Some("iris-r1"));
        assert_eq!(serving_version(&mv("iris-r1", &[], vec![]), &services), None);
    }

    fn inputs(version: ModelVersion, services: Vec<InferenceService>) -> Inputs {
        Inputs { version, services, baseline: None }
    }

    #[test]
    fn the_first_pass_protects_judges_and_writes_the_status() {
        let v = mv("iris-r2", &[("accuracy", 0.95)], vec![Gate::absolute("accuracy", GateOp::Ge, 0.9)]);
        let out = plan(&inputs(v, vec![]), t(10));
        assert_eq!(out.finalizer, FinalizerChange::Add);
        assert!(cond::is_true(&out.status.as_ref().unwrap().conditions, cond::READY));
        assert_eq!(out.events.len(), 1);
        assert_eq!((out.events[0].type_, out.events[0].reason), (EventType::Normal, "Validated"));
        assert_eq!(out.requeue, STEADY_REQUEUE);
    }

    #[test]
    fn a_settled_version_plans_nothing() {
        let mut v = mv("iris-r2", &[], vec![]);
        v.metadata.finalizers = Some(vec![FINALIZER_PROTECT_SERVING.into()]);
        v.status = plan(&inputs(v.clone(), vec![]), t(10)).status;
        let out = plan(&inputs(v, vec![]), t(20));
        assert_eq!(
            out,
            Outcome {
                status: None,
                finalizer: FinalizerChange::Keep,
                events: vec![],
                requeue: STEADY_REQUEUE
            }
        );
    }

    #[test]
    fn a_blocked_deletion_keeps_the_finalizer_and_warns_once() {
        let services = vec![isvc("web", "iris-r1", None)];
        let mut v = mv("iris-r1", &[], vec![]);
        v.metadata.finalizers = Some(vec![FINALIZER_PROTECT_SERVING.into()]);
        v.metadata.deletion_timestamp = Some(t(5));
        let first = plan(&inputs(v.clone(), services.clone()), t(10));
        assert_eq!((first.finalizer, first.requeue), (FinalizerChange::Keep, BLOCKED_REQUEUE));
        let reasons: Vec<&str> = first.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["Validated", "DeletionBlocked"]);
        assert!(first.events[1].note.contains("served by InferenceService web"), "{:?}", first.events);
        v.status = first.status;
        let again = plan(&inputs(v, services), t(20));
        assert_eq!(again.events, vec![], "the Warning is published once per block");
        assert_eq!((again.status, again.finalizer), (None, FinalizerChange::Keep));
    }

    #[test]
    fn a_free_deletion_removes_the_finalizer_without_a_status_write() {
        let mut v = mv("iris-r1", &[], vec![]);
        v.metadata.finalizers = Some(vec![FINALIZER_PROTECT_SERVING.into(), "other/keep".into()]);
        v.metadata.deletion_timestamp = Some(t(5));
        let out = plan(&inputs(v.clone(), vec![isvc("web", "iris-r9", None)]), t(10));
        assert_eq!((out.finalizer, out.status, out.events), (FinalizerChange::Remove, None, vec![]));
        v.metadata.finalizers = Some(vec!["other/keep".into()]);
        assert_eq!(plan(&inputs(v, vec![]), t(10)).finalizer, FinalizerChange::Keep, "not ours to remove");
    }

    #[test]
    fn only_relative_gates_need_a_baseline() {
        let services = [isvc("web", "iris-r1", None)];
        assert_eq!(baseline_name(&mv("iris-r2", &[], vec![]), &services), None);
        let relative = mv("iris-r2", &[], vec![Gate::relative("f1", GateOp::Ge, 0.0)]);
        assert_eq!(baseline_name(&relative, &services), Some("iris-r1"));
    }
}
