//! Continuous training end to end, on the local cluster with the local node and the real
//! Prometheus: drift measured from real inference traffic re-trains, validates against
//! the serving version, canaries and promotes; a worse re-training is rejected by its
//! relative gate and nothing is deployed; a storm of dataset changes gives one run.

use std::{path::PathBuf, time::Duration};

use kube::Api;
use mlops_operator::api::{
    InferenceService, ModelVersion, TrainingJob, conditions as cond, training_job::TriggerType,
};
use serde_json::json;
use testkit::{
    Operator, TestEnv, install_crds, output_text, repo_root, wait_condition, wait_for, wait_until,
};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");

/// The iris rows (header first), features and labels as text.
fn iris() -> Vec<Vec<String>> {
    std::fs::read_to_string(repo_root().join("runtime/testdata/iris.csv"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Iris with every feature multiplied by `scale` (a shifted population, same labels).
fn scaled_iris(scale: f64) -> String {
    let rows = iris();
    let mut out = rows[0].join(",") + "\n";
    for r in &rows[1..] {
        let features: Vec<String> =
            r[..4].iter().map(|v| format!("{:.3}", v.parse::<f64>().unwrap() * scale)).collect();
        out += &format!("{},{}\n", features.join(","), r[4]);
    }
    out
}

/// Iris with its labels rotated by `shift` rows (a deliberately bad snapshot: the labels
/// no longer follow the features).
fn mislabelled_iris(shift: usize) -> String {
    let rows = iris();
    let body = &rows[1..];
    let mut out = rows[0].join(",") + "\n";
    for (i, r) in body.iter().enumerate() {
        let label = &body[(i * 7 + shift) % body.len()][4];
        out += &format!("{},{label}\n", r[..4].join(","));
    }
    out
}

fn data_dir(ns: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/mlops-e2e/{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `pvc://work/<path>` of a file in the test's work folder (the claim `work`, see testkit).
fn work_uri(ns: &str, file: &std::path::Path) -> String {
    let rel = file.strip_prefix(data_dir(ns)).expect("a file in the work folder");
    format!("pvc://work/{}", rel.display())
}

/// One inference of `rows` (4 features each) over a fresh connection.
fn infer(addr: &str, rows: &[[f64; 4]]) -> Option<(u16, String)> {
    let data: Vec<String> = rows.iter().flatten().map(|v| format!("{v}")).collect();
    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[{},4],"datatype":"FP64","data":[{}]}}]}}"#,
        rows.len(),
        data.join(",")
    );
    testkit::http_post(addr.parse().ok()?, "/v2/models/iris/infer", &body)
}

fn apply(env: &TestEnv, obj: &serde_json::Value) {
    let out = env.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()));
    assert!(out.status.success(), "{}", output_text(&out));
}

fn training_job(
    ns: &str,
    dataset: &std::path::Path,
    gates: serde_json::Value,
    retrain: serde_json::Value,
) -> serde_json::Value {
    json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "iris"},
        "spec": {"model": "iris",
                 "dataset": {"uri": work_uri(ns, dataset), "labelColumn": "species"},
                 "hyperparameters": {"algorithm": "logistic_regression"},
                 "trainer": {"image": "ghcr.io/mlops-dev/mlops-runtime:0.1.0", "args": ["train"]},
                 "output": {"uri": "pvc://work/models"},
                 "modelVersion": {"gates": gates},
                 "retrain": retrain}})
}

