//! Transitions of the rollout state machine. Each test drives `plan` from a persisted
//! status, as a restarted operator would: the state lives in status, not in memory.

use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::api::inference_service::{InferenceServiceStatus, RolloutOutcome};

fn t(s: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + s).unwrap())
}

fn spec(extra: serde_json::Value) -> InferenceServiceSpec {
    let mut base = json!({
        "model": "iris", "track": "LatestValidated", "replicas": 4,
        "rollout": {
            "steps": [{"weight": 25, "pauseSeconds": 10}, {"weight": 50}],
            "bakeSeconds": 20, "progressDeadlineSeconds": 60, "scaleDownDelaySeconds": 30,
            "analysis": {"intervalSeconds": 5, "failureLimit": 1, "queryErrorLimit": 2,
                         "metrics": [{"name": "errors", "query": "q", "max": 0.05, "onNoData": "Wait"}]}
        }
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(base).unwrap()
}

struct Obs {
    target: Option<&'static str>,
    stable_ready: i32,
    stable_problem: Option<&'static str>,
    canary_ready: i32,
    health: Health,
    samples: Vec<(&'static str, Sample)>,
    manual: Manual,
}

fn obs(target: &'static str) -> Obs {
    Obs {
        target: Some(target),
        stable_ready: 4,
        stable_problem: None,
        canary_ready: 1,
        health: Health::Healthy,
        samples: vec![],
        manual: Manual::default(),
    }
}

fn run(spec: &InferenceServiceSpec, status: &InferenceServiceStatus, o: Obs, at: i64) -> Plan {
    let observed = Observed {
        target: o.target.map(|v| Target { version: v.into(), origin: Some(t(-100)) }),
        target_problem: None,
        target_problem_is_stalled: false,
        stable_ready: o.stable_ready,
        stable_problem: o.stable_problem.map(String::from),
        canary_ready: o.canary_ready,
        canary_health: o.health,
        measurements: o.samples.into_iter().map(|(c, s)| Measured { check: c.into(), sample: s }).collect(),
        manual: o.manual,
        now: t(at),
    };
    plan(spec, status, &observed, Some(1))
}

fn serving(version: &str) -> InferenceServiceStatus {
    InferenceServiceStatus {
        stable: Some(StableStatus {
            version: version.into(),
            weight: 100,
            promotion_time: Some(t(-1000)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn phase(p: &Plan) -> Option<CanaryPhase> {
    p.status.canary.as_ref().map(|c| c.phase)
}

fn reasons(p: &Plan) -> Vec<&'static str> {
    p.notes.iter().map(|n| n.reason).collect()
}

#[test]
fn the_first_version_serves_at_once_and_counts_as_a_deployment() {
    let p = run(
        &spec(json!({})),
        &InferenceServiceStatus::default(),
        Obs { stable_ready: 0, canary_ready: 0, ..obs("v1") },
        0,
    );
    assert_eq!(p.status.stable.as_ref().unwrap().version, "v1");
    assert!(p.status.canary.is_none());
    assert_eq!(p.traffic.stable.as_ref().unwrap().replicas, 4);
    assert_eq!(p.status.delivery.as_ref().unwrap().deployments, 1);
    assert_eq!(p.status.delivery.as_ref().unwrap().last_lead_time_seconds, Some(100));
    assert_eq!(reasons(&p), ["Promoted"]);
    assert!(!cond::is_true(&p.status.conditions, cond::READY), "no Ready pod yet");
}

#[test]
fn a_good_version_walks_every_step_then_bakes_then_is_promoted() {
    let sp = spec(json!({}));
    let mut st = serving("v1");
    // New target: canary starts at the first step's weight.
    let p =
        run(&sp, &st, Obs { canary_ready: 0, health: Health::Pending("starting".into()), ..obs("v2") }, 0);
    assert_eq!(phase(&p), Some(CanaryPhase::Starting));
    assert_eq!(p.status.rollback_target.as_deref(), Some("v1"));
    assert_eq!(p.traffic.canary.as_ref().unwrap().replicas, 1);
    assert_eq!(p.traffic.stable.as_ref().unwrap().replicas, 3);
    assert_eq!(p.status.canary.as_ref().unwrap().weight, 25);
    assert!(cond::is_true(&p.status.conditions, cond::PROGRESSING));
    st = p.status;
    // Ready: progressing at step 0.
    let p = run(&sp, &st, obs("v2"), 1);
    assert_eq!(phase(&p), Some(CanaryPhase::Progressing));
    st = p.status;
    // The first measurement as soon as the canary serves; while its first samples are
    // awaited it is polled every 250 ms, the repeats unrecorded (no status writes).
    assert!(metrics_due(&sp, &st, &t(1)), "measured as soon as the canary serves");
    let p = run(&sp, &st, Obs { samples: vec![("errors", Sample::NoData)], ..obs("v2") }, 1);
    st = p.status;
    assert!(metrics_due(&sp, &st, &t(1)), "no data is polled again at once");
    assert_eq!(p.requeue, NO_DATA_POLL);
    let again = run(&sp, &st, Obs { samples: vec![("errors", Sample::NoData)], ..obs("v2") }, 2);
    assert_eq!(again.status, st, "a repeated empty result changes nothing");
    assert_eq!(again.requeue, NO_DATA_POLL);
    // A passing measurement, but the 10 s pause is not over; the next is an interval away.
    let p = run(&sp, &st, Obs { samples: vec![("errors", Sample::Value(0.01))], ..obs("v2") }, 2);
    assert_eq!(p.status.canary.as_ref().unwrap().step, 0);
    st = p.status;
    assert!(!metrics_due(&sp, &st, &t(6)));
    assert!(metrics_due(&sp, &st, &t(7)), "an interval after the last measurement");
    // Pause over: next step.
    let p = run(&sp, &st, obs("v2"), 12);
    assert_eq!(p.status.canary.as_ref().unwrap().step, 1);
    assert_eq!(p.traffic.canary.as_ref().unwrap().replicas, 2);
    assert_eq!(reasons(&p), ["RolloutStepAdvanced"]);
    st = p.status;
    // No measurement during step 1 yet: it waits.
    let p = run(&sp, &st, obs("v2"), 14);
    assert_eq!(p.status.canary.as_ref().unwrap().step, 1);
    st = p.status;
    let p = run(&sp, &st, Obs { samples: vec![("errors", Sample::Value(0.0))], ..obs("v2") }, 17);
    assert_eq!(phase(&p), Some(CanaryPhase::Baking));
    assert_eq!(p.traffic.canary.as_ref().unwrap().replicas, 4);
    assert_eq!(p.traffic.stable.as_ref().unwrap().replicas, 0);
    st = p.status;
    let p = run(&sp, &st, Obs { samples: vec![("errors", Sample::Value(0.0))], ..obs("v2") }, 30);
    assert_eq!(phase(&p), Some(CanaryPhase::Baking), "bake not over");
    st = p.status;
    let p = run(&sp, &st, Obs { samples: vec![("errors", Sample::Value(0.0))], ..obs("v2") }, 38);
    assert!(p.status.canary.is_none());
    assert_eq!(p.status.stable.as_ref().unwrap().version, "v2");
    assert_eq!(p.status.rollback_target.as_deref(), Some("v1"), "previous stable kept as standby");
    assert_eq!(p.traffic.standby.as_deref(), Some("v1"));
    assert_eq!(p.status.history.last().unwrap().outcome, RolloutOutcome::Promoted);
    assert_eq!(p.status.delivery.as_ref().unwrap().deployments, 1);
    assert_eq!(p.status.last_decision.as_ref().unwrap().action, DecisionAction::Promote);
    st = p.status;
    // After the scale-down delay the standby goes.
    let p = run(&sp, &st, obs("v2"), 38 + 31);
    assert!(p.status.rollback_target.is_none());
    assert!(p.traffic.standby.is_none());
}

fn progressing(version: &str, step: i32, since: i64) -> InferenceServiceStatus {
    let mut st = serving("v1");
    st.rollback_target = Some("v1".into());
    st.canary = Some(CanaryStatus {
        version: version.into(),
        step,
        phase: CanaryPhase::Progressing,
        start_time: Some(t(since)),
        step_start_time: Some(t(since)),
        ..Default::default()
    });
    st
}

#[test]
fn a_failing_metric_beyond_the_failure_limit_rolls_back_with_value_and_bound() {
    let sp = spec(json!({}));
    let st = progressing("v2", 0, 0);
    let p = run(&sp, &st, Obs { samples: vec![("errors", Sample::Value(0.5))], ..obs("v2") }, 5);
    assert_eq!(phase(&p), Some(CanaryPhase::Progressing), "failureLimit 1 tolerates one failure");
    let p = run(&sp, &p.status, Obs { samples: vec![("errors", Sample::Value(0.4))], ..obs("v2") }, 10);
    assert_eq!(phase(&p), Some(CanaryPhase::RollingBack));
    let d = p.status.last_decision.clone().unwrap();
    assert_eq!(
        (d.action, d.check.as_str(), d.value, d.bound),
        (DecisionAction::Rollback, "errors", Some(0.4), Some(0.05))
    );
    assert_eq!(p.status.failed_versions, ["v2"]);
    assert_eq!(p.traffic.stable.as_ref().unwrap().replicas, 4);
    assert_eq!(p.traffic.canary.as_ref().unwrap().replicas, 0);
    assert_eq!(p.status.history.last().unwrap().outcome, RolloutOutcome::RolledBack);
    assert!(
        p.notes.iter().any(|n| n.warning && n.message.contains("measured 0.4, bound 0.05")),
        "{:?}",
        p.notes
    );
    assert_eq!(p.status.delivery.as_ref().unwrap().failed_deployments, 1);
    assert!(cond::is_true(&p.status.conditions, cond::DEGRADED));
    // The canary pods gone: the rollback completes and time to restore is recorded.
    let p = run(&sp, &p.status, Obs { canary_ready: 0, ..obs("v2") }, 13);
    assert!(p.status.canary.is_none());
    assert_eq!(p.status.delivery.as_ref().unwrap().last_time_to_restore_seconds, Some(3));
    assert_eq!(p.delivered, [Delivered::Restored { seconds: 3 }]);
    // The failed version is not retried while it is still the target...
    let p = run(&sp, &p.status, obs("v2"), 20);
    assert!(p.status.canary.is_none());
    assert!(cond::is_true(&p.status.conditions, cond::DEGRADED));
    assert!(cond::is_true(&p.status.conditions, cond::READY), "the stable still serves");
    // ...until a user asks.
    let retry = Manual { retry: Some("1".into()), ..Manual::default() };
    let p = run(&sp, &p.status, Obs { manual: retry, canary_ready: 0, ..obs("v2") }, 21);
    assert_eq!(phase(&p), Some(CanaryPhase::Starting));
    assert_eq!(p.status.manual_actions.as_ref().unwrap().retry.as_deref(), Some("1"));
}

#[test]
fn a_newer_version_replaces_a_failed_one() {
    let sp = spec(json!({}));
    let mut st = serving("v1");
    st.failed_versions = vec!["v2".into()];
    let p = run(&sp, &st, obs("v3"), 0);
    assert_eq!(p.status.canary.as_ref().unwrap().version, "v3");
}

#[test]
fn health_failures_roll_back_at_once() {
    let sp = spec(json!({}));
    let health = Health::Failed {
        reason: "HealthCheckFailed",
        value: Some(3.0),
        bound: Some(2.0),
        message: "CrashLoopBackOff".into(),
    };
    let p = run(&sp, &progressing("v2", 0, 0), Obs { health, ..obs("v2") }, 1);
    assert_eq!(phase(&p), Some(CanaryPhase::RollingBack));
    assert_eq!(p.status.last_decision.as_ref().unwrap().check, HEALTH);
}

#[test]
fn no_data_follows_its_policy() {
    for (policy, expect_phase, failures) in [
        ("Wait", CanaryPhase::Progressing, 0),
        ("Pass", CanaryPhase::Progressing, 0),
        ("Fail", CanaryPhase::Progressing, 1),
    ] {
        let sp = spec(
            json!({"rollout": {"steps": [{"weight": 50}], "analysis": {"intervalSeconds": 5, "failureLimit": 1,
            "metrics": [{"name": "errors", "query": "q", "max": 0.05, "onNoData": policy}]}}}),
        );
        let p = run(
            &sp,
            &progressing("v2", 0, 0),
            Obs { samples: vec![("errors", Sample::NoData)], ..obs("v2") },
            5,
        );
        assert_eq!(
            phase(&p),
            Some(if policy == "Pass" { CanaryPhase::Baking } else { expect_phase }),
            "{policy}"
        );
        let check =
            p.status.canary.as_ref().unwrap().analysis.iter().find(|c| c.name == "errors").unwrap().clone();
        assert_eq!(check.failures, failures, "{policy}");
        if policy == "Wait" {
            assert!(check.no_data_since.is_some());
        }
    }
}

#[test]
fn waiting_for_data_ends_at_the_progress_deadline() {
    let sp = spec(json!({}));
    let st = progressing("v2", 0, 0);
    let p = run(&sp, &st, Obs { samples: vec![("errors", Sample::NoData)], ..obs("v2") }, 69);
    assert_eq!(phase(&p), Some(CanaryPhase::Progressing));
    let p = run(&sp, &p.status, obs("v2"), 71);
    assert_eq!(phase(&p), Some(CanaryPhase::RollingBack));
    assert_eq!(p.status.last_decision.as_ref().unwrap().reason, "ProgressDeadlineExceeded");
}

#[test]
fn no_data_is_polled_fast_at_first_then_once_an_interval() {
    let sp = spec(json!({})); // intervalSeconds 5
    let no_data = || Obs { samples: vec![("errors", Sample::NoData)], ..obs("v2") };
    let measurements = |st: &InferenceServiceStatus| {
        st.canary.as_ref().unwrap().analysis.iter().find(|c| c.name == "errors").unwrap().measurements.len()
    };
    let p = run(&sp, &progressing("v2", 0, 0), no_data(), 1);
    assert_eq!((measurements(&p.status), p.requeue), (1, NO_DATA_POLL));
    let p = run(&sp, &p.status, no_data(), 9);
    assert_eq!((measurements(&p.status), p.requeue), (1, NO_DATA_POLL), "repeats unrecorded");
    // Past the fast window: recorded, and measured again an interval later.
    let p = run(&sp, &p.status, no_data(), 11);
    assert_eq!(measurements(&p.status), 2);
    assert!(p.requeue >= Duration::from_secs(1), "{:?}", p.requeue);
    assert!(!metrics_due(&sp, &p.status, &t(13)));
    assert!(metrics_due(&sp, &p.status, &t(16)));
}

#[test]
fn query_errors_are_counted_apart_and_have_their_own_limit() {
    let sp = spec(json!({}));
    let mut st = progressing("v2", 0, 0);
    for (i, at) in [5, 10, 15].into_iter().enumerate() {
        let p = run(
            &sp,
            &st,
            Obs { samples: vec![("errors", Sample::Error("connection refused".into()))], ..obs("v2") },
            at,
        );
        let check =
            p.status.canary.as_ref().unwrap().analysis.iter().find(|c| c.name == "errors").unwrap().clone();
        assert_eq!(check.failures, 0);
        assert_eq!(check.query_errors, i as i32 + 1);
        st = p.status;
    }
    assert_eq!(phase_of(&st), Some(CanaryPhase::RollingBack));
    assert_eq!(st.last_decision.as_ref().unwrap().reason, "QueryErrorLimitExceeded");
}

fn phase_of(st: &InferenceServiceStatus) -> Option<CanaryPhase> {
    st.canary.as_ref().map(|c| c.phase)
}

#[test]
fn manual_promote_and_abort() {
    let sp = spec(json!({}));
    let promote = Manual { promote: Some("now".into()), ..Manual::default() };
    let p = run(&sp, &progressing("v2", 0, 0), Obs { manual: promote, ..obs("v2") }, 1);
    assert_eq!(p.status.stable.as_ref().unwrap().version, "v2");
    assert_eq!(p.status.manual_actions.as_ref().unwrap().promote.as_deref(), Some("now"));
    let abort = Manual { abort: Some("stop".into()), ..Manual::default() };
    let p = run(&sp, &progressing("v2", 0, 0), Obs { manual: abort, ..obs("v2") }, 1);
    assert_eq!(phase(&p), Some(CanaryPhase::RollingBack));
    assert_eq!(p.status.history.last().unwrap().outcome, RolloutOutcome::Aborted);
    assert_eq!(p.status.failed_versions, ["v2"], "an aborted version is not retried by itself");
}

#[test]
fn a_moving_target_supersedes_the_canary() {
    let sp = spec(json!({}));
    let p = run(&sp, &progressing("v2", 1, 0), obs("v3"), 3);
    assert_eq!(p.status.canary.as_ref().unwrap().version, "v3");
    assert_eq!(p.status.history.last().unwrap().outcome, RolloutOutcome::Superseded);
    // Pinning back to the stable cancels the rollout.
    let p = run(&sp, &progressing("v2", 1, 0), obs("v1"), 3);
    assert!(p.status.canary.is_none());
    assert!(p.status.rollback_target.is_none());
}

#[test]
fn restart_from_any_persisted_status_is_idempotent() {
    // Planning twice from the same status and observations gives the same result: a
    // restarted operator neither skips nor repeats a transition.
    let sp = spec(json!({}));
    let statuses = [serving("v1"), progressing("v2", 0, 0), progressing("v2", 1, 0), {
        let mut s = progressing("v2", 2, 0);
        s.canary.as_mut().unwrap().phase = CanaryPhase::Baking;
        s
    }];
    for st in statuses {
        let a = run(&sp, &st, obs("v2"), 3);
        let b = run(&sp, &st, obs("v2"), 3);
        assert_eq!(a.status, b.status);
        assert_eq!(a.traffic, b.traffic);
        // Feeding the result back without new observations changes nothing further.
        let c = run(&sp, &a.status, obs("v2"), 3);
        assert_eq!(
            c.status.canary.as_ref().map(|x| (x.step, x.phase)),
            a.status.canary.as_ref().map(|x| (x.step, x.phase))
        );
    }
}

#[test]
fn replica_routing_rounds_up_and_keeps_a_stable_pod() {
    let sp = spec(json!({"replicas": 1}));
    let p = run(&sp, &progressing("v2", 0, 0), obs("v2"), 1);
    assert_eq!(p.traffic.canary.as_ref().unwrap().replicas, 1);
    assert_eq!(p.traffic.stable.as_ref().unwrap().replicas, 1);
    assert_eq!(p.status.canary.as_ref().unwrap().weight, 50, "the effective weight is reported");
}

#[test]
fn gateway_routing_uses_exact_weights() {
    let sp = spec(json!({"rollout": {"steps": [{"weight": 10}],
        "trafficRouting": {"gatewayAPI": {"gatewayRef": {"name": "gw"}}}}}));
    let p = run(&sp, &progressing("v2", 0, 0), obs("v2"), 0);
    let t = p.traffic;
    assert!(t.gateway);
    assert_eq!((t.canary.as_ref().unwrap().weight, t.stable.as_ref().unwrap().weight), (10, 90));
    assert_eq!(t.stable.as_ref().unwrap().replicas, 4);
}

#[test]
fn a_rollback_completes_when_no_canary_pod_serves_not_before_and_not_later() {
    let sp = spec(json!({}));
    let fail = || Obs { samples: vec![("errors", Sample::Value(1.0))], ..obs("v2") };
    let p = run(&sp, &progressing("v2", 1, 0), fail(), 5);
    let p = run(&sp, &p.status, fail(), 6);
    assert_eq!(phase(&p), Some(CanaryPhase::RollingBack));
    let rolling_back = p.status;
    // A canary pod still Ready still takes traffic, even with the stable at full strength:
    // the rollback is not complete.
    let p = run(&sp, &rolling_back, Obs { stable_ready: 4, canary_ready: 1, ..obs("v2") }, 7);
    assert_eq!(phase(&p), Some(CanaryPhase::RollingBack));
    assert!(!reasons(&p).contains(&"RollbackComplete"));
    // No stable pod Ready: nothing serves yet.
    let p = run(&sp, &rolling_back, Obs { stable_ready: 0, canary_ready: 0, ..obs("v2") }, 8);
    assert_eq!(phase(&p), Some(CanaryPhase::RollingBack));
    // The canary out of the Service and stable pods serving: all traffic is on stable, even
    // while the stable's extra replicas are still starting (that is capacity, which
    // Reconciling reports).
    let p = run(&sp, &rolling_back, Obs { stable_ready: 2, canary_ready: 0, ..obs("v2") }, 9);
    assert!(p.status.canary.is_none(), "{:?}", p.status.canary);
    assert_eq!(reasons(&p), ["RollbackComplete"]);
    assert_eq!(p.status.delivery.as_ref().unwrap().last_time_to_restore_seconds, Some(3));
    assert_eq!(p.traffic.stable.as_ref().unwrap().replicas, 4);
    assert!(cond::is_true(&p.status.conditions, cond::RECONCILING), "2 of 4 stable pods Ready");
    let p = run(&sp, &p.status, Obs { stable_ready: 4, canary_ready: 0, ..obs("v2") }, 10);
    assert!(!cond::is_true(&p.status.conditions, cond::RECONCILING));
}

#[test]
fn the_next_measurement_is_due_one_interval_after_the_last_whatever_woke_the_pass() {
    let sp = spec(json!({})); // intervalSeconds 5, bake 20
    let ok = Obs { samples: vec![("errors", Sample::Value(0.0))], ..obs("v2") };
    let p = run(&sp, &progressing("v2", 1, 0), ok, 5);
    assert_eq!(phase(&p), Some(CanaryPhase::Baking));
    assert_eq!(p.requeue, Duration::from_secs(5));
    // A pod event wakes a pass 2 s later: the measurement stays due at 10, not 12.
    let p = run(&sp, &p.status, obs("v2"), 7);
    assert!(!metrics_due(&sp, &p.status, &t(7)));
    assert_eq!(p.requeue, Duration::from_secs(3));
    assert!(metrics_due(&sp, &p.status, &t(10)));
    // Overdue (the pass came late): look again as soon as allowed.
    let p = run(&sp, &p.status, obs("v2"), 13);
    assert_eq!(p.requeue, Duration::from_secs(1));
}

#[test]
fn failing_pods_of_the_only_version_say_why_and_warn_once() {
    let sp = spec(json!({}));
    let failing = Obs {
        stable_ready: 0,
        canary_ready: 0,
        stable_problem: Some("pod a container server is in CrashLoopBackOff (3 restarts)"),
        ..obs("v1")
    };
    let p = run(&sp, &serving("v1"), failing, 0);
    let ready = p.status.conditions.iter().find(|c| c.type_ == cond::READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "PodsFailing"));
    assert!(ready.message.contains("v1 has no Ready pod: pod a container server is in CrashLoopBackOff"));
    assert_eq!(reasons(&p), ["PodsFailing"]);
    // Still failing on the next pass: no second Warning.
    let again = Obs { stable_ready: 0, canary_ready: 0, stable_problem: Some("still"), ..obs("v1") };
    let p2 = run(&sp, &p.status, again, 5);
    assert!(reasons(&p2).is_empty(), "{:?}", reasons(&p2));
    // Pods merely starting are not a failure.
    let starting = Obs { stable_ready: 0, canary_ready: 0, ..obs("v1") };
    let p3 = run(&sp, &serving("v1"), starting, 0);
    let ready = p3.status.conditions.iter().find(|c| c.type_ == cond::READY).unwrap();
    assert_eq!(ready.reason, "NotReady");
    assert!(reasons(&p3).is_empty());
}
