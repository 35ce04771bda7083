//! Continuous training triggers as pure functions: when `spec.retrain` wants a new run.
//!
//! The shell asks [`checks_due`] which measurements to take (a drift query, a dataset
//! digest), takes them, and hands the readings to [`assess`], which returns the new
//! persisted [`TriggerStatus`], the triggers that want a run now, Events and when to look
//! again. The state machine in `plan::plan` starts at most one run per reconcile and then
//! calls [`consume`], so every trigger pending at that moment is covered by that one run.
//!
//! Rules (also in the README, "Continuous training"):
//! - **Schedule**: five-field cron in `timeZone` (IANA, default UTC). Each civil time fires
//!   once: a time repeated when clocks go back fires at its first occurrence; a time that
//!   does not exist when clocks go forward fires the length of the gap later (02:30 →
//!   03:30). The schedule is its own rate: the cooldown does not delay it.
//! - **Missed schedule times** (operator down, a run in progress): with `RunOnce` (default)
//!   one run starts for the most recent missed time as long as it is at most
//!   `startingDeadlineSeconds` old; older missed times are skipped. With `Skip` a time
//!   runs only if a run can start within [`SKIP_GRACE_SECONDS`] (capped by the deadline)
//!   of it; otherwise it is skipped and the next time is awaited.
//! - **Drift**: the value is measured every `checkIntervalSeconds`; the trigger fires
//!   when every measurement for at least `forSeconds` was above `threshold` (from the
//!   first reading above to the latest one). A reading at or below the threshold, no data
//!   or a failed query restarts the hold.
//! - **Data**: the dataset digest is checked every `checkIntervalSeconds`; the first
//!   check records a baseline; a digest different from the one the latest run started
//!   with wants a run.
//! - **Cooldown** (`cooldownSeconds`, from the last run a trigger started) holds drift and
//!   data triggers back; they stay pending and one run starts when it ends, for the latest
//!   state. A storm of triggers therefore gives one run, never many.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::EventNote;
use crate::api::training_job::{
    DEFAULT_COOLDOWN_SECONDS, DEFAULT_DATA_CHECK_INTERVAL_SECONDS, DEFAULT_DRIFT_CHECK_INTERVAL_SECONDS,
    DEFAULT_DRIFT_FOR_SECONDS, DEFAULT_STARTING_DEADLINE_SECONDS, MissedSchedulePolicy, Retrain, RunTrigger,
    TriggerStatus, TriggerType,
};

/// Under `Skip`, how late a schedule time may still start a run (reconcile latency).
pub const SKIP_GRACE_SECONDS: i64 = 60;
// ---------------------------------------------------------------------------------------
// Cron

/// The macros the CRD accepts; croner knows all but `@midnight` (an alias of `@daily`).
const FIELDS: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const MACROS: [&str; 7] = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"];

/// A parsed schedule (the `croner` crate): five fields, minute hour day-of-month month
/// day-of-week, with lists, ranges, steps (`a/n` runs from `a` to the end of the field),
/// month and weekday names, `7` for Sunday and the macros of the CRD. When both day
/// fields are restricted a day matches if either does (Vixie cron). No seconds field.
#[derive(Clone, Debug)]
pub struct Cron(croner::Cron);

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expr = expr.trim();
        let lower = expr.to_ascii_lowercase();
        let pattern = if lower.starts_with('@') {
            if !MACROS.contains(&lower.as_str()) {
                return Err(format!("unknown schedule macro {expr:?} (use one of {})", MACROS.join(", ")));
            }
            if lower == "@midnight" { "@daily" } else { expr }
        } else {
            let fields = expr.split_whitespace().count();
            if fields != 5 {
                return Err(format!(
                    "schedule {expr:?} must have 5 fields (minute hour day-of-month month day-of-week), has {fields}"
                ));
            }
            expr
        };
        let parse = |pattern: &str| {
            croner::parser::CronParser::builder()
                // Kubernetes-style: five fields, no seconds, no years.
                .seconds(croner::parser::Seconds::Disallowed)
                .year(croner::parser::Year::Disallowed)
                // `7/20` (from 7 to the end, every 20), as Kubernetes CronJobs accept.
                .sloppy_ranges(true)
                .build()
                .parse(pattern)
        };
        parse(pattern).map(Cron).map_err(|e| {
            // croner does not say which field is wrong: find it, one field at a time.
            let fields: Vec<&str> = pattern.split_whitespace().collect();
            let culprit = FIELDS.iter().enumerate().find_map(|(i, name)| {
                let mut alone = ["*"; 5];
                alone[i] = fields.get(i)?;
                let err = parse(&alone.join(" ")).err()?;
                Some(format!("{name} field {:?}: {err}", fields[i]))
            });
            culprit.unwrap_or_else(|| format!("schedule {expr:?}: {e}"))
        })
    }

    /// The first fire time strictly after `after`, in `tz`; `None` if it never fires
    /// (e.g. `0 0 31 2 *`). See the module docs for daylight-saving transitions.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // Walk civil times, as a wall clock does, and place each in the zone: the earlier
        // of a repeated time ("compatible"), and past the gap for a skipped one.
        let mut civil = tz.to_datetime(after);
        for _ in 0..4 {
            civil = self.0.find_next_occurrence(&civil, false).ok()?;
            let ts = tz.to_ambiguous_timestamp(civil).compatible().ok()?;
            if ts > after {
                return Some(ts);
            }
        }
        None
    }
}

