//! Gateway API traffic routing: the operator owns an HTTPRoute whose weighted backendRefs
//! follow the rollout (the Gateway API CRDs come from their Go module, hack/cluster.sh).

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};
use mlops_operator::{
    api::{InferenceService, conditions as cond},
    controllers::inference_service::desired::role_service_name,
};
use serde_json::json;
use testkit::{Operator, TestEnv, install_crds, output_text, wait_condition, wait_until};

const OPERATOR: &str = env!("CARGO_BIN_EXE_mlops-operator");

fn version(env: &TestEnv, name: &str, artifact: &str) {
    let doc = json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
                     "spec": {"model": "iris", "artifact": {"uri": artifact}, "metrics": {"accuracy": 0.95}}});
    let out = env.kubectl(&["apply", "-f", "-"], Some(&doc.to_string()));
    assert!(out.status.success(), "{}", output_text(&out));
}

fn backends(route: &DynamicObject) -> Vec<(String, i64)> {
    route.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .map(|r| (r["name"].as_str().unwrap_or("").to_string(), r["weight"].as_i64().unwrap_or(-1)))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn an_http_route_carries_the_canary_weights() {
    let env = TestEnv::start("gateway-routing").await;
    install_crds();
    let _op = Operator::start(OPERATOR, &env.namespace, &[]);
    let artifact = testkit::train_iris(&env.namespace);
    version(&env, "iris-v1", &artifact);
    let isvc = json!({"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "gw"},
        "spec": {"model": "iris", "track": "LatestValidated", "replicas": 2, "runtime": {"preset": "MlopsRuntime"},
                 "rollout": {"steps": [{"weight": 30, "pauseSeconds": 600}], "progressDeadlineSeconds": 600,
                             "trafficRouting": {"gatewayAPI": {"gatewayRef": {"name": "public"}, "hostnames": ["iris.example"]}}}}});
    let out = env.kubectl(&["apply", "-f", "-"], Some(&isvc.to_string()));
    assert!(out.status.success(), "{}", output_text(&out));
    let isvcs: Api<InferenceService> = env.api();
    wait_condition(&isvcs, "gw", cond::READY, "True", Duration::from_secs(90)).await;

    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let routes: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &ApiResource::from_gvk(&gvk));
    let route = wait_until(Duration::from_secs(30), "the HTTPRoute", || async {
        routes.get_opt("gw").await.ok().flatten()
    })
    .await;
    let (stable, canary) = (role_service_name("gw", "stable"), role_service_name("gw", "canary"));
    assert_eq!(backends(&route), [(stable.clone(), 100)]);
    assert_eq!(route.data["spec"]["hostnames"], json!(["iris.example"]));
    assert_eq!(route.data["spec"]["parentRefs"][0]["name"], "public");

    // A second version: the route sends it exactly the step's weight.
    version(&env, "iris-v2", &artifact);
    wait_until(Duration::from_secs(90), "weights 70/30 on the route", || async {
        let r = routes.get("gw").await.ok()?;
        (backends(&r) == [(stable.clone(), 70), (canary.clone(), 30)]).then_some(())
    })
    .await;
    let services: Api<Service> = env.api();
    let selector = |name: String| {
        let services = services.clone();
        async move {
            services.get(&name).await.unwrap().spec.unwrap().selector.unwrap()["mlops.dev/model-version"]
                .clone()
        }
    };
    assert_eq!(selector(stable.clone()).await, "iris-v1");
    assert_eq!(selector(canary.clone()).await, "iris-v2");

    // Promote by annotation: all weight to the new version.
    let out = env.kubectl(&["annotate", "isvc", "gw", "mlops.dev/promote=now"], None);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_until(Duration::from_secs(60), "all weight on the promoted version", || async {
        let r = routes.get("gw").await.ok()?;
        (backends(&r) == [(stable.clone(), 100)]).then_some(())
    })
    .await;
    assert_eq!(selector(stable.clone()).await, "iris-v2");
    // Status is written after the children it describes, so it can trail the route by a pass.
    wait_until(Duration::from_secs(30), "status.stable = iris-v2", || async {
        let isvc = isvcs.get("gw").await.ok()?;
        (isvc.status?.stable?.version == "iris-v2").then_some(())
    })
    .await;
}
