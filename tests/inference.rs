//! InferenceService end to end: real `mlops-runtime serve` processes run by the local node,
//! scraped every 2 s by the local Prometheus, real inference traffic sent by the test
//! through the Service's loopback address, and an operator scoped to the test namespace.
//!
//! Each test trains the iris model once with `mlops-runtime train` into
//! `/tmp/mlops-e2e/<namespace>/` and imports ModelVersions that point at it (no gates: the
//! ModelVersion controller validates them as imported). Bad versions get the test-only
//! `mlops.dev/test-fault-env` annotation, which the controller copies into that version's
//! server pods only.
//!
//! `bench_rollback` (ignored; `bench/rollback.sh`) measures the time from fault onset to
//! all traffic back on stable over repeated runs.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use mlops_operator::api::{
    InferenceService, ModelVersion,
    conditions::{self as cond},
    inference_service::{CanaryPhase, CheckVerdict, InferenceServiceStatus, RolloutOutcome},
};
use serde_json::{Value, json};
use testkit::{
    Operator, TestEnv, install_crds, kubectl_in, output_text, wait_condition, wait_for, wait_until,
};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");
/// Generous: the tests share two cores with other test binaries and builds.
const LONG: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(60);

/// Errors over all inference requests of the version under test, over 10 s.
const ERROR_RATE: &str = r#"sum(rate(mlops_requests_total{namespace="{{namespace}}",model_version="{{modelVersion}}",code=~"5.."}[10s])) / sum(rate(mlops_requests_total{namespace="{{namespace}}",model_version="{{modelVersion}}"}[10s]))"#;
/// A well-formed query on a metric nobody exports: always an empty result.
const NO_DATA: &str =
    r#"sum(mlops_metric_that_does_not_exist{namespace="{{namespace}}",model_version="{{modelVersion}}"})"#;

// ---------------------------------------------------------------------------------------
// Fixtures

/// Trains iris once for this test; returns the artifact URI.
fn train_model(ns: &str) -> String {
    testkit::train_iris(ns)
}

fn apply(env: &TestEnv, doc: &Value) {
    let out = env.kubectl(&["apply", "-f", "-"], Some(&doc.to_string()));
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
}

/// Imports a ModelVersion of model `iris` (no gates: valid as imported), optionally with
/// test-only fault variables for its server pods, and waits until it is validated.
async fn import_version(env: &TestEnv, uri: &str, name: &str, fault: Option<Value>) -> ModelVersion {
    let mut annotations = BTreeMap::new();
    if let Some(f) = fault {
        annotations.insert("mlops.dev/test-fault-env", f.to_string());
    }
    apply(
        env,
        &json!({
            "apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"model": "iris", "artifact": {"uri": uri, "format": "mlops-runtime-json/v1"},
                     "metrics": {"accuracy": 0.97}}
        }),
    );
    wait_condition(&env.api::<ModelVersion>(), name, cond::VALIDATED, "True", SHORT).await
}

fn error_rate_check(on_no_data: &str) -> Value {
    json!({"name": "error-rate", "query": ERROR_RATE, "max": 0.05, "onNoData": on_no_data})
}

/// An InferenceService of model `iris` on the reference runtime; `spec` is merged in.
fn inference_service(name: &str, spec: Value) -> Value {
    let mut base = json!({
        "model": "iris", "runtime": {"preset": "MlopsRuntime"}, "replicas": 2,
    });
    let b = base.as_object_mut().unwrap();
    for (k, v) in spec.as_object().unwrap() {
        b.insert(k.clone(), v.clone());
    }
    if !b.contains_key("version") {
        b.insert("track".into(), json!("LatestValidated"));
    }
    json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService",
           "metadata": {"name": name}, "spec": base})
}

fn status(isvc: &InferenceService) -> InferenceServiceStatus {
    isvc.status.clone().unwrap_or_default()
}

fn stable_is(isvc: &InferenceService, version: &str) -> bool {
    let s = status(isvc);
    s.stable.as_ref().is_some_and(|x| x.version == version && x.ready_replicas >= 1) && s.canary.is_none()
}

fn history_has(isvc: &InferenceService, version: &str, outcome: RolloutOutcome) -> usize {
    status(isvc).history.iter().filter(|h| h.version == version && h.outcome == outcome).count()
}

