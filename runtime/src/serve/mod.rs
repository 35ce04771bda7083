//! The `serve` command: load an artifact, answer Open Inference Protocol v2
//! requests, export metrics, drain on SIGTERM.
//!
//! Start-up order: bind, serve liveness at once, load the model in the
//! background, report ready only when it is loaded. A model that cannot be
//! loaded (or `MLOPS_FAULT_CRASH_ON_LOAD`) ends the process non-zero, so the
//! pod restarts and the operator's health checks see it.
//!
//! Every connection and request is bounded in time, number and size
//! (`limits.rs`, enforced by `transport.rs` and the infer handler).

pub mod fault;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod protocol;
mod transport;

use crate::artifact::{Artifact, LoadedModel};
use fault::Faults;
pub use limits::Limits;
use metrics::{LimitMetrics, ServerMetrics};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug)]
pub struct ServeConfig {
    /// Name in the protocol and metrics; defaults to the model card's name.
    pub model_name: Option<String>,
    /// Version in the protocol and metrics; defaults to the card's run id.
    pub model_version: Option<String>,
    pub model_uri: String,
    pub model_digest: Option<String>,
    pub max_body_bytes: usize,
    /// Timeouts, requests in flight, answer size.
    pub limits: Limits,
    pub drift_window: usize,
    pub drift_min_rows: usize,
    /// After SIGTERM: time during which readiness answers 503 but requests are
    /// still accepted and served, so that endpoints, kube-proxy and ingresses
    /// stop routing here before the listener closes.
    pub shutdown_delay: Duration,
    /// Longest wait for in-flight requests once the listener is closed.
    pub drain: Duration,
    pub faults: Faults,
}

/// Upper bounds of the duration settings: the pod's termination grace period
/// (30 s by default) must cover the delay plus the drain.
pub const MAX_SHUTDOWN_DELAY_SECONDS: f64 = 300.0;
pub const MAX_DRAIN_SECONDS: f64 = 3600.0;

/// A duration setting given in seconds (`name` is its environment variable):
/// finite and within `0..=max`, else a one-line error naming it.
pub fn seconds_setting(name: &str, seconds: f64, max: f64) -> Result<Duration, String> {
    if seconds.is_finite() && (0.0..=max).contains(&seconds) {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!("{name} must be a number of seconds from 0 to {max}, got {seconds}"))
    }
}

/// Listen address: `POD_IP` when set (the pod's own address), else all
/// interfaces, so the kubelet's probes and the Service both reach it.
pub fn listen_address(pod_ip: Option<&str>, port: u16) -> Result<SocketAddr, String> {
    let ip = match pod_ip.map(str::trim).filter(|s| !s.is_empty()) {
        Some(ip) => ip.parse::<IpAddr>().map_err(|_| format!("POD_IP {ip:?} is not an IP address"))?,
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    Ok(SocketAddr::new(ip, port))
}

/// A loaded model with everything the hot path needs precomputed.
pub struct Served {
    pub name: String,
    pub version: String,
    pub model: LoadedModel,
    pub metrics: ServerMetrics,
    /// Class names as JSON string literals, ready to copy into responses.
    pub class_json: Vec<String>,
    /// `"model_name":…,"model_version":…` prefix of every infer response.
    pub response_head: String,
    /// Longest `predict` value in an answer: a class name, or a number.
    pub predict_value_bytes: usize,
    pub regression: bool,
}

pub struct AppState {
    pub config: ServeConfig,
    pub served: OnceLock<Served>,
    pub draining: AtomicBool,
    /// Requests admitted and not yet answered (see `transport.rs`).
    pub in_flight: AtomicUsize,
    /// What the limits refused, from the first connection on.
    pub limit_metrics: LimitMetrics,
}

impl AppState {
    pub fn new(config: ServeConfig) -> Arc<AppState> {
        Arc::new(AppState {
            config,
            served: OnceLock::new(),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            limit_metrics: LimitMetrics::default(),
        })
    }

    pub fn ready(&self) -> bool {
        self.served.get().is_some() && !self.draining.load(Ordering::Relaxed)
    }
}

/// Reads, verifies and compiles the artifact (blocking I/O).
pub fn load(config: &ServeConfig) -> Result<Served, String> {
    if config.faults.crash_on_load {
        return Err("MLOPS_FAULT_CRASH_ON_LOAD is set: refusing to load (test-only fault)".into());
    }
    let bytes = crate::storage::read(&config.model_uri).map_err(|e| e.to_string())?;
    let digest = crate::sha256_digest(&bytes);
    if let Some(pin) = config.model_digest.as_deref().filter(|p| !p.is_empty())
        && !crate::digest_matches(pin, &digest)
    {
        return Err(format!("artifact digest {digest} does not match MLOPS_MODEL_DIGEST {pin}"));
    }
    let model = Artifact::load(&bytes)?;
    let name = config.model_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| model.card.name.clone());
    let version = config
        .model_version
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| model.card.run_id.clone())
        .unwrap_or_else(|| "1".into());
    let metrics =
        ServerMetrics::new(&model, &name, &version, &digest, config.drift_window, config.drift_min_rows);
    let json = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let class_json: Vec<String> = model.card.classes.iter().map(|c| json(c)).collect();
    let regression = model.card.task == "regression";
    Ok(Served {
        predict_value_bytes: if regression {
            protocol::MAX_F64_JSON_LEN
        } else {
            class_json.iter().map(String::len).max().unwrap_or(0)
        },
        class_json,
        response_head: format!("\"model_name\":{},\"model_version\":{}", json(&name), json(&version)),
        regression,
        name,
        version,
        model,
        metrics,
    })
}

