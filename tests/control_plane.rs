//! Proofs that the local cluster is a real control plane: the controller-manager, the
//! scheduler, garbage collection, CEL admission and server-side apply all work.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, Node, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use testkit::{TestEnv, kubectl_in, output_text, unique_name, wait_for, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// A cluster-scoped object this test made, deleted when the test ends, failed or not
/// (the namespace guard cannot reach it).
struct DeleteOnDrop(&'static str, String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let _ = kubectl_in(None, &["delete", self.0, &self.1, "--ignore-not-found", "--wait=false"], None);
    }
}

/// A KWOK-managed fake node, tainted so that only pods which ask for it land there.
async fn fake_node(env: &TestEnv) -> DeleteOnDrop {
    let name = unique_name("kwok-node");
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name}
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}}
    }))
    .unwrap();
    Api::<Node>::all(env.client.clone()).create(&PostParams::default(), &node).await.unwrap();
    DeleteOnDrop("node", name)
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn deployment_is_reconciled_scheduled_and_ready() {
    let env = TestEnv::start("deployment-ready").await;
    let guard = fake_node(&env).await;
    let node = guard.1.clone();
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    // The test namespace enforces Pod Security `restricted`.
                    "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "web", "image": "example.invalid/web:1",
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
                }
            }
        }
    }))
    .unwrap();
    let deploys: Api<Deployment> = env.api();
    deploys.create(&PostParams::default(), &deploy).await.unwrap();

    // The deployment controller made a ReplicaSet, the replicaset controller the pods.
    let rs: Api<ReplicaSet> = env.api();
    wait_until(WAIT, "a ReplicaSet owned by the Deployment", || async {
        let list = rs.list(&ListParams::default().labels("app=web")).await.ok()?;
        list.items.into_iter().find(|r| {
            r.metadata.owner_references.iter().flatten().any(|o| o.kind == "Deployment" && o.name == "web")
        })
    })
    .await;
    let pods: Api<Pod> = env.api();
    wait_until(WAIT, "two pods bound by the scheduler and Ready", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
            .filter(|p| testkit::condition_status(*p, "Ready").as_deref() == Some("True"))
            .count();
        (ready == 2).then_some(())
    })
    .await;
    wait_for(&deploys, "web", WAIT, "2 available replicas", |d| {
        d.status.as_ref().and_then(|s| s.available_replicas) == Some(2)
    })
    .await;

    // Garbage collection: deleting the Deployment (background propagation, as kubectl
    // does) leaves its ReplicaSet and pods to the garbage collector, which removes them.
    deploys.delete("web", &DeleteParams::background()).await.unwrap();
    wait_until(WAIT, "the garbage collector to remove the ReplicaSet and its pods", || async {
        let sets = rs.list(&ListParams::default().labels("app=web")).await.ok()?;
        let left = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        (sets.items.is_empty() && left.items.is_empty()).then_some(())
    })
    .await;
    drop(guard);
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn namespace_deletion_completes() {
    let env = TestEnv::start("namespace-deletion").await;
    let name = unique_name("doomed");
    let namespaces = Api::<Namespace>::all(env.client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
        .await
        .unwrap();
    let out = kubectl_in(Some(&name), &["create", "configmap", "settings", "--from-literal=a=b"], None);
    assert!(out.status.success(), "{}", output_text(&out));

    namespaces.delete(&name, &DeleteParams::default()).await.unwrap();
    // The namespace controller empties it and removes its finalizer; only then is it gone.
    wait_until(WAIT, "the namespace to be deleted", || async {
        matches!(namespaces.get_opt(&name).await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn cel_rule_refuses_a_bad_object_with_its_message() {
    let env = TestEnv::start("cel-rule").await;
    let group = format!("{}.e2e.mlops.dev", env.namespace);
    let crd = format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: gadgets.{group}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: gadgets, singular: gadget, kind: Gadget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.replicas <= self.maxReplicas"
              message: "replicas must not exceed maxReplicas"
            properties:
              replicas: {{type: integer}}
              maxReplicas: {{type: integer}}
"#
    );
    let out = env.kubectl(&["apply", "-f", "-"], Some(&crd));
    assert!(out.status.success(), "{}", output_text(&out));
    let _crd = DeleteOnDrop("crd", format!("gadgets.{group}"));
    let out = env.kubectl(
        &["wait", "--for=condition=Established", "--timeout=30s", &format!("crd/gadgets.{group}")],
        None,
    );
    assert!(out.status.success(), "{}", output_text(&out));

    let object = |replicas: u32| {
        format!(
            "apiVersion: {group}/v1\nkind: Gadget\nmetadata: {{name: g{replicas}}}\nspec: {{replicas: {replicas}, maxReplicas: 3}}\n"
        )
    };
    let bad = env.kubectl(&["apply", "-f", "-"], Some(&object(5)));
    assert!(!bad.status.success(), "a gadget with 5 > 3 replicas was accepted");
    assert!(
        output_text(&bad).contains("replicas must not exceed maxReplicas"),
        "the refusal does not name the rule's message: {}",
        output_text(&bad)
    );
    let good = env.kubectl(&["apply", "-f", "-"], Some(&object(2)));
    assert!(good.status.success(), "{}", output_text(&good));
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn server_side_dry_run_apply_works() {
    let env = TestEnv::start("ssa-dry-run").await;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dry}\ndata: {k: v}\n";
    let out = env.kubectl(&["apply", "--server-side", "--dry-run=server", "-f", "-"], Some(cm));
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("serverside-applied (server dry run)"), "{}", output_text(&out));
    // A dry run persists nothing.
    let get = env.kubectl(&["get", "configmap", "dry"], None);
    assert!(!get.status.success(), "the dry-run ConfigMap was stored: {}", output_text(&get));
    // And a real server-side apply does, owned by the named field manager.
    let out = env.kubectl(&["apply", "--server-side", "--field-manager=e2e", "-f", "-"], Some(cm));
    assert!(out.status.success(), "{}", output_text(&out));
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = env.api();
    let stored = cms.get("dry").await.unwrap();
    assert!(stored.metadata.managed_fields.iter().flatten().any(|f| f.manager.as_deref() == Some("e2e")));
}
