//! mlops-operator: one process that runs every controller of the `mlops.dev` API.
//!
//! `run` starts the controllers behind leader election and serves `/metrics`, `/healthz`
//! and `/readyz`; `crd` prints the CustomResourceDefinitions generated from `api/`, and
//! `rbac` the permissions the operator needs (from `rbac.rs`).

use mlops_operator::{
    analysis::{prometheus, scope},
    api,
    controllers::{
        self,
        pod_security::policy::{self, Level, PodPolicy},
    },
    http, leader, metrics, rbac, telemetry,
};

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "mlops-operator",
    version,
    about = "Runs the whole life of a machine-learning model on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every controller (behind leader election).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Print the RBAC rules the operator needs, as the YAML `rules` list of a Role.
    Rbac(RbacArgs),
    /// Stop the operator (scale its Deployment to zero) and remove its finalizer from every
    /// ModelVersion, so that uninstalling leaves no namespace stuck in Terminating. The
    /// chart's pre-delete hook runs it.
    Uninstall(UninstallArgs),
}

#[derive(clap::Args)]
struct UninstallArgs {
    /// The operator's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The operator's Deployment.
    #[arg(long)]
    deployment: String,
    /// Label selector of the operator's pods (waited for before any finalizer goes).
    #[arg(long)]
    selector: String,
    /// Release only this namespace's versions (a namespace-scoped install).
    #[arg(long, env = "MLOPS_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Seconds to wait for the operator's pods to stop.
    #[arg(long, default_value_t = 120)]
    timeout_seconds: u64,
}

/// Name of the leader-election Lease unless `--lease-name` says otherwise.
const DEFAULT_LEASE_NAME: &str = "mlops-operator-leader";

#[derive(clap::Args)]
struct RbacArgs {
    /// Which Role's rules.
    #[arg(value_enum, default_value = "operator")]
    role: RbacRole,
    /// The Lease the leader-election rules grant.
    #[arg(long, default_value = DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// The Deployment the uninstall hook scales to zero.
    #[arg(long, default_value = "mlops-operator")]
    deployment_name: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RbacRole {
    /// The controllers' ClusterRole (a Role in the watched namespace when it watches one).
    Operator,
    /// Leader election, a Role in the operator's own namespace.
    LeaderElection,
    /// The uninstall hook's rules on the versions (a ClusterRole, or a Role in the watched
    /// namespace).
    Uninstall,
    /// The uninstall hook's rules in the operator's own namespace (its Deployment's name as
    /// `--lease-name`'s counterpart `--deployment-name`).
    UninstallRelease,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "MLOPS_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "MLOPS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: telemetry::LogFormat,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Identity in the Lease; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace (a namespace-scoped install); all namespaces when unset.
    #[arg(long, env = "MLOPS_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Prometheus base URL for metric checks, e.g. http://prometheus.monitoring:9090.
    #[arg(long, env = "MLOPS_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// The series label that holds a pod's namespace in that Prometheus. Every query of an
    /// object is limited to series with this label equal to the object's namespace.
    #[arg(long, env = "MLOPS_PROMETHEUS_NAMESPACE_LABEL", default_value = prometheus::DEFAULT_NAMESPACE_LABEL)]
    prometheus_namespace_label: String,
    /// Seconds one Prometheus query may take in all (Prometheus is asked to stop evaluating
    /// a second earlier).
    #[arg(long, env = "MLOPS_PROMETHEUS_TIMEOUT_SECONDS", default_value_t = prometheus::DEFAULT_TIMEOUT_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    prometheus_timeout_seconds: u64,
    /// Bytes of a Prometheus answer read at most; a larger answer is a query error.
    #[arg(long, env = "MLOPS_PROMETHEUS_MAX_RESPONSE_BYTES", default_value_t = prometheus::DEFAULT_MAX_RESPONSE_BYTES)]
    prometheus_max_response_bytes: usize,
    /// Series in a Prometheus result at most; more is a query error.
    #[arg(long, env = "MLOPS_PROMETHEUS_MAX_SERIES", default_value_t = prometheus::DEFAULT_MAX_SERIES)]
    prometheus_max_series: usize,
    /// The reference runtime image (`mlops-runtime`); the data trigger's dataset checks of
    /// `s3://` and `pvc://` datasets run it.
    #[arg(long, env = "MLOPS_RUNTIME_IMAGE", default_value = controllers::inference_service::desired::MLOPS_RUNTIME_IMAGE)]
    runtime_image: String,
    /// Honour the `mlops.dev/test-fault-env` ModelVersion annotation, which injects faults
    /// into a version's server pods. For end-to-end tests and demos only: never in
    /// production, where it would let an annotation break a serving model.
    #[arg(long, env = "MLOPS_ENABLE_FAULT_INJECTION")]
    enable_fault_injection: bool,
    /// The Pod Security Standard level (restricted, baseline or privileged) every pod a
    /// user's spec shapes (a TrainingJob's trainer template) must meet, in namespaces
    /// without their own `--pod-security-level`. A spec breaking it gets no Job: it stalls
    /// with reason PodPolicyViolation naming each field.
    #[arg(long, env = "MLOPS_DEFAULT_POD_SECURITY_LEVEL", default_value = "restricted")]
    default_pod_security_level: Level,
    /// `NAMESPACE=LEVEL`: another level for one namespace (repeatable; the variable takes a
    /// comma-separated list), e.g. `research=baseline` to allow root trainers there.
    #[arg(long = "pod-security-level", env = "MLOPS_POD_SECURITY_LEVELS", value_delimiter = ',',
          value_parser = policy::parse_namespace_level, value_name = "NAMESPACE=LEVEL")]
    pod_security_levels: Vec<(String, Level)>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// Seconds a leader's claim lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds between renewals (and between attempts of a standby).
    #[arg(long, default_value_t = 2)]
    lease_retry_seconds: u64,
    /// Seconds the leader may go without renewing before it stops reconciling; less than
    /// --lease-duration-seconds [default: two thirds of it]
    #[arg(long)]
    lease_renew_deadline_seconds: Option<u64>,
    /// Seconds the reconciles in flight at SIGTERM may take to finish; then the operator
    /// releases its Lease and exits without them.
    #[arg(long, env = "MLOPS_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
}

