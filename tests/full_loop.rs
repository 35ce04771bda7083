//! The whole loop on real pieces: a TrainingJob trains (mlops-runtime on the local node),
//! its ModelVersion is validated, an InferenceService tracking LatestValidated serves it
//! and answers real inferences through its Service; a retrained version is canaried
//! under real traffic, measured by the real Prometheus, and promoted. The manifests are
//! the demo's own (`examples/demo/`), so `make demo` cannot drift from what is tested.

use std::time::Duration;

use kube::Api;
use mlops_operator::api::{InferenceService, ModelVersion, TrainingJob, conditions as cond};
use serde_json::json;
use testkit::{Operator, TestEnv, install_crds, output_text, repo_root, wait_condition, wait_for};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");

/// One inference of two iris rows through the Service address.
fn infer(addr: &str) -> Option<(u16, String)> {
    let body = r#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}]}"#;
    testkit::http_post(addr.parse().ok()?, "/v2/models/iris/infer", body)
}

/// A manifest of `examples/demo/` with the placeholders `hack/demo.sh` fills.
fn demo_manifest(file: &str, namespace: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/demo").join(file)).expect("demo manifest");
    text.replace("__DATASET__", &testkit::work_iris(namespace)).replace("__OUTPUT__", "pvc://work/models")
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn train_validate_serve_infer_then_retrain_and_promote() {
    let env = TestEnv::start("full-loop").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let out = env.kubectl(&["apply", "-f", "-"], Some(&demo_manifest("trainingjob.yaml", &env.namespace)));
    assert!(out.status.success(), "{}", output_text(&out));
    let mvs: Api<ModelVersion> = env.api();
    wait_condition(&mvs, "iris-r1", cond::VALIDATED, "True", Duration::from_secs(120)).await;

    let out =
        env.kubectl(&["apply", "-f", "-"], Some(&demo_manifest("inferenceservice.yaml", &env.namespace)));
    assert!(out.status.success(), "{}", output_text(&out));
    let isvcs: Api<InferenceService> = env.api();
    let served = wait_condition(&isvcs, "iris", cond::READY, "True", Duration::from_secs(90)).await;
    assert_eq!(served.status.as_ref().unwrap().stable.as_ref().unwrap().version, "iris-r1");

    let addr = env.service_address("iris").await;
    // kube-proxy may take a moment to route to a pod that just became Ready.
    let (code, body) =
        testkit::wait_until(Duration::from_secs(30), "an answer through the Service", || async {
            infer(&addr).filter(|(code, _)| *code == 200)
        })
        .await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["model_version"], "iris-r1");
    assert_eq!(answer["outputs"][0]["data"], json!(["setosa", "virginica"]));

    // Retrain: a new generation gives iris-r2, canaried under traffic and promoted.
    env.merge_patch(
        "trainingjob",
        "iris",
        &json!({"spec": {"hyperparameters": {"algorithm": "random_forest"}}}),
    );
    // Traffic until the promotion is seen (bounded in time): the analysis needs requests
    // to measure, and the answers show both versions serving during the canary.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<String, u32>::new();
            let end = std::time::Instant::now() + Duration::from_secs(180);
            while std::time::Instant::now() < end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((200, body)) = infer(&addr) {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    *seen.entry(v["model_version"].as_str().unwrap_or("").to_string()).or_default() += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };
    let promoted = wait_for(&isvcs, "iris", Duration::from_secs(150), "iris-r2 promoted", |s| {
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
    let status = promoted.status.unwrap();
    assert_eq!(status.delivery.as_ref().unwrap().deployments, 2);
    assert!(status.delivery.as_ref().unwrap().last_lead_time_seconds.is_some());
    let mv2 = mvs.get("iris-r2").await.unwrap();
    assert_eq!(mv2.spec.lineage.unwrap().hyperparameters["algorithm"], "random_forest");
    let tj: TrainingJob = env.api::<TrainingJob>().get("iris").await.unwrap();
    assert_eq!(tj.status.unwrap().runs.len(), 2);
}
