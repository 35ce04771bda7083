//! InferenceService end to end, versions that fail: rolled back by a metric check (and
//! retried only on request), by the health check, by the progress deadline or an empty
//! query result (each `onNoData` policy), a failing pinned version that leaves the old one
//! serving, and `analysis.waitForFirstScrape` catching a bad canary at its first scrape.
//! The shared harness (real servers, real traffic, an operator per test) is
//! `inference_harness/`.

mod inference_harness;

use std::time::{Duration, Instant};

use inference_harness::{
    ERROR_RATE, LONG, SHORT, Setup, annotate, apply, condition, count_reason, deployments, error_rate_check,
    events, history_has, import_version, inference_service,
    load::{Load, summary},
    service_address, settled, setup, stable_is, status, wait_serving,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use mlops_operator::{
    api::{
        InferenceService, ModelVersion,
        conditions::{self as cond},
        inference_service::{CheckVerdict, RolloutOutcome},
    },
    controllers::inference_service::desired::deployment_name,
};
use serde_json::json;
use testkit::{wait_condition, wait_for, wait_until};

/// A well-formed query on a metric nobody exports: always an empty result.
const NO_DATA: &str =
    r#"sum(mlops_metric_that_does_not_exist{namespace="{{namespace}}",model_version="{{modelVersion}}"})"#;

// ---------------------------------------------------------------------------------------
// analysis.waitForFirstScrape: a canary gets traffic only once Prometheus has scraped it, so
// a bad one is caught by its first scrape, not after Prometheus happens to discover it.

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_gated_canary_gets_traffic_only_after_its_first_scrape() {
    let Setup { env, op: _op, uri, release: _release } = setup("isvc-gate").await;
    import_version(&env, &uri, "iris-v1", None).await;
    let check = ERROR_RATE.replace("sum(rate(", "sum(").replace("[10s]))", ")");
    apply(
        &env,
        &inference_service(
            "web",
            json!({"replicas": 2, "rollout": {
                "steps": [{"weight": 50, "pauseSeconds": 600}], "progressDeadlineSeconds": 300,
                "analysis": {"intervalSeconds": 2, "failureLimit": 0, "waitForFirstScrape": true,
                             "metrics": [{"name": "error-rate", "query": check, "max": 0.05, "onNoData": "Wait"}]}
            }}),
        ),
    );
    let isvcs: Api<InferenceService> = env.api();
    wait_serving(&env, "web", "iris-v1").await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = env.api();
    let gate_of =
        |p: &k8s_openapi::api::core::v1::Pod, t: &str| {
            p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t).map(|c| {
                (c.status.clone(), c.reason.clone().unwrap_or_default(), c.last_transition_time.clone())
            })
        };
    let listed = |version: &'static str| {
        let pods = pods.clone();
        async move {
            let lp = ListParams::default().labels(&format!("mlops.dev/model-version={version}"));
            pods.list(&lp).await.unwrap().items
        }
    };
    // The stable version's pods are opened at once.
    for p in listed("iris-v1").await {
        assert_eq!(
            gate_of(&p, "mlops.dev/scraped").map(|g| (g.0, g.1)),
            Some(("True".into(), "StableVersion".into()))
        );
    }
    let addr = service_address(&env, "web").await;
    let load = Load::start(addr, 50);

    // A failing canary: Ready (and so served) only after its first scrape, then rolled back.
    let t0 = Instant::now();
    import_version(&env, &uri, "iris-v2", Some(json!({"MLOPS_FAULT_ERROR_RATE": "1"}))).await;
    let canary = wait_until(SHORT, "the canary pod, Ready", || async {
        listed("iris-v2").await.into_iter().find(|p| gate_of(p, "Ready").is_some_and(|g| g.0 == "True"))
    })
    .await;
    let (gate, reason, opened) = gate_of(&canary, "mlops.dev/scraped").expect("the gate condition");
    assert_eq!((gate.as_str(), reason.as_str()), ("True", "Scraped"), "opened by a scrape");
    let (_, _, ready_at) = gate_of(&canary, "Ready").unwrap();
    assert!(ready_at >= opened, "Ready {ready_at:?} before the gate opened {opened:?}");
    let i = wait_until(LONG, "the rollback", || async {
        let i = isvcs.get("web").await.ok()?;
        (history_has(&i, "iris-v2", RolloutOutcome::RolledBack) == 1).then_some(i)
    })
    .await;
    assert_eq!(status(&i).last_decision.unwrap().check, "error-rate");
    // Every error answer came after the canary was observable, and few got through.
    let errors: Vec<Instant> = load.since(t0).iter().filter(|h| h.code >= 500).map(|h| h.at).collect();
    assert!(!errors.is_empty(), "the canary served");
    let span = errors.last().unwrap().duration_since(errors[0]).as_secs_f64();
    // One scrape interval and one analysis interval (4 s), with room for a loaded machine;
    // without the gate the canary would serve until Prometheus happened to find it.
    assert!(span < 8.0, "errors for {span:.1} s: one scrape interval and one poll should catch it");
}

