//! Condition types and pure helpers over `status.conditions`.
//!
//! Conditions are the standard `meta/v1` `Condition`, stored as a list-map keyed by `type`.
//! Every kind publishes `Ready` (summary, normal-true), `Reconciling` and `Stalled`
//! (abnormal-true, read by kstatus / Flux / Argo CD) beside its domain conditions. Each
//! carries `observedGeneration`; `lastTransitionTime` changes only when `status` does.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Summary: the resource does what its spec asks.
pub const READY: &str = "Ready";
/// Work is in flight (a run, a rollout step, a status not yet converged).
pub const RECONCILING: &str = "Reconciling";
/// An error that needs a human (bad spec, missing reference); no retry storm.
pub const STALLED: &str = "Stalled";
/// TrainingJob: the latest run succeeded and produced a ModelVersion.
pub const SUCCEEDED: &str = "Succeeded";
/// TrainingJob: the latest run failed.
pub const FAILED: &str = "Failed";
/// ModelVersion: every gate passed (True) or at least one failed (False).
pub const VALIDATED: &str = "Validated";
/// InferenceService: a rollout is moving traffic to a new version.
pub const PROGRESSING: &str = "Progressing";
/// InferenceService: the desired version could not be served; an older one serves instead.
pub const DEGRADED: &str = "Degraded";
/// ModelVersion: a deletion is waiting because the version is served or a rollback target.
pub const DELETION_BLOCKED: &str = "DeletionBlocked";

/// Values of `Condition.status`.
pub const STATUS_TRUE: &str = "True";
pub const STATUS_FALSE: &str = "False";

/// `"True"` or `"False"`.
pub fn status_str(value: bool) -> &'static str {
    if value { STATUS_TRUE } else { STATUS_FALSE }
}

/// A condition with the given fields; `lastTransitionTime` is `now` (and is replaced by
/// the stored one in [`set_condition`] when the status does not change).
pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Insert or replace the condition of `new.type_`. `lastTransitionTime` is kept from the
/// stored condition when `status` is unchanged and set to `now` otherwise (whatever `new`
/// carries). Returns whether anything changed, so callers can skip writes and Events.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: Time) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            new.last_transition_time =
                if existing.status == new.status { existing.last_transition_time.clone() } else { now };
            if *existing == new {
                false
            } else {
                *existing = new;
                true
            }
        }
        None => {
            new.last_transition_time = now;
            conditions.push(new);
            true
        }
    }
}

/// Remove the condition of `type_`; returns whether one was removed.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == STATUS_TRUE)
}

/// Whether the condition of `type_` is present with status `False`.
pub fn is_false(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == STATUS_FALSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn set_condition_inserts_with_now() {
        let mut cs = vec![];
        let c = new_condition(READY, "Unknown", "Progressing", "starting", Some(1), t(0));
        assert!(set_condition(&mut cs, c, t(10)));
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, t(10));
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_unchanged() {
        let mut cs = vec![];
        set_condition(&mut cs, new_condition(READY, STATUS_FALSE, "A", "a", Some(1), t(0)), t(10));
        let changed =
            set_condition(&mut cs, new_condition(READY, STATUS_FALSE, "B", "b", Some(2), t(99)), t(20));
        assert!(changed);
        assert_eq!(cs[0].last_transition_time, t(10));
        assert_eq!(cs[0].reason, "B");
        assert_eq!(cs[0].observed_generation, Some(2));
    }

    #[test]
    fn set_condition_moves_transition_time_when_status_changes() {
        let mut cs = vec![];
        set_condition(&mut cs, new_condition(READY, STATUS_FALSE, "A", "a", Some(1), t(0)), t(10));
        set_condition(&mut cs, new_condition(READY, STATUS_TRUE, "A", "a", Some(1), t(0)), t(30));
        assert_eq!(cs[0].last_transition_time, t(30));
        assert!(is_true(&cs, READY));
    }

    #[test]
    fn set_condition_reports_no_change_for_identical_condition() {
        let mut cs = vec![];
        let c = new_condition(STALLED, STATUS_FALSE, "Ok", "", Some(3), t(0));
        set_condition(&mut cs, c.clone(), t(10));
        assert!(!set_condition(&mut cs, c, t(50)));
        assert_eq!(cs[0].last_transition_time, t(10));
    }

    #[test]
    fn conditions_are_keyed_by_type() {
        let mut cs = vec![];
        set_condition(&mut cs, new_condition(READY, STATUS_TRUE, "R", "", None, t(0)), t(1));
        set_condition(&mut cs, new_condition(STALLED, STATUS_FALSE, "S", "", None, t(0)), t(1));
        set_condition(&mut cs, new_condition(READY, STATUS_FALSE, "R", "", None, t(0)), t(2));
        assert_eq!(cs.len(), 2);
        assert!(is_false(&cs, READY));
        assert!(find(&cs, RECONCILING).is_none());
        assert!(!is_true(&cs, RECONCILING));
        assert!(remove_condition(&mut cs, STALLED));
        assert!(!remove_condition(&mut cs, STALLED));
        assert_eq!(cs.len(), 1);
    }
}
