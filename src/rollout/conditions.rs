//! The InferenceService's conditions after a pass, pure. Every pass sets Ready, Stalled,
//! Reconciling, Progressing and Degraded, so a successful pass replaces whatever a failed
//! one wrote (a refused child's `ChildRejected`, say).

use super::*;
use crate::api::conditions::{new_condition, set_condition};

pub(super) fn conditions(
    st: &mut InferenceServiceStatus,
    obs: &Observed,
    target: &Option<Target>,
    generation: Option<i64>,
    now: &Time,
) {
    let set = |conds: &mut Vec<_>, type_: &str, value: bool, reason: &str, message: String| {
        set_condition(
            conds,
            new_condition(type_, cond::status_str(value), reason, message, generation, now.clone()),
            now.clone(),
        );
    };
    let mut conds = std::mem::take(&mut st.conditions);
    let stable = st.stable.clone();
    let serving =
        stable.as_ref().is_some_and(|x| x.ready_replicas > 0 || x.replicas == 0 && obs.canary_ready > 0);
    let failed_target = target.as_ref().filter(|t| {
        st.failed_versions.contains(&t.version) && stable.as_ref().is_none_or(|x| x.version != t.version)
    });
    let progressing = st.canary.as_ref().map(|c| (c.version.clone(), c.phase, c.weight));

    match &progressing {
        Some((v, CanaryPhase::RollingBack, _)) => set(
            &mut conds,
            cond::PROGRESSING,
            false,
            "RollingBack",
            format!("returning traffic from {v} to the stable version"),
        ),
        Some((v, phase, w)) => {
            set(&mut conds, cond::PROGRESSING, true, "RolloutInProgress", format!("{v}: {phase:?} at {w} %"))
        }
        None => set(&mut conds, cond::PROGRESSING, false, "Idle", "no rollout in progress".into()),
    }
    let degraded_msg = match (failed_target, &st.last_decision) {
        (Some(t), Some(d)) if d.version == t.version => Some(format!(
            "{} failed here ({}: {}); {} keeps serving until a newer version exists or {} is set",
            t.version,
            d.reason,
            d.message,
            stable.as_ref().map(|x| x.version.as_str()).unwrap_or("nothing"),
            crate::api::ANNOTATION_RETRY
        )),
        (Some(t), _) => {
            Some(format!("{} failed here; set {} to try again", t.version, crate::api::ANNOTATION_RETRY))
        }
        _ => None,
    };
    match &degraded_msg {
        Some(m) => set(&mut conds, cond::DEGRADED, true, "VersionFailed", m.clone()),
        None => set(
            &mut conds,
            cond::DEGRADED,
            false,
            "Healthy",
            "the desired version serves or is rolling out".into(),
        ),
    }
    let stalled = obs.target_problem_is_stalled.then(|| obs.target_problem.clone().unwrap_or_default());
    match &stalled {
        Some(m) => set(&mut conds, cond::STALLED, true, "TargetUnavailable", m.clone()),
        None => set(&mut conds, cond::STALLED, false, "Reconciled", "nothing needs a human".into()),
    }
    let busy = progressing.is_some() || stable.as_ref().is_some_and(|x| x.ready_replicas < x.replicas);
    set(
        &mut conds,
        cond::RECONCILING,
        busy,
        if busy { "Progressing" } else { "Reconciled" },
        if busy { "pods or traffic are still moving".into() } else { "traffic is where it should be".into() },
    );
    let (ready, reason, msg) = match (&stable, serving) {
        (None, _) => (
            false,
            "NoVersion",
            obs.target_problem.clone().unwrap_or_else(|| "no version to serve yet".into()),
        ),
        (Some(x), false) => match &obs.stable_problem {
            Some(problem) => (false, PODS_FAILING, format!("{} has no Ready pod: {problem}", x.version)),
            None => (false, "NotReady", format!("{} has no Ready pod yet", x.version)),
        },
        (Some(x), true) => match (&degraded_msg, &progressing) {
            (Some(m), _) => (true, "ServingPrevious", m.clone()),
            (None, Some((v, _, w))) => {
                (true, "Serving", format!("{} serves; {v} is canary at {w} %", x.version))
            }
            (None, None) => match &obs.target_problem {
                // A newer version passed over (the service's gates): said while this serves.
                Some(problem) => (true, "Serving", format!("{} serves all traffic; {problem}", x.version)),
                None => (true, "Serving", format!("{} serves all traffic", x.version)),
            },
        },
    };
    set(&mut conds, cond::READY, ready, reason, msg);
    st.conditions = conds;
}

/// Ready=False because the stable version's pods fail, not merely start.
pub(super) const PODS_FAILING: &str = "PodsFailing";

pub(super) fn ready_reason(st: &InferenceServiceStatus) -> Option<&str> {
    st.conditions.iter().find(|c| c.type_ == cond::READY && c.status == "False").map(|c| c.reason.as_str())
}