// ---------------------------------------------------------------------------------------
// (b) A version whose server answers errors is rolled back by the metric check; it is not
// retried until the retry annotation asks.

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn an_erroring_version_is_rolled_back_by_the_metric_check_and_retried_on_request() {
    let Setup { env, op, uri, release: _release } = setup("isvc-metric").await;
    import_version(&env, &uri, "iris-v1", None).await;
    apply(
        &env,
        &inference_service(
            "web",
            json!({"rollout": {
                "steps": [{"weight": 50, "pauseSeconds": 60}],
                "bakeSeconds": 5, "progressDeadlineSeconds": 180, "scaleDownDelaySeconds": 30,
                "analysis": {"intervalSeconds": 2, "failureLimit": 0, "metrics": [error_rate_check("Wait")]}
            }}),
        ),
    );
    let isvcs: Api<InferenceService> = env.api();
    wait_serving(&env, "web", "iris-v1").await;
    let addr = service_address(&env, "web").await;
    let load = Load::start(addr, 30);

    import_version(&env, &uri, "iris-v2", Some(json!({"MLOPS_FAULT_ERROR_RATE": "1"}))).await;
    let rolled = wait_for(&isvcs, "web", LONG, "iris-v2 rolled back", |i| {
        history_has(i, "iris-v2", RolloutOutcome::RolledBack) == 1
    })
    .await;
    let s = status(&rolled);
    let d = s.last_decision.clone().expect("the decision");
    assert_eq!(d.version, "iris-v2");
    assert_eq!(d.check, "error-rate");
    assert_eq!(d.reason, "MetricCheckFailed");
    assert_eq!(d.bound, Some(0.05));
    assert!(d.value.is_some_and(|v| v > 0.05), "measured {:?}", d.value);
    let h = s.history.iter().find(|h| h.version == "iris-v2").unwrap();
    assert_eq!(h.reason.as_deref(), Some("MetricCheckFailed"));
    assert!(h.message.as_deref().unwrap_or("").contains("error-rate"), "{h:?}");

    // All traffic back on iris-v1, the canary Deployment gone.
    let restored =
        wait_for(&isvcs, "web", LONG, "the rollback to complete", |i| stable_is(i, "iris-v1")).await;
    let back_at = Instant::now();
    let s = status(&restored);
    assert!(s.delivery.as_ref().unwrap().last_time_to_restore_seconds.is_some());
    assert_eq!(s.delivery.as_ref().unwrap().failed_deployments, 1);
    let (degraded, reason, message) = condition(&restored, cond::DEGRADED);
    assert_eq!((degraded.as_str(), reason.as_str()), ("True", "VersionFailed"), "{message}");
    assert!(message.contains("iris-v2") && message.contains("MetricCheckFailed"), "{message}");
    let (ready, reason, _) = condition(&restored, cond::READY);
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "ServingPrevious"));
    wait_until(SHORT, "the canary Deployment to go", || async {
        (!deployments(&env, "web").await.contains_key(&deployment_name("web", "iris-v2"))).then_some(())
    })
    .await;
    // Events follow the status that records them: wait for them.
    env.wait_event("RolledBack", "bound 0.05", SHORT).await;
    env.wait_event("RollbackComplete", "", SHORT).await;
    let ev = events(&env, "web").await;
    let rb = ev.iter().find(|(r, ..)| r == "RolledBack").unwrap_or_else(|| panic!("{ev:#?}"));
    assert!(rb.1.contains("error-rate") && rb.1.contains("bound 0.05"), "{rb:?}");
    assert_eq!(count_reason(&ev, "RollbackComplete", ""), 1, "{ev:#?}");

    // The ModelVersion says where it failed.
    let mvs: Api<ModelVersion> = env.api();
    let mv = wait_for(&mvs, "iris-v2", SHORT, "status.failedIn naming web", |mv| {
        mv.status.as_ref().is_some_and(|s| s.failed_in.iter().any(|f| f.inference_service == "web"))
    })
    .await;
    let f = mv.status.unwrap().failed_in[0].clone();
    assert_eq!(f.reason, "MetricCheckFailed");
    assert_eq!(f.check, "error-rate");

    // Not retried by itself: the operator looks at it again and has nothing to do.
    settled(&env, &op, "web").await;
    let i = isvcs.get("web").await.unwrap();
    assert!(status(&i).canary.is_none(), "retried by itself: {:?}", status(&i).canary);
    assert!(status(&i).failed_versions.contains(&"iris-v2".to_string()));
    assert_eq!(count_reason(&events(&env, "web").await, "RolloutStarted", "iris-v2"), 1);
    // After the rollback the load generator sees iris-v1 only.
    let after = load.since(back_at + Duration::from_secs(1));
    assert!(
        !after.is_empty() && after.iter().all(|h| h.code == 200 && h.version == "iris-v1"),
        "{:?}",
        summary(&after)
    );
    assert!(load.hits().iter().any(|h| h.code == 500), "the canary did receive traffic");

    // A user asks for a retry: the rollout starts again (and fails again).
    annotate(&env, "web", "mlops.dev/retry", "1").await;
    wait_for(&isvcs, "web", SHORT, "iris-v2 retried", |i| {
        status(i).canary.as_ref().is_some_and(|c| c.version == "iris-v2")
            || history_has(i, "iris-v2", RolloutOutcome::RolledBack) == 2
    })
    .await;
    let i = wait_for(&isvcs, "web", LONG, "the retry to be rolled back too", |i| {
        history_has(i, "iris-v2", RolloutOutcome::RolledBack) == 2 && stable_is(i, "iris-v1")
    })
    .await;
    assert_eq!(status(&i).manual_actions.and_then(|m| m.retry).as_deref(), Some("1"));
    let ev = wait_until(SHORT, "a second RolledBack Event", || async {
        let ev = events(&env, "web").await;
        (ev.iter().filter(|(r, n, _)| r == "RolledBack" && n.contains("iris-v2")).count() == 2).then_some(ev)
    })
    .await;
    assert!(count_reason(&ev, "RetryRequested", "iris-v2") >= 1, "{ev:#?}");
    // The same annotation value is handled once: nothing restarts it again.
    settled(&env, &op, "web").await;
    let i = isvcs.get("web").await.unwrap();
    assert!(status(&i).canary.is_none() && history_has(&i, "iris-v2", RolloutOutcome::RolledBack) == 2);
    eprintln!("metric rollback: traffic {:?}", summary(&load.hits()));
    drop(load);
}