/// Serves on `listener` until `shutdown` resolves; then reports not ready
/// while still serving for `config.shutdown_delay`, closes the listener and
/// drains in-flight requests for at most `config.drain`. Fails if the model
/// cannot be loaded.
pub async fn run(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let app = http::router(state.clone());
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_state = state.clone();
    let delay = state.config.shutdown_delay;
    let server = transport::serve(state.clone(), app, listener, async move {
        shutdown.await;
        signal_state.draining.store(true, Ordering::Relaxed);
        if !delay.is_zero() {
            tracing::info!(seconds = delay.as_secs_f64(), "shutdown requested: not ready, still serving");
            tokio::time::sleep(delay).await;
        }
        tracing::info!("closing the listener; draining in-flight requests");
        let _ = drain_tx.send(());
    });
    let drain = state.config.drain;
    let server = async move {
        tokio::select! {
            () = server => Ok(()),
            _ = async { if drain_rx.await.is_ok() { tokio::time::sleep(drain).await } else { std::future::pending::<()>().await } } => {
                tracing::warn!(seconds = drain.as_secs_f64(), "drain deadline passed; closing open connections");
                Ok(())
            }
        }
    };
    tokio::pin!(server);

    let load_state = state.clone();
    let mut loader = tokio::task::spawn_blocking(move || {
        let served = load(&load_state.config)?;
        tracing::info!(
            model = %served.name,
            version = %served.version,
            algorithm = %served.model.card.algorithm,
            "model loaded; ready"
        );
        let _ = load_state.served.set(served);
        Ok::<(), String>(())
    });
    tokio::select! {
        r = &mut server => return r,
        loaded = &mut loader => match loaded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("model load failed: {e}")),
            Err(e) => return Err(format!("model load failed: {e}")),
        },
    }
    server.await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_prefers_pod_ip() {
        assert_eq!(listen_address(Some("127.0.0.7"), 8080).unwrap(), "127.0.0.7:8080".parse().unwrap());
        assert_eq!(listen_address(None, 9000).unwrap(), "0.0.0.0:9000".parse().unwrap());
        assert_eq!(listen_address(Some(""), 1).unwrap(), "0.0.0.0:1".parse().unwrap());
        assert!(listen_address(Some("pod"), 1).is_err());
    }

    #[test]
    fn duration_settings_must_be_finite_and_in_range() {
        let ok = |v| seconds_setting("MLOPS_X", v, 300.0);
        assert_eq!(ok(0.0), Ok(Duration::ZERO));
        assert_eq!(ok(2.5), Ok(Duration::from_millis(2500)));
        assert_eq!(ok(300.0), Ok(Duration::from_secs(300)));
        for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -1.0, 300.5, 1e300] {
            let e = ok(bad).unwrap_err();
            assert!(e.starts_with("MLOPS_X must be a number of seconds from 0 to 300, got "), "{e}");
        }
    }
}
