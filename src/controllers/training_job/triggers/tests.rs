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
        ("@midnight", "UTC", "2025-01-01T12:00:00Z", Some("2025-01-02T00:00:00Z")),
        ("@Yearly", "UTC", "2025-01-01T12:00:00Z", Some("2026-01-01T00:00:00Z")),
        ("0 12 * * sun", "UTC", "2025-01-01T00:00:00Z", Some("2025-01-05T12:00:00Z")),
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
        ("61 * * * *", "minute field \"61\""),
        ("* 24 * * *", "hour field \"24\""),
        ("* * 0 * *", "day-of-month field \"0\""),
        ("* * * 13 *", "month field \"13\""),
        ("* * * * 8", "day-of-week field \"8\""),
        ("*/0 * * * *", "minute field \"*/0\""),
        ("10-5 * * * *", "minute field \"10-5\""),
        ("* * * *", "5 fields"),
        ("0 * * * * *", "5 fields"),
        ("@sometimes", "unknown schedule macro"),
    ] {
        let err = Cron::parse(expr).unwrap_err();
        assert!(err.contains(needle), "{expr}: {err}");
    }
    assert!(time_zone(Some("Mars/Olympus")).unwrap_err().contains("unknown time zone"));
    let never = Retrain { schedule: Some("0 0 30 2 *".into()), ..Retrain::default() };
    assert!(schedule_of(&never).unwrap_err().contains("never fires"));
    let bad_tz =
        Retrain { schedule: Some("@daily".into()), time_zone: Some("Nowhere".into()), ..Retrain::default() };
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
        (Skip, 3600, "2025-01-01T03:00:10Z", true, D::Due { time: t("2025-01-01T03:00:00Z"), skipped: true }),
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
    let got =
        schedule_decision(&minutely, &utc, RunOnce, 3600, anchor, t("2025-01-08T00:00:30Z"), true).unwrap();
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
            a.state.message.as_deref().unwrap().contains("waits for the cooldown until 2025-01-01T00:05:45Z")
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
        a.state.message.as_deref().unwrap().contains("dataset check failed: the check Job iris-dc-1 failed")
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
    let a = step(&spec, &TriggerStatus::default(), Some(Reading::Value(0.5)), None, "2025-01-01T00:00:00Z");
    assert!(a.wanted.is_some());
    let mut s = a.state.clone();
    let spec_run = RunTrigger { type_: TriggerType::Spec, ..RunTrigger::default() };
    consume(&mut s, &a, &spec_run, t("2025-01-01T00:00:00Z"));
    assert_eq!((s.drift_above_since.clone(), s.last_trigger_time.clone()), (None, None));
}

#[test]
fn drift_queries() {
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
}

#[test]
fn no_retrain_spec_wants_nothing() {
    let a = assess(None, None, &Readings::default(), None, t("2025-01-01T00:00:00Z"), true);
    assert_eq!((a.wanted, a.requeue_after, a.spec_error), (None, None, None));
    assert_eq!(checks_due(None, None, t("2025-01-01T00:00:00Z")), (false, false));
    let spec = drift_spec(0.2, 0);
    let state =
        TriggerStatus { last_drift_check_time: Some(Time(t("2025-01-01T00:00:00Z"))), ..Default::default() };
    assert_eq!(checks_due(Some(&spec), Some(&state), t("2025-01-01T00:00:09Z")), (false, false));
    assert_eq!(checks_due(Some(&spec), Some(&state), t("2025-01-01T00:00:10Z")), (true, false));
}
