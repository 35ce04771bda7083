//! The local node is a real one: a kubelet with containerd runs the pods. What it enforces is
//! seen from inside a pod of a test namespace (Pod Security `restricted` enforced): the
//! user, the read-only root filesystem, the memory limit in the container's cgroup, the
//! termination message read from its file, cluster DNS that answers cluster names and
//! nothing else; and from the host: the runtime, the node address, the egress guard.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use testkit::{TestEnv, wait_for};

/// Prints what the pod sees as one JSON document into the termination message file.
const PROBE: &str = r#"
import json, os, socket
seen = {"uid": os.getuid()}
try:
    open("/etc/written-by-the-pod", "w")
    seen["root_fs"] = "writable"
except OSError as e:
    seen["root_fs"] = e.strerror
open("/tmp/scratch", "w").write("ok")
seen["tmp"] = open("/tmp/scratch").read()
seen["memory_limit"] = int(open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read())
seen["cluster_name"] = socket.gethostbyname("kubernetes.default.svc.cluster.local")
try:
    seen["outside_name"] = socket.gethostbyname("example.com")
except OSError as e:
    seen["outside_name"] = "unresolved"
seen["nameservers"] = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")]
open("/dev/termination-log", "w").write(json.dumps(seen))
"#;

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn a_pod_runs_under_what_a_real_kubelet_enforces() {
    let env = TestEnv::start("real-node").await;
    let node = Api::<Node>::all(env.client.clone()).get("local-node").await.unwrap();
    let info = node.status.as_ref().unwrap().node_info.as_ref().unwrap();
    assert!(info.container_runtime_version.starts_with("containerd://"), "{info:?}");
    let address = node.status.as_ref().unwrap().addresses.as_ref().unwrap()[0].address.clone();
    assert_eq!(address, testkit::node_ip().to_string(), "the node is the bridge address the API server uses");

    // A root image (python:3.11) under the restricted profile, as the operator's trainers run.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": "python:3.11", "command": ["python3", "-c", PROBE],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}]
        }
    }))
    .unwrap();
    let pods: Api<Pod> = env.api();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let done = wait_for(&pods, "probe", Duration::from_secs(120), "the probe pod to finish", |p| {
        matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
    })
    .await;
    let status = done.status.unwrap();
    let terminated = status.container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!(terminated.exit_code, 0, "{terminated:?}");
    let seen: Value =
        serde_json::from_str(terminated.message.as_deref().unwrap_or("")).expect("the probe's report");
    assert_eq!(seen["uid"], 65532, "{seen}");
    assert_eq!(seen["root_fs"], "Read-only file system", "{seen}");
    assert_eq!(seen["tmp"], "ok", "the emptyDir is writable: {seen}");
    assert_eq!(seen["memory_limit"], 64 * 1024 * 1024, "the limit is in the container's cgroup: {seen}");
    assert_eq!(seen["cluster_name"], "10.0.0.1", "cluster DNS answers cluster names: {seen}");
    assert_eq!(seen["outside_name"], "unresolved", "and nothing outside the cluster: {seen}");
    assert_eq!(seen["nameservers"], json!([testkit::node_ip().to_string()]), "{seen}");

    // A privileged pod is refused by the namespace's admission, not run.
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "c", "image": "python:3.11", "securityContext": {"privileged": true}}]}
    }))
    .unwrap();
    let refused = pods.create(&PostParams::default(), &privileged).await.unwrap_err();
    assert!(refused.to_string().contains("violates PodSecurity \"restricted"), "{refused}");

    // The egress guard: forwarding out of each uplink is dropped (checked on the rules, so
    // that no test packet is ever sent off the machine).
    let routes = std::process::Command::new("ip").args(["-o", "route", "show", "default"]).output().unwrap();
    let rules = std::process::Command::new("iptables").args(["-S", "MLOPS-NODE-FORWARD"]).output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout).to_string();
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    for route in routes.lines() {
        let words: Vec<&str> = route.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "dev") else { continue };
        let uplink = words[at + 1];
        assert!(rules.contains(&format!("-o {uplink} -j DROP")), "no drop rule for {uplink}: {rules}");
    }
    let forward = std::process::Command::new("iptables").args(["-S", "FORWARD"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&forward.stdout).contains("-j MLOPS-NODE-FORWARD"),
        "the guard is in FORWARD"
    );
}