// ---------------------------------------------------------------------------------------
// (c) A version that crashes while loading is rolled back by the health check.

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_version_that_crashes_on_load_is_rolled_back_by_the_health_check() {
    let Setup { env, op: _op, uri, release: _release } = setup("isvc-crash").await;
    import_version(&env, &uri, "iris-v1", None).await;
    apply(
        &env,
        &inference_service(
            "web",
            json!({"rollout": {
                "steps": [{"weight": 50, "pauseSeconds": 10}],
                "bakeSeconds": 5, "progressDeadlineSeconds": 180,
                "analysis": {"intervalSeconds": 2, "health": {"readyDeadlineSeconds": 90, "maxRestarts": 1}}
            }}),
        ),
    );
    let isvcs: Api<InferenceService> = env.api();
    wait_serving(&env, "web", "iris-v1").await;
    let addr = service_address(&env, "web").await;
    let load = Load::start(addr, 20);
    import_version(&env, &uri, "iris-v2", Some(json!({"MLOPS_FAULT_CRASH_ON_LOAD": "1"}))).await;
    let rolled = wait_for(&isvcs, "web", LONG, "iris-v2 rolled back by health", |i| {
        history_has(i, "iris-v2", RolloutOutcome::RolledBack) == 1
    })
    .await;
    let d = status(&rolled).last_decision.expect("decision");
    assert_eq!((d.check.as_str(), d.reason.as_str()), ("health", "HealthCheckFailed"), "{d:?}");
    assert!(d.message.contains("CrashLoopBackOff") || d.message.contains("restarted"), "{d:?}");
    // The canary never became Ready: it never took traffic.
    assert!(load.hits().iter().all(|h| h.code != 500 && (h.code != 200 || h.version == "iris-v1")));
    let i = wait_for(&isvcs, "web", LONG, "the rollback to complete", |i| stable_is(i, "iris-v1")).await;
    let (degraded, _, message) = condition(&i, cond::DEGRADED);
    assert_eq!(degraded, "True");
    assert!(message.contains("iris-v2") && message.contains("HealthCheckFailed"), "{message}");
    env.wait_event("RolledBack", "by check health", SHORT).await;
    let ev = events(&env, "web").await;
    assert!(count_reason(&ev, "RolledBack", "by check health") == 1, "{ev:#?}");
    eprintln!("health rollback: {}; traffic {:?}", d.message, summary(&load.hits()));
}