/// Timeouts of the Kubernetes API client. A watch is one long request that the API server
/// ends after the watch's `timeoutSeconds` (kube-runtime asks for 290 s, and drops a watch
/// silent 5 s longer), so the read timeout (the longest silence on a connection) exceeds
/// that; a plain call silent that long is abandoned too. Lease requests have their own,
/// shorter timeouts (`leader`).
const KUBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KUBE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const KUBE_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// After the grace period, how long releasing the Lease may take before the process exits
/// anyway (the Lease then expires by itself).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", api::crds_yaml());
            Ok(())
        }
        Command::Rbac(args) => {
            match args.role {
                RbacRole::Operator => print!("{}", rbac::rules_yaml(rbac::OPERATOR)),
                RbacRole::LeaderElection => {
                    print!("{}", rbac::rules_yaml(&rbac::leader_election(&args.lease_name)))
                }
                RbacRole::Uninstall => print!("{}", rbac::rules_yaml(rbac::UNINSTALL)),
                RbacRole::UninstallRelease => {
                    print!("{}", rbac::rules_yaml(&rbac::uninstall_release(&args.deployment_name)))
                }
            }
            Ok(())
        }
        Command::Run(args) => block_on(run(*args)),
        Command::Uninstall(args) => block_on(async move {
            telemetry::init(telemetry::LogFormat::Text);
            let config = kube::Config::infer().await.context("connecting to the Kubernetes API")?;
            let uninstall = mlops_operator::uninstall::Uninstall {
                namespace: args.namespace,
                deployment: args.deployment,
                selector: args.selector,
                watch_namespace: args.watch_namespace.filter(|ns| !ns.is_empty()),
                timeout: Duration::from_secs(args.timeout_seconds),
            };
            uninstall.run(kube_client(&config)?).await
        }),
    }
}

/// Runs `work` to its end on a multi-threaded runtime. Whatever is still running then (a
/// request stalled past the grace period, a task on a blocking thread) does not hold the
/// exit.
fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(work);
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}

