//! Serving a model from a private S3 bucket, end to end: a real S3 server (the Versity S3
//! Gateway, `testkit::S3Server`) holds a trained iris artifact; an InferenceService whose
//! `runtime.credentialsSecretRef` names a Secret with the bucket's credentials (passed to
//! the server pods by `secretKeyRef`, resolved by the local node) and whose
//! `runtime.serviceAccountName` names a ServiceAccount becomes Ready and answers through
//! its Service; one without credentials is refused by the bucket, its pods crash-loop and
//! its status says its pods fail and why (`PodsFailing`, with a Warning Event). No
//! credential value reaches status or Events.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use mlops_operator::api::{InferenceService, ModelVersion, conditions as cond};
use serde_json::{Value, json};
use testkit::{Operator, TestEnv, install_crds, output_text, wait_condition, wait_for, wait_until};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");
/// Generous: the tests share two cores with other test binaries and builds.
const LONG: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(60);

fn apply(env: &TestEnv, doc: &Value) {
    let out = env.kubectl(&["apply", "-f", "-"], Some(&doc.to_string()));
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
}

fn inference_service(name: &str, runtime: Value) -> Value {
    json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
           "spec": {"model": "iris", "version": "iris-s3", "replicas": 1, "runtime": runtime}})
}

/// One inference of two iris rows through the Service's loopback address.
fn infer(addr: &str) -> Option<(u16, String)> {
    let body = r#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}]}"#;
    testkit::http_post(addr.parse().ok()?, "/v2/models/iris/infer", body)
}

/// The serving pods of InferenceService `name`.
async fn pods_of(env: &TestEnv, name: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("mlops.dev/inference-service={name}"));
    env.api::<Pod>().list(&lp).await.expect("listing pods").items
}

/// Everything a user could read about `name`: its status and the Events about it.
async fn status_and_events(env: &TestEnv, name: &str) -> String {
    let isvc = env.api::<InferenceService>().get(name).await.expect("the InferenceService");
    let events = env.kubectl(
        &["get", "events", "--field-selector", &format!("involvedObject.name={name}"), "-o", "json"],
        None,
    );
    assert!(events.status.success(), "{}", output_text(&events));
    format!("{}\n{}", serde_json::to_string(&isvc.status).unwrap(), output_text(&events))
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_private_s3_artifact_is_served_with_the_runtime_credentials_and_refused_without() {
    let env = TestEnv::start("serving-s3").await;
    let s3 = testkit::S3Server::start("serving-s3");
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);

    // A trained artifact in a private bucket, imported as a ModelVersion pinned by digest.
    testkit::train_iris(&env.namespace);
    let bytes = std::fs::read(env.work_dir().join("model.json")).expect("the trained artifact");
    s3.put("models", "iris/imported/model.json", &bytes);
    let digest = {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
    };
    apply(
        &env,
        &json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "iris-s3"},
                "spec": {"model": "iris",
                         "artifact": {"uri": "s3://models/iris/imported/model.json", "digest": digest,
                                      "format": "mlops-runtime-json/v1"},
                         "metrics": {"accuracy": 0.97}}}),
    );
    wait_condition(&env.api::<ModelVersion>(), "iris-s3", cond::VALIDATED, "True", SHORT).await;

    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                       "AWS_ENDPOINT_URL": s3.endpoint},
    }))
    .unwrap();
    env.api().create(&PostParams::default(), &secret).await.expect("creating the Secret");
    let account: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "model-reader"}})).unwrap();
    env.api().create(&PostParams::default(), &account).await.expect("creating the ServiceAccount");

    // The schema refuses a ServiceAccount name that is not a DNS subdomain.
    let bad = inference_service("bad-sa", json!({"serviceAccountName": "Model_Reader"}));
    let out = env.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&bad.to_string()));
    assert!(!out.status.success(), "a bad serviceAccountName was accepted");
    assert!(output_text(&out).contains("must be a lowercase DNS subdomain"), "{}", output_text(&out));

    // With the credentials Secret and a ServiceAccount: Ready, and it answers.
    apply(
        &env,
        &inference_service(
            "private",
            json!({"preset": "MlopsRuntime", "credentialsSecretRef": {"name": "s3-creds"},
                   "serviceAccountName": "model-reader"}),
        ),
    );
    // Without credentials: the same bucket, requests unsigned.
    apply(
        &env,
        &inference_service(
            "anonymous",
            json!({"preset": "MlopsRuntime", "env": [{"name": "AWS_ENDPOINT_URL", "value": s3.endpoint}]}),
        ),
    );

    let isvcs: Api<InferenceService> = env.api();
    wait_condition(&isvcs, "private", cond::READY, "True", LONG).await;
    let pods = pods_of(&env, "private").await;
    assert!(!pods.is_empty());
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("model-reader"), "{}", pod.name_any());
        let server = &spec.containers[0];
        for e in server.env.iter().flatten().filter(|e| e.name.starts_with("AWS_")) {
            assert!(e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).is_some(), "{}", e.name);
        }
    }
    let addr = env.service_address("private").await;
    // kube-proxy may take a moment to route to a pod that just became Ready.
    let (code, body) = wait_until(SHORT, "an answer through the Service", || async {
        infer(&addr).filter(|(code, _)| *code == 200)
    })
    .await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["model_version"], "iris-s3");
    assert_eq!(answer["outputs"][0]["data"], json!(["setosa", "virginica"]));

    // Without credentials the bucket refuses the download: the server exits, its pod
    // restarts, and the service is not Ready and says its pods are the problem.
    // The kubelet keeps the previous run's log while it restarts the container; a read can
    // meet a restart in progress, so read again until a restarted pod shows the refusal.
    wait_until(LONG, "a restarted anonymous server whose previous run logged the 403", || async {
        for pod in pods_of(&env, "anonymous").await {
            let restarted = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.restart_count >= 1));
            if restarted
                && output_text(&env.kubectl(&["logs", &pod.name_any(), "--previous"], None)).contains("403")
            {
                return Some(());
            }
        }
        None
    })
    .await;
    let anonymous = wait_for(&isvcs, "anonymous", SHORT, "Ready=False, PodsFailing", |i| {
        let conds = i.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        cond::find(&conds, cond::READY).is_some_and(|c| c.status == "False" && c.reason == "PodsFailing")
    })
    .await;
    let ready = cond::find(&anonymous.status.as_ref().unwrap().conditions, cond::READY).unwrap().clone();
    assert!(ready.message.contains("iris-s3"), "the message names the version: {}", ready.message);
    assert!(
        ["CrashLoopBackOff", "restarted"].iter().any(|w| ready.message.contains(w)),
        "the message says what the pods do: {}",
        ready.message
    );
    wait_until(SHORT, "a PodsFailing Warning Event", || async {
        status_and_events(&env, "anonymous").await.contains("PodsFailing").then_some(())
    })
    .await;
    assert!(pods_of(&env, "anonymous").await.iter().all(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .all(|c| c.type_ != "Ready" || c.status != "True")
    }));

    // The credentials are nowhere in what the operator reports.
    for name in ["private", "anonymous"] {
        let reported = status_and_events(&env, name).await;
        for value in [&s3.access_key, &s3.secret_key] {
            assert!(!reported.contains(value.as_str()), "a credential appears in {name}'s status or Events");
        }
    }
}
