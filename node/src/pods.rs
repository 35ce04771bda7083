//! Pods bound to this node: one worker task per pod runs its containers as host
//! processes and reports their state through the pods/status subresource.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder},
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::{
    backoff::Backoff,
    container::{Outcome, run_container},
    images::ImageMap,
    ipam::IpPool,
    process::Spawner,
    status::{ConditionClock, ContainerRecord, PodRecord, State},
};

/// Everything the pod workers share.
pub struct Agent {
    pub client: Client,
    pub node: String,
    pub host_ip: String,
    pub images: ImageMap,
    pub state_dir: PathBuf,
    pub backoff: Backoff,
    pub spawner: Spawner,
    pub ips: Mutex<IpPool>,
    /// (namespace, hostname, subdomain) → pod IP, for headless-Service names.
    pub hostnames: Mutex<HashMap<(String, String, String), String>>,
    pub shutting_down: AtomicBool,
    /// Pod Events (Started, Killing, BackOff, Unhealthy, Failed), as a kubelet records them.
    pub recorder: Recorder,
}

/// Why and how a pod's processes stop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stop {
    pub(crate) grace: Duration,
    /// Delete the pod object (grace 0) once the processes are gone.
    pub(crate) remove_object: bool,
}

struct Worker {
    pod: watch::Sender<Pod>,
    stop: watch::Sender<Option<Stop>>,
    task: tokio::task::JoinHandle<()>,
}

fn uid_of(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

fn is_terminal(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn deletion_grace(p: &Pod) -> Duration {
    let secs = p
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| p.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

/// Watches the pods bound to this node until `shutdown` fires, then stops every process.
pub async fn run(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", agent.node));
    let mut events = watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            ev = events.try_next() => match ev {
                Ok(Some(watcher::Event::Apply(p))) => on_pod(&agent, &mut workers, p),
                Ok(Some(watcher::Event::InitApply(p))) => {
                    listed.insert(uid_of(&p));
                    on_pod(&agent, &mut workers, p);
                }
                Ok(Some(watcher::Event::Delete(p))) => gone(&mut workers, &uid_of(&p)),
                Ok(Some(watcher::Event::Init)) => listed.clear(),
                Ok(Some(watcher::Event::InitDone)) => {
                    // Pods deleted while the watch was down.
                    let missing: Vec<String> = workers.keys().filter(|u| !listed.contains(*u)).cloned().collect();
                    for uid in missing {
                        gone(&mut workers, &uid);
                    }
                }
                Ok(None) => break,
                Err(e) => warn!("pod watch: {e}"),
            },
            _ = shutdown.changed() => break,
        }
        workers.retain(|_, w| !w.task.is_finished());
    }
    agent.shutting_down.store(true, Ordering::SeqCst);
    info!(pods = workers.len(), "stopping every pod's processes");
    for w in workers.values() {
        let grace =
            w.pod.borrow().spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
        let grace = Duration::from_secs(grace.clamp(0, 3) as u64);
        w.stop.send_replace(Some(Stop { grace, remove_object: false }));
    }
    for (_, w) in workers {
        let _ = tokio::time::timeout(Duration::from_secs(8), w.task).await;
    }
}

fn gone(workers: &mut HashMap<String, Worker>, uid: &str) {
    if let Some(w) = workers.get(uid) {
        let already = w.stop.borrow().is_some();
        if !already {
            w.stop.send_replace(Some(Stop { grace: Duration::from_secs(2), remove_object: false }));
        }
    }
}

fn on_pod(agent: &Arc<Agent>, workers: &mut HashMap<String, Worker>, pod: Pod) {
    let uid = uid_of(&pod);
    let deleting = pod.metadata.deletion_timestamp.is_some();
    if let Some(w) = workers.get(&uid) {
        if deleting && w.stop.borrow().is_none() {
            w.stop.send_replace(Some(Stop { grace: deletion_grace(&pod), remove_object: true }));
        }
        w.pod.send_replace(pod);
        return;
    }
    if is_terminal(&pod) || deleting {
        // Nothing runs for it here (finished before this agent started, or deleted before it
        // ran): only the object needs removing once it is being deleted.
        if deleting {
            let agent = agent.clone();
            tokio::spawn(async move { remove_pod(&agent, &pod).await });
        }
        return;
    }
    let (pod_tx, pod_rx) = watch::channel(pod);
    let (stop_tx, stop_rx) = watch::channel(None);
    // Addresses are taken here, in event order, so a pod restarted by a new agent gets
    // its recorded address back before a new pod could take it.
    let ip = assign_ip(agent, &pod_rx.borrow());
    let task = tokio::spawn(run_pod(agent.clone(), pod_rx, stop_rx, ip));
    workers.insert(uid, Worker { pod: pod_tx, stop: stop_tx, task });
}

async fn remove_pod(agent: &Agent, pod: &Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => info!(pod = %format!("{ns}/{name}"), "pod removed"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => warn!(pod = %format!("{ns}/{name}"), "removing pod: {e}"),
    }
}

/// Shared between a pod's container runners and its status writer.
pub(crate) struct PodShared {
    pub(crate) record: Mutex<PodRecord>,
    pub(crate) changed: Notify,
}

impl PodShared {
    pub(crate) fn update(&self, init: bool, idx: usize, f: impl FnOnce(&mut ContainerRecord)) {
        {
            let mut rec = self.record.lock().expect("pod record lock");
            let list = if init { &mut rec.init } else { &mut rec.containers };
            if let Some(c) = list.get_mut(idx) {
                f(c);
            }
        }
        self.changed.notify_one();
    }
}

/// Sends status patches only when the computed status differs from the last one sent.
struct StatusWriter {
    agent: Arc<Agent>,
    api: Api<Pod>,
    name: String,
    last: tokio::sync::Mutex<(Option<Value>, ConditionClock)>,
}

impl StatusWriter {
    async fn flush(&self, shared: &Arc<PodShared>) {
        // An agent that is going away says nothing: the processes it kills on the way out
        // did not fail, and a restarted agent runs the pod again.
        if self.agent.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let rec = shared.record.lock().expect("pod record lock").clone();
        let mut guard = self.last.lock().await;
        let (last, clock) = &mut *guard;
        let mut probe_clock = clock.clone();
        let body = crate::status::status_body(&rec, &mut probe_clock, &now());
        if last.as_ref() == Some(&body) {
            return;
        }
        let patch = json!({"status": body});
        match self.api.patch_status(&self.name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
            Ok(_) => {
                *clock = probe_clock;
                *last = Some(body);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(pod = %self.name, "status update (retrying): {e}");
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    shared.changed.notify_one();
                });
            }
        }
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Records an Event about the pod, in the background (Events are best effort).
pub(crate) fn record(ctx: &PodCtx, warning: bool, reason: &str, note: String) {
    if ctx.agent.shutting_down.load(Ordering::SeqCst) {
        return;
    }
    let recorder = ctx.agent.recorder.clone();
    let reference = kube::Resource::object_ref(&ctx.pod, &());
    let ev = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_owned(),
        note: Some(note),
        action: reason.to_owned(),
        secondary: None,
    };
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &reference).await {
            debug!("publishing event: {e}");
        }
    });
}

