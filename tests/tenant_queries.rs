//! Prometheus queries are a tenant's, end to end: a metric check or a drift query reads
//! only its own namespace's series (another namespace's values, pod names and addresses
//! reach neither its status, its Events nor the operator's `/metrics`), a huge answer is
//! refused without the operator growing, and SIGTERM ends the operator in its grace period
//! even while a query is stalled. Real serving pods, the local Prometheus, an operator per
//! namespace (`inference_harness/`).

mod inference_harness;

use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use inference_harness::{
    LONG, SHORT, Setup, apply, import_version, inference_service, setup, setup_with, status, wait_serving,
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, events::v1::Event};
use kube::{Api, ResourceExt, api::ListParams};
use mlops_operator::api::{
    InferenceService, ModelVersion, TrainingJob, conditions as cond,
    inference_service::{CheckStatus, CheckVerdict},
};
use serde_json::{Value, json};
use testkit::{TestEnv, wait_condition, wait_for, wait_until};

/// A reading of the local Prometheus, asked directly by the test (with its full view).
fn prometheus_value(query: &str) -> Option<f64> {
    let url = testkit::prometheus_url()?;
    let addr: SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().ok()?;
    let q: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let body = testkit::http_get(addr, &format!("/api/v1/query?query={q}"))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The metric check `name` of the service's canary.
fn check(isvc: &InferenceService, name: &str) -> Option<CheckStatus> {
    status(isvc).canary?.analysis.into_iter().find(|c| c.name == name)
}

/// A rollout that stays at its first step for the whole test, measuring `metrics` every
/// second; query errors never roll it back (unless the test says so later).
fn analysed_service(metrics: Value) -> Value {
    inference_service(
        "web",
        json!({"rollout": {
            "steps": [{"weight": 50, "pauseSeconds": 3600}], "progressDeadlineSeconds": 3600,
            "analysis": {"intervalSeconds": 1, "queryErrorLimit": 100, "metrics": metrics}
        }}),
    )
}

/// A suspended TrainingJob (it never runs) whose drift trigger measures `query`.
fn drifting_job(name: &str, query: &str) -> Value {
    json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
           "spec": {"model": "iris", "suspend": true,
                    "dataset": {"uri": "pvc://work/iris.csv", "labelColumn": "species"},
                    "trainer": {"image": "ghcr.io/mlops-dev/mlops-runtime:0.1.0", "args": ["train"]},
                    "output": {"uri": "pvc://work/models"},
                    "retrain": {"drift": {"query": query, "threshold": 1000.0, "checkIntervalSeconds": 5}}}})
}