/// The time zone of a schedule: an IANA name (system database, else the bundled copy).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None | Some("") | Some("UTC") | Some("Etc/UTC") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n)
            .map_err(|_| format!("unknown time zone {n:?} (use an IANA name such as Europe/Paris)")),
    }
}

/// The parsed schedule of a retrain spec, or the spec error to report (`Stalled`).
pub fn schedule_of(retrain: &Retrain) -> Result<Option<(Cron, TimeZone)>, String> {
    let Some(expr) = &retrain.schedule else { return Ok(None) };
    let cron = Cron::parse(expr).map_err(|e| format!("retrain.schedule: {e}"))?;
    let tz = time_zone(retrain.time_zone.as_deref()).map_err(|e| format!("retrain.timeZone: {e}"))?;
    if cron.next_after(Timestamp::UNIX_EPOCH, &tz).is_none() {
        return Err(format!("retrain.schedule {expr:?} never fires"));
    }
    Ok(Some((cron, tz)))
}

/// What a missed or due schedule comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleDecision {
    /// Nothing is due before `next`.
    Wait { next: Timestamp },
    /// `time` wants a run now; `skipped` older missed times are given up.
    Due { time: Timestamp, skipped: bool },
    /// Every time up to `latest` is given up (too late, or `Skip` and no run could start).
    Skip { latest: Timestamp, reason: String },
}

/// The missed-schedule policy. `anchor` is the latest time already handled (else the
/// TrainingJob's creation); `can_start` says whether a run could start right now.
pub fn schedule_decision(
    cron: &Cron,
    tz: &TimeZone,
    policy: MissedSchedulePolicy,
    deadline_seconds: i64,
    anchor: Timestamp,
    now: Timestamp,
    can_start: bool,
) -> Option<ScheduleDecision> {
    let first = cron.next_after(anchor, tz)?;
    if first > now {
        return Some(ScheduleDecision::Wait { next: first });
    }
    // The latest time <= now: walk from the first one, starting no earlier than needed.
    let window = deadline_seconds.max(SKIP_GRACE_SECONDS) + 1;
    let from = (now - SignedDuration::from_secs(window)).max(anchor);
    let mut latest = first;
    let mut t = match cron.next_after(from, tz) {
        Some(t) if t <= now => t.max(first),
        // Nothing within the window: walk from the first missed time (a long outage of a
        // sparse schedule, so few steps).
        _ => first,
    };
    for _ in 0..200_000 {
        if t > now {
            break;
        }
        latest = t;
        match cron.next_after(t, tz) {
            Some(n) => t = n,
            None => break,
        }
    }
    let skipped = latest != first;
    let late = now.duration_since(latest).as_secs();
    let allowed = match policy {
        MissedSchedulePolicy::RunOnce => deadline_seconds,
        MissedSchedulePolicy::Skip => deadline_seconds.min(SKIP_GRACE_SECONDS),
    };
    Some(if late > allowed {
        ScheduleDecision::Skip {
            latest,
            reason: format!("schedule time {latest} missed by {late}s (more than {allowed}s late)"),
        }
    } else if !can_start && policy == MissedSchedulePolicy::Skip {
        ScheduleDecision::Skip {
            latest,
            reason: format!(
                "schedule time {latest} skipped: a run could not start (missedSchedulePolicy Skip)"
            ),
        }
    } else {
        ScheduleDecision::Due { time: latest, skipped }
    })
}

// ---------------------------------------------------------------------------------------
// Drift and data readings