/// Everything a container runner needs about its pod.
pub(crate) struct PodCtx {
    pub(crate) agent: Arc<Agent>,
    pub(crate) pod: Pod,
    pub(crate) ns: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) ip: String,
    pub(crate) dir: PathBuf,
    pub(crate) shared: Arc<PodShared>,
}

async fn run_pod(
    agent: Arc<Agent>,
    pod_rx: watch::Receiver<Pod>,
    mut stop_rx: watch::Receiver<Option<Stop>>,
    ip: Option<PodIp>,
) {
    let pod = pod_rx.borrow().clone();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = uid_of(&pod);
    let spec = pod.spec.clone().unwrap_or_default();

    let dns_key = spec
        .subdomain
        .clone()
        .map(|sub| (ns.clone(), spec.hostname.clone().unwrap_or_else(|| name.clone()), sub));
    if let (Some(key), Some(ip)) = (&dns_key, &ip) {
        agent.hostnames.lock().expect("hostnames lock").insert(key.clone(), ip.addr().to_string());
    }
    let dir = agent.state_dir.join("pods").join(format!("{ns}_{name}_{}", &uid[..uid.len().min(8)]));
    if let Err(e) = std::fs::create_dir_all(dir.join("logs")) {
        warn!("creating {}: {e}", dir.display());
    }
    info!(pod = %format!("{ns}/{name}"), ip = ?ip, dir = %dir.display(), "starting pod");

    let prev_restarts = |list: Option<&Vec<k8s_openapi::api::core::v1::ContainerStatus>>, n: &str| {
        list.and_then(|l| l.iter().find(|s| s.name == n)).map(|s| s.restart_count).unwrap_or(0)
    };
    let status = pod.status.clone().unwrap_or_default();
    let record = PodRecord {
        pod_ip: ip.map(|i| i.addr().to_string()),
        host_ip: agent.host_ip.clone(),
        start_time: status.start_time.as_ref().map(|t| t.0.to_string()).unwrap_or_else(now),
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default()))
            .collect(),
        containers: spec
            .containers
            .iter()
            .map(|c| ContainerRecord {
                restart_count: prev_restarts(status.container_statuses.as_ref(), &c.name),
                ..ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default())
            })
            .collect(),
        gates: crate::status::gates(&pod),
    };
    let shared = Arc::new(PodShared { record: Mutex::new(record), changed: Notify::new() });
    // Readiness gates are opened by other controllers, on the pod object: follow it.
    let gates_task = {
        let (shared, mut pod_rx) = (shared.clone(), pod_rx.clone());
        tokio::spawn(async move {
            while pod_rx.changed().await.is_ok() {
                let gates = crate::status::gates(&pod_rx.borrow_and_update());
                let changed = {
                    let mut rec = shared.record.lock().expect("pod record lock");
                    std::mem::replace(&mut rec.gates, gates.clone()) != gates
                };
                if changed {
                    shared.changed.notify_one();
                }
            }
        })
    };
    let writer = Arc::new(StatusWriter {
        agent: agent.clone(),
        api: Api::namespaced(agent.client.clone(), &ns),
        name: name.clone(),
        last: tokio::sync::Mutex::new((None, ConditionClock::default())),
    });
    let writer_task = {
        let (writer, shared) = (writer.clone(), shared.clone());
        tokio::spawn(async move {
            loop {
                shared.changed.notified().await;
                // Coalesce bursts of changes into one patch.
                tokio::time::sleep(Duration::from_millis(100)).await;
                writer.flush(&shared).await;
            }
        })
    };
    shared.changed.notify_one();

    let ctx = Arc::new(PodCtx {
        agent: agent.clone(),
        pod: pod.clone(),
        ns: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
        ip: ip.map(|i| i.addr().to_string()).unwrap_or_default(),
        dir,
        shared: shared.clone(),
    });

    let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let mut stopped = false;
    if ip.is_none() {
        for i in 0..spec.containers.len() {
            shared.update(false, i, |c| {
                c.state = State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: Some("no free loopback address for the pod".into()),
                };
            });
        }
    } else {
        let mut init_ok = true;
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            match run_container(ctx.clone(), c.clone(), i, true, policy.clone(), stop_rx.clone()).await {
                Outcome::Finished(0) => {}
                Outcome::Finished(_) => {
                    init_ok = false;
                    break;
                }
                Outcome::Stopped => {
                    stopped = true;
                    init_ok = false;
                    break;
                }
            }
        }
        if init_ok {
            let runners: Vec<_> = spec
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    tokio::spawn(run_container(
                        ctx.clone(),
                        c.clone(),
                        i,
                        false,
                        policy.clone(),
                        stop_rx.clone(),
                    ))
                })
                .collect();
            for r in futures::future::join_all(runners).await {
                if matches!(r, Ok(Outcome::Stopped) | Err(_)) {
                    stopped = true;
                }
            }
        }
    }
    writer.flush(&shared).await;
    // The pod has finished (or is stopping): hold its address until the object goes.
    let stop = if stopped { *stop_rx.borrow() } else { None };
    let stop = match stop {
        Some(s) => Some(s),
        None => wait_stop(&mut stop_rx).await,
    };
    writer_task.abort();
    gates_task.abort();
    if let Some(stop) = stop
        && stop.remove_object
        && !agent.shutting_down.load(Ordering::SeqCst)
    {
        writer.flush(&shared).await;
        remove_pod(&agent, &pod).await;
    }
    if let Some(key) = dns_key {
        agent.hostnames.lock().expect("hostnames lock").remove(&key);
    }
    if let Some(PodIp::Own(ip)) = ip {
        agent.ips.lock().expect("ip pool lock").release(ip);
    }
    debug!(pod = %format!("{ns}/{name}"), "pod worker done");
}

