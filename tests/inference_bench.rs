//! The rollback benchmark (`bench/rollback.sh`): the time from fault onset to all traffic
//! back on stable, over repeated runs, on the same end-to-end harness as the tests
//! (`inference_harness/`: own namespace, own operator, real servers, real traffic).

mod inference_harness;

use std::time::{Duration, Instant};

use inference_harness::{
    ERROR_RATE, LONG, SHORT, Setup, apply, deployments, history_has, import_version, inference_service,
    load::Load, service_address, setup, stable_is, status, wait_serving,
};
use kube::Api;
use mlops_operator::api::{InferenceService, inference_service::RolloutOutcome};
use serde_json::json;
use testkit::{TestEnv, wait_until};

// ---------------------------------------------------------------------------------------
// Benchmark (bench/rollback.sh): time from fault onset to all traffic on stable.

/// `cargo test --test inference_bench -- --ignored --nocapture bench_rollback`
/// (`BENCH_RUNS`, default 10; `BENCH_INTERVAL_SECONDS`, default 2). Runs the scenario twice:
/// with the default analysis, then with `waitForFirstScrape` (`BENCH_GATE=off` or `on`
/// runs only one of them).
#[tokio::test]
#[ignore = "benchmark: run with bench/rollback.sh"]
async fn bench_rollback() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let interval: u64 =
        std::env::var("BENCH_INTERVAL_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let modes: Vec<bool> = match std::env::var("BENCH_GATE").as_deref() {
        Ok("off") => vec![false],
        Ok("on") => vec![true],
        _ => vec![false, true],
    };
    let scrape = 2.0; // hack/prometheus.sh scrape_interval
    let Setup { env, op: _op, uri, release: _release } = setup("bench-rollback").await;
    import_version(&env, &uri, "iris-v1", None).await;
    // BENCH_QUERY=total (default): the canary pods' error ratio since they started, which a
    // single scrape answers (each canary pod is new, so its counters hold only its own
    // traffic); BENCH_QUERY=rate: rate() over 5 s, which needs two scrapes of the canary.
    let query = match std::env::var("BENCH_QUERY").as_deref() {
        Ok("rate") => ERROR_RATE.replace("[10s]", "[5s]"),
        _ => ERROR_RATE.replace("sum(rate(", "sum(").replace("[10s]))", ")"),
    };
    println!("query: {query}");
    let floor = scrape + interval as f64;
    let mut summaries = Vec::new();
    for gate in modes {
        let label = if gate { "waitForFirstScrape: true" } else { "default analysis" };
        println!("-- {label}");
        // 4 replicas, the canary at 25 % (one pod).
        apply(
            &env,
            &inference_service(
                "web",
                json!({"replicas": 4, "rollout": {
                    "steps": [{"weight": 25, "pauseSeconds": 120}],
                    "bakeSeconds": 5, "progressDeadlineSeconds": 300,
                    "analysis": {"intervalSeconds": interval, "failureLimit": 0, "waitForFirstScrape": gate,
                                 "metrics": [{"name": "error-rate", "query": query, "max": 0.05, "onNoData": "Wait"}]}
                }}),
            ),
        );
        if gate {
            // The new pod template (with the gate) rolls iris-v1's pods: let that settle.
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
        let results = bench_runs(&env, &uri, runs, gate, floor).await;
        summaries.push((label, results));
    }
    println!(
        "floor = scrape interval {scrape} s + analysis interval {interval} s = {floor} s; target floor + 2 s"
    );
    let stats = |mut v: Vec<f64>| -> (f64, f64) {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pick = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        (pick(0.5), pick(0.9))
    };
    for (label, results) in summaries {
        let (m1, p1) = stats(results.iter().map(|r| r.0).collect());
        let (m2, p2) = stats(results.iter().map(|r| r.1).collect());
        println!("{label}:");
        println!(
            "fault onset -> last 5xx seen:           median {m1:.2} s ({:.2}× floor), p90 {p1:.2} s ({:.2}× floor)",
            m1 / floor,
            p1 / floor
        );
        println!(
            "fault onset -> rollback complete:       median {m2:.2} s ({:.2}× floor), p90 {p2:.2} s ({:.2}× floor)",
            m2 / floor,
            p2 / floor
        );
    }
}

/// `runs` faulty versions in a row against the InferenceService `web` (stable iris-v1):
/// per run, (onset → last 5xx, onset → rollback complete, failed requests).
async fn bench_runs(env: &TestEnv, uri: &str, runs: usize, gate: bool, floor: f64) -> Vec<(f64, f64, f64)> {
    let isvcs: Api<InferenceService> = env.api();
    wait_serving(env, "web", "iris-v1").await;
    let addr = service_address(env, "web").await;
    let load = Load::start(addr, 100);
    // `LatestValidated` orders versions by creation time (whole seconds), then name: a bad
    // version created in iris-v1's second could sort before it and never be rolled out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut results: Vec<(f64, f64, f64)> = Vec::new();
    for run in 1..=runs {
        let version = format!("iris-bad-{}-{run}", if gate { "g" } else { "p" });
        let t0 = Instant::now();
        import_version(env, uri, &version, Some(json!({"MLOPS_FAULT_ERROR_RATE": "1"}))).await;
        // Onset: the first 5xx the load generator sees.
        let onset = wait_until(LONG, "the first 5xx", || async {
            load.since(t0).iter().find(|h| h.code >= 500).map(|h| h.at)
        })
        .await;
        // Rollback complete in status (polled every 100 ms).
        let mut complete = None;
        let deadline = Instant::now() + LONG;
        while complete.is_none() {
            let i = isvcs.get("web").await.unwrap();
            if history_has(&i, &version, RolloutOutcome::RolledBack) == 1 && stable_is(&i, "iris-v1") {
                complete = Some(Instant::now());
            }
            assert!(Instant::now() < deadline, "run {run}: no rollback: {:#?}", status(&i));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let complete = complete.unwrap();
        // Then 3 s of clean traffic to be sure the last 5xx was the last.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let hits = load.since(onset);
        let last_5xx = hits.iter().filter(|h| h.code >= 500).map(|h| h.at).max().unwrap();
        let bad = hits.iter().filter(|h| h.code >= 500).count();
        let clean_after_complete = load.since(complete + Duration::from_millis(500));
        assert!(
            clean_after_complete.iter().all(|h| h.code < 500),
            "run {run}: 5xx after the rollback completed"
        );
        let traffic_back = last_5xx.duration_since(onset).as_secs_f64();
        let total = complete.max(last_5xx).duration_since(onset).as_secs_f64();
        let i = isvcs.get("web").await.unwrap();
        let d = status(&i).last_decision.unwrap();
        println!(
            "run {run:2}: last 5xx {traffic_back:5.2} s, status complete {total:5.2} s after onset ({:.2}× floor); \
             {bad} errors; decided on {} = {:.3}",
            total / floor,
            d.check,
            d.value.unwrap_or(f64::NAN)
        );
        results.push((traffic_back, total, bad as f64));
        wait_until(SHORT, "the failed canary's Deployment to go", || async {
            (!deployments(env, "web").await.contains_key(&format!("web-{version}"))).then_some(())
        })
        .await;
        // Let the next run's rate window start clean.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    results
}
