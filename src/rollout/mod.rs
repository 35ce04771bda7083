//! The rollout state machine, pure: from an InferenceService's spec, its persisted status
//! and what was observed this time (the version it should serve, ready pods, canary
//! health, fresh metric measurements, manual annotations) to the next status, the traffic
//! placement and the Events to publish. All state lives in status, so a restarted operator
//! resumes exactly where it was.
//!
//! Life of a rollout: `Starting` (canary pods come up at the first step's weight) →
//! `Progressing` through the steps (each waits for its pause and for a passing
//! measurement of every metric check taken during the step) → `Baking` at 100 % (analysis
//! continues) → promoted. Any failed check, the progress deadline or an abort sends all
//! traffic back to the stable version (`RollingBack` until stable pods are Ready).

mod checks;
mod conditions;
pub mod traffic;
mod transitions;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub use self::traffic::{Placement, Traffic, placement};
use self::{
    checks::{Judgement, apply_health, apply_sample, ensure_checks, judge, round},
    conditions::{PODS_FAILING, conditions, ready_reason},
    transitions::{promote, push_history, record_promotion, rollback, start_canary},
};
use crate::api::{
    conditions::{self as cond},
    inference_service::{
        CanaryPhase, CanaryStatus, CheckKind, CheckStatus, CheckVerdict, DEFAULT_ANALYSIS_INTERVAL_SECONDS,
        DEFAULT_BAKE_SECONDS, DEFAULT_FAILURE_LIMIT, DEFAULT_PROGRESS_DEADLINE_SECONDS,
        DEFAULT_QUERY_ERROR_LIMIT, DEFAULT_SCALE_DOWN_DELAY_SECONDS, Decision, DecisionAction,
        DeliveryStatus, FAILED_VERSIONS_LIMIT, HISTORY_LIMIT, HistoryEntry, InferenceServiceSpec,
        InferenceServiceStatus, MEASUREMENT_LIMIT, Measurement, MetricCheck, NoDataPolicy, Rollout,
        RolloutOutcome, StableStatus,
    },
};

/// Name of the health check in `status.canary.analysis`.
pub const HEALTH: &str = "health";

/// The version the service should serve, resolved by the shell.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub version: String,
    /// When the change began: source commit time, else the training run's start. Lead
    /// time runs from here to 100 % traffic.
    pub origin: Option<Time>,
}

/// Canary pod health, computed from pod watch events by the shell.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    Healthy,
    /// Not failed, not yet proven (pods starting).
    Pending(String),
    Failed {
        reason: &'static str,
        value: Option<f64>,
        bound: Option<f64>,
        message: String,
    },
}

/// One fresh measurement of a metric check.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    Value(f64),
    NoData,
    Error(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub check: String,
    pub sample: Sample,
}

/// Manual-control annotations not yet handled: the value to record as handled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manual {
    pub promote: Option<String>,
    pub abort: Option<String>,
    pub retry: Option<String>,
}

pub struct Observed {
    pub target: Option<Target>,
    /// Why there is no target, in words (no validated version yet, pin not found, ...).
    pub target_problem: Option<String>,
    /// The problem needs a human (a pin that cannot be served) rather than time.
    pub target_problem_is_stalled: bool,
    pub stable_ready: i32,
    /// Why the stable version's pods fail (crash loop, image pull, restarts, readiness
    /// deadline), looked at by the shell only while none of them is Ready.
    pub stable_problem: Option<String>,
    pub canary_ready: i32,
    pub canary_health: Health,
    pub measurements: Vec<Measured>,
    pub manual: Manual,
    pub now: Time,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// For the delivery-metric counters and histograms.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivered {
    Promoted { lead_time_seconds: Option<i64> },
    RolledBack,
    Restored { seconds: i64 },
}

pub struct Plan {
    pub status: InferenceServiceStatus,
    pub traffic: Traffic,
    pub notes: Vec<Note>,
    pub delivered: Vec<Delivered>,
    pub requeue: Duration,
}

/// Settings with their defaults.
pub struct Settings<'a> {
    pub steps: Vec<i32>,
    pub pauses: Vec<i64>,
    pub interval: i64,
    pub failure_limit: i32,
    pub query_error_limit: i32,
    pub progress_deadline: i64,
    pub bake: i64,
    pub scale_down_delay: i64,
    pub metrics: &'a [MetricCheck],
}