/// A measurement taken by the shell this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading<T> {
    Value(T),
    /// Nothing to measure yet (no series, no serving version), with why.
    NoData(String),
    /// The measurement failed (query error, unreadable file, unsupported scheme).
    Error(String),
    /// The measurement was started and reports later (a dataset check Job): the check
    /// counts as taken now, so the next one is an interval away and nothing waits on it.
    Pending,
}

/// The readings of this reconcile; `None` when the check was not due.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Readings {
    pub drift: Option<Reading<f64>>,
    pub dataset: Option<Reading<String>>,
}

fn ts(t: &Option<Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

fn due(last: Option<Timestamp>, interval: i64, now: Timestamp) -> bool {
    last.is_none_or(|l| now >= l + SignedDuration::from_secs(interval))
}

fn truncate(text: String) -> String {
    crate::controllers::truncate(text, 1000)
}

/// Which measurements the shell must take now.
pub fn checks_due(retrain: Option<&Retrain>, state: Option<&TriggerStatus>, now: Timestamp) -> (bool, bool) {
    let Some(r) = retrain else { return (false, false) };
    let s = state.cloned().unwrap_or_default();
    let drift = r.drift.as_ref().is_some_and(|d| {
        due(
            ts(&s.last_drift_check_time),
            d.check_interval_seconds.unwrap_or(DEFAULT_DRIFT_CHECK_INTERVAL_SECONDS),
            now,
        )
    });
    let data = r.data.as_ref().is_some_and(|d| {
        due(
            ts(&s.last_data_check_time),
            d.check_interval_seconds.unwrap_or(DEFAULT_DATA_CHECK_INTERVAL_SECONDS),
            now,
        )
    });
    (drift, data)
}

// ---------------------------------------------------------------------------------------
// Assessment

/// What the triggers want this reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assessment {
    /// The new persisted state (readings recorded; nothing consumed yet).
    pub state: TriggerStatus,
    /// The run the pending triggers want, all merged into one; `None` if none is pending
    /// or the cooldown holds them back.
    pub wanted: Option<RunTrigger>,
    /// The schedule time the wanted run would stand for (consumed with it), and the time
    /// after it.
    pub schedule_time: Option<Timestamp>,
    pub next_schedule_time: Option<Timestamp>,
    pub events: Vec<EventNote>,
    /// When to reconcile again for the triggers' sake.
    pub requeue_after: Option<Duration>,
    /// A spec problem (bad cron or time zone): `Stalled`, no triggered run.
    pub spec_error: Option<String>,
}

