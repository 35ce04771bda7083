//! The Node object: registered Ready with the host's capacity, its Lease renewed and its
//! status heartbeat refreshed, the way a kubelet keeps itself alive in the API.

use std::time::Duration;

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::pods::now;

pub const LABEL: &str = "mlops.dev/local-node";
const LEASE_SECONDS: i32 = 40;
const RENEW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub kubelet_port: Option<u16>,
    /// Advertised CPU and memory (Kubernetes quantities); nothing is enforced.
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
}

impl NodeInfo {
    pub fn from_host(name: &str, address: &str, kubelet_port: Option<u16>, max_pods: u32) -> NodeInfo {
        NodeInfo {
            name: name.to_owned(),
            address: address.to_owned(),
            kubelet_port,
            cpu: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string(),
            memory: format!("{}Ki", meminfo_total_kib().unwrap_or(1024 * 1024)),
            max_pods,
        }
    }
}

fn meminfo_total_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// The Node object as created (metadata and spec).
pub fn node_object(info: &NodeInfo) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": info.name,
            "labels": {
                "kubernetes.io/hostname": info.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "node.kubernetes.io/instance-type": "mlops-local",
                LABEL: "true",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}
        },
        "spec": {}
    })
}

/// The node status: Ready, the host's capacity, the loopback address.
pub fn node_status(info: &NodeInfo, heartbeat: &str, ready_since: &str) -> Value {
    let capacity = json!({
        "cpu": info.cpu,
        "memory": info.memory,
        "pods": info.max_pods.to_string(),
        "ephemeral-storage": "100Gi",
    });
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": heartbeat, "lastTransitionTime": ready_since})
    };
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "mlops-node does not track memory pressure"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "mlops-node does not track disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "mlops-node does not track PID pressure"),
            cond("Ready", "True", "KubeletReady", "mlops-node is posting ready status (local development node: pods run as host processes)"),
        ],
        // No Hostname address: the API server would prefer it and resolve the name through
        // DNS for `kubectl logs`; the loopback IP is the only way to this node.
        "addresses": [{"type": "InternalIP", "address": info.address}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": info.kubelet_port.unwrap_or(0)}},
        "nodeInfo": {
            "machineID": read_trimmed("/etc/machine-id"),
            "systemUUID": read_trimmed("/etc/machine-id"),
            "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
            "osImage": "mlops-node host processes",
            "containerRuntimeVersion": format!("mlops-node://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.34.0-mlops-node",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        }
    })
}

/// Creates the Node if needed and writes its status.
pub async fn register(client: &Client, info: &NodeInfo) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(&info.name).await?.is_none() {
        let node: Node = serde_json::from_value(node_object(info))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => info!(node = %info.name, "registered node"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        // Re-assert our labels on an existing Node (e.g. after an agent restart).
        let meta = json!({"metadata": {"labels": node_object(info)["metadata"]["labels"].clone()}});
        nodes.patch(&info.name, &PatchParams::default(), &Patch::Merge(&meta)).await?;
    }
    let t = now();
    let patch = json!({"status": node_status(info, &t, &t)});
    // A merge patch replaces the lists (addresses, conditions) with ours.
    nodes.patch_status(&info.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Renews the Lease and refreshes the Ready heartbeat until `shutdown` fires.
pub async fn heartbeat(client: Client, info: NodeInfo, mut shutdown: watch::Receiver<bool>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let ready_since = now();
    loop {
        let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": info.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": info.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": t}
        });
        if let Err(e) =
            leases.patch(&info.name, &PatchParams::apply("mlops-node").force(), &Patch::Apply(&lease)).await
        {
            warn!("renewing node lease: {e}");
        }
        let patch = json!({"status": node_status(&info, &now(), &ready_since)});
        if let Err(e) = nodes.patch_status(&info.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            warn!("node status heartbeat: {e}");
            if let Err(e) = register(&client, &info).await {
                warn!("re-registering node: {e}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_ready_with_capacity_and_loopback_address() {
        let info = NodeInfo {
            name: "n".into(),
            address: "127.0.0.1".into(),
            kubelet_port: Some(10250),
            cpu: "2".into(),
            memory: "2048Ki".into(),
            max_pods: 110,
        };
        let s = node_status(&info, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"}, "status": s})).unwrap();
        let st = node.status.unwrap();
        assert_eq!(st.capacity.as_ref().unwrap()["cpu"].0, "2");
        assert_eq!(st.capacity.as_ref().unwrap()["memory"].0, "2048Ki");
        assert!(st.conditions.unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert_eq!(st.addresses.unwrap()[0].address, "127.0.0.1");
        assert_eq!(st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, 10250);
    }
}