// ---------------------------------------------------------------------------------------
// (d) onNoData: an empty query result is never an accident.

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn each_on_no_data_policy_does_what_it_says() {
    let Setup { env, op: _op, uri, release: _release } = setup("isvc-nodata").await;
    import_version(&env, &uri, "iris-v1", None).await;
    for (name, policy, deadline) in
        [("nd-fail", "Fail", 120), ("nd-pass", "Pass", 120), ("nd-wait", "Wait", 10)]
    {
        apply(
            &env,
            &inference_service(
                name,
                json!({"replicas": 1, "rollout": {
                    "steps": [{"weight": 50, "pauseSeconds": 2}],
                    "bakeSeconds": 2, "progressDeadlineSeconds": deadline,
                    "analysis": {"intervalSeconds": 2, "failureLimit": 0,
                                 "metrics": [{"name": "nodata", "query": NO_DATA, "max": 1, "onNoData": policy}]}
                }}),
            ),
        );
    }
    for name in ["nd-fail", "nd-pass", "nd-wait"] {
        wait_serving(&env, name, "iris-v1").await;
    }
    import_version(&env, &uri, "iris-v2", None).await;
    let isvcs: Api<InferenceService> = env.api();

    // Wait: no verdict either way until the progress deadline, which then rolls back. Followed
    // first, from the import on: its NoData measurements exist only while its canary does
    // (the other two keep their outcomes in their history).
    let mut saw_waiting = false;
    let deadline = Instant::now() + LONG;
    let i = loop {
        let i = isvcs.get("nd-wait").await.unwrap();
        if let Some(c) = &status(&i).canary
            && let Some(k) = c.analysis.iter().find(|k| k.name == "nodata")
            && k.measurements.iter().any(|m| m.verdict == CheckVerdict::NoData)
        {
            assert_eq!(k.failures, 0, "{k:?}");
            saw_waiting = true;
        }
        if history_has(&i, "iris-v2", RolloutOutcome::RolledBack) == 1 {
            break i;
        }
        assert!(Instant::now() < deadline, "Wait never ended: {:#?}", status(&i));
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(saw_waiting, "no NoData measurement was recorded while waiting");
    let s = status(&i);
    let d = s.last_decision.clone().unwrap();
    assert_eq!(
        (d.check.as_str(), d.reason.as_str()),
        ("progressDeadline", "ProgressDeadlineExceeded"),
        "{d:?}"
    );
    let h = s.history.iter().find(|h| h.version == "iris-v2").unwrap();
    let waited = d.time.0.duration_since(h.start_time.clone().unwrap().0).as_secs();
    assert!(waited >= 12, "rolled back after {waited} s, before pause + progressDeadlineSeconds (12 s)");
    eprintln!("onNoData Wait: rolled back {waited} s after the rollout started");

    // Fail: the first empty answer fails the check.
    let i = wait_for(&isvcs, "nd-fail", LONG, "Fail to roll back", |i| {
        history_has(i, "iris-v2", RolloutOutcome::RolledBack) == 1
    })
    .await;
    let d = status(&i).last_decision.unwrap();
    assert_eq!((d.check.as_str(), d.reason.as_str()), ("nodata", "MetricCheckFailed"));
    assert!(d.message.contains("onNoData: Fail"), "{d:?}");

    // Pass: empty answers count as passing; the version is promoted.
    let i = wait_for(&isvcs, "nd-pass", LONG, "Pass to promote", |i| {
        history_has(i, "iris-v2", RolloutOutcome::Promoted) == 1
    })
    .await;
    assert_eq!(status(&i).stable.unwrap().version, "iris-v2");
    let m = &status(&i).last_decision.unwrap();
    assert_eq!(m.reason, "Promoted");
}

// ---------------------------------------------------------------------------------------
// (f) A pinned version that fails: the old one keeps serving, status says so, spec stays.

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_failing_pinned_version_keeps_the_old_one_serving_and_reports_degraded() {
    let Setup { env, op, uri, release: _release } = setup("isvc-pinned").await;
    import_version(&env, &uri, "iris-v1", None).await;
    import_version(&env, &uri, "iris-v2", Some(json!({"MLOPS_FAULT_ERROR_RATE": "1"}))).await;
    apply(
        &env,
        &inference_service(
            "web",
            json!({"version": "iris-v1", "rollout": {
                "steps": [{"weight": 50, "pauseSeconds": 60}],
                "bakeSeconds": 5, "progressDeadlineSeconds": 180,
                "analysis": {"intervalSeconds": 2, "failureLimit": 0, "metrics": [error_rate_check("Wait")]}
            }}),
        ),
    );
    let isvcs: Api<InferenceService> = env.api();
    wait_serving(&env, "web", "iris-v1").await;
    let addr = service_address(&env, "web").await;
    let load = Load::start(addr, 30);

    // Git says iris-v2.
    isvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"version": "iris-v2"}})))
        .await
        .unwrap();
    wait_for(&isvcs, "web", LONG, "iris-v2 rolled back", |i| {
        history_has(i, "iris-v2", RolloutOutcome::RolledBack) == 1
    })
    .await;
    let i = wait_for(&isvcs, "web", LONG, "iris-v1 serving alone again", |i| stable_is(i, "iris-v1")).await;
    let back_at = Instant::now();
    assert_eq!(i.spec.version.as_deref(), Some("iris-v2"), "the spec is never rewritten");
    let (degraded, reason, message) = condition(&i, cond::DEGRADED);
    assert_eq!((degraded.as_str(), reason.as_str()), ("True", "VersionFailed"));
    assert!(
        message.contains("iris-v2")
            && message.contains("error-rate")
            && message.contains("iris-v1 keeps serving"),
        "{message}"
    );
    let (ready, reason, _) = condition(&i, cond::READY);
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "ServingPrevious"));
    let (progressing, ..) = condition(&i, cond::PROGRESSING);
    assert_eq!(progressing, "False");

    // It stays that way: not retried, still degraded, still serving iris-v1, once the
    // operator has looked at it again and has nothing to do.
    settled(&env, &op, "web").await;
    let i = isvcs.get("web").await.unwrap();
    assert!(stable_is(&i, "iris-v1"), "{:?}", status(&i));
    assert_eq!(condition(&i, cond::DEGRADED).0, "True");
    assert_eq!(i.spec.version.as_deref(), Some("iris-v2"));
    let after = load.since(back_at + Duration::from_secs(1));
    assert!(
        !after.is_empty() && after.iter().all(|h| h.code == 200 && h.version == "iris-v1"),
        "{:?}",
        summary(&after)
    );

    // Pinning back to iris-v1 clears Degraded: the desired version serves.
    isvcs
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"version": "iris-v1"}})))
        .await
        .unwrap();
    wait_condition(&isvcs, "web", cond::DEGRADED, "False", SHORT).await;
}
