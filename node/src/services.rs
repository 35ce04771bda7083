//! Services on loopback: for every TCP port of every Service with a selector, a proxy on
//! 127.0.0.1 that spreads connections round-robin over the ready pods of this node.
//!
//! Where to find it: the agent writes `127.0.0.1:PORT` into the Service's annotations
//! (`mlops.dev/local-address` for the first port, `mlops.dev/local-address-<port>` for
//! every port) and into the file `<services-dir>/<namespace>_<name>_<port>`.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::core::v1::{Pod, Service, ServicePort},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
};
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

pub const ADDRESS_ANNOTATION: &str = "mlops.dev/local-address";
/// How long a connection waits for a ready endpoint before it is closed.
const NO_ENDPOINT_WAIT: Duration = Duration::from_secs(3);

/// Pods that may receive a Service's traffic on `port`: same namespace, labels matching
/// the selector, Ready, not terminating, with an IP; sorted for a stable rotation.
pub fn endpoints(svc: &Service, port: &ServicePort, pods: &[Arc<Pod>]) -> Vec<SocketAddr> {
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let ns = svc.namespace().unwrap_or_default();
    let mut out: Vec<SocketAddr> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let target = target_port(p, port)?;
            Some(SocketAddr::new(ip, target))
        })
        .collect();
    out.sort();
    out
}

fn target_port(pod: &Pod, port: &ServicePort) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(p)) => u16::try_from(*p).ok(),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

fn is_tcp(p: &ServicePort) -> bool {
    p.protocol.as_deref().unwrap_or("TCP") == "TCP"
}

/// One listening proxy.
struct Proxy {
    addr: SocketAddr,
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ServiceProxies {
    namespace: String,
    name: String,
    svc: Service,
    /// By Service port number.
    ports: BTreeMap<i32, Proxy>,
}

/// A cache of the pods bound to `node`, kept current by a background task.
pub fn pod_store(client: &Client, node: &str) -> (Store<Pod>, tokio::task::JoinHandle<()>) {
    let (store, writer) = reflector::store::<Pod>();
    let pods_api: Api<Pod> = Api::all(client.clone());
    let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pod_stream = reflector(writer, watcher(pods_api, pod_cfg).default_backoff()).touched_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(pod_stream);
        while let Some(ev) = pod_stream.next().await {
            if let Err(e) = ev {
                warn!("pod cache watch: {e}");
            }
        }
    });
    (store, task)
}

