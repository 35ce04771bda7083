//! The operator installed as users install it: `helm install` of `charts/mlops-operator`
//! with the locally built image (`hack/build-images.sh`), two replicas behind the Lease, in a
//! namespace that enforces Pod Security `restricted`. The whole loop runs against it (train
//! → validate → serve → canary under traffic → promote), `helm upgrade` rolls the operator's
//! pods and the new leader rolls a bad version back, and `helm uninstall` leaves a
//! namespace that deletes cleanly.
//!
//! The release watches only its own namespace (`watchNamespace`), so it never competes with
//! the operators the other end-to-end tests run as processes; the CRDs and the cluster-wide
//! user roles are the tests' (`crds.install=false`, `rbac.userRoles=false`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{Api, ResourceExt, api::ListParams};
use mlops_operator::api::{InferenceService, ModelVersion, conditions as cond};
use serde_json::json;
use testkit::{
    TestEnv, install_crds, output_text, repo_root, wait_condition, wait_for, wait_until, work_iris,
};

const CHART: &str = "charts/mlops-operator";
const RELEASE: &str = "mlops";
const LEASE: &str = "mlops-operator-leader";
const OPERATOR_PODS: &str = "app.kubernetes.io/instance=mlops";
const LONG: Duration = Duration::from_secs(180);

fn helm(args: &[&str]) -> std::process::Output {
    let helm = testkit::tool("helm", "run `make tools` (or `make test`)");
    std::process::Command::new(helm)
        .args(args)
        .arg("--kubeconfig")
        .arg(testkit::kubeconfig_path())
        .current_dir(repo_root())
        .output()
        .expect("helm runs")
}

/// A manifest of `examples/demo/` with its placeholders filled, as `hack/demo.sh` does.
fn demo(file: &str, ns: &str, fill: &[(&str, &str)]) -> String {
    let mut text =
        std::fs::read_to_string(repo_root().join("examples/demo").join(file)).expect("demo manifest");
    text = text.replace("__DATASET__", &work_iris(ns)).replace("__OUTPUT__", "pvc://work/models");
    for (k, v) in fill {
        text = text.replace(k, v);
    }
    text
}

fn infer(addr: &str) -> Option<(u16, String)> {
    let body = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[5.9,3.0,5.1,1.8]}]}"#;
    testkit::http_post(addr.parse().ok()?, "/v2/models/iris/infer", body)
}