/// Evaluates every trigger. `created` anchors a schedule that never fired; `can_start`
/// says whether a run could start now (a free slot and not suspended).
pub fn assess(
    retrain: Option<&Retrain>,
    previous: Option<&TriggerStatus>,
    readings: &Readings,
    created: Option<Timestamp>,
    now: Timestamp,
    can_start: bool,
) -> Assessment {
    let mut out = Assessment::default();
    let Some(r) = retrain else {
        // No retrain spec: keep nothing but what was there (history stays readable).
        out.state = previous.cloned().unwrap_or_default();
        out.state.next_schedule_time = None;
        return out;
    };
    let mut s = previous.cloned().unwrap_or_default();
    let now_t = Time(now);
    let mut wakeups: Vec<Timestamp> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut parts: Vec<(TriggerType, String)> = Vec::new();
    let mut trigger = RunTrigger { time: Some(now_t.clone()), ..RunTrigger::default() };

    // Schedule.
    match schedule_of(r) {
        Err(e) => out.spec_error = Some(e),
        Ok(None) => s.next_schedule_time = None,
        Ok(Some((cron, tz))) => {
            let anchor = ts(&s.last_schedule_time).or(created).unwrap_or(now);
            let policy = r.missed_schedule_policy.unwrap_or_default();
            let deadline = r.starting_deadline_seconds.unwrap_or(DEFAULT_STARTING_DEADLINE_SECONDS);
            match schedule_decision(&cron, &tz, policy, deadline, anchor, now, can_start) {
                None => s.next_schedule_time = None,
                Some(ScheduleDecision::Wait { next }) => {
                    s.next_schedule_time = Some(Time(next));
                    wakeups.push(next);
                }
                Some(ScheduleDecision::Skip { latest, reason }) => {
                    s.last_schedule_time = Some(Time(latest));
                    let next = cron.next_after(latest.max(now), &tz);
                    s.next_schedule_time = next.map(Time);
                    wakeups.extend(next);
                    out.events.push(EventNote { warning: true, reason: "ScheduleSkipped", note: reason });
                }
                Some(ScheduleDecision::Due { time, skipped }) => {
                    s.next_schedule_time = Some(Time(time));
                    out.schedule_time = Some(time);
                    trigger.schedule_time = Some(Time(time));
                    let older = if skipped { " (older missed times skipped)" } else { "" };
                    parts.push((TriggerType::Schedule, format!("schedule time {time}{older}")));
                    out.next_schedule_time = cron.next_after(time.max(now), &tz);
                    // Without a free slot RunOnce keeps the time pending: look again soon
                    // (a finishing run also wakes the controller through its Job).
                    wakeups.extend(if can_start {
                        out.next_schedule_time
                    } else {
                        Some(now + SignedDuration::from_secs(10))
                    });
                }
            }
        }
    }

    // Drift.
    let mut reactive: Vec<(TriggerType, String)> = Vec::new();
    if let Some(d) = &r.drift {
        let hold = d.for_seconds.unwrap_or(DEFAULT_DRIFT_FOR_SECONDS);
        let interval = d.check_interval_seconds.unwrap_or(DEFAULT_DRIFT_CHECK_INTERVAL_SECONDS);
        match &readings.drift {
            None => {}
            Some(Reading::Value(v)) => {
                s.last_drift_check_time = Some(now_t.clone());
                s.drift_check_problem = None;
                s.drift_value = Some(*v);
                if *v > d.threshold {
                    if s.drift_above_since.is_none() {
                        s.drift_above_since = Some(now_t.clone());
                        out.events.push(EventNote {
                            warning: false,
                            reason: "DriftAboveThreshold",
                            note: format!(
                                "drift {v:.4} is above the threshold {}; re-training starts if it stays above for {hold}s",
                                d.threshold
                            ),
                        });
                    }
                } else {
                    s.drift_above_since = None;
                }
            }
            Some(Reading::NoData(why)) => {
                s.last_drift_check_time = Some(now_t.clone());
                s.drift_value = None;
                s.drift_above_since = None;
                s.drift_check_problem = Some(truncate(format!("drift: no data ({why})")));
            }
            Some(Reading::Error(e)) => {
                // Continuity is not proven across a failed query: the hold restarts.
                s.last_drift_check_time = Some(now_t.clone());
                s.drift_above_since = None;
                s.drift_check_problem = Some(truncate(format!("drift check failed: {e}")));
            }
            // Queries answer at once; nothing to wait for.
            Some(Reading::Pending) => {}
        }
        // Reported until a check measures a value, not only in the pass that saw it.
        notes.extend(s.drift_check_problem.clone());
        let last = ts(&s.last_drift_check_time).unwrap_or(now);
        wakeups.push(last + SignedDuration::from_secs(interval));
        // Fires when the readings have been above the threshold for the whole hold: from
        // the first reading above to the latest one (always above while `since` is set).
        if let (Some(since), Some(last), Some(v)) =
            (ts(&s.drift_above_since), ts(&s.last_drift_check_time), s.drift_value)
        {
            let held = last.duration_since(since).as_secs();
            if held >= hold {
                trigger.drift_value = Some(v);
                reactive.push((
                    TriggerType::Drift,
                    format!("drift {v:.4} above threshold {} for {held}s", d.threshold),
                ));
            }
        }
    }

    // Data.
    if let Some(d) = &r.data {
        let interval = d.check_interval_seconds.unwrap_or(DEFAULT_DATA_CHECK_INTERVAL_SECONDS);
        match &readings.dataset {
            None => {}
            Some(Reading::Value(digest)) => {
                s.last_data_check_time = Some(now_t.clone());
                s.data_check_problem = None;
                s.observed_dataset_digest = Some(digest.clone());
                if s.dataset_digest.is_none() {
                    s.dataset_digest = Some(digest.clone());
                }
            }
            Some(Reading::NoData(why) | Reading::Error(why)) => {
                s.last_data_check_time = Some(now_t.clone());
                s.data_check_problem = Some(truncate(format!("dataset check failed: {why}")));
            }
            Some(Reading::Pending) => s.last_data_check_time = Some(now_t.clone()),
        }
        notes.extend(s.data_check_problem.clone());
        let last = ts(&s.last_data_check_time).unwrap_or(now);
        wakeups.push(last + SignedDuration::from_secs(interval));
        if let (Some(seen), Some(base)) = (&s.observed_dataset_digest, &s.dataset_digest)
            && seen != base
        {
            trigger.dataset_digest = Some(seen.clone());
            reactive.push((TriggerType::Data, format!("dataset digest changed from {base} to {seen}")));
        }
    }

    if r.drift.is_none() {
        s.drift_check_problem = None;
    }
    if r.data.is_none() {
        s.data_check_problem = None;
    }

    // Cooldown holds the reactive triggers back (they stay pending).
    if !reactive.is_empty() {
        let cooldown = r.cooldown_seconds.unwrap_or(DEFAULT_COOLDOWN_SECONDS);
        let until = ts(&s.last_trigger_time).map(|t| t + SignedDuration::from_secs(cooldown));
        match until {
            Some(until) if until > now => {
                let what: Vec<&str> = reactive.iter().map(|(_, m)| m.as_str()).collect();
                notes.push(format!("{} waits for the cooldown until {until}", what.join("; ")));
                wakeups.push(until);
                trigger.drift_value = None;
                trigger.dataset_digest = None;
            }
            _ => parts.extend(reactive),
        }
    }

    if out.spec_error.is_none() && !parts.is_empty() {
        // One run for everything pending; the most specific reason names it.
        let primary = [TriggerType::Drift, TriggerType::Data, TriggerType::Schedule]
            .into_iter()
            .find(|t| parts.iter().any(|(p, _)| p == t))
            .unwrap_or(TriggerType::Schedule);
        trigger.type_ = primary;
        let msg: Vec<&str> = parts.iter().map(|(_, m)| m.as_str()).collect();
        trigger.message = Some(crate::controllers::truncate(msg.join("; "), 1000));
        if trigger.schedule_time.is_some() && !parts.iter().any(|(t, _)| *t == TriggerType::Schedule) {
            trigger.schedule_time = None;
        }
        out.wanted = Some(trigger);
        if !can_start {
            notes.push(format!("{primary:?} trigger waits for a free run slot"));
        }
    } else if out.schedule_time.is_some() && parts.is_empty() {
        out.schedule_time = None;
    }

    let message = (!notes.is_empty()).then(|| crate::controllers::truncate(notes.join("; "), 1000));
    let failed = |m: &Option<String>| m.as_deref().is_some_and(|m| m.contains("failed"));
    if message != s.message && failed(&message) {
        out.events.push(EventNote {
            warning: true,
            reason: "TriggerCheckFailed",
            note: message.clone().unwrap_or_default(),
        });
    }
    s.message = message;
    out.requeue_after =
        wakeups.into_iter().min().map(|t| Duration::from_secs(t.duration_since(now).as_secs().max(1) as u64));
    out.state = s;
    out
}

