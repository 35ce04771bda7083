//! ModelVersion status as a pure function of the version and the InferenceServices of
//! its namespace: gate verdicts (computed once: a version is judged when it is created,
//! against what was serving then), where it serves, what holds it, where it failed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::gates::{self, Baseline};
use crate::api::{
    InferenceService, ModelVersion, ModelVersionStatus,
    conditions::{self as cond, new_condition, set_condition},
    inference_service::RolloutOutcome,
    model_version::{FailedIn, MAX_FAILED_IN},
};

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

/// Computes the status. `baseline` is the serving version and its metrics when a relative
/// gate needs it (looked up by the shell).
pub fn compute(mv: &ModelVersion, usage: &Usage, baseline: Option<Baseline>, now: Time) -> Computed {
    let generation = mv.metadata.generation;
    let mut status = mv.status.clone().unwrap_or_default();
    let mut validated_now = None;
    let judged =
        cond::find(&status.conditions, cond::VALIDATED).is_some_and(|c| c.observed_generation == generation);
    if !judged {
        let results = gates::evaluate(&mv.spec.gates, &mv.spec.metrics, baseline.as_ref());
        let (ok, message) = gates::summary(&results);
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
}