/// Waits until the service serves `version` alone, with Ready pods.
async fn wait_serving(env: &TestEnv, name: &str, version: &str) -> InferenceService {
    wait_for(&env.api::<InferenceService>(), name, LONG, &format!("{version} serving alone"), |i| {
        stable_is(i, version) && cond::is_true(&status(i).conditions, cond::READY)
    })
    .await
}

/// The Service's loopback address on this host (the local node proxies every Service).
async fn service_address(env: &TestEnv, name: &str) -> SocketAddr {
    let services: Api<Service> = env.api();
    wait_until(SHORT, "the Service's local address", || async {
        let svc = services.get_opt(name).await.ok()??;
        svc.annotations().get("mlops.dev/local-address")?.parse().ok()
    })
    .await
}

fn condition(isvc: &InferenceService, type_: &str) -> (String, String, String) {
    let s = status(isvc);
    let c = cond::find(&s.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition: {s:?}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// The service's Events, oldest first, as (reason, note, count).
async fn events(env: &TestEnv, name: &str) -> Vec<(String, String, i32)> {
    let api: Api<Event> = env.api();
    let mut list: Vec<Event> = api
        .list(&ListParams::default())
        .await
        .expect("listing Events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    list.sort_by_key(|e| {
        (e.event_time.as_ref().map(|t| t.0), e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    list.into_iter()
        .map(|e| {
            let count = e.series.as_ref().map(|s| s.count).unwrap_or(1);
            (e.reason.unwrap_or_default(), e.note.unwrap_or_default(), count)
        })
        .collect()
}

fn count_reason(events: &[(String, String, i32)], reason: &str, containing: &str) -> i32 {
    events.iter().filter(|(r, n, _)| r == reason && n.contains(containing)).map(|(_, _, c)| c).sum()
}

/// Deployments the service owns, by name → spec.replicas.
async fn deployments(env: &TestEnv, name: &str) -> BTreeMap<String, i32> {
    env.api::<Deployment>()
        .list(&ListParams::default().labels(&format!("mlops.dev/inference-service={name}")))
        .await
        .expect("listing Deployments")
        .items
        .into_iter()
        .map(|d| (d.name_any(), d.spec.and_then(|s| s.replicas).unwrap_or(0)))
        .collect()
}

/// Makes the operator look at InferenceService `name` as it is now and waits until it has
/// nothing more to do: the positive proof a negative check ("not retried") stands on.
async fn settled(env: &TestEnv, op: &Operator, name: &str) {
    const CONTROLLER: &str = "inferenceservice";
    let started = op.reconciles_started(CONTROLLER).expect("the operator's metrics");
    env.poke(&format!("inferenceservice/{name}"));
    op.wait_pass(CONTROLLER, started, &format!("a change to {name}"), SHORT).await;
    op.wait_idle(CONTROLLER, Duration::from_secs(2), SHORT).await;
}

async fn annotate(env: &TestEnv, name: &str, key: &str, value: &str) {
    env.api::<InferenceService>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .expect("annotating the InferenceService");
}

// ---------------------------------------------------------------------------------------
// Load generator: a small blocking HTTP/1.1 client on loopback, one connection per request
// (the local Service proxy balances connections), bounded in time and in requests.

#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    /// HTTP status, 0 when the connection failed.
    code: u16,
    /// `model_version` from a 200 answer.
    version: String,
}

struct Load {
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<Hit>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const INFER_BODY: &str =
    r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}"#;
const LOAD_MAX_DURATION: Duration = Duration::from_secs(900);
const LOAD_MAX_REQUESTS: usize = 200_000;

fn infer_once(addr: SocketAddr) -> (u16, String) {
    let attempt = || -> Option<(u16, String)> {
        assert!(addr.ip().is_loopback(), "the load generator only talks to loopback");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(
            s,
            "POST /v2/models/iris/infer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{INFER_BODY}",
            INFER_BODY.len()
        )
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf);
        let code: u16 = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        let version = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("model_version")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        Some((code, version))
    };
    attempt().unwrap_or((0, String::new()))
}

impl Load {
    /// About `per_second` requests a second until stopped (or the bounds are reached).
    fn start(addr: SocketAddr, per_second: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let gap = Duration::from_secs(1) / per_second.max(1);
        let thread = {
            let (stop, hits) = (stop.clone(), hits.clone());
            std::thread::spawn(move || {
                let began = Instant::now();
                while !stop.load(Ordering::Relaxed) && began.elapsed() < LOAD_MAX_DURATION {
                    let t = Instant::now();
                    let (code, version) = infer_once(addr);
                    let mut h = hits.lock().unwrap();
                    if h.len() >= LOAD_MAX_REQUESTS {
                        break;
                    }
                    h.push(Hit { at: t, code, version });
                    drop(h);
                    std::thread::sleep(gap.saturating_sub(t.elapsed()));
                }
            })
        };
        Load { stop, hits, thread: Some(thread) }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn since(&self, t: Instant) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.at >= t).collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn summary(hits: &[Hit]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in hits {
        *m.entry(format!("{} {}", h.code, h.version)).or_default() += 1;
    }
    m
}

/// Everything a rollout test needs: namespace, operator, the trained artifact, and the
/// guard that lets the namespace go when the test ends.
struct Setup {
    env: TestEnv,
    op: Operator,
    uri: String,
    release: Release,
}

/// ModelVersions carry the `mlops.dev/protect-serving` finalizer, which only an operator
/// releases; the test's operator is gone once the test ends, which would leave the
/// namespace Terminating for ever. Bound last in each test so that it drops first, while the
/// operator usually still runs: it deletes the InferenceServices, then the ModelVersions
/// (the operator releases them as nothing serves them any more), then clears whatever
/// finalizer is left (a killed operator, a failed test).
struct Release(String);

impl Drop for Release {
    fn drop(&mut self) {
        let ns = Some(self.0.as_str());
        kubectl_in(ns, &["delete", "inferenceservices", "--all", "--wait=true", "--timeout=15s"], None);
        kubectl_in(ns, &["delete", "modelversions", "--all", "--wait=true", "--timeout=15s"], None);
        let left = kubectl_in(ns, &["get", "modelversions", "-o", "name"], None);
        for name in String::from_utf8_lossy(&left.stdout).lines().filter(|l| !l.is_empty()) {
            kubectl_in(
                ns,
                &["patch", name, "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#],
                None,
            );
        }
    }
}

async fn setup(test: &str) -> Setup {
    let env = TestEnv::start(test).await;
    install_crds();
    let uri = train_model(&env.namespace);
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    let release = Release(env.namespace.clone());
    Setup { env, op, uri, release }
}

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
    assert_eq!(deps.get("web-iris-v1"), Some(&0), "{deps:?}");
    assert_eq!(deps.get("web-iris-v2"), Some(&4), "{deps:?}");
    let promotion = s.stable.as_ref().unwrap().promotion_time.clone().expect("the promotion time").0;
    wait_until(SHORT, "the standby Deployment to go after scaleDownDelaySeconds", || async {
        let deps = deployments(&env, "web").await;
        (!deps.contains_key("web-iris-v1")).then_some(())
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
        (!deployments(&env, "web").await.contains_key("web-iris-v2")).then_some(())
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
        assert!(deps.keys().all(|d| d == "web-iris-v1" || d == "web-iris-v2"), "{deps:?}");
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
    assert_eq!(after.keys().collect::<Vec<_>>(), ["web-iris-v1", "web-iris-v2"], "{after:?}");
    assert_eq!(deps_before.keys().collect::<Vec<_>>(), ["web-iris-v1", "web-iris-v2"]);
    assert!(env.api::<Service>().get_opt("web").await.unwrap().is_some(), "the Service is kept");
    let hits = load.hits();
    assert!(hits.iter().all(|h| h.code != 500), "{:?}", summary(&hits));
    eprintln!("resumed at steps {steps:?}; traffic {:?}", summary(&hits));
    // Let the namespace go while the second operator still runs.
    drop(_release);
    drop(op2);
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

// ---------------------------------------------------------------------------------------
// Benchmark (bench/rollback.sh): time from fault onset to all traffic on stable.

/// `cargo test --test inference -- --ignored --nocapture bench_rollback`
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