pub async fn run(client: Client, store: Store<Pod>, dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        warn!("creating {}: {e}", dir.display());
    }
    let svc_api: Api<Service> = Api::all(client.clone());
    let mut services = watcher(svc_api, watcher::Config::default()).default_backoff().boxed();
    let mut proxies: HashMap<String, ServiceProxies> = HashMap::new();
    let mut refresh = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            ev = services.try_next() => match ev {
                Ok(Some(watcher::Event::Apply(svc) | watcher::Event::InitApply(svc))) => {
                    reconcile(&client, &dir, &mut proxies, svc).await;
                }
                Ok(Some(watcher::Event::Delete(svc))) => {
                    if let Some(sp) = proxies.remove(&svc.uid().unwrap_or_default()) {
                        remove_files(&dir, &sp);
                        info!(service = %format!("{}/{}", sp.namespace, sp.name), "service proxies stopped");
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => warn!("service watch: {e}"),
            },
            _ = refresh.tick() => {
                let pods = store.state();
                for sp in proxies.values() {
                    for (port_no, proxy) in &sp.ports {
                        let Some(port) = sp.svc.spec.as_ref().and_then(|s| s.ports.as_ref()).and_then(|ps| ps.iter().find(|p| p.port == *port_no)) else { continue };
                        let eps = endpoints(&sp.svc, port, &pods);
                        let mut cur = proxy.backends.write().expect("backends lock");
                        if *cur != eps {
                            debug!(service = %sp.name, port = port_no, ?eps, "endpoints changed");
                            *cur = eps;
                        }
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    for sp in proxies.values() {
        remove_files(&dir, sp);
    }
}

fn file_name(sp: &ServiceProxies, port: i32) -> String {
    format!("{}_{}_{}", sp.namespace, sp.name, port)
}

fn remove_files(dir: &std::path::Path, sp: &ServiceProxies) {
    for port in sp.ports.keys() {
        let _ = std::fs::remove_file(dir.join(file_name(sp, *port)));
    }
}

async fn reconcile(
    client: &Client,
    dir: &std::path::Path,
    proxies: &mut HashMap<String, ServiceProxies>,
    svc: Service,
) {
    let uid = svc.uid().unwrap_or_default();
    let namespace = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let spec = svc.spec.clone().unwrap_or_default();
    let has_selector = spec.selector.as_ref().is_some_and(|s| !s.is_empty());
    if spec.type_.as_deref() == Some("ExternalName") || !has_selector {
        if let Some(sp) = proxies.remove(&uid) {
            remove_files(dir, &sp);
        }
        return;
    }
    let sp = proxies.entry(uid).or_insert_with(|| ServiceProxies {
        namespace: namespace.clone(),
        name: name.clone(),
        svc: svc.clone(),
        ports: BTreeMap::new(),
    });
    sp.svc = svc.clone();
    let wanted: Vec<&ServicePort> = spec.ports.iter().flatten().filter(|p| is_tcp(p)).collect();
    let stale: Vec<i32> =
        sp.ports.keys().filter(|k| !wanted.iter().any(|p| p.port == **k)).copied().collect();
    for k in stale {
        let _ = std::fs::remove_file(dir.join(file_name(sp, k)));
        sp.ports.remove(&k);
    }
    let annotations = svc.annotations();
    for p in &wanted {
        if sp.ports.contains_key(&p.port) {
            continue;
        }
        // Keep the address a previous agent published, when it is still free.
        let previous = annotations
            .get(&format!("{ADDRESS_ANNOTATION}-{}", p.port))
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .filter(|a| a.ip().is_loopback());
        let listener = match previous {
            Some(a) => match TcpListener::bind(a).await {
                Ok(l) => Ok(l),
                Err(_) => TcpListener::bind("127.0.0.1:0").await,
            },
            None => TcpListener::bind("127.0.0.1:0").await,
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                warn!(service = %name, port = p.port, "binding proxy: {e}");
                continue;
            }
        };
        let addr = listener.local_addr().expect("bound listener has an address");
        let backends = Arc::new(RwLock::new(Vec::new()));
        let task = tokio::spawn(serve(listener, backends.clone()));
        info!(service = %format!("{namespace}/{name}"), port = p.port, %addr, "service proxy listening");
        sp.ports.insert(p.port, Proxy { addr, backends, task });
    }
    // Publish the addresses (files always; annotations only when they change).
    let mut wanted_annotations = BTreeMap::new();
    for (i, (port, proxy)) in sp.ports.iter().enumerate() {
        let _ = std::fs::write(dir.join(file_name(sp, *port)), format!("{}\n", proxy.addr));
        if i == 0 {
            wanted_annotations.insert(ADDRESS_ANNOTATION.to_owned(), proxy.addr.to_string());
        }
        wanted_annotations.insert(format!("{ADDRESS_ANNOTATION}-{port}"), proxy.addr.to_string());
    }
    let differs = wanted_annotations.iter().any(|(k, v)| annotations.get(k) != Some(v));
    if differs {
        let api: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let patch = json!({"metadata": {"annotations": wanted_annotations}});
        if let Err(e) = api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            warn!(service = %name, "publishing local address: {e}");
        }
    }
}

/// Accepts connections and hands each to the next backend in turn.
async fn serve(listener: TcpListener, backends: Arc<RwLock<Vec<SocketAddr>>>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { continue };
        let backends = backends.clone();
        let next = next.clone();
        tokio::spawn(async move {
            // A pod that just became Ready may reach clients before the endpoint refresh:
            // hold the connection briefly rather than refuse it.
            let mut list = backends.read().expect("backends lock").clone();
            let deadline = tokio::time::Instant::now() + NO_ENDPOINT_WAIT;
            while list.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                list = backends.read().expect("backends lock").clone();
            }
            if list.is_empty() {
                return;
            }
            let start = next.fetch_add(1, Ordering::Relaxed);
            for i in 0..list.len() {
                let target = list[(start + i) % list.len()];
                let connect =
                    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(target))
                        .await;
                if let Ok(Ok(mut outbound)) = connect {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ns: &str, app: &str, ip: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ready_matching_pods_only_with_named_target_port() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}
        }))
        .unwrap();
        let pods = vec![
            pod("a", "ns", "web", "127.1.0.2", true),
            pod("b", "ns", "web", "127.1.0.1", true),
            pod("c", "ns", "web", "127.1.0.3", false),
            pod("d", "other", "web", "127.1.0.4", true),
            pod("e", "ns", "db", "127.1.0.5", true),
        ];
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        let eps = endpoints(&svc, port, &pods);
        assert_eq!(eps, vec!["127.1.0.1:8080".parse().unwrap(), "127.1.0.2:8080".parse().unwrap()]);
    }

    #[tokio::test]
    async fn proxy_round_robins_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut addrs = Vec::new();
        for id in [b'a', b'b'] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap());
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = l.accept().await.unwrap();
                    let _ = s.write_all(&[id]).await;
                }
            });
        }
        addrs.sort();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(serve(front, Arc::new(RwLock::new(addrs))));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut s = tokio::net::TcpStream::connect(front_addr).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            seen.push(b[0]);
        }
        assert_eq!(seen.iter().filter(|b| **b == b'a').count(), 2);
        assert_eq!(seen.iter().filter(|b| **b == b'b').count(), 2);
    }
}
