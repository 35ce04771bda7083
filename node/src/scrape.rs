//! Prometheus discovery for the pods of this node. Debian's `prometheus` is built without
//! Kubernetes service discovery, so the agent turns what it watches in the API server into
//! a `file_sd_configs` target file: one target per pod annotated
//! `prometheus.io/scrape: "true"`, at `podIP:prometheus.io/port`, path
//! `prometheus.io/path`, labelled `namespace`, `pod` and every pod label (names sanitised
//! the way Kubernetes discovery's labelmap would).

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{ResourceExt, runtime::reflector::Store};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::warn;

fn label_name(k: &str) -> String {
    let mut s: String =
        k.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// The file_sd document for `pods` (sorted, so an unchanged set gives identical bytes).
pub fn targets(pods: &[Arc<Pod>]) -> Value {
    let mut groups: Vec<(String, Value)> = pods
        .iter()
        .filter(|p| p.annotations().get("prometheus.io/scrape").map(String::as_str) == Some("true"))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        })
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            if !ip.starts_with("127.") {
                return None;
            }
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

/// Rewrites `file` (atomically) whenever the set of targets changes.
pub async fn run(store: Store<Pod>, file: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut last: Option<Value> = None;
    loop {
        let doc = targets(&store.state());
        if last.as_ref() != Some(&doc) {
            let tmp = file.with_extension("json.tmp");
            let body = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            match std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &file)) {
                Ok(()) => last = Some(doc),
                Err(e) => warn!("writing {}: {e}", file.display()),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_running_loopback_pods_only() {
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
            pod("b", "true", "127.1.0.2", "Running"),
            pod("a", "true", "127.1.0.1", "Running"),
            pod("off", "false", "127.1.0.3", "Running"),
            pod("fake", "true", "10.0.0.9", "Running"),
            pod("done", "true", "127.1.0.4", "Succeeded"),
        ]);
        let groups = doc.as_array().unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0]["targets"][0], "127.1.0.1:8080");
        assert_eq!(groups[0]["labels"]["pod"], "a");
        assert_eq!(groups[0]["labels"]["namespace"], "ns");
        assert_eq!(groups[0]["labels"]["app_kubernetes_io_name"], "m");
        assert_eq!(groups[0]["labels"]["mlops_dev_role"], "canary");
        assert_eq!(groups[0]["labels"]["__metrics_path__"], "/metrics");
    }
}
