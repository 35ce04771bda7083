//! InferenceService end to end, rollouts that succeed: a good version walks every canary
//! step and is promoted, and an operator killed mid-rollout resumes where it was. The shared
//! harness (real servers, real traffic, an operator per test) is `inference_harness/`.

mod inference_harness;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use inference_harness::{
    LONG, OPERATOR, SHORT, Setup, apply, count_reason, deployments, error_rate_check, events, history_has,
    import_version, inference_service,
    load::{Load, summary},
    service_address, setup, status, wait_serving,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{Api, ResourceExt, api::ListParams};
use mlops_operator::api::{
    InferenceService,
    inference_service::{CanaryPhase, CheckVerdict, RolloutOutcome},
};
use mlops_operator::controllers::inference_service::desired::deployment_name;
use serde_json::json;
use testkit::{Operator, wait_for, wait_until};

// ---------------------------------------------------------------------------------------
// (a) A good version walks every step, bakes, is promoted; the old stable stays as a
// scaled-down standby for scaleDownDelaySeconds, then goes.

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_good_version_is_promoted_through_every_step() {
    let Setup { env, op, uri, release: _release } = setup("isvc-promote").await;
    import_version(&env, &uri, "iris-v1", None).await;
    apply(
        &env,
        &inference_service(
            "web",
            json!({"replicas": 4, "rollout": {
                "steps": [{"weight": 25, "pauseSeconds": 3}, {"weight": 50, "pauseSeconds": 3},
                          {"weight": 75, "pauseSeconds": 3}],
                "bakeSeconds": 4, "progressDeadlineSeconds": 180, "scaleDownDelaySeconds": 10,
                "analysis": {"intervalSeconds": 2, "failureLimit": 0, "metrics": [error_rate_check("Wait")]}
            }}),
        ),
    );
    let isvcs: Api<InferenceService> = env.api();
    wait_serving(&env, "web", "iris-v1").await;
    let addr = service_address(&env, "web").await;
    let load = Load::start(addr, 30);
    wait_until(SHORT, "answers from iris-v1", || async {
        load.hits().iter().any(|h| h.code == 200 && h.version == "iris-v1").then_some(())
    })
    .await;

    let started = Instant::now();
    let v2 = import_version(&env, &uri, "iris-v2", None).await;
    // Follow the rollout: every (phase, step, canary weight, stable replicas) it goes through.
    let mut seen: Vec<(CanaryPhase, i32, i32, i32)> = Vec::new();
    // And every value the error-rate check measured on the canary.
    let mut measured: Vec<f64> = Vec::new();
    let deadline = Instant::now() + LONG;
    let promoted = loop {
        let i = isvcs.get("web").await.unwrap();
        let s = status(&i);
        if let Some(c) = &s.canary {
            let key = (c.phase, c.step, c.weight, s.stable.as_ref().map(|x| x.replicas).unwrap_or(-1));
            if seen.last() != Some(&key) {
                seen.push(key);
            }
            let checks = c.analysis.iter().filter(|k| k.name == "error-rate");
            for m in checks.flat_map(|k| &k.measurements) {
                if let (CheckVerdict::Passed, Some(v)) = (m.verdict, m.value) {
                    measured.push(v);
                }
            }
        }
        if history_has(&i, "iris-v2", RolloutOutcome::Promoted) == 1 {
            break i;
        }
        assert!(history_has(&i, "iris-v2", RolloutOutcome::RolledBack) == 0, "rolled back: {s:#?}");
        assert!(Instant::now() < deadline, "not promoted in {LONG:?}; seen {seen:?}\n{s:#?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    let rollout_secs = started.elapsed().as_secs();

    // Every step in order, at the weights the steps ask for (4 replicas: 1/3, 2/2, 3/1), then
    // the bake at 100 % with the stable scaled to zero.
    let weights: Vec<(CanaryPhase, i32, i32)> =
        seen.iter().filter(|(p, ..)| *p != CanaryPhase::Starting).map(|(p, _, w, r)| (*p, *w, *r)).collect();
    let mut dedup = weights.clone();
    dedup.dedup();
    assert_eq!(
        dedup,
        [
            (CanaryPhase::Progressing, 25, 3),
            (CanaryPhase::Progressing, 50, 2),
            (CanaryPhase::Progressing, 75, 1),
            (CanaryPhase::Baking, 100, 0)
        ],
        "steps seen: {seen:?}"
    );
    // Events are published right after the status that records them: wait a moment.
    let expected = [
        "Promoted", // the initial deployment of iris-v1
        "RolloutStarted",
        "CanaryReady",
        "RolloutStepAdvanced",
        "RolloutStepAdvanced",
        "RolloutBaking",
        "Promoted",
    ];
    let order_of = |ev: &[(String, String, i32)]| -> Vec<String> {
        ev.iter()
            .filter(|(r, ..)| {
                ["RolloutStarted", "CanaryReady", "RolloutStepAdvanced", "RolloutBaking", "Promoted"]
                    .contains(&r.as_str())
            })
            .map(|(r, ..)| r.clone())
            .collect()
    };
    let settle = Instant::now() + Duration::from_secs(10);
    let mut ev = events(&env, "web").await;
    while order_of(&ev) != expected && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ev = events(&env, "web").await;
    }
    assert_eq!(order_of(&ev), expected, "{ev:#?}");
    // Each transition is an Event of its own with its own note (never folded into a series).
    assert!(
        ev.iter().filter(|(r, ..)| expected.contains(&r.as_str())).all(|(.., count)| *count == 1),
        "{ev:#?}"
    );
    assert_eq!(count_reason(&ev, "Promoted", "iris-v2 serves all traffic"), 1, "{ev:#?}");
    assert!(count_reason(&ev, "RolloutStepAdvanced", "iris-v2 now at 50 %") == 1, "{ev:#?}");
    assert!(count_reason(&ev, "RolloutStepAdvanced", "iris-v2 now at 75 %") == 1, "{ev:#?}");

    let s = status(&promoted);
    assert_eq!(s.stable.as_ref().unwrap().version, "iris-v2");
    let h = s.history.iter().find(|h| h.version == "iris-v2").unwrap();
    assert_eq!(h.outcome, RolloutOutcome::Promoted);
    assert!(h.start_time.is_some() && h.completion_time.is_some());
    let d = s.delivery.clone().expect("delivery");
    assert_eq!(d.deployments, 2, "initial deployment + this promotion: {d:?}");
    assert_eq!(d.failed_deployments, 0);
    assert_eq!(d.change_failure_rate, Some(0.0));
    let lead = d.last_lead_time_seconds.expect("lead time");
    let created = v2.metadata.creation_timestamp.clone().unwrap();
    let promoted_at = d.last_deployment_time.clone().unwrap();
    assert_eq!(
        lead as u64,
        promoted_at.0.duration_since(created.0).as_secs() as u64,
        "lead time from creation"
    );
    // The error-rate check measured real traffic on the canary: values, and they passed.
    assert!(!measured.is_empty(), "the error-rate check never passed with a measured value");
    assert!(measured.iter().all(|v| *v <= 0.05), "{measured:?}");
    // The delivery metrics are exported too.
    let metrics = op.metrics().unwrap_or_default();
    assert!(metrics.contains("mlops_lead_time_seconds"), "{metrics}");

    // The old stable stays as a standby at 0 replicas, then goes after the delay.
    assert_eq!(s.rollback_target.as_deref(), Some("iris-v1"));
    let deps = deployments(&env, "web").await;
    assert_eq!(deps.get(&deployment_name("web", "iris-v1")), Some(&0), "{deps:?}");
    assert_eq!(deps.get(&deployment_name("web", "iris-v2")), Some(&4), "{deps:?}");
    let promotion = s.stable.as_ref().unwrap().promotion_time.clone().expect("the promotion time").0;
    wait_until(SHORT, "the standby Deployment to go after scaleDownDelaySeconds", || async {
        let deps = deployments(&env, "web").await;
        (!deps.contains_key(&deployment_name("web", "iris-v1"))).then_some(())
    })
    .await;
    // Seen gone now, so it went at most now: a lower bound on the delay that a slow poll
    // can only lengthen (status times have whole seconds).
    let standby_secs = k8s_openapi::jiff::Timestamp::now().duration_since(promotion).as_secs_f64();
    // Status follows the Deployment delete in the same pass, so it may trail it a moment.
    wait_until(SHORT, "status.rollbackTarget cleared", || async {
        let i = isvcs.get("web").await.ok()?;
        status(&i).rollback_target.is_none().then_some(())
    })
    .await;
    assert!(standby_secs >= 9.0, "standby removed {standby_secs:.1} s after the promotion, before 10 s");

    // Traffic: no error answers at any time; iris-v2 alone at the end.
    let gone = Instant::now();
    wait_until(SHORT, "a second of answers, all from iris-v2, after the standby went", || async {
        let tail = load.since(gone);
        let span = tail.last().map(|h| h.at.duration_since(tail[0].at)).unwrap_or_default();
        (span >= Duration::from_secs(1)).then_some(())
    })
    .await;
    let hits = load.hits();
    assert!(hits.iter().all(|h| h.code != 500), "{:?}", summary(&hits));
    let tail = load.since(gone);
    assert!(tail.iter().all(|h| h.code == 200 && h.version == "iris-v2"), "{:?}", summary(&tail));
    eprintln!(
        "promotion: iris-v2 promoted {rollout_secs} s after its import, standby kept {standby_secs:.1} s more; traffic {:?}",
        summary(&hits)
    );
    drop(load);
}

// ---------------------------------------------------------------------------------------
// (e) The operator killed mid-rollout resumes where it was.

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn an_operator_killed_mid_rollout_resumes_where_it_was() {
    let Setup { env, mut op, uri, release: _release } = setup("isvc-kill").await;
    import_version(&env, &uri, "iris-v1", None).await;
    apply(
        &env,
        &inference_service(
            "web",
            json!({"replicas": 4, "rollout": {
                "steps": [{"weight": 25, "pauseSeconds": 4}, {"weight": 50, "pauseSeconds": 6},
                          {"weight": 75, "pauseSeconds": 4}],
                "bakeSeconds": 3, "progressDeadlineSeconds": 180,
                "analysis": {"intervalSeconds": 2, "failureLimit": 0, "metrics": [error_rate_check("Wait")]}
            }}),
        ),
    );
    let isvcs: Api<InferenceService> = env.api();
    wait_serving(&env, "web", "iris-v1").await;
    let addr = service_address(&env, "web").await;
    let load = Load::start(addr, 25);
    import_version(&env, &uri, "iris-v2", None).await;
    let at = wait_for(&isvcs, "web", LONG, "the rollout at step 1", |i| {
        status(i).canary.as_ref().is_some_and(|c| c.step >= 1 && c.phase == CanaryPhase::Progressing)
    })
    .await;
    op.kill();
    // Read after the kill: the operator may have moved on between `at` and its death.
    let before = status(&isvcs.get("web").await.unwrap()).canary.expect("a canary when killed");
    assert!(before.step >= status(&at).canary.unwrap().step);
    let deps_before = deployments(&env, "web").await;
    eprintln!("killed the operator at step {} ({} %)", before.step, before.weight);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let frozen = status(&isvcs.get("web").await.unwrap()).canary.unwrap();
    assert_eq!(
        (frozen.step, frozen.phase),
        (before.step, before.phase),
        "nothing moves while no operator runs"
    );

    let op2 = Operator::start(OPERATOR, &env.namespace, &[]);
    let mut steps = vec![before.step];
    let deadline = Instant::now() + LONG;
    let done = loop {
        let i = isvcs.get("web").await.unwrap();
        let s = status(&i);
        if let Some(c) = &s.canary {
            assert_eq!(c.version, "iris-v2");
            assert!(c.step >= *steps.last().unwrap(), "the step went back: {steps:?} then {}", c.step);
            assert_ne!(c.phase, CanaryPhase::Starting, "the rollout restarted");
            assert_ne!(c.phase, CanaryPhase::RollingBack, "{s:#?}");
            if steps.last() != Some(&c.step) {
                steps.push(c.step);
            }
        }
        let deps = deployments(&env, "web").await;
        let ours = [deployment_name("web", "iris-v1"), deployment_name("web", "iris-v2")];
        assert!(deps.keys().all(|d| ours.contains(d)), "{deps:?}");
        if history_has(&i, "iris-v2", RolloutOutcome::Promoted) == 1 {
            break i;
        }
        assert!(Instant::now() < deadline, "no promotion after the restart: {s:#?}\n{}", op2.log_tail(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let s = status(&done);
    assert_eq!(s.stable.unwrap().version, "iris-v2");
    assert_eq!(s.history.iter().filter(|h| h.version == "iris-v2").count(), 1, "{:?}", s.history);
    assert_eq!(s.delivery.unwrap().deployments, 2);
    let ev = events(&env, "web").await;
    assert_eq!(count_reason(&ev, "RolloutStarted", "iris-v2"), 1, "{ev:#?}");
    assert_eq!(count_reason(&ev, "CanaryReady", "iris-v2"), 1, "{ev:#?}");
    // One Deployment per version, the same objects as before the kill (not re-created).
    let uids = |list: Vec<Deployment>| -> BTreeMap<String, String> {
        list.into_iter().map(|d| (d.name_any(), d.uid().unwrap_or_default())).collect()
    };
    let after = uids(env.api::<Deployment>().list(&ListParams::default()).await.unwrap().items);
    let mut ours = [deployment_name("web", "iris-v1"), deployment_name("web", "iris-v2")];
    ours.sort();
    assert_eq!(after.keys().collect::<Vec<_>>(), ours.iter().collect::<Vec<_>>(), "{after:?}");
    assert_eq!(deps_before.keys().collect::<Vec<_>>(), ours.iter().collect::<Vec<_>>());
    assert!(env.api::<Service>().get_opt("web").await.unwrap().is_some(), "the Service is kept");
    let hits = load.hits();
    assert!(hits.iter().all(|h| h.code != 500), "{:?}", summary(&hits));
    eprintln!("resumed at steps {steps:?}; traffic {:?}", summary(&hits));
    // Let the namespace go while the second operator still runs.
    drop(_release);
    drop(op2);
}