/// A Kubernetes client whose every call has a timeout (see [`KUBE_READ_TIMEOUT`]).
fn kube_client(config: &kube::Config) -> anyhow::Result<kube::Client> {
    let mut config = config.clone();
    config.connect_timeout = Some(KUBE_CONNECT_TIMEOUT);
    config.write_timeout = Some(KUBE_WRITE_TIMEOUT);
    config.read_timeout = Some(KUBE_READ_TIMEOUT);
    // Counted from each request, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// The Prometheus client from the flags, if a URL is given.
fn prometheus_client(args: &RunArgs) -> anyhow::Result<Option<prometheus::Prometheus>> {
    let label = &args.prometheus_namespace_label;
    if !scope::valid_label_name(label) {
        anyhow::bail!("--prometheus-namespace-label {label:?} is not a Prometheus label name");
    }
    let limits = prometheus::Limits {
        timeout: Duration::from_secs(args.prometheus_timeout_seconds),
        max_response_bytes: args.prometheus_max_response_bytes,
        max_series: args.prometheus_max_series,
    };
    Ok(args.prometheus_url.as_deref().map(|url| prometheus::Prometheus::new(url, label, limits)))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let lease_duration = Duration::from_secs(args.lease_duration_seconds);
    let timing = leader::Timing::new(
        lease_duration,
        args.lease_renew_deadline_seconds
            .map_or_else(|| leader::Timing::default_renew_deadline(lease_duration), Duration::from_secs),
        Duration::from_secs(args.lease_retry_seconds),
    )
    .context("invalid leader election timing (--lease-duration-seconds, --lease-renew-deadline-seconds, --lease-retry-seconds)")?;
    let prometheus = prometheus_client(&args)?;
    let config = kube::Config::infer().await.context("connecting to the Kubernetes API")?;
    let client = kube_client(&config)?;
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    let metrics = metrics::Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");
    let health = http::Health { metrics: metrics.clone(), ready: ready.clone() };
    let server = tokio::spawn(http::serve(listener, health, stopped(stop_rx.clone())));

    let identity = args.identity.unwrap_or_else(default_identity);
    // Ready while the replica's Lease requests get answers, as leader or as standby (the
    // elector sets it): a standby that reports unready would stall every rolling update
    // and block drains under the PodDisruptionBudget.
    let elector = leader::LeaderElector::new(
        client.clone(),
        leader::LeaseConfig {
            namespace: args.namespace.clone(),
            name: args.lease_name,
            identity: identity.clone(),
            timing,
        },
        leader::Signals { leader: metrics.leader.clone(), ready },
    );
    // Each term of leadership gets fresh controllers; the elector cancels them when the
    // term ends.
    let settings = controllers::Settings {
        watch_namespace: args.watch_namespace,
        prometheus,
        runtime_image: args.runtime_image,
        fault_injection: args.enable_fault_injection,
        pod_policy: PodPolicy {
            default: args.default_pod_security_level,
            namespaces: args.pod_security_levels.into_iter().collect(),
        },
    };
    // On SIGTERM a term finishes the reconciles in flight for the grace period at most: a
    // stalled request must not keep the process, and its renewed Lease, alive. Then the
    // elector releases the Lease.
    let term = || {
        let ctx =
            controllers::Context::new(client.clone(), metrics.clone(), identity.clone(), settings.clone());
        let controllers = controllers::run_all(ctx, stop_rx.clone());
        let grace_over = stopped(stop_rx.clone());
        async move {
            tokio::select! {
                () = controllers => {}
                () = async { grace_over.await; tokio::time::sleep(grace).await } => warn!(
                    grace_seconds = grace.as_secs(),
                    "reconciles still in flight after the grace period: exiting without them"
                ),
            }
        }
    };
    let exit_by = async {
        stopped(stop_rx.clone()).await;
        tokio::time::sleep(grace + RELEASE_TIMEOUT).await;
    };
    tokio::select! {
        () = elector.run(stop_rx.clone(), term) => {}
        () = exit_by => warn!("the Lease was not released in time; it expires by itself"),
    }
    let _ = tokio::time::timeout(RELEASE_TIMEOUT, server).await;
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    format!("{}-{}", host.trim(), std::process::id())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