fn inference_service(analysis: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "iris"},
        "spec": {"model": "iris", "track": "LatestValidated", "replicas": 1, "runtime": {"preset": "MlopsRuntime"},
                 "rollout": {"steps": [{"weight": 50, "pauseSeconds": 2}], "bakeSeconds": 4, "scaleDownDelaySeconds": 5,
                             "analysis": analysis}}})
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn drift_in_live_traffic_retrains_validates_canaries_and_promotes() {
    let env = TestEnv::start("ct-drift").await;
    install_crds();
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    let dataset = data_dir(&env.namespace).join("iris.csv");
    std::fs::write(&dataset, scaled_iris(1.0)).unwrap();
    let gates = json!([{"metric": "accuracy", "op": ">=", "value": 0.8},
                       {"metric": "f1", "op": ">=", "relativeTo": "Serving", "tolerance": 0.1}]);
    let retrain = json!({"drift": {"inferenceServiceRef": {"name": "iris"}, "threshold": 1.0,
                                   "forSeconds": 4, "checkIntervalSeconds": 5},
                         "cooldownSeconds": 3600});
    apply(&env, &training_job(&env.namespace, &dataset, gates, retrain));
    let mvs: Api<ModelVersion> = env.api();
    wait_condition(&mvs, "iris-r1", cond::VALIDATED, "True", Duration::from_secs(120)).await;

    let error_rate = json!({"intervalSeconds": 2, "metrics": [{"name": "error-rate",
        "query": "(sum(rate(mlops_requests_total{namespace=\"{{namespace}}\",model_version=\"{{modelVersion}}\",code=~\"5..\"}[20s])) or vector(0)) / sum(rate(mlops_requests_total{namespace=\"{{namespace}}\",model_version=\"{{modelVersion}}\"}[20s]))",
        "max": 0.05, "onNoData": "Wait"}]});
    apply(&env, &inference_service(error_rate));
    let isvcs: Api<InferenceService> = env.api();
    wait_condition(&isvcs, "iris", cond::READY, "True", Duration::from_secs(90)).await;
    let addr = env.service_address("iris").await;

    // The world changes: a new snapshot of the data (every feature 1.6x) lands where the
    // TrainingJob reads, and production traffic now looks like it.
    std::fs::write(&dataset, scaled_iris(1.6)).unwrap();
    let shifted: Vec<[f64; 4]> = iris()[1..]
        .iter()
        .map(|r| {
            let f = |i: usize| r[i].parse::<f64>().unwrap() * 1.6;
            [f(0), f(1), f(2), f(3)]
        })
        .collect();
    // Traffic until the promotion is seen (bounded in time): the canary analysis needs
    // requests to measure, so it must not stop early.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<String, u32>::new();
            let end = std::time::Instant::now() + Duration::from_secs(330);
            let mut i = 0;
            while std::time::Instant::now() < end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<[f64; 4]> = (0..10).map(|k| shifted[(i * 10 + k) % shifted.len()]).collect();
                i += 1;
                if let Some((200, body)) = infer(&addr, &batch) {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    *seen.entry(v["model_version"].as_str().unwrap_or("").to_string()).or_default() += 1;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            seen
        })
    };

    // The drift trigger sees the shift, holds it, and starts one run.
    let tjs: Api<TrainingJob> = env.api();
    let tj = wait_for(&tjs, "iris", Duration::from_secs(120), "a drift-triggered run", |tj| {
        tj.status.as_ref().is_some_and(|s| s.runs.iter().any(|r| r.trigger.type_ == TriggerType::Drift))
    })
    .await;
    let status = tj.status.unwrap();
    let run = status.runs.iter().find(|r| r.trigger.type_ == TriggerType::Drift).unwrap().clone();
    assert_eq!(run.name, "iris-r2");
    let drift_value = run.trigger.drift_value.expect("the drift value is recorded");
    assert!(drift_value > 1.0, "{drift_value}");
    assert!(run.trigger.message.as_deref().unwrap().contains("above threshold 1 for"), "{:?}", run.trigger);

    // The new version was trained on the new snapshot, passed its gate relative to the
    // serving version, and is canaried and promoted under the same traffic.
    let promoted = wait_for(&isvcs, "iris", Duration::from_secs(180), "iris-r2 promoted", |s| {
        s.status.as_ref().and_then(|st| st.stable.as_ref()).is_some_and(|st| st.version == "iris-r2")
            && s.status.as_ref().is_some_and(|st| st.canary.is_none())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = traffic.join().unwrap();
    assert!(
        seen.get("iris-r1").copied().unwrap_or(0) > 0 && seen.get("iris-r2").copied().unwrap_or(0) > 0,
        "{seen:?}"
    );
    let mv2 = mvs.get("iris-r2").await.unwrap();
    let lineage = mv2.spec.lineage.clone().unwrap();
    let trigger = lineage.trigger.clone().unwrap();
    assert_eq!((trigger.type_, trigger.drift_value), (TriggerType::Drift, Some(drift_value)));
    let mv1 = mvs.get("iris-r1").await.unwrap();
    assert_ne!(
        lineage.dataset.as_ref().unwrap().digest,
        mv1.spec.lineage.unwrap().dataset.unwrap().digest,
        "re-trained on the new snapshot"
    );
    let validated = mv2.status.unwrap();
    let gates = serde_json::to_string(&validated).unwrap();
    assert!(gates.contains("Serving") || gates.contains("serving"), "{gates}");

    // Delivery metrics: a second deployment, its lead time measured from the trigger.
    let delivery = promoted.status.unwrap().delivery.unwrap();
    assert_eq!(delivery.deployments, 2);
    let lead = delivery.last_lead_time_seconds.unwrap();
    let expected = delivery.last_deployment_time.unwrap().0.duration_since(trigger.time.unwrap().0).as_secs();
    assert!((lead - expected).abs() <= 1, "lead time {lead}s, deployment - trigger = {expected}s");
    let series = format!(
        "mlops_training_runs_started_total{{namespace=\"{}\",training_job=\"iris\",trigger=\"drift\"}}",
        env.namespace
    );
    assert_eq!(op.metric(&series), Some(1.0), "{}", op.metrics().unwrap_or_default());
    assert!(op.metrics().unwrap().contains("mlops_retrain_drift_threshold{"));

    // Still exactly two runs: the cooldown holds any further drift back.
    let tj = tjs.get("iris").await.unwrap();
    assert_eq!(tj.status.unwrap().runs.len(), 2);
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn worse_retraining_is_rejected_and_a_storm_of_data_changes_gives_one_run() {
    let env = TestEnv::start("ct-data").await;
    install_crds();
    let op = Operator::start(OPERATOR, &env.namespace, &[]);
    let dataset = data_dir(&env.namespace).join("iris.csv");
    std::fs::write(&dataset, scaled_iris(1.0)).unwrap();
    // A lax absolute gate: only the comparison with the serving version can reject.
    let gates = json!([{"metric": "accuracy", "op": ">=", "value": 0.1},
                       {"metric": "f1", "op": ">=", "relativeTo": "Serving", "tolerance": 0.05}]);
    let retrain = json!({"data": {"checkIntervalSeconds": 10}, "cooldownSeconds": 3600});
    apply(&env, &training_job(&env.namespace, &dataset, gates, retrain));
    let mvs: Api<ModelVersion> = env.api();
    wait_condition(&mvs, "iris-r1", cond::VALIDATED, "True", Duration::from_secs(120)).await;
    apply(&env, &inference_service(json!({"intervalSeconds": 2})));
    let isvcs: Api<InferenceService> = env.api();
    wait_condition(&isvcs, "iris", cond::READY, "True", Duration::from_secs(90)).await;
    let tjs: Api<TrainingJob> = env.api();
    wait_for(&tjs, "iris", Duration::from_secs(30), "a dataset baseline", |tj| {
        tj.status.as_ref().and_then(|s| s.triggers.as_ref()).is_some_and(|t| t.dataset_digest.is_some())
    })
    .await;

    // A bad snapshot (labels no longer follow the features) lands: one data-triggered run.
    std::fs::write(&dataset, mislabelled_iris(1)).unwrap();
    let bad_digest = format!("sha256:{}", sha256_hex(&std::fs::read(&dataset).unwrap()));
    let tj = wait_for(&tjs, "iris", Duration::from_secs(60), "a data-triggered run", |tj| {
        tj.status.as_ref().is_some_and(|s| s.runs.iter().any(|r| r.trigger.type_ == TriggerType::Data))
    })
    .await;
    let run = tj.status.unwrap().runs.into_iter().find(|r| r.trigger.type_ == TriggerType::Data).unwrap();
    assert_eq!(
        (run.name.as_str(), run.trigger.dataset_digest.as_deref()),
        ("iris-r2", Some(bad_digest.as_str()))
    );

    // A storm of further snapshots inside the cooldown: no further run (checked below,
    // once a data check has seen the last of them).
    for shift in 2..6 {
        std::fs::write(&dataset, mislabelled_iris(shift)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let last_digest = format!("sha256:{}", sha256_hex(&std::fs::read(&dataset).unwrap()));

    // The re-trained version is worse than the one serving: its relative gate rejects it.
    let mv2 = wait_condition(&mvs, "iris-r2", cond::VALIDATED, "False", Duration::from_secs(120)).await;
    let validated =
        mv2.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == cond::VALIDATED).unwrap();
    assert!(validated.message.contains("f1"), "{}", validated.message);
    assert_eq!(
        mv2.spec.lineage.unwrap().trigger.unwrap().dataset_digest.as_deref(),
        Some(bad_digest.as_str())
    );

    // Nothing is deployed: the service keeps serving iris-r1 with no canary, and says so,
    // once its controller has looked at the rejected version (a pass after it, then idle).
    let started = op.reconciles_started("inferenceservice").expect("the operator's metrics");
    env.poke("inferenceservice/iris");
    op.wait_pass("inferenceservice", started, "the rejection of iris-r2", Duration::from_secs(30)).await;
    op.wait_idle("inferenceservice", Duration::from_secs(2), Duration::from_secs(30)).await;
    let isvc = isvcs.get("iris").await.unwrap();
    let st = isvc.status.unwrap();
    assert_eq!(st.stable.as_ref().unwrap().version, "iris-r1");
    assert!(st.canary.is_none());
    assert_eq!(st.delivery.unwrap().deployments, 1);

    // The TrainingJob tells the whole story, once a data check has seen the storm's last
    // snapshot: still two runs, the data change pending in the cooldown, and the produced
    // version's rejection.
    let what = "the TrainingJob to report the rejection and the last snapshot seen";
    let tj = wait_until(Duration::from_secs(60), what, || {
        let (tjs, last_digest) = (tjs.clone(), last_digest.clone());
        async move {
            let tj = tjs.get("iris").await.ok()?;
            let status = tj.status.as_ref()?;
            let ready = status.conditions.iter().find(|c| c.type_ == cond::READY)?.clone();
            let seen =
                status.triggers.as_ref()?.observed_dataset_digest.as_deref() == Some(last_digest.as_str());
            (ready.message.contains("failed validation") && seen).then_some(tj)
        }
    })
    .await;
    let status = tj.status.unwrap();
    assert_eq!(status.runs.len(), 2, "{:?}", status.runs);
    let triggers = status.triggers.unwrap();
    assert!(triggers.message.as_deref().unwrap_or("").contains("cooldown"), "{triggers:?}");
    assert_ne!(
        triggers.observed_dataset_digest, triggers.dataset_digest,
        "the latest change is still pending"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The data trigger on an `s3://` dataset, against a real S3 server: the operator has no
/// credentials of its own, so a check Job running with the TrainingJob's Secret hashes the
/// object; a new snapshot starts one run that trains on it (reading from and writing to
/// S3), and revoked credentials are reported, not retried into a run.
#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn an_s3_dataset_change_retrains_through_a_check_job() {
    let env = TestEnv::start("ct-s3").await;
    let s3 = testkit::S3Server::start("ct-s3");
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    s3.put("datasets", "iris/latest.csv", scaled_iris(1.0).as_bytes());
    s3.bucket("models");
    let secret = |key: &str| {
        let out = env.kubectl(
            &[
                "create",
                "secret",
                "generic",
                "s3-creds",
                "--dry-run=client",
                "-o",
                "json",
                &format!("--from-literal=AWS_ACCESS_KEY_ID={}", s3.access_key),
                &format!("--from-literal=AWS_SECRET_ACCESS_KEY={key}"),
                &format!("--from-literal=AWS_ENDPOINT_URL={}", s3.endpoint),
            ],
            None,
        );
        assert!(out.status.success(), "{}", output_text(&out));
        let out = env.kubectl(&["apply", "-f", "-"], Some(&String::from_utf8_lossy(&out.stdout)));
        assert!(out.status.success(), "{}", output_text(&out));
    };
    secret(&s3.secret_key);
    let creds = json!({"name": "s3-creds"});
    apply(
        &env,
        &data_triggered(
            json!({"uri": "s3://datasets/iris/latest.csv", "labelColumn": "species", "credentialsSecretRef": creds}),
            json!({"uri": "s3://models/iris", "credentialsSecretRef": creds}),
        ),
    );
    let mv1 = first_version_and_baseline(&env, &scaled_iris(1.0)).await;
    assert!(mv1.spec.artifact.uri.starts_with("s3://models/iris/iris-r1"), "{}", mv1.spec.artifact.uri);

    // A new snapshot lands in the bucket: one run, on exactly that snapshot.
    let snapshot = scaled_iris(1.1);
    s3.put("datasets", "iris/latest.csv", snapshot.as_bytes());
    retrained_on(&env, &snapshot).await;

    // Finished checks are read and removed; never more than one at a time.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = env.api();
    let checks = || async {
        let lp = kube::api::ListParams::default().labels("app.kubernetes.io/component=data-check");
        jobs.list(&lp).await.unwrap().items
    };
    for _ in 0..10 {
        let now = checks().await;
        assert!(now.len() <= 1, "{} check Jobs at once", now.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Credentials revoked: the next check fails, the status says why, no run starts.
    secret("not-the-secret");
    let tjs: Api<TrainingJob> = env.api();
    let tj = wait_for(&tjs, "iris", Duration::from_secs(60), "the failed check reported", |tj| {
        tj.status
            .as_ref()
            .and_then(|s| s.triggers.as_ref()?.message.clone())
            .is_some_and(|m| m.contains("403"))
    })
    .await;
    let message = tj.status.as_ref().unwrap().triggers.as_ref().unwrap().message.clone().unwrap();
    assert!(
        message.contains("dataset check failed") && message.contains("s3://datasets/iris/latest.csv"),
        "{message}"
    );
    assert_eq!(tj.status.unwrap().runs.len(), 2);
}

/// `retrain.schedule` end to end: a time missed while the operator was down starts one
/// late run when it is back (`RunOnce`), and the next time fires on time. Runs are told
/// apart by their schedule time, so the test needs no particular second of the minute.
#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_schedule_fires_on_time_and_once_for_a_time_missed_while_down() {
    use k8s_openapi::jiff::{Timestamp, ToSpan};
    let env = TestEnv::start("ct-cron").await;
    install_crds();
    let mut op = Operator::start(OPERATOR, &env.namespace, &[]);
    let dataset = data_dir(&env.namespace).join("iris.csv");
    std::fs::write(&dataset, scaled_iris(1.0)).unwrap();
    apply(&env, &training_job(&env.namespace, &dataset, json!([]), json!({"schedule": "* * * * *"})));
    let tjs: Api<TrainingJob> = env.api();
    wait_for(&tjs, "iris", Duration::from_secs(30), "the first run", |tj| {
        tj.status.as_ref().is_some_and(|s| !s.runs.is_empty())
    })
    .await;
    op.terminate(Duration::from_secs(10)).expect("the operator exits on SIGTERM");
    // The first schedule time after the operator has exited is missed; it is back 5 s later.
    let down = Timestamp::now();
    let missed = Timestamp::from_second(down.as_second() - down.as_second().rem_euclid(60) + 60).unwrap();
    let back = missed + 5.seconds();
    // Inherent to the feature: the operator must be down across a schedule time.
    let until_back = back.duration_since(Timestamp::now()).as_millis().max(0) as u64;
    tokio::time::sleep(Duration::from_millis(until_back)).await;
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let next = missed + 60.seconds();
    let scheduled_at =
        |run: &mlops_operator::api::training_job::RunRecord| run.trigger.schedule_time.as_ref().map(|t| t.0);
    let tj = wait_for(&tjs, "iris", Duration::from_secs(150), "a run for the next schedule time", |tj| {
        tj.status.as_ref().is_some_and(|s| s.runs.iter().any(|r| scheduled_at(r) == Some(next)))
    })
    .await;
    let runs = tj.status.unwrap().runs;
    assert_eq!(runs[0].trigger.type_, TriggerType::Spec);
    // Runs for schedule times from the one missed on: exactly one per time, in order.
    let late_runs: Vec<_> = runs.iter().filter(|r| scheduled_at(r).is_some_and(|t| t >= missed)).collect();
    let times: Vec<_> = late_runs.iter().filter_map(|r| scheduled_at(r)).collect();
    assert_eq!(times, [missed, next], "one run for the missed time, one for the next: {runs:?}");
    for r in &late_runs {
        assert_eq!(r.trigger.type_, TriggerType::Schedule, "{r:?}");
    }
    let started = late_runs[0].start_time.clone().unwrap().0;
    assert!(started >= back, "the missed time ran at {started}, after the operator came back at {back}");
    let started = late_runs[1].start_time.clone().unwrap().0;
    let late = started.duration_since(next).as_secs_f64();
    // On time: a run caught up late would start a whole minute after its time.
    assert!((0.0..15.0).contains(&late), "the on-time run started {late:.1} s after its time");
    let on_time = late_runs[1].name.clone();
    let mvs: Api<ModelVersion> = env.api();
    let mv = wait_for(&mvs, &on_time, Duration::from_secs(60), "the scheduled run's version", |_| true).await;
    assert_eq!(mv.spec.lineage.unwrap().trigger.unwrap().schedule_time.map(|t| t.0), Some(next));
}

/// The data trigger on a `pvc://` dataset: the check Job mounts the claim read-only (on
/// the local node a claim bound to a hostPath PersistentVolume is that folder) and a new
/// snapshot written into the volume starts one run that trains on it.
#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_pvc_dataset_change_retrains_through_a_check_job() {
    let env = TestEnv::start("ct-pvc").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let folder = data_dir(&env.namespace).join("volume");
    std::fs::create_dir_all(folder.join("iris")).unwrap();
    std::fs::write(folder.join("iris/latest.csv"), scaled_iris(1.0)).unwrap();
    // A PersistentVolume (cluster-wide, named after the namespace) pre-bound to the claim.
    let pv = format!("{}-data", env.namespace);
    let out = env.kubectl(
        &["apply", "-f", "-"],
        Some(
            &json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                         "hostPath": {"path": folder.display().to_string()},
                         "claimRef": {"namespace": env.namespace, "name": "datasets"}}})
            .to_string(),
        ),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let _pv_cleanup = PvCleanup(pv.clone());
    apply(
        &env,
        &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "datasets"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}}}),
    );
    apply(
        &env,
        &data_triggered(
            json!({"uri": "pvc://datasets/iris/latest.csv", "labelColumn": "species"}),
            json!({"uri": "pvc://work/models"}),
        ),
    );
    first_version_and_baseline(&env, &scaled_iris(1.0)).await;

    let snapshot = scaled_iris(0.9);
    std::fs::write(folder.join("iris/latest.csv"), &snapshot).unwrap();
    retrained_on(&env, &snapshot).await;
}

