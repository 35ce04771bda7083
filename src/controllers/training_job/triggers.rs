//! Continuous training triggers as pure functions: when `spec.retrain` wants a new run.
//!
//! The shell asks [`checks_due`] which measurements to take (a drift query, a dataset
//! digest), takes them, and hands the readings to [`assess`], which returns the new
//! persisted [`TriggerStatus`], the triggers that want a run now, Events and when to look
//! again. The state machine in `status::plan` starts at most one run per reconcile and then
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

use jiff::{SignedDuration, Timestamp, civil, tz::TimeZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::status::EventNote;
use crate::api::training_job::{
    DEFAULT_COOLDOWN_SECONDS, DEFAULT_DATA_CHECK_INTERVAL_SECONDS, DEFAULT_DRIFT_CHECK_INTERVAL_SECONDS,
    DEFAULT_DRIFT_FOR_SECONDS, DEFAULT_STARTING_DEADLINE_SECONDS, MissedSchedulePolicy, Retrain, RunTrigger,
    TriggerStatus, TriggerType,
};

/// Under `Skip`, how late a schedule time may still start a run (reconcile latency).
pub const SKIP_GRACE_SECONDS: i64 = 60;
/// Longest a search for the next cron time looks ahead (covers `0 0 29 2 *`).
const SEARCH_DAYS: i32 = 366 * 8 + 2;

// ---------------------------------------------------------------------------------------
// Cron

/// A parsed five-field cron expression (minute hour day-of-month month day-of-week), with
/// lists, ranges, steps, month and weekday names, `7` for Sunday and the usual macros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Vixie cron: when both day fields are restricted, a day matches if either does.
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expr = expr.trim();
        let expanded = match expr.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            other if other.starts_with('@') => return Err(format!("unknown schedule macro {expr:?}")),
            _ => expr.to_string(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [min, hour, dom, month, dow] = fields.as_slice() else {
            return Err(format!("schedule {expr:?} must have 5 fields, has {}", fields.len()));
        };
        let weekdays = field(dow, "day-of-week", 0, 7, &WEEKDAYS, 0)?;
        Ok(Cron {
            minutes: field(min, "minute", 0, 59, &[], 0)?,
            hours: field(hour, "hour", 0, 23, &[], 0)? as u32,
            days: field(dom, "day-of-month", 1, 31, &[], 1)? as u32,
            months: field(month, "month", 1, 12, &MONTHS, 1)? as u16,
            // 7 is Sunday too.
            weekdays: ((weekdays | (weekdays >> 7)) & 0x7f) as u8,
            days_restricted: !dom.starts_with('*'),
            weekdays_restricted: !dow.starts_with('*'),
        })
    }

    fn day_matches(&self, date: civil::Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.days_restricted && self.weekdays_restricted { dom || dow } else { dom && dow }
    }

    /// The first fire time strictly after `after`, in `tz`; `None` if it never fires
    /// (e.g. `0 0 31 2 *`). See the module docs for daylight-saving transitions.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        let mut date = start.date();
        for _ in 0..SEARCH_DAYS {
            if self.months & (1 << date.month()) != 0 && self.day_matches(date) {
                for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                    for minute in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                        let dt = date.at(hour, minute, 0, 0);
                        if dt <= start {
                            continue;
                        }
                        // Compatible: the earlier of a repeated time, after the gap for a skipped one.
                        let Ok(ts) = tz.to_ambiguous_timestamp(dt).compatible() else { continue };
                        if ts > after {
                            return Some(ts);
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// One cron field as a bit set: `*`, `n`, `a-b`, with `/step`, comma lists, names.
fn field(text: &str, what: &str, min: u8, max: u8, names: &[&str], name_base: u8) -> Result<u64, String> {
    let value = |s: &str| -> Result<u8, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u8 + name_base);
        }
        match s.parse::<u8>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(format!("{what} value {s:?} is not in {min}-{max}")),
        }
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u8>() {
                Ok(s) if s > 0 => (r, s),
                _ => return Err(format!("{what} step {s:?} must be a positive number")),
            },
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `a/n` means from a to the end, every n.
            (v, if part.contains('/') { max } else { v })
        };
        if lo > hi {
            return Err(format!("{what} range {range:?} is backwards"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
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

/// `sha256:<hex>` of a file, read in chunks (the same digest form the trainer reports).
pub fn file_digest(path: &std::path::Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Whether a retrain spec is present but measures nothing (keeps `status.triggers` unset).
pub fn is_empty(state: &TriggerStatus) -> bool {
    state == &TriggerStatus::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        common::LocalRef,
        training_job::{DataTrigger, DriftTrigger},
    };

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_cron_fire_in_time_zones_and_across_dst() {
        // (schedule, zone, after, expected next fire in UTC)
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            ("0 3 * * *", "UTC", "2025-01-01T00:00:00Z", Some("2025-01-01T03:00:00Z")),
            ("0 3 * * *", "UTC", "2025-01-01T03:00:00Z", Some("2025-01-02T03:00:00Z")),
            ("* * * * *", "UTC", "2025-01-01T00:00:30Z", Some("2025-01-01T00:01:00Z")),
            ("*/15 * * * *", "UTC", "2025-01-01T00:16:00Z", Some("2025-01-01T00:30:00Z")),
            ("5-10/5 * * * *", "UTC", "2025-01-01T00:06:00Z", Some("2025-01-01T00:10:00Z")),
            ("7/20 * * * *", "UTC", "2025-01-01T00:08:00Z", Some("2025-01-01T00:27:00Z")),
            ("0 0 1,15 * *", "UTC", "2025-01-02T00:00:00Z", Some("2025-01-15T00:00:00Z")),
            ("0 9 * JAN-MAR MON-FRI", "UTC", "2025-01-03T10:00:00Z", Some("2025-01-06T09:00:00Z")),
            ("0 0 * * 7", "UTC", "2025-01-01T00:00:00Z", Some("2025-01-05T00:00:00Z")), // 7 = Sunday
            // Both day fields restricted: either matches (the 13th or a Friday).
            ("0 0 13 * 5", "UTC", "2025-01-01T00:00:00Z", Some("2025-01-03T00:00:00Z")),
            // One restricted: only it decides.
            ("0 0 13 * *", "UTC", "2025-01-01T00:00:00Z", Some("2025-01-13T00:00:00Z")),
            ("0 0 29 2 *", "UTC", "2025-03-01T00:00:00Z", Some("2028-02-29T00:00:00Z")),
            ("@daily", "UTC", "2025-01-01T12:00:00Z", Some("2025-01-02T00:00:00Z")),
            ("@hourly", "UTC", "2025-01-01T12:00:00Z", Some("2025-01-01T13:00:00Z")),
            ("@weekly", "UTC", "2025-01-01T12:00:00Z", Some("2025-01-05T00:00:00Z")),
            ("0 0 31 2 *", "UTC", "2025-01-01T00:00:00Z", None),
            // Paris is UTC+1 in winter, UTC+2 in summer.
            ("0 3 * * *", "Europe/Paris", "2025-01-01T00:00:00Z", Some("2025-01-01T02:00:00Z")),
            ("0 3 * * *", "Europe/Paris", "2025-07-01T00:00:00Z", Some("2025-07-01T01:00:00Z")),
            // Spring forward (2025-03-30, 02:00 -> 03:00): 02:30 does not exist, fires at 03:30 CEST.
            ("30 2 * * *", "Europe/Paris", "2025-03-29T12:00:00Z", Some("2025-03-30T01:30:00Z")),
            // Every 30 minutes across the gap: 01:30 CET, then 03:00 CEST, never twice.
            ("*/30 * * * *", "Europe/Paris", "2025-03-30T00:30:00Z", Some("2025-03-30T01:00:00Z")),
            ("*/30 * * * *", "Europe/Paris", "2025-03-30T01:00:00Z", Some("2025-03-30T01:30:00Z")),
            // Fall back (2025-10-26, 03:00 CEST -> 02:00 CET): 02:30 exists twice, fires once (the first).
            ("30 2 * * *", "Europe/Paris", "2025-10-25T12:00:00Z", Some("2025-10-26T00:30:00Z")),
            ("30 2 * * *", "Europe/Paris", "2025-10-26T00:30:00Z", Some("2025-10-27T01:30:00Z")),
            // New York: 09:00 EST is 14:00 UTC, 09:00 EDT is 13:00 UTC.
            ("0 9 * * *", "America/New_York", "2025-03-08T15:00:00Z", Some("2025-03-09T13:00:00Z")),
        ];
        for (expr, zone, after, want) in cases {
            let cron = Cron::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let tz = time_zone(Some(zone)).unwrap();
            let got = cron.next_after(t(after), &tz);
            assert_eq!(got, want.map(t), "{expr} in {zone} after {after}");
        }
    }

    #[test]
    fn bad_schedules_and_zones_are_spec_errors() {
        for (expr, needle) in [
            ("61 * * * *", "minute value \"61\""),
            ("* 24 * * *", "hour value \"24\""),
            ("* * 0 * *", "day-of-month value \"0\""),
            ("* * * 13 *", "month value \"13\""),
            ("* * * * 8", "day-of-week value \"8\""),
            ("*/0 * * * *", "step"),
            ("10-5 * * * *", "backwards"),
            ("* * * *", "5 fields"),
            ("@sometimes", "unknown schedule macro"),
        ] {
            let err = Cron::parse(expr).unwrap_err();
            assert!(err.contains(needle), "{expr}: {err}");
        }
        assert!(time_zone(Some("Mars/Olympus")).unwrap_err().contains("unknown time zone"));
        let never = Retrain { schedule: Some("0 0 30 2 *".into()), ..Retrain::default() };
        assert!(schedule_of(&never).unwrap_err().contains("never fires"));
        let bad_tz = Retrain {
            schedule: Some("@daily".into()),
            time_zone: Some("Nowhere".into()),
            ..Retrain::default()
        };
        assert!(schedule_of(&bad_tz).unwrap_err().starts_with("retrain.timeZone"));
    }

    #[test]
    fn missed_schedule_policy() {
        use MissedSchedulePolicy::{RunOnce, Skip};
        use ScheduleDecision as D;
        let hourly = Cron::parse("0 * * * *").unwrap();
        let utc = TimeZone::UTC;
        let anchor = t("2025-01-01T00:00:00Z");
        let skip = |latest: &str| D::Skip { latest: t(latest), reason: String::new() };
        // (policy, deadline, now, can_start, expected)
        let cases = [
            (RunOnce, 3600, "2025-01-01T00:30:00Z", true, D::Wait { next: t("2025-01-01T01:00:00Z") }),
            (
                RunOnce,
                3600,
                "2025-01-01T01:00:02Z",
                true,
                D::Due { time: t("2025-01-01T01:00:00Z"), skipped: false },
            ),
            // Down for three hours: one run, for the latest time, the older ones skipped.
            (
                RunOnce,
                3600,
                "2025-01-01T03:10:00Z",
                true,
                D::Due { time: t("2025-01-01T03:00:00Z"), skipped: true },
            ),
            // The latest missed time is older than the deadline: nothing runs.
            (RunOnce, 300, "2025-01-01T03:10:00Z", true, skip("2025-01-01T03:00:00Z")),
            // No free slot: RunOnce keeps the time pending until the deadline.
            (
                RunOnce,
                3600,
                "2025-01-01T01:20:00Z",
                false,
                D::Due { time: t("2025-01-01T01:00:00Z"), skipped: false },
            ),
            (
                Skip,
                3600,
                "2025-01-01T01:00:30Z",
                true,
                D::Due { time: t("2025-01-01T01:00:00Z"), skipped: false },
            ),
            (Skip, 3600, "2025-01-01T01:05:00Z", true, skip("2025-01-01T01:00:00Z")),
            (
                Skip,
                3600,
                "2025-01-01T03:00:10Z",
                true,
                D::Due { time: t("2025-01-01T03:00:00Z"), skipped: true },
            ),
            (Skip, 3600, "2025-01-01T01:00:10Z", false, skip("2025-01-01T01:00:00Z")),
            (Skip, 20, "2025-01-01T01:00:30Z", true, skip("2025-01-01T01:00:00Z")),
        ];
        for (policy, deadline, now, can_start, want) in cases {
            let got = schedule_decision(&hourly, &utc, policy, deadline, anchor, t(now), can_start).unwrap();
            let got = match got {
                D::Skip { latest, .. } => D::Skip { latest, reason: String::new() },
                other => other,
            };
            assert_eq!(got, want, "{policy:?} deadline {deadline} now {now} can_start {can_start}");
        }
        // A week of downtime of an every-minute schedule is walked quickly and still gives one time.
        let minutely = Cron::parse("* * * * *").unwrap();
        let got = schedule_decision(&minutely, &utc, RunOnce, 3600, anchor, t("2025-01-08T00:00:30Z"), true)
            .unwrap();
        assert_eq!(got, D::Due { time: t("2025-01-08T00:00:00Z"), skipped: true });
    }

    fn drift_spec(threshold: f64, for_seconds: i64) -> Retrain {
        Retrain {
            drift: Some(DriftTrigger {
                inference_service_ref: Some(LocalRef::new("iris")),
                threshold,
                for_seconds: Some(for_seconds),
                check_interval_seconds: Some(10),
                ..DriftTrigger::default()
            }),
            cooldown_seconds: Some(600),
            ..Retrain::default()
        }
    }

    fn step(
        spec: &Retrain,
        state: &TriggerStatus,
        drift: Option<Reading<f64>>,
        dataset: Option<Reading<String>>,
        now: &str,
    ) -> Assessment {
        assess(
            Some(spec),
            Some(state),
            &Readings { drift, dataset },
            Some(t("2025-01-01T00:00:00Z")),
            t(now),
            true,
        )
    }

    #[test]
    fn drift_must_hold_above_the_threshold_for_the_duration() {
        use Reading::*;
        let spec = drift_spec(0.2, 30);
        // (reading at second n, fires?)
        let table: &[(i64, Reading<f64>, bool)] = &[
            (0, Value(0.1), false),
            (10, Value(0.3), false), // arms
            (20, Value(0.35), false),
            (30, Value(0.25), false),
            (40, Value(0.15), false), // below: the hold restarts
            (50, Value(0.4), false),
            (60, NoData("no series".into()), false), // no data restarts too
            (70, Value(0.4), false),
            (80, Error("timeout".into()), false), // so does a failed query
            (90, Value(0.4), false),
            (100, Value(0.4), false),
            (110, Value(0.4), false),
            (120, Value(0.5), true), // 90..120: 30 s above
        ];
        let mut state = TriggerStatus::default();
        for (sec, reading, fires) in table {
            let now = (t("2025-01-01T00:00:00Z") + SignedDuration::from_secs(*sec)).to_string();
            let a = step(&spec, &state, Some(reading.clone()), None, &now);
            assert_eq!(a.wanted.is_some(), *fires, "second {sec}: {:?}", a.state);
            if *fires {
                let w = a.wanted.unwrap();
                assert_eq!((w.type_, w.drift_value), (TriggerType::Drift, Some(0.5)));
                assert!(w.message.unwrap().contains("above threshold 0.2 for 30s"));
            }
            assert_eq!(a.requeue_after, Some(Duration::from_secs(10)), "next drift check");
            state = a.state;
        }
        // Arming is announced once; a failed query once per new message.
        let mut armed = TriggerStatus::default();
        let a = step(&spec, &armed, Some(Value(0.3)), None, "2025-01-01T00:00:00Z");
        assert_eq!(a.events.iter().filter(|e| e.reason == "DriftAboveThreshold").count(), 1);
        armed = a.state;
        let a = step(&spec, &armed, Some(Value(0.3)), None, "2025-01-01T00:00:10Z");
        assert!(a.events.is_empty());
        let a = step(&spec, &a.state, Some(Error("boom".into())), None, "2025-01-01T00:00:20Z");
        assert_eq!(a.events[0].reason, "TriggerCheckFailed");
        let a = step(&spec, &a.state, Some(Error("boom".into())), None, "2025-01-01T00:00:30Z");
        assert!(a.events.is_empty());
    }

    #[test]
    fn data_trigger_records_a_baseline_then_fires_on_a_new_digest() {
        let spec = Retrain {
            data: Some(DataTrigger { check_interval_seconds: Some(20) }),
            cooldown_seconds: Some(300),
            ..Retrain::default()
        };
        let v = |d: &str| Some(Reading::Value(d.to_string()));
        let a = step(&spec, &TriggerStatus::default(), None, v("sha256:a"), "2025-01-01T00:00:00Z");
        assert!(a.wanted.is_none(), "the first digest is the baseline");
        assert_eq!(a.state.dataset_digest.as_deref(), Some("sha256:a"));
        let same = step(&spec, &a.state, None, v("sha256:a"), "2025-01-01T00:00:20Z");
        assert!(same.wanted.is_none());
        let changed = step(&spec, &same.state, None, v("sha256:b"), "2025-01-01T00:00:40Z");
        let w = changed.wanted.clone().unwrap();
        assert_eq!((w.type_, w.dataset_digest.as_deref()), (TriggerType::Data, Some("sha256:b")));
        // Not yet consumed: still wanted at a reconcile without a new reading.
        assert!(step(&spec, &changed.state, None, None, "2025-01-01T00:00:45Z").wanted.is_some());
        let mut state = changed.state.clone();
        consume(&mut state, &changed, &w, t("2025-01-01T00:00:45Z"));
        assert_eq!(state.dataset_digest.as_deref(), Some("sha256:b"));
        assert_eq!(state.last_trigger_time, Some(Time(t("2025-01-01T00:00:45Z"))));
        // A storm of new digests within the cooldown: pending, no run, requeued at its end.
        let mut s = state;
        for (i, d) in ["sha256:c", "sha256:d", "sha256:e"].iter().enumerate() {
            let now = t("2025-01-01T00:01:00Z") + SignedDuration::from_secs(20 * i as i64);
            let a = assess(Some(&spec), Some(&s), &Readings { drift: None, dataset: v(d) }, None, now, true);
            assert!(a.wanted.is_none(), "{d} is held back by the cooldown");
            assert!(
                a.state
                    .message
                    .as_deref()
                    .unwrap()
                    .contains("waits for the cooldown until 2025-01-01T00:05:45Z")
            );
            s = a.state;
        }
        // After the cooldown: one run, for the latest digest.
        let a = step(&spec, &s, None, v("sha256:e"), "2025-01-01T00:05:46Z");
        assert_eq!(a.wanted.unwrap().dataset_digest.as_deref(), Some("sha256:e"));
        // Unreadable datasets say why and never fire.
        let a = step(
            &spec,
            &s,
            None,
            Some(Reading::Error("the check Job iris-dc-1 failed: 403 Forbidden".into())),
            "2025-01-01T00:06:00Z",
        );
        assert!(
            a.state
                .message
                .as_deref()
                .unwrap()
                .contains("dataset check failed: the check Job iris-dc-1 failed")
        );
        assert_eq!(a.events[0].reason, "TriggerCheckFailed");
        // A check Job started: it counts as the check, so the next is an interval away
        // (no requeue storm while it runs) and nothing is reported yet.
        let failed = a.state.clone();
        let a = step(&spec, &failed, None, Some(Reading::Pending), "2025-01-01T00:07:00Z");
        assert_eq!(a.state.last_data_check_time, Some(Time("2025-01-01T00:07:00Z".parse().unwrap())));
        assert_eq!(a.state.observed_dataset_digest, s.observed_dataset_digest);
        assert!(a.events.is_empty(), "{:?}", a.events);
        assert!(a.requeue_after.unwrap() >= Duration::from_secs(10), "{:?}", a.requeue_after);
        // The failure stays reported (and announced once) until a check reads a digest.
        assert!(a.state.message.as_deref().unwrap().contains("403 Forbidden"), "{:?}", a.state.message);
        let quiet = step(&spec, &a.state, None, None, "2025-01-01T00:07:01Z");
        assert!(quiet.state.message.as_deref().unwrap().contains("403 Forbidden"));
        assert!(quiet.events.is_empty());
        let healed = step(&spec, &quiet.state, None, v("sha256:e"), "2025-01-01T00:07:20Z");
        assert_eq!(healed.state.data_check_problem, None);
        assert!(!healed.state.message.unwrap_or_default().contains("403"));
    }

    #[test]
    fn simultaneous_triggers_give_one_run_that_records_them_all() {
        let mut spec = drift_spec(0.2, 0);
        spec.cooldown_seconds = Some(7200);
        spec.schedule = Some("0 * * * *".into());
        spec.data = Some(DataTrigger { check_interval_seconds: Some(60) });
        let state = TriggerStatus {
            dataset_digest: Some("sha256:old".into()),
            last_schedule_time: Some(Time(t("2025-01-01T00:00:00Z"))),
            ..TriggerStatus::default()
        };
        let a = step(
            &spec,
            &state,
            Some(Reading::Value(0.9)),
            Some(Reading::Value("sha256:new".into())),
            "2025-01-01T01:00:05Z",
        );
        let w = a.wanted.clone().unwrap();
        assert_eq!(w.type_, TriggerType::Drift);
        assert_eq!(w.drift_value, Some(0.9));
        assert_eq!(w.dataset_digest.as_deref(), Some("sha256:new"));
        assert_eq!(w.schedule_time, Some(Time(t("2025-01-01T01:00:00Z"))));
        let msg = w.message.clone().unwrap();
        assert!(
            msg.contains("schedule time") && msg.contains("drift 0.9000") && msg.contains("sha256:new"),
            "{msg}"
        );
        let mut s = a.state.clone();
        consume(&mut s, &a, &w, t("2025-01-01T01:00:05Z"));
        // Everything is covered: the same observations right after want nothing.
        let again = step(
            &spec,
            &s,
            Some(Reading::Value(0.9)),
            Some(Reading::Value("sha256:new".into())),
            "2025-01-01T01:00:06Z",
        );
        assert!(again.wanted.is_none(), "{:?}", again.state);
        assert_eq!(again.state.next_schedule_time, Some(Time(t("2025-01-01T02:00:00Z"))));
        // The schedule is not held back by the cooldown; drift is.
        let next_hour = step(&spec, &again.state, Some(Reading::Value(0.9)), None, "2025-01-01T02:00:01Z");
        let w = next_hour.wanted.unwrap();
        assert_eq!((w.type_, w.drift_value), (TriggerType::Schedule, None));
    }

    #[test]
    fn a_spec_run_covers_pending_triggers_without_starting_the_cooldown() {
        let spec = drift_spec(0.2, 0);
        let a =
            step(&spec, &TriggerStatus::default(), Some(Reading::Value(0.5)), None, "2025-01-01T00:00:00Z");
        assert!(a.wanted.is_some());
        let mut s = a.state.clone();
        let spec_run = RunTrigger { type_: TriggerType::Spec, ..RunTrigger::default() };
        consume(&mut s, &a, &spec_run, t("2025-01-01T00:00:00Z"));
        assert_eq!((s.drift_above_since.clone(), s.last_trigger_time.clone()), (None, None));
    }

    #[test]
    fn queries_and_digests() {
        assert_eq!(
            default_drift_query("ml", "iris-r1"),
            r#"max(mlops_feature_drift_psi{namespace="ml",model_version="iris-r1"})"#
        );
        assert_eq!(
            drift_query(
                "q{{namespace}}/{{name}}/{{model}}/{{modelVersion}}",
                "ml",
                Some("svc"),
                "iris",
                Some("iris-r2")
            ),
            "qml/svc/iris/iris-r2"
        );
        let dir = std::env::temp_dir().join(format!("mlops-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("d.csv");
        std::fs::write(&f, b"x").unwrap();
        // sha256("x")
        assert_eq!(
            file_digest(&f).unwrap(),
            "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
        );
        assert!(file_digest(&dir.join("missing.csv")).unwrap_err().contains("missing.csv"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_retrain_spec_wants_nothing() {
        let a = assess(None, None, &Readings::default(), None, t("2025-01-01T00:00:00Z"), true);
        assert_eq!((a.wanted, a.requeue_after, a.spec_error), (None, None, None));
        assert_eq!(checks_due(None, None, t("2025-01-01T00:00:00Z")), (false, false));
        let spec = drift_spec(0.2, 0);
        let state = TriggerStatus {
            last_drift_check_time: Some(Time(t("2025-01-01T00:00:00Z"))),
            ..Default::default()
        };
        assert_eq!(checks_due(Some(&spec), Some(&state), t("2025-01-01T00:00:09Z")), (false, false));
        assert_eq!(checks_due(Some(&spec), Some(&state), t("2025-01-01T00:00:10Z")), (true, false));
    }
}