/// Inference requests until `stop`, one connection each; counts answers per version.
fn traffic(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeMap<String, u32>> {
    std::thread::spawn(move || {
        let mut seen = BTreeMap::new();
        let end = std::time::Instant::now() + Duration::from_secs(600);
        while std::time::Instant::now() < end && !stop.load(Ordering::Relaxed) {
            if let Some((code, body)) = infer(&addr) {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let version = v["model_version"].as_str().unwrap_or("").to_string();
                *seen.entry(format!("{code} {version}")).or_default() += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

async fn operator_pods(env: &TestEnv) -> Vec<String> {
    let pods: Api<Pod> = env.api();
    let list = pods.list(&ListParams::default().labels(OPERATOR_PODS)).await.unwrap().items;
    list.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).map(|p| p.name_any()).collect()
}

/// Waits until the Lease is held by one of the release's current pods; returns the holder.
async fn leader(env: &TestEnv) -> String {
    let leases: Api<Lease> = env.api();
    wait_until(LONG, "a current operator pod holding the Lease", || async {
        let holder = leases.get_opt(LEASE).await.ok()??.spec?.holder_identity?;
        operator_pods(env).await.contains(&holder).then_some(holder)
    })
    .await
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn the_chart_installs_runs_the_loop_upgrades_and_uninstalls_cleanly() {
    let env = TestEnv::start("chart-install").await;
    let ns = env.namespace.clone();
    install_crds();
    let prometheus = testkit::prometheus_url().expect("the local Prometheus (hack/prometheus.sh up)");
    let values = [
        "--namespace".to_string(),
        ns.clone(),
        "--set".into(),
        "crds.install=false".into(),
        "--set".into(),
        "rbac.userRoles=false".into(),
        "--set".into(),
        format!("watchNamespace={ns}"),
        "--set".into(),
        format!("prometheus.url={prometheus}"),
        "--set".into(),
        "leaderElection.leaseDurationSeconds=6".into(),
        "--set".into(),
        "leaderElection.retryPeriodSeconds=1".into(),
        // The faulty version below injects its fault through the test-only annotation.
        "--set".into(),
        "faultInjection=true".into(),
        "--wait".into(),
        "--timeout".into(),
        "180s".into(),
    ];
    let values: Vec<&str> = values.iter().map(String::as_str).collect();

    // Install: two replicas of the chart's image, admitted under `restricted`, one leads.
    let out = helm(&[&["install", RELEASE, CHART][..], &values].concat());
    assert!(out.status.success(), "helm install: {}", output_text(&out));
    assert_eq!(operator_pods(&env).await.len(), 2, "replicaCount 2");
    let first_leader = leader(&env).await;

    // Train → validate → serve.
    let out = env.kubectl(&["apply", "-f", "-"], Some(&demo("trainingjob.yaml", &ns, &[])));
    assert!(out.status.success(), "{}", output_text(&out));
    let mvs: Api<ModelVersion> = env.api();
    wait_condition(&mvs, "iris-r1", cond::VALIDATED, "True", LONG).await;
    let out = env.kubectl(&["apply", "-f", "-"], Some(&demo("inferenceservice.yaml", &ns, &[])));
    assert!(out.status.success(), "{}", output_text(&out));
    let isvcs: Api<InferenceService> = env.api();
    wait_condition(&isvcs, "iris", cond::READY, "True", LONG).await;
    let addr = env.service_address("iris").await;
    wait_until(Duration::from_secs(30), "an answer from iris-r1", || async {
        infer(&addr).filter(|(code, body)| *code == 200 && body.contains("iris-r1"))
    })
    .await;

    // Retrain → canary under traffic → promote.
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(addr.clone(), stop.clone());
    env.merge_patch(
        "trainingjob",
        "iris",
        &json!({"spec": {"hyperparameters": {"algorithm": "random_forest"}}}),
    );
    wait_for(&isvcs, "iris", LONG, "iris-r2 promoted", |i| {
        i.status.as_ref().is_some_and(|s| {
            s.canary.is_none() && s.stable.as_ref().is_some_and(|st| st.version == "iris-r2")
        })
    })
    .await;

    // Upgrade: the operator's pods roll, a new pod leads, and it carries on.
    let out = helm(&[&["upgrade", RELEASE, CHART, "--set", "logLevel=debug"][..], &values].concat());
    assert!(out.status.success(), "helm upgrade: {}", output_text(&out));
    let new_leader = leader(&env).await;
    assert_ne!(new_leader, first_leader, "the upgrade replaced every operator pod");

    // A bad version (good offline metrics, a server failing 30 % of requests) is canaried
    // by the upgraded operator and rolled back by its error-rate check.
    let mv2 = mvs.get("iris-r2").await.unwrap();
    let (artifact, digest) =
        (mv2.spec.artifact.uri.clone(), mv2.spec.artifact.digest.clone().unwrap_or_default());
    let faulty = demo("faulty-version.yaml", &ns, &[("__ARTIFACT__", &artifact), ("__DIGEST__", &digest)]);
    let out = env.kubectl(&["apply", "-f", "-"], Some(&faulty));
    assert!(out.status.success(), "{}", output_text(&out));
    let rolled_back = wait_for(&isvcs, "iris", LONG, "iris-faulty rolled back", |i| {
        i.status.as_ref().is_some_and(|s| {
            s.canary.is_none()
                && s.failed_versions.iter().any(|f| f == "iris-faulty")
                && s.stable.as_ref().is_some_and(|st| st.version == "iris-r2")
        })
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();
    assert!(seen.keys().any(|k| k == "200 iris-r1") && seen.keys().any(|k| k == "200 iris-r2"), "{seen:?}");
    assert!(seen.keys().any(|k| k.contains("iris-faulty")), "the faulty canary got traffic: {seen:?}");
    assert!(cond::is_true(&rolled_back.status.unwrap().conditions, cond::DEGRADED));

    // Uninstall with every object still there: the versions are protected by the
    // operator's finalizer, which nobody would remove once the operator is gone. The
    // chart's pre-delete hook stops the operator and lifts it; the namespace then goes.
    let versions: Api<ModelVersion> = env.api();
    let protected = |mv: &ModelVersion| {
        mv.finalizers().iter().any(|f| f == mlops_operator::api::FINALIZER_PROTECT_SERVING)
    };
    let listed = versions.list(&ListParams::default()).await.unwrap().items;
    assert!(listed.iter().any(protected), "the serving versions are protected before the uninstall");
    let out = helm(&["uninstall", RELEASE, "--namespace", &ns, "--wait", "--timeout", "180s"]);
    assert!(out.status.success(), "helm uninstall: {}", output_text(&out));
    let listed = versions.list(&ListParams::default()).await.unwrap().items;
    assert!(
        !listed.is_empty() && !listed.iter().any(protected),
        "the hook released every version: {listed:?}"
    );
    // Terminating pods included: `helm uninstall --wait` returns before they are gone.
    let kinds = "all,roles,rolebindings,serviceaccounts,poddisruptionbudgets";
    wait_until(Duration::from_secs(60), "every object of the release to be gone", || async {
        let out = env.kubectl(&["get", kinds, "-l", OPERATOR_PODS, "-o", "name"], None);
        (out.status.success() && output_text(&out).trim().is_empty()).then_some(())
    })
    .await;
    let out = testkit::kubectl_in(None, &["delete", "namespace", &ns, "--wait=true", "--timeout=120s"], None);
    assert!(out.status.success(), "the namespace deletes cleanly: {}", output_text(&out));
}