/// Marks everything pending as covered by the run that just started (whatever started
/// it): the schedule time is handled, the drift hold restarts, the dataset digest seen is
/// the new baseline, and a triggered run starts the cooldown.
pub fn consume(state: &mut TriggerStatus, assessment: &Assessment, started: &RunTrigger, now: Timestamp) {
    if let Some(t) = assessment.schedule_time {
        state.last_schedule_time = Some(Time(t));
        state.next_schedule_time = assessment.next_schedule_time.map(Time);
    }
    state.drift_above_since = None;
    if let Some(seen) = &state.observed_dataset_digest {
        state.dataset_digest = Some(seen.clone());
    }
    if matches!(started.type_, TriggerType::Schedule | TriggerType::Drift | TriggerType::Data) {
        state.last_trigger_time = Some(Time(now));
    }
}

/// The default drift value of an InferenceService: the highest feature PSI its stable
/// version's pods export (the reference runtime's `mlops_feature_drift_psi`).
pub fn default_drift_query(namespace: &str, stable_version: &str) -> String {
    format!(r#"max(mlops_feature_drift_psi{{namespace="{namespace}",model_version="{stable_version}"}})"#)
}

/// A user's drift query with its placeholders filled in.
pub fn drift_query(
    query: &str,
    namespace: &str,
    service: Option<&str>,
    model: &str,
    stable_version: Option<&str>,
) -> String {
    query
        .replace("{{namespace}}", namespace)
        .replace("{{name}}", service.unwrap_or(""))
        .replace("{{model}}", model)
        .replace("{{modelVersion}}", stable_version.unwrap_or(""))
}

/// Whether a retrain spec is present but measures nothing (keeps `status.triggers` unset).
pub fn is_empty(state: &TriggerStatus) -> bool {
    state == &TriggerStatus::default()
}

#[cfg(test)]
mod tests;
