//! mlops-node: a local node agent for development and tests. It registers a Node, runs
//! the containers of the pods bound to it as host processes (no isolation: this is not a
//! kubelet), and exposes Services as TCP proxies on 127.0.0.1.
//!
//! Layout: `node` keeps the Node and its Lease alive; `pods` runs pods (with `container`,
//! `env`, `probe`, `process`, `status` as its parts); `services` runs the Service proxies;
//! `kubelet` serves `kubectl logs` (`runlog` says which bytes of a log are which run);
//! `images`, `ipam` and `backoff` are small pure pieces.

mod backoff;
mod container;
mod env;
mod images;
mod ipam;
mod kubelet;
mod node;
mod pods;
mod probe;
mod process;
mod runlog;
mod scrape;
mod services;
mod status;
mod volumes;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use clap::Parser;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::sync::watch;
use tracing::{info, warn};

/// Runs pods bound to this node as host processes (development and tests only).
#[derive(Debug, Parser)]
#[command(name = "mlops-node", version)]
struct Args {
    /// Name of the Node object to register.
    #[arg(long, default_value = "local-node")]
    node_name: String,
    /// Kubeconfig to use (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// YAML file mapping image patterns to local executables (`images: {pattern: exe}`).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Where pod working directories, logs and termination messages go.
    #[arg(long, default_value = ".dev/node")]
    state_dir: PathBuf,
    /// Where the Service proxies' addresses are written, one file per Service port
    /// (`<namespace>_<name>_<port>`, content `127.0.0.1:PORT`).
    #[arg(long, default_value = ".dev/services")]
    services_dir: PathBuf,
    /// First CrashLoopBackOff delay in seconds (doubles per crash; the kubelet uses 10).
    #[arg(long, default_value_t = 10.0)]
    backoff_base_seconds: f64,
    /// Longest CrashLoopBackOff delay in seconds.
    #[arg(long, default_value_t = 300.0)]
    backoff_max_seconds: f64,
    /// The node's address (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// CPU the node advertises (default: the host's CPU count). Only the scheduler's
    /// bookkeeping: processes are not limited.
    #[arg(long)]
    cpu: Option<String>,
    /// Memory the node advertises (default: the host's MemTotal), e.g. 64Gi.
    #[arg(long)]
    memory: Option<String>,
    /// Pods the node advertises room for.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Prometheus `file_sd_configs` file listing the annotated pods of this node
    /// (default: <state-dir>/prometheus-targets.json).
    #[arg(long)]
    prometheus_sd_file: Option<PathBuf>,
    /// Port of the HTTPS endpoint the API server calls for `kubectl logs` (0: off).
    #[arg(long, default_value_t = 0)]
    kubelet_port: u16,
    /// Certificate (PEM) for the kubelet endpoint, valid for the node address.
    #[arg(long, requires = "kubelet_key")]
    kubelet_cert: Option<PathBuf>,
    /// Private key (PEM) for the kubelet endpoint.
    #[arg(long, requires = "kubelet_cert")]
    kubelet_key: Option<PathBuf>,
    /// Internal: run as the agent's watchdog for this marker (see `process::start_watchdog`).
    #[arg(long, hide = true)]
    watchdog: Option<String>,
}

/// Where the pod address cursor starts: a different place per agent start (in steps of
/// 256 so the addresses stay easy to read).
fn ip_offset() -> u32 {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    ((secs % 60_000) as u32) * 256
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    if let Some(marker) = &args.watchdog {
        let killed = process::watchdog(std::io::stdin(), marker);
        if killed > 0 {
            warn!(killed, "the node agent is gone: killed the processes it left behind");
        }
        return Ok(());
    }
    if !args.address.starts_with("127.") {
        anyhow::bail!("--address must be a loopback address, got {}", args.address);
    }
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    let client = Client::try_from(config)?;
    let images = match &args.images {
        Some(p) => images::ImageMap::load(p)?,
        None => images::ImageMap::default(),
    };
    info!(mappings = images.images.len(), "image map loaded");
    let state_dir = std::path::absolute(&args.state_dir)?;
    std::fs::create_dir_all(&state_dir)?;
    // Processes are marked with the state directory, unique per agent (two checkouts may
    // each run a node called local-node).
    let marker = state_dir.display().to_string();
    let leftovers = process::kill_marked(&marker);
    if leftovers > 0 {
        warn!(leftovers, "killed processes left behind by an earlier agent");
    }
    // Held until this process ends; its closing tells the watchdog to clean up.
    let _watchdog = process::start_watchdog(&marker)?;
    let services_dir = std::path::absolute(&args.services_dir)?;

    let kubelet_port = match (&args.kubelet_cert, &args.kubelet_key, args.kubelet_port) {
        (Some(_), Some(_), p) if p != 0 => Some(p),
        _ => None,
    };
    let mut info = node::NodeInfo::from_host(&args.node_name, &args.address, kubelet_port, args.max_pods);
    if let Some(cpu) = &args.cpu {
        info.cpu = cpu.clone();
    }
    if let Some(memory) = &args.memory {
        info.memory = memory.clone();
    }
    node::register(&client, &info).await?;

    let agent = Arc::new(pods::Agent {
        client: client.clone(),
        node: args.node_name.clone(),
        host_ip: args.address.clone(),
        images,
        state_dir: state_dir.clone(),
        backoff: backoff::Backoff {
            base: Duration::from_secs_f64(args.backoff_base_seconds.max(0.0)),
            max: Duration::from_secs_f64(args.backoff_max_seconds.max(args.backoff_base_seconds).max(0.0)),
        },
        spawner: process::Spawner::new(tokio::runtime::Handle::current()),
        ips: Mutex::new(ipam::IpPool::starting_at(ip_offset())),
        hostnames: Mutex::new(Default::default()),
        shutting_down: AtomicBool::new(false),
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "mlops-node".into(),
                instance: Some(args.node_name.clone()),
            },
        ),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(node::heartbeat(client.clone(), info.clone(), shutdown_rx.clone()));
    let pod_task = tokio::spawn(pods::run(agent.clone(), shutdown_rx.clone()));
    let (store, store_task) = services::pod_store(&client, &args.node_name);
    let svc_task =
        tokio::spawn(services::run(client.clone(), store.clone(), services_dir, shutdown_rx.clone()));
    let sd_file = match &args.prometheus_sd_file {
        Some(p) => std::path::absolute(p)?,
        None => state_dir.join("prometheus-targets.json"),
    };
    let scrape_task = tokio::spawn(scrape::run(store, sd_file, shutdown_rx.clone()));
    if let (Some(port), Some(cert), Some(key)) = (kubelet_port, &args.kubelet_cert, &args.kubelet_key) {
        let server = kubelet::Server { state_dir: state_dir.clone(), address: args.address.clone(), port };
        let (cert, key) = (cert.clone(), key.clone());
        let rx = shutdown_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = server.run(&cert, &key, rx).await {
                warn!("kubelet endpoint: {e}");
            }
        });
    }
    info!(node = %args.node_name, "node agent running");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        _ = term.recv() => info!("terminated"),
    }
    shutdown_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), pod_task).await;
    let _ = svc_task.await;
    let _ = scrape_task.await;
    store_task.abort();
    let _ = heartbeat.await;
    // Anything that escaped its process group still carries the marker.
    let stragglers = process::kill_marked(&marker);
    info!(stragglers, "node agent stopped");
    Ok(())
}