/// Every Event of the namespace, as text.
async fn all_events(env: &TestEnv) -> Vec<String> {
    let events: Api<Event> = env.api();
    events
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Asserts that `text` (what namespace A can see) holds none of `secrets`.
fn holds_none(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "{what} contains {s:?} of the other namespace:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------
// Namespace A's checks and drift queries read only A, whatever they name.

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn checks_and_drift_queries_read_only_their_own_namespace() {
    // Namespace B serves for real, so Prometheus holds B's series: its request counts, its
    // pods' names and addresses.
    let other = setup("tq-other").await;
    import_version(&other.env, &other.uri, "iris-v1", None).await;
    apply(&other.env, &inference_service("bweb", json!({})));
    wait_serving(&other.env, "bweb", "iris-v1").await;
    let b = other.env.namespace.clone();
    let pods: Api<Pod> = other.env.api();
    let secrets: Vec<String> = wait_until(LONG, "both pods of B with an address", || async {
        let listed =
            pods.list(&ListParams::default().labels("mlops.dev/inference-service=bweb")).await.ok()?;
        let named: Vec<(String, String)> = listed
            .items
            .iter()
            .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
            .collect();
        (named.len() == 2)
            .then(|| named.into_iter().flat_map(|(name, ip)| [name, format!("{ip}:")]).collect())
    })
    .await;
    let scraped = format!(r#"count(up{{namespace="{b}",mlops_dev_inference_service="bweb"}} == 1)"#);
    wait_until(LONG, "Prometheus scraping both pods of B", || async {
        (prometheus_value(&scraped) == Some(2.0)).then_some(())
    })
    .await;

    // Namespace A: a canary whose checks reach for B, by name and without.
    let Setup { env, op, uri, release: _release } = setup("tq-own").await;
    let a = env.namespace.clone();
    let named = format!(r#"up{{namespace="{b}"}} * on() up{{namespace="{b}"}}"#);
    let unnamed = r#"sum(up{mlops_dev_inference_service="bweb"})"#;
    let unnamed_join =
        r#"up{mlops_dev_inference_service="bweb"} * on() up{mlops_dev_inference_service="bweb"}"#;
    let bounds =
        |name: &str, query: &str| json!({"name": name, "query": query, "max": 1000, "onNoData": "Wait"});
    apply(
        &env,
        &analysed_service(json!([
            bounds("named", &named),
            bounds("unnamed", unnamed),
            bounds("unnamed-join", unnamed_join)
        ])),
    );
    apply(&env, &drifting_job("drift-named", &named));
    apply(&env, &drifting_job("drift-unnamed", unnamed));
    import_version(&env, &uri, "iris-v1", None).await;
    wait_serving(&env, "web", "iris-v1").await;
    import_version(&env, &uri, "iris-v2", None).await;
    let isvcs: Api<InferenceService> = env.api();
    // Past the first 10 s of no data, a check with none records one measurement a second.
    let i = wait_for(&isvcs, "web", LONG, "three measurements of every check", |i| {
        ["named", "unnamed", "unnamed-join"]
            .iter()
            .all(|n| check(i, n).is_some_and(|c| c.measurements.len() >= 3))
    })
    .await;

    // Named: refused before it leaves, saying why.
    let c = check(&i, "named").unwrap();
    assert_eq!(c.verdict, Some(CheckVerdict::Error), "{c:?}");
    let m = &c.measurements.last().unwrap().message;
    assert!(m.contains(&format!(r#"namespace="{b}""#)) && m.contains(&format!("namespace {a}")), "{m}");
    // Unnamed: A's own data only, and A has no such series.
    for name in ["unnamed", "unnamed-join"] {
        let c = check(&i, name).unwrap();
        assert_eq!(c.verdict, Some(CheckVerdict::NoData), "{name} read something: {c:?}");
        assert!(c.measurements.iter().all(|m| m.value.is_none()), "{name} measured B: {c:?}");
    }
    holds_none("A's InferenceService status", &serde_json::to_string(&status(&i)).unwrap(), &secrets);

    // The drift queries: no value from B, in status or on /metrics.
    let tjs: Api<TrainingJob> = env.api();
    let triggers = |tj: &TrainingJob| tj.status.as_ref().and_then(|s| s.triggers.clone()).unwrap_or_default();
    let tj = wait_for(&tjs, "drift-unnamed", SHORT, "a drift check", |tj| {
        triggers(tj).last_drift_check_time.is_some()
    })
    .await;
    assert_eq!(triggers(&tj).drift_value, None, "the drift value came from B: {:?}", triggers(&tj));
    let tj = wait_for(&tjs, "drift-named", SHORT, "a failed drift check", |tj| {
        triggers(tj).message.is_some_and(|m| m.contains("drift check failed"))
    })
    .await;
    let m = triggers(&tj).message.unwrap();
    assert!(m.contains(&format!(r#"namespace="{b}""#)), "{m}");
    holds_none("A's TrainingJob status", &serde_json::to_string(&tj.status).unwrap(), &secrets);
    env.wait_event("TriggerCheckFailed", "drift check failed", SHORT).await;
    let metrics = op.metrics().expect("the operator's metrics");
    holds_none("the operator's /metrics", &metrics, &secrets);
    let drift_values: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("mlops_retrain_drift_value{")).collect();
    assert!(drift_values.is_empty(), "a drift value was measured: {drift_values:?}");

    // The refused check rolls the canary back once errors are no longer tolerated; the
    // decision and its Event say why, and still show nothing of B.
    env.merge_patch(
        "inferenceservice",
        "web",
        &json!({"spec": {"rollout": {"analysis": {"queryErrorLimit": 0}}}}),
    );
    let rolled = env.wait_event("RolledBack", "named", LONG).await;
    let note = rolled.note.unwrap_or_default();
    assert!(note.contains(&format!(r#"namespace="{b}""#)), "{note}");
    holds_none("A's Events", &all_events(&env).await.join("\n"), &secrets);
    let i = isvcs.get("web").await.unwrap();
    holds_none("A's InferenceService status", &serde_json::to_string(&status(&i)).unwrap(), &secrets);
    holds_none("the operator's /metrics", &op.metrics().unwrap_or_default(), &secrets);
    drop(other);
}

// ---------------------------------------------------------------------------------------
// A query whose answer is huge is refused; the operator neither grows nor stops.

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the operator's /proc status");
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_huge_answer_is_refused_and_the_operator_stays_small_and_busy() {
    let Setup { env, op, uri, release: _release } = setup("tq-huge").await;
    let a = env.namespace.clone();
    let everything = r#"{__name__=~".+"}[10m:5ms]"#;
    apply(
        &env,
        &analysed_service(json!([{"name": "everything", "query": everything, "max": 1, "onNoData": "Wait"}])),
    );
    import_version(&env, &uri, "iris-v1", None).await;
    wait_serving(&env, "web", "iris-v1").await;
    // A's own series are old enough that even the answer scoped to A (every sample of
    // them, 200 a second) is well past the 1 MiB cap: over 100 000 samples, ~18 bytes each.
    // (The name is copied to a label: without it, series of one pod would collide.)
    let samples = format!(
        r#"sum(count_over_time(label_replace({{__name__=~".+",namespace="{a}"}}, "name", "$1", "__name__", "(.+)")[10m:5ms]))"#
    );
    wait_until(LONG, "100 000 samples of A's series in Prometheus", || async {
        prometheus_value(&samples).filter(|n| *n > 100_000.0).map(|_| ())
    })
    .await;
    import_version(&env, &uri, "iris-v2", None).await;
    let isvcs: Api<InferenceService> = env.api();
    let i = wait_for(&isvcs, "web", LONG, "the huge query's error", |i| {
        check(i, "everything")
            .is_some_and(|c| c.measurements.iter().any(|m| m.verdict == CheckVerdict::Error))
    })
    .await;
    let c = check(&i, "everything").unwrap();
    let m = &c.measurements.iter().find(|m| m.verdict == CheckVerdict::Error).unwrap().message;
    assert!(
        m.contains("larger than 1 MiB") || m.contains("too many samples") || m.contains("timed out"),
        "the error says the answer was too big or refused: {m}"
    );
    eprintln!("the huge query's error: {m}");
    let peak = peak_rss(op.pid());
    eprintln!("operator peak RSS (VmHWM) after the huge query: {} MiB", peak / (1024 * 1024));
    assert!(peak < 150 * 1024 * 1024, "the operator grew to {} MiB", peak / (1024 * 1024));

    // It goes on: another object is reconciled, and the check keeps being measured.
    let last = c.measurements.last().unwrap().time.clone();
    let other = json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "other-v1"},
                       "spec": {"model": "other", "artifact": {"uri": uri, "format": "mlops-runtime-json/v1"}}});
    apply(&env, &other);
    wait_condition(&env.api::<ModelVersion>(), "other-v1", cond::VALIDATED, "True", SHORT).await;
    wait_for(&isvcs, "web", SHORT, "more measurements of the huge query", |i| {
        check(i, "everything").is_some_and(|c| c.measurements.last().is_some_and(|m| m.time > last))
    })
    .await;
    let peak = peak_rss(op.pid());
    assert!(peak < 150 * 1024 * 1024, "the operator grew to {} MiB", peak / (1024 * 1024));
}

// ---------------------------------------------------------------------------------------
// SIGTERM while a query hangs: the operator is gone within its grace period.

/// A "Prometheus" that accepts connections and never answers; counts the connections.
fn silent_prometheus() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            // Reads the request and says nothing; the connection stays open until the
            // operator gives up on it.
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn sigterm_while_a_query_is_stalled_ends_the_operator_within_its_grace_period() {
    let (url, accepted) = silent_prometheus();
    let Setup { env, mut op, uri, release: _release } =
        setup_with("tq-stall", &["--prometheus-url", &url]).await;
    // Several checks, so that queries asked one after the other would hold a pass for
    // several query timeouts.
    let checks: Vec<Value> = (1..=8)
        .map(|n| json!({"name": format!("c{n}"), "query": "sum(up)", "max": 1, "onNoData": "Wait"}))
        .collect();
    apply(&env, &analysed_service(Value::Array(checks)));
    import_version(&env, &uri, "iris-v1", None).await;
    wait_serving(&env, "web", "iris-v1").await;
    import_version(&env, &uri, "iris-v2", None).await;

    // The checks do not hang: the first stalled query ends as a query error in one query
    // timeout (10 s by default), not one per check.
    wait_until(LONG, "the first query", || async { (accepted.load(Ordering::SeqCst) > 0).then_some(()) })
        .await;
    let asked = Instant::now();
    let isvcs: Api<InferenceService> = env.api();
    let i = wait_for(&isvcs, "web", LONG, "a query error", |i| {
        check(i, "c1").is_some_and(|c| c.verdict == Some(CheckVerdict::Error))
    })
    .await;
    let waited = asked.elapsed();
    let m = check(&i, "c1").unwrap().measurements.last().unwrap().message.clone();
    assert!(m.contains("did not answer within"), "{m}");
    assert!(waited < Duration::from_secs(20), "the checks waited {waited:?} for a silent Prometheus");

    // SIGTERM just as a new query stalls.
    let before = accepted.load(Ordering::SeqCst);
    wait_until(SHORT, "a new stalled query", || async {
        (accepted.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;
    let signalled = Instant::now();
    let exit = op.terminate(Duration::from_secs(15));
    let took = signalled.elapsed();
    let exit = exit.unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", op.log_tail(20)));
    assert!(exit.success(), "exit status {exit:?}:\n{}", op.log_tail(20));
    eprintln!("the operator exited {took:?} after SIGTERM with a query stalled");

    // Its Lease is released, not renewed by a process that lingers.
    let lease = env.api::<Lease>().get("mlops-operator-leader").await.expect("the Lease");
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder, None, "the Lease is still held after exit");
}
