//! Shared helpers of the integration tests: datasets from `linfa-datasets`
//! (MIT OR Apache-2.0; the iris data itself is Fisher's 1936 public data, as
//! distributed by the UCI repository), training, and an in-process server.
#![allow(dead_code)]

use mlops_runtime::serve::{self, AppState, ServeConfig, fault::Faults};
use mlops_runtime::split::SplitSpec;
use mlops_runtime::train::Hyperparameters;
use mlops_runtime::trainer::{self, TrainConfig};
use mlops_runtime::validate::Policy;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const IRIS_FEATURES: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
pub const IRIS_CLASSES: [&str; 3] = ["setosa", "versicolor", "virginica"];

/// The iris data set of `linfa-datasets` as the CSV the trainer reads.
pub fn iris_csv() -> String {
    let ds = linfa_datasets::iris();
    let mut csv = format!("{},species\n", IRIS_FEATURES.join(","));
    for (row, target) in ds.records().rows().into_iter().zip(ds.targets().iter()) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        csv.push_str(&format!("{},{}\n", cells.join(","), IRIS_CLASSES[*target]));
    }
    csv
}

/// The diabetes regression data set of `linfa-datasets` as CSV.
pub fn diabetes_csv() -> String {
    let ds = linfa_datasets::diabetes();
    let n = ds.records().ncols();
    let names: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
    let mut csv = format!("{},progression\n", names.join(","));
    for (row, target) in ds.records().rows().into_iter().zip(ds.targets().iter()) {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        csv.push_str(&format!("{},{target:?}\n", cells.join(",")));
    }
    csv
}

pub fn config(dataset: &Path, label: &str, out: &Path, hyperparameters: &str) -> TrainConfig {
    TrainConfig {
        model_name: "iris".into(),
        run_id: Some("run-1".into()),
        dataset_uri: format!("file://{}", dataset.display()),
        dataset_digest: None,
        label_column: label.into(),
        validation: Policy::default(),
        split: SplitSpec::default(),
        hyperparameters: Hyperparameters::parse(hyperparameters).unwrap(),
        output_uri: format!("file://{}", out.display()),
    }
}

/// Trains on iris in `dir`; returns the artifact path.
pub fn train_iris(dir: &Path, hyperparameters: &str) -> PathBuf {
    let data = dir.join("iris.csv");
    std::fs::write(&data, iris_csv()).unwrap();
    let out = dir.join("out");
    trainer::run(&config(&data, "species", &out, hyperparameters)).unwrap();
    out.join("model.json")
}

pub fn serve_config(model: &Path) -> ServeConfig {
    ServeConfig {
        model_name: None,
        model_version: Some("v1".into()),
        model_uri: model.display().to_string(),
        model_digest: None,
        max_body_bytes: 64 * 1024,
        limits: serve::Limits::default(),
        drift_window: 500,
        drift_min_rows: 100,
        shutdown_delay: Duration::ZERO,
        drain: Duration::from_secs(5),
        faults: Faults::default(),
    }
}

/// A server running on its own runtime thread on 127.0.0.1:0.
pub struct TestServer {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl TestServer {
    pub fn start(config: ServeConfig) -> TestServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                serve::run(AppState::new(config), listener, async {
                    let _ = stop_rx.await;
                })
                .await
            })
        });
        let addr = addr_rx.recv().unwrap();
        TestServer { base: format!("http://{addr}"), stop: Some(stop), thread: Some(thread) }
    }

    /// Waits until `/v2/health/ready` answers 200.
    pub fn wait_ready(&self) {
        for _ in 0..200 {
            if get(&format!("{}/v2/health/ready", self.base)).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server did not become ready");
    }

    /// Sends the shutdown signal (as SIGTERM would) without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and returns how `serve::run` ended.
    pub fn stop(mut self) -> Result<(), String> {
        self.signal_shutdown();
        self.thread.take().unwrap().join().unwrap()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}

pub fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

pub fn post(url: &str, body: impl AsRef<[u8]>) -> (u16, String) {
    let mut r = agent().post(url).header("content-type", "application/json").send(body.as_ref()).unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
}

pub fn rows_request(rows: &[[f64; 4]]) -> String {
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    serde_json::json!({
        "inputs": [{"name": "x", "shape": [rows.len(), 4], "datatype": "FP64", "data": data}]
    })
    .to_string()
}

/// A metric's value from the exposition text (first series whose line
/// starts with `prefix`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
