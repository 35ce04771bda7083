//! The rollout's transitions, pure: starting a canary, promoting it, rolling it back, and
//! the history and delivery counters each one records.

use super::*;

pub(super) fn start_canary(
    st: &mut InferenceServiceStatus,
    t: &Target,
    s: &Settings,
    now: &Time,
    notes: &mut Vec<Note>,
) {
    let mut c = CanaryStatus {
        version: t.version.clone(),
        step: 0,
        phase: CanaryPhase::Starting,
        start_time: Some(now.clone()),
        step_start_time: Some(now.clone()),
        ..Default::default()
    };
    ensure_checks(&mut c, s);
    st.rollback_target = st.stable.as_ref().map(|x| x.version.clone());
    notes.push(Note {
        warning: false,
        reason: "RolloutStarted",
        message: format!(
            "rolling out {} over {} step(s), stable {} keeps serving",
            t.version,
            s.steps.len(),
            st.stable.as_ref().map(|x| x.version.as_str()).unwrap_or("-")
        ),
    });
    st.canary = Some(c);
}

pub(super) fn push_history(
    st: &mut InferenceServiceStatus,
    c: &CanaryStatus,
    outcome: RolloutOutcome,
    reason: &str,
    message: String,
    now: &Time,
) {
    st.history.push(HistoryEntry {
        version: c.version.clone(),
        start_time: c.start_time.clone(),
        completion_time: Some(now.clone()),
        outcome,
        reason: Some(reason.into()),
        message: Some(message),
    });
    let excess = st.history.len().saturating_sub(HISTORY_LIMIT);
    st.history.drain(..excess);
}

pub(super) fn record_promotion(
    st: &mut InferenceServiceStatus,
    t: &Target,
    now: &Time,
    delivered: &mut Vec<Delivered>,
    notes: &mut Vec<Note>,
    how: &str,
) {
    let lead = t.origin.as_ref().map(|o| secs_between(o, now).max(0));
    let d = st.delivery.get_or_insert_with(DeliveryStatus::default);
    d.deployments += 1;
    d.last_deployment_time = Some(now.clone());
    d.last_lead_time_seconds = lead;
    d.change_failure_rate = Some(d.failed_deployments as f64 / (d.deployments + d.failed_deployments) as f64);
    delivered.push(Delivered::Promoted { lead_time_seconds: lead });
    notes.push(Note {
        warning: false,
        reason: "Promoted",
        message: format!("{} serves all traffic: {how}", t.version),
    });
}

pub(super) fn promote(
    st: &mut InferenceServiceStatus,
    c: &CanaryStatus,
    target: &Option<Target>,
    now: &Time,
    notes: &mut Vec<Note>,
    delivered: &mut Vec<Delivered>,
    how: &str,
) {
    let previous = st.stable.as_ref().map(|x| x.version.clone());
    push_history(st, c, RolloutOutcome::Promoted, "Promoted", how.to_string(), now);
    st.last_decision = Some(Decision {
        action: DecisionAction::Promote,
        version: c.version.clone(),
        check: if how.contains("annotation") { "manual".into() } else { String::new() },
        value: None,
        bound: None,
        time: now.clone(),
        reason: "Promoted".into(),
        message: how.to_string(),
    });
    st.stable = Some(StableStatus {
        version: c.version.clone(),
        weight: 100,
        promotion_time: Some(now.clone()),
        ..Default::default()
    });
    st.canary = None;
    // The previous stable stays (scaled to zero) as the revert target for the delay.
    st.rollback_target = previous;
    let t = target
        .clone()
        .filter(|t| t.version == c.version)
        .unwrap_or(Target { version: c.version.clone(), origin: None });
    record_promotion(st, &t, now, delivered, notes, how);
}

pub(super) fn rollback(
    st: &mut InferenceServiceStatus,
    d: Decision,
    now: &Time,
    notes: &mut Vec<Note>,
    delivered: &mut Vec<Delivered>,
) {
    let Some(mut c) = st.canary.clone() else { return };
    let outcome =
        if d.action == DecisionAction::Abort { RolloutOutcome::Aborted } else { RolloutOutcome::RolledBack };
    push_history(st, &c, outcome, &d.reason, d.message.clone(), now);
    if !st.failed_versions.contains(&c.version) {
        st.failed_versions.push(c.version.clone());
        let excess = st.failed_versions.len().saturating_sub(FAILED_VERSIONS_LIMIT);
        st.failed_versions.drain(..excess);
    }
    let delivery = st.delivery.get_or_insert_with(DeliveryStatus::default);
    delivery.failed_deployments += 1;
    delivery.change_failure_rate = Some(
        delivery.failed_deployments as f64 / (delivery.deployments + delivery.failed_deployments) as f64,
    );
    delivered.push(Delivered::RolledBack);
    let measured = match (d.value, d.bound) {
        (Some(v), Some(b)) => format!(" (measured {}, bound {})", round(v), round(b)),
        _ => String::new(),
    };
    notes.push(Note {
        warning: true,
        reason: if outcome == RolloutOutcome::Aborted { "RolloutAborted" } else { "RolledBack" },
        message: format!(
            "{} rolled back to {} by check {}: {}{measured}",
            c.version,
            st.stable.as_ref().map(|x| x.version.as_str()).unwrap_or("-"),
            d.check,
            d.message
        ),
    });
    c.phase = CanaryPhase::RollingBack;
    st.canary = Some(c);
    st.last_decision = Some(d);
}
