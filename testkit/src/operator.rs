//! The operator under test: an `mlops-operator run` process per test, its metrics, and the
//! waits that prove it has looked at a change ([`Operator::wait_pass`],
//! [`Operator::wait_idle`]).

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{http_get, kubeconfig_path, prometheus_url, repo_root};

/// An `mlops-operator run` process scoped to one namespace (its own Lease there too), so
/// tests never share an operator; stopped (SIGTERM, then SIGKILL) when dropped. Its log is
/// kept in `target/e2e-logs/<namespace>-<n>.log`.
pub struct Operator {
    child: std::process::Child,
    pub metrics_addr: std::net::SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    /// Starts the operator binary (`env!("CARGO_BIN_EXE_mlops-operator")` in the test),
    /// with fault injection on (the `mlops.dev/test-fault-env` annotation is honoured).
    pub fn start(binary: &str, namespace: &str, extra: &[&str]) -> Operator {
        Self::start_as(binary, namespace, &[extra, &["--enable-fault-injection"]].concat())
    }

    /// Starts the operator as a production install runs it: no fault injection.
    pub fn start_as(binary: &str, namespace: &str, extra: &[&str]) -> Operator {
        Self::start_with_kubeconfig(binary, namespace, extra, &kubeconfig_path())
    }

    /// [`Operator::start_as`] reaching the API server as `kubeconfig` says (through an
    /// [`crate::ApiProxy`], say).
    pub fn start_with_kubeconfig(
        binary: &str,
        namespace: &str,
        extra: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = repo_root().join("target/e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{namespace}-{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(binary);
        cmd.args(["run", "--metrics-addr", &metrics_addr.to_string(), "--watch-namespace", namespace]);
        // The local cluster's Prometheus (hack/prometheus.sh) measures metric checks, unless
        // the test names another.
        let own_prometheus = extra.iter().any(|a| a.starts_with("--prometheus-url"));
        if let Some(url) = prometheus_url().filter(|_| !own_prometheus) {
            cmd.args(["--prometheus-url", &url]);
        }
        let child = cmd
            .args(["--namespace", namespace, "--lease-duration-seconds", "6", "--lease-retry-seconds", "1"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            // MLOPS_E2E_OPERATOR_LOG overrides the filter (e.g. `info,mlops_operator=debug`).
            .env(
                "RUST_LOG",
                std::env::var("MLOPS_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting mlops-operator");
        Operator { child, metrics_addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The operator's `/metrics` text, or `None` while it does not answer.
    pub fn metrics(&self) -> Option<String> {
        http_get(self.metrics_addr, "/metrics")
    }

    /// `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        http_get(self.metrics_addr, "/readyz").is_some()
    }

    /// The value of a sample line in `/metrics` that starts with `series`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()?.lines().find(|l| l.starts_with(series))?.rsplit(' ').next()?.parse().ok()
    }

    /// Reconciliations of `controller` this operator has started (`None` while its
    /// metrics do not answer).
    pub fn reconciles_started(&self, controller: &str) -> Option<f64> {
        self.metric_or_zero(&format!("mlops_operator_reconciliations_total{{controller=\"{controller}\"}}"))
    }

    /// Reconciliations of `controller` this operator has finished (its duration histogram
    /// counts a pass when it ends, after its status writes and Events).
    pub fn reconciles_finished(&self, controller: &str) -> Option<f64> {
        self.metric_or_zero(&format!(
            "mlops_operator_reconcile_duration_seconds_count{{controller=\"{controller}\"}}"
        ))
    }

    /// A counter's value; 0 when the operator answers but has not recorded it yet.
    fn metric_or_zero(&self, series: &str) -> Option<f64> {
        let text = self.metrics()?;
        let line = text.lines().find(|l| l.starts_with(series));
        Some(line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0))
    }

    /// Waits until `controller` has finished a pass that started after `started_before`
    /// (a value of [`Operator::reconciles_started`] read before the change the test made):
    /// the positive proof that the operator has looked at that change. Panics naming
    /// `what` after `timeout`.
    pub async fn wait_pass(&self, controller: &str, started_before: f64, what: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.reconciles_finished(controller).is_some_and(|done| done > started_before) {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for a {controller} pass after {what} \
                     (started before: {started_before}, finished now: {:?})\n{}",
                    self.reconciles_finished(controller),
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `controller` is idle: every started pass has finished and none started
    /// for `quiet`. Whatever the operator will do about the present state, it has done; a
    /// reconcile storm never gets there and fails after `timeout`, with the counts.
    pub async fn wait_idle(&self, controller: &str, quiet: Duration, timeout: Duration) {
        let start = Instant::now();
        let mut last: Option<(f64, f64)> = None;
        let mut since = Instant::now();
        loop {
            let now = self.reconciles_started(controller).zip(self.reconciles_finished(controller));
            if now != last || now.is_some_and(|(s, f)| s != f) {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{controller} never went {quiet:?} without a reconciliation in {timeout:?} \
                     (a reconcile storm?): started/finished {last:?}\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: the operator dies at once, mid-reconcile, as on a node failure or an OOM
    /// kill (no graceful shutdown, its Lease is not released). Waits for the process to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The operator's log so far (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate(Duration::from_secs(5));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