/// A TrainingJob `iris` whose data trigger checks every 10 s, without cooldown.
fn data_triggered(dataset: serde_json::Value, output: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "iris"},
        "spec": {"model": "iris", "dataset": dataset, "output": output,
                 "hyperparameters": {"algorithm": "logistic_regression"},
                 "trainer": {"image": "ghcr.io/mlops-dev/mlops-runtime:0.1.0", "args": ["train"]},
                 "retrain": {"data": {"checkIntervalSeconds": 10}, "cooldownSeconds": 0}}})
}

/// Waits for the first version and for a check Job's baseline digest of `content`.
async fn first_version_and_baseline(env: &TestEnv, content: &str) -> ModelVersion {
    let mvs: Api<ModelVersion> = env.api();
    let mv = wait_condition(&mvs, "iris-r1", cond::VALIDATED, "True", Duration::from_secs(120)).await;
    let first = format!("sha256:{}", sha256_hex(content.as_bytes()));
    let tjs: Api<TrainingJob> = env.api();
    wait_for(&tjs, "iris", Duration::from_secs(60), "the baseline digest from a check Job", |tj| {
        tj.status.as_ref().and_then(|s| s.triggers.as_ref()).and_then(|t| t.dataset_digest.as_deref())
            == Some(first.as_str())
    })
    .await;
    mv
}

/// The second version: started by the data trigger and trained on exactly `content`.
async fn retrained_on(env: &TestEnv, content: &str) {
    let digest = format!("sha256:{}", sha256_hex(content.as_bytes()));
    let mvs: Api<ModelVersion> = env.api();
    let mv2 = wait_condition(&mvs, "iris-r2", cond::VALIDATED, "True", Duration::from_secs(120)).await;
    let lineage = mv2.spec.lineage.unwrap();
    let trigger = lineage.trigger.unwrap();
    assert_eq!(
        (trigger.type_, trigger.dataset_digest.as_deref()),
        (TriggerType::Data, Some(digest.as_str()))
    );
    assert_eq!(lineage.dataset.unwrap().digest.as_deref(), Some(digest.as_str()), "trained on that snapshot");
}

/// PersistentVolumes are cluster-scoped: the test's namespace going does not remove its.
struct PvCleanup(String);

impl Drop for PvCleanup {
    fn drop(&mut self) {
        testkit::kubectl_in(None, &["delete", "pv", &self.0, "--wait=false"], None);
    }
}