impl<'a> Settings<'a> {
    pub fn of(spec: &'a InferenceServiceSpec) -> Settings<'a> {
        static NONE: Rollout = Rollout {
            steps: Vec::new(),
            traffic_routing: None,
            progress_deadline_seconds: None,
            bake_seconds: None,
            scale_down_delay_seconds: None,
            analysis: None,
        };
        let r = spec.rollout.as_ref().unwrap_or(&NONE);
        let a = r.analysis.as_ref();
        Settings {
            steps: r.steps.iter().map(|s| s.weight).collect(),
            pauses: r.steps.iter().map(|s| s.pause_seconds.unwrap_or(0)).collect(),
            interval: a.and_then(|a| a.interval_seconds).unwrap_or(DEFAULT_ANALYSIS_INTERVAL_SECONDS),
            failure_limit: a.and_then(|a| a.failure_limit).unwrap_or(DEFAULT_FAILURE_LIMIT),
            query_error_limit: a.and_then(|a| a.query_error_limit).unwrap_or(DEFAULT_QUERY_ERROR_LIMIT),
            progress_deadline: r.progress_deadline_seconds.unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
            bake: r.bake_seconds.unwrap_or(DEFAULT_BAKE_SECONDS),
            scale_down_delay: r.scale_down_delay_seconds.unwrap_or(DEFAULT_SCALE_DOWN_DELAY_SECONDS),
            metrics: a.map(|a| a.metrics.as_slice()).unwrap_or(&[]),
        }
    }

    /// Weight of step `i`; past the last step, 100.
    fn weight(&self, step: i32) -> i32 {
        self.steps.get(step.max(0) as usize).copied().unwrap_or(100)
    }
}

fn secs_between(a: &Time, b: &Time) -> i64 {
    b.0.duration_since(a.0).as_secs()
}

/// While a metric check has had no data for less than this, it is queried again every
/// [`NO_DATA_POLL`] (and the repeats are not recorded): a new canary's first samples
/// arrive within a scrape or two, and waiting a whole interval for them would only delay
/// the verdict, and a rollback. Past this, no data is measured once per interval.
pub const NO_DATA_FAST_SECONDS: i64 = 10;
pub const NO_DATA_POLL: Duration = Duration::from_millis(250);

/// Whether the metric checks are due for a measurement now (the shell queries Prometheus
/// only then): a canary with traffic, and its next measurement time reached.
pub fn metrics_due(spec: &InferenceServiceSpec, status: &InferenceServiceStatus, now: &Time) -> bool {
    let s = Settings::of(spec);
    let Some(canary) = &status.canary else { return false };
    !s.metrics.is_empty()
        && matches!(canary.phase, CanaryPhase::Progressing | CanaryPhase::Baking)
        && (awaiting_first_data(canary, &s, now)
            || last_measured(canary, &s).is_none_or(|t| secs_between(&t, now) >= s.interval))
}

/// When the metric checks were last measured; `None` before the canary's first
/// measurement, which is taken as soon as it serves (its pods are new, so any sample is
/// its own). Later measurements are due one interval after the last.
fn last_measured(canary: &CanaryStatus, s: &Settings) -> Option<Time> {
    metric_checks(canary, s).filter_map(|c| c.measurements.last().map(|m| m.time.clone())).max()
}

/// A metric check has had no data, but for less than [`NO_DATA_FAST_SECONDS`].
fn awaiting_first_data(canary: &CanaryStatus, s: &Settings, now: &Time) -> bool {
    metric_checks(canary, s).any(|c| {
        c.verdict == Some(CheckVerdict::NoData)
            && c.no_data_since.as_ref().is_some_and(|t| secs_between(t, now) < NO_DATA_FAST_SECONDS)
    })
}

fn metric_checks<'a>(canary: &'a CanaryStatus, s: &'a Settings) -> impl Iterator<Item = &'a CheckStatus> {
    canary
        .analysis
        .iter()
        .filter(|c| c.kind == CheckKind::Metric && s.metrics.iter().any(|m| m.name == c.name))
}

/// The next state. See the module documentation for the life of a rollout.
pub fn plan(
    spec: &InferenceServiceSpec,
    current: &InferenceServiceStatus,
    obs: &Observed,
    generation: Option<i64>,
) -> Plan {
    let s = Settings::of(spec);
    let now = obs.now.clone();
    let mut st = current.clone();
    let mut notes = Vec::new();
    let mut delivered = Vec::new();
    let manual = st.manual_actions.get_or_insert_with(Default::default);

    if let Some(v) = &obs.manual.retry {
        manual.retry = Some(v.clone());
        if let Some(t) = &obs.target {
            st.failed_versions.retain(|f| f != &t.version);
            notes.push(Note {
                warning: false,
                reason: "RetryRequested",
                message: format!("retrying version {}", t.version),
            });
        }
    }

    // 1. A rollback in flight finishes once the stable pods carry all traffic again: no
    //    canary pod is Ready (so none is in the Service any more) and a stable pod is. The
    //    stable's missing replicas are capacity, not traffic: `Reconciling` stays True until
    //    they are Ready, but they neither delay the end of the rollback (time to restore)
    //    nor hide a canary pod that still serves.
    if let Some(c) = st.canary.clone()
        && c.phase == CanaryPhase::RollingBack
    {
        let needed = placement(spec, &st, &s).stable.map(|p| p.replicas).unwrap_or(0);
        if obs.canary_ready == 0 && obs.stable_ready >= needed.min(1) {
            st.canary = None;
            let restored = st.last_decision.as_ref().map(|d| secs_between(&d.time, &now).max(0));
            if let Some(secs) = restored {
                st.delivery.get_or_insert_with(Default::default).last_time_to_restore_seconds = Some(secs);
                delivered.push(Delivered::Restored { seconds: secs });
            }
            notes.push(Note {
                warning: false,
                reason: "RollbackComplete",
                message: format!(
                    "all traffic is back on {} ({} s after the failed check)",
                    st.stable.as_ref().map(|x| x.version.as_str()).unwrap_or("-"),
                    restored.unwrap_or(0)
                ),
            });
        }
    }

    // 2. Move toward the target.
    let target = obs.target.clone();
    let rolling_back = st.canary.as_ref().is_some_and(|c| c.phase == CanaryPhase::RollingBack);
    if let Some(t) = &target
        && !rolling_back
    {
        let failed_here = st.failed_versions.contains(&t.version);
        match (st.stable.clone(), st.canary.clone()) {
            (None, _) if !failed_here => {
                // First version: nothing to compare with or fall back to; it serves at once.
                st.stable = Some(StableStatus {
                    version: t.version.clone(),
                    weight: 100,
                    promotion_time: Some(now.clone()),
                    ..Default::default()
                });
                record_promotion(&mut st, t, &now, &mut delivered, &mut notes, "initial deployment");
            }
            (Some(stable), None) if stable.version != t.version && !failed_here => {
                start_canary(&mut st, t, &s, &now, &mut notes);
            }
            (Some(stable), Some(c)) if c.version != t.version => {
                // The target moved while a rollout was running: the old canary is superseded.
                push_history(
                    &mut st,
                    &c,
                    RolloutOutcome::Superseded,
                    "Superseded",
                    format!("replaced by {}", t.version),
                    &now,
                );
                st.canary = None;
                notes.push(Note {
                    warning: false,
                    reason: "RolloutSuperseded",
                    message: format!("rollout of {} superseded by {}", c.version, t.version),
                });
                if stable.version != t.version && !failed_here {
                    start_canary(&mut st, t, &s, &now, &mut notes);
                } else {
                    st.rollback_target = None;
                }
            }
            _ => {}
        }
    }

    // 3. Advance or judge the canary.
    if let Some(mut c) = st.canary.clone()
        && c.phase != CanaryPhase::RollingBack
    {
        ensure_checks(&mut c, &s);
        apply_health(&mut c, &obs.canary_health, &now);
        for m in &obs.measurements {
            apply_sample(&mut c, &s, m, &now);
        }
        st.canary = Some(c.clone());
        let verdict = judge(&c, &s, obs, &now);
        match verdict {
            Judgement::Fail(decision) => rollback(&mut st, decision, &now, &mut notes, &mut delivered),
            Judgement::Abort(value) => {
                st.manual_actions.get_or_insert_with(Default::default).abort = Some(value);
                let d = Decision {
                    action: DecisionAction::Abort,
                    version: c.version.clone(),
                    check: "manual".into(),
                    value: None,
                    bound: None,
                    time: now.clone(),
                    reason: "Aborted".into(),
                    message: format!(
                        "{} annotation: rollout of {} aborted",
                        crate::api::ANNOTATION_ABORT,
                        c.version
                    ),
                };
                rollback(&mut st, d, &now, &mut notes, &mut delivered);
            }
            Judgement::Promote(how) => {
                if let Some(v) = &obs.manual.promote {
                    st.manual_actions.get_or_insert_with(Default::default).promote = Some(v.clone());
                }
                promote(&mut st, &c, &target, &now, &mut notes, &mut delivered, how);
            }
            Judgement::Advance => {
                let mut c = c;
                c.step += 1;
                c.step_start_time = Some(now.clone());
                c.phase = if c.step as usize >= s.steps.len() {
                    CanaryPhase::Baking
                } else {
                    CanaryPhase::Progressing
                };
                notes.push(Note {
                    warning: false,
                    reason: if c.phase == CanaryPhase::Baking {
                        "RolloutBaking"
                    } else {
                        "RolloutStepAdvanced"
                    },
                    message: format!(
                        "{} now at {} % (step {} of {})",
                        c.version,
                        s.weight(c.step),
                        c.step,
                        s.steps.len()
                    ),
                });
                st.canary = Some(c);
            }
            Judgement::Started => {
                let mut c = c;
                c.phase = if s.steps.is_empty() { CanaryPhase::Baking } else { CanaryPhase::Progressing };
                c.step_start_time = Some(now.clone());
                notes.push(Note {
                    warning: false,
                    reason: "CanaryReady",
                    message: format!(
                        "canary {} is Ready and receives {} % of traffic",
                        c.version,
                        s.weight(c.step)
                    ),
                });
                st.canary = Some(c);
            }
            Judgement::Wait => {}
        }
    }

    // 4. The previous stable is kept (scaled to zero) for the scale-down delay only.
    if st.canary.is_none()
        && let (Some(stable), Some(_)) = (&st.stable, &st.rollback_target)
    {
        let since = stable.promotion_time.clone().unwrap_or(now.clone());
        if secs_between(&since, &now) >= s.scale_down_delay {
            st.rollback_target = None;
        }
    }

    // 5. Traffic, observed replica counts, conditions.
    let traffic = placement(spec, &st, &s);
    if let Some(stable) = st.stable.as_mut() {
        stable.weight = traffic.stable.as_ref().map(|p| p.weight).unwrap_or(0);
        stable.replicas = traffic.stable.as_ref().map(|p| p.replicas).unwrap_or(0);
        stable.ready_replicas = obs.stable_ready;
    }
    if let Some(c) = st.canary.as_mut() {
        c.weight = traffic.canary.as_ref().map(|p| p.weight).unwrap_or(0);
        c.replicas = traffic.canary.as_ref().map(|p| p.replicas).unwrap_or(0);
        c.ready_replicas = obs.canary_ready;
    }
    st.replicas = obs.stable_ready + obs.canary_ready;
    let was_failing = ready_reason(current) == Some(PODS_FAILING);
    conditions(&mut st, obs, &target, generation, &now);
    // Failing pods of the only version there is are worth a Warning, once per episode.
    if !was_failing && ready_reason(&st) == Some(PODS_FAILING) {
        let message = st.conditions.iter().find(|c| c.type_ == cond::READY).map(|c| c.message.clone());
        notes.push(Note { warning: true, reason: PODS_FAILING, message: message.unwrap_or_default() });
    }
    st.observed_generation = generation;
    let requeue = next_check(&st, &s, &now);
    Plan { status: st, traffic, notes, delivered, requeue }
}

/// When to look again: the next analysis or step deadline while a rollout runs; the end of
/// the scale-down delay; otherwise only on watch events (with a slow safety net).
fn next_check(st: &InferenceServiceStatus, s: &Settings, now: &Time) -> Duration {
    if let Some(c) = &st.canary {
        let mut wait = s.interval.max(1);
        // The next measurement is due one interval after the last one, not one interval
        // after this pass: a pass woken by a pod or Deployment event in between must not
        // push the measurement back (each such pass replaces the pending requeue).
        if !s.metrics.is_empty() && matches!(c.phase, CanaryPhase::Progressing | CanaryPhase::Baking) {
            if awaiting_first_data(c, s, now) {
                return NO_DATA_POLL;
            }
            let due_in = last_measured(c, s).map_or(0, |t| s.interval - secs_between(&t, now));
            wait = wait.min(due_in);
        }
        if let Some(start) = &c.step_start_time {
            let pause = if c.phase == CanaryPhase::Baking {
                s.bake
            } else {
                s.pauses.get(c.step as usize).copied().unwrap_or(0)
            };
            let left = pause - secs_between(start, now);
            if left > 0 {
                wait = wait.min(left);
            }
        }
        return Duration::from_secs(wait.clamp(1, 30) as u64);
    }
    if let (Some(stable), Some(_)) = (&st.stable, &st.rollback_target)
        && let Some(t) = &stable.promotion_time
    {
        let left = s.scale_down_delay - secs_between(t, now);
        return Duration::from_secs(left.clamp(1, 300) as u64);
    }
    Duration::from_secs(300)
}

#[cfg(test)]
mod tests;
