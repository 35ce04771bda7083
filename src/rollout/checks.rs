//! The canary's checks, pure: recording health and metric measurements in its status,
//! and judging from them whether the rollout waits, advances, promotes or rolls back.

use super::*;

pub(super) enum Judgement {
    Wait,
    Started,
    Advance,
    Promote(&'static str),
    Abort(String),
    Fail(Decision),
}

pub(super) fn judge(c: &CanaryStatus, s: &Settings, obs: &Observed, now: &Time) -> Judgement {
    let decision =
        |check: &str, reason: &str, value: Option<f64>, bound: Option<f64>, message: String| Decision {
            action: DecisionAction::Rollback,
            version: c.version.clone(),
            check: check.into(),
            value,
            bound,
            time: now.clone(),
            reason: reason.into(),
            message,
        };
    if let Some(v) = &obs.manual.abort {
        return Judgement::Abort(v.clone());
    }
    if let Health::Failed { reason, value, bound, message } = &obs.canary_health {
        return Judgement::Fail(decision(HEALTH, reason, *value, *bound, message.clone()));
    }
    for check in c.analysis.iter().filter(|k| k.kind == CheckKind::Metric) {
        let last = check.measurements.last();
        if check.failures > s.failure_limit {
            let spec = s.metrics.iter().find(|m| m.name == check.name);
            let value = last.and_then(|m| m.value);
            let bound = spec.and_then(|m| violated_bound(m, value));
            let msg = last.map(|m| m.message.clone()).unwrap_or_default();
            return Judgement::Fail(decision(
                &check.name,
                "MetricCheckFailed",
                value,
                bound,
                format!(
                    "{} failed {} time(s), more than failureLimit {}: {msg}",
                    check.name, check.failures, s.failure_limit
                ),
            ));
        }
        if check.query_errors > s.query_error_limit {
            let msg = last.map(|m| m.message.clone()).unwrap_or_default();
            return Judgement::Fail(decision(
                &check.name,
                "QueryErrorLimitExceeded",
                None,
                None,
                format!(
                    "{} query failed {} time(s) in a row, more than queryErrorLimit {}: {msg}",
                    check.name, check.query_errors, s.query_error_limit
                ),
            ));
        }
    }
    let step_start = c.step_start_time.clone().or(c.start_time.clone()).unwrap_or(now.clone());
    let in_step = secs_between(&step_start, now);
    let pause = if c.phase == CanaryPhase::Baking {
        s.bake
    } else {
        s.pauses.get(c.step as usize).copied().unwrap_or(0)
    };
    if obs.manual.promote.is_some() {
        return Judgement::Promote("promoted by the mlops.dev/promote annotation");
    }
    if in_step > pause + s.progress_deadline {
        let what = match c.phase {
            CanaryPhase::Starting => "canary pods did not become Ready".to_string(),
            _ => format!("no passing analysis at step {} (waiting for data?)", c.step),
        };
        return Judgement::Fail(decision(
            "progressDeadline",
            "ProgressDeadlineExceeded",
            Some(in_step as f64),
            Some((pause + s.progress_deadline) as f64),
            format!("{what} within {} s", pause + s.progress_deadline),
        ));
    }
    match c.phase {
        CanaryPhase::Starting => {
            if obs.canary_ready >= 1 && obs.canary_health == Health::Healthy {
                Judgement::Started
            } else {
                Judgement::Wait
            }
        }
        CanaryPhase::Progressing | CanaryPhase::Baking => {
            let ready = obs.canary_health == Health::Healthy;
            let proven = if s.metrics.is_empty() {
                in_step >= s.interval.min(pause.max(1))
            } else {
                s.metrics.iter().all(|m| passed_since(c, &m.name, &step_start))
            };
            if ready && proven && in_step >= pause {
                if c.phase == CanaryPhase::Baking {
                    Judgement::Promote("finished its bake with passing analysis")
                } else {
                    Judgement::Advance
                }
            } else {
                Judgement::Wait
            }
        }
        CanaryPhase::RollingBack => Judgement::Wait,
    }
}

/// Whether check `name` has a passing measurement taken during the current step.
pub(super) fn passed_since(c: &CanaryStatus, name: &str, since: &Time) -> bool {
    c.analysis
        .iter()
        .find(|k| k.name == name)
        .is_some_and(|k| k.measurements.iter().any(|m| &m.time >= since && m.verdict == CheckVerdict::Passed))
}

pub(super) fn violated_bound(m: &MetricCheck, value: Option<f64>) -> Option<f64> {
    match value {
        Some(v) if m.max.is_some_and(|max| v > max) => m.max,
        Some(v) if m.min.is_some_and(|min| v < min) => m.min,
        _ => m.max.or(m.min),
    }
}

pub(super) fn ensure_checks(c: &mut CanaryStatus, s: &Settings) {
    if !c.analysis.iter().any(|k| k.name == HEALTH) {
        c.analysis
            .insert(0, CheckStatus { name: HEALTH.into(), kind: CheckKind::Health, ..Default::default() });
    }
    for m in s.metrics {
        if !c.analysis.iter().any(|k| k.name == m.name) {
            c.analysis.push(CheckStatus {
                name: m.name.clone(),
                kind: CheckKind::Metric,
                ..Default::default()
            });
        }
    }
}

pub(super) fn push_measurement(check: &mut CheckStatus, m: Measurement) {
    check.measurements.push(m);
    let excess = check.measurements.len().saturating_sub(MEASUREMENT_LIMIT);
    check.measurements.drain(..excess);
}

pub(super) fn apply_health(c: &mut CanaryStatus, health: &Health, now: &Time) {
    let Some(check) = c.analysis.iter_mut().find(|k| k.name == HEALTH) else { return };
    let (verdict, value, message) = match health {
        Health::Healthy => (CheckVerdict::Passed, None, "canary pods are Ready".to_string()),
        Health::Pending(m) => (CheckVerdict::NoData, None, m.clone()),
        Health::Failed { value, message, .. } => (CheckVerdict::Failed, *value, message.clone()),
    };
    // Health is event-driven: record a measurement only when it changes.
    let changed = check.measurements.last().is_none_or(|m| m.verdict != verdict || m.message != message);
    if changed {
        if verdict == CheckVerdict::Failed {
            check.failures += 1;
        }
        check.verdict = Some(verdict);
        push_measurement(check, Measurement { time: now.clone(), value, verdict, message });
    }
}

pub(super) fn apply_sample(c: &mut CanaryStatus, s: &Settings, m: &Measured, now: &Time) {
    let Some(spec) = s.metrics.iter().find(|x| x.name == m.check) else { return };
    let Some(check) = c.analysis.iter_mut().find(|k| k.name == m.check) else { return };
    let bounds = describe_bounds(spec);
    let (verdict, value, message) = match &m.sample {
        Sample::Value(v) if !v.is_finite() => {
            (CheckVerdict::Failed, None, format!("{} is {v}, not a number", spec.name))
        }
        Sample::Value(v) => {
            let ok = spec.min.is_none_or(|min| *v >= min) && spec.max.is_none_or(|max| *v <= max);
            let word = if ok { "within" } else { "outside" };
            (
                if ok { CheckVerdict::Passed } else { CheckVerdict::Failed },
                Some(*v),
                format!("{} = {} {word} {bounds}", spec.name, round(*v),),
            )
        }
        Sample::NoData => match spec.on_no_data {
            NoDataPolicy::Pass => (CheckVerdict::Passed, None, "no data; onNoData: Pass".to_string()),
            NoDataPolicy::Fail => (CheckVerdict::Failed, None, "no data; onNoData: Fail".to_string()),
            NoDataPolicy::Wait => (CheckVerdict::NoData, None, "no data yet; onNoData: Wait".to_string()),
        },
        Sample::Error(e) => (CheckVerdict::Error, None, format!("query failed: {e}")),
    };
    match verdict {
        CheckVerdict::Failed => check.failures += 1,
        CheckVerdict::Error => check.query_errors += 1,
        _ => check.query_errors = 0,
    }
    // Polled again and again while a new canary awaits its first samples: those repeats
    // are not new measurements (nor status writes).
    let repeat = verdict == CheckVerdict::NoData
        && check.verdict == Some(CheckVerdict::NoData)
        && check.no_data_since.as_ref().is_some_and(|t| secs_between(t, now) < NO_DATA_FAST_SECONDS);
    if verdict == CheckVerdict::NoData {
        check.no_data_since.get_or_insert_with(|| now.clone());
    } else if verdict != CheckVerdict::Error {
        check.no_data_since = None;
    }
    check.verdict = Some(verdict);
    if !repeat {
        push_measurement(check, Measurement { time: now.clone(), value, verdict, message });
    }
}

pub(super) fn describe_bounds(m: &MetricCheck) -> String {
    match (m.min, m.max) {
        (Some(a), Some(b)) => format!("[{}, {}]", round(a), round(b)),
        (Some(a), None) => format!(">= {}", round(a)),
        (None, Some(b)) => format!("<= {}", round(b)),
        (None, None) => "no bounds".into(),
    }
}

pub(super) fn round(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
