//! Prometheus discovery for the local cluster's real node. Debian's `prometheus` is built
//! without Kubernetes service discovery, so this watches the node's pods and writes a
//! `file_sd_configs` target file: one target per pod annotated `prometheus.io/scrape:
//! "true"`, at `podIP:prometheus.io/port`, path `prometheus.io/path`, labelled `namespace`,
//! `pod` and every pod label (names sanitised the way Kubernetes discovery's labelmap
//! would). `hack/prometheus.sh` starts it beside Prometheus.
//!
//! Usage: `mlops-scrape-targets <kubeconfig> <node name> <target file>`

use std::{path::PathBuf, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::{Value, json};

fn label_name(k: &str) -> String {
    let mut s: String =
        k.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// The file_sd document for `pods` (sorted, so an unchanged set gives identical bytes).
fn targets(pods: &[Arc<Pod>]) -> Value {
    let mut groups: Vec<(String, Value)> = pods
        .iter()
        .filter(|p| p.annotations().get("prometheus.io/scrape").map(String::as_str) == Some("true"))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        })
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            let port = p.annotations().get("prometheus.io/port").cloned().or_else(|| {
                p.spec
                    .as_ref()?
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .next()
                    .map(|cp| cp.container_port.to_string())
            })?;
            let mut labels = serde_json::Map::new();
            for (k, v) in p.labels() {
                labels.insert(label_name(k), json!(v));
            }
            labels.insert("namespace".into(), json!(p.namespace().unwrap_or_default()));
            labels.insert("pod".into(), json!(p.name_any()));
            if let Some(path) = p.annotations().get("prometheus.io/path") {
                labels.insert("__metrics_path__".into(), json!(path));
            }
            let address = format!("{ip}:{port}");
            Some((address.clone(), json!({"targets": [address], "labels": labels})))
        })
        .collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Array(groups.into_iter().map(|(_, g)| g).collect())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kubeconfig, node, file] = args.as_slice() else {
        anyhow::bail!("usage: mlops-scrape-targets <kubeconfig> <node name> <target file>");
    };
    let file = PathBuf::from(file);
    let config =
        Config::from_custom_kubeconfig(Kubeconfig::read_from(kubeconfig)?, &KubeConfigOptions::default())
            .await?;
    let pods: Api<Pod> = Api::all(Client::try_from(config)?);
    // Only this node's pods: KWOK's fake nodes have pods with addresses nothing listens on.
    let selector = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (store, writer) = reflector::store();
    let mut events = Box::pin(watcher(pods, selector).default_backoff().reflect(writer).touched_objects());
    let mut last: Option<Value> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(_)) => continue,
                Some(Err(e)) => eprintln!("watching pods: {e}"),
                None => anyhow::bail!("the pod watch ended"),
            },
            _ = tick.tick() => {}
        }
        let doc = targets(&store.state());
        if last.as_ref() != Some(&doc) {
            // Atomic replace: Prometheus never reads half a file.
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
            std::fs::rename(&tmp, &file)?;
            last = Some(doc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_running_pods_only_with_sanitised_labels() {
        let pod = |name: &str, scrape: &str, ip: &str, phase: &str| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "ns",
                        "labels": {"app.kubernetes.io/name": "m", "mlops.dev/role": "canary"},
                        "annotations": {"prometheus.io/scrape": scrape, "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}},
                    "status": {"podIP": ip, "phase": phase}
                }))
                .unwrap(),
            )
        };
        let doc = targets(&[
            pod("b", "true", "10.244.0.3", "Running"),
            pod("a", "true", "10.244.0.2", "Running"),
            pod("off", "false", "10.244.0.4", "Running"),
            pod("done", "true", "10.244.0.5", "Succeeded"),
        ]);
        let groups = doc.as_array().unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0]["targets"][0], "10.244.0.2:8080");
        assert_eq!(groups[0]["labels"]["pod"], "a");
        assert_eq!(groups[0]["labels"]["namespace"], "ns");
        assert_eq!(groups[0]["labels"]["app_kubernetes_io_name"], "m");
        assert_eq!(groups[0]["labels"]["mlops_dev_role"], "canary");
        assert_eq!(groups[0]["labels"]["__metrics_path__"], "/metrics");
    }
}