/// Waits for a stop request; a dropped sender counts as one that keeps the object.
pub(crate) async fn wait_stop(rx: &mut watch::Receiver<Option<Stop>>) -> Option<Stop> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => *v,
        Err(_) => Some(Stop { grace: Duration::from_secs(1), remove_object: false }),
    }
}

/// Sleeps for `d` unless a stop arrives first.
pub(crate) async fn sleep_or_stop(d: Duration, rx: &mut watch::Receiver<Option<Stop>>) -> Option<Stop> {
    tokio::select! {
        _ = tokio::time::sleep(d) => None,
        s = wait_stop(rx) => s,
    }
}

/// A pod's address: its own loopback address, or the node's for `hostNetwork` pods.
#[derive(Debug, Clone, Copy)]
enum PodIp {
    Own(Ipv4Addr),
    Host(Ipv4Addr),
}

impl PodIp {
    fn addr(self) -> Ipv4Addr {
        match self {
            PodIp::Own(a) | PodIp::Host(a) => a,
        }
    }
}

fn assign_ip(agent: &Agent, pod: &Pod) -> Option<PodIp> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return agent.host_ip.parse().ok().map(PodIp::Host);
    }
    Some(PodIp::Own(allocate(agent, pod)?))
}

fn allocate(agent: &Agent, pod: &Pod) -> Option<Ipv4Addr> {
    let mut pool = agent.ips.lock().expect("ip pool lock");
    let previous =
        pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|s| s.parse::<Ipv4Addr>().ok());
    if let Some(ip) = previous
        && pool.reserve(ip)
    {
        return Some(ip);
    }
    pool.allocate()
}
