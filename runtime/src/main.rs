//! `mlops-runtime train | serve | digest`: the reference trainer, the model server, and
//! the dataset digest the operator's data trigger runs.
//! Every flag mirrors an environment variable of the pod contract (DESIGN.md §3).

use clap::{Args, Parser, Subcommand};
use mlops_runtime::result::{self, DEFAULT_TERMINATION_PATH};
use mlops_runtime::serve::{self, AppState, ServeConfig, fault::Faults};
use mlops_runtime::split::SplitSpec;
use mlops_runtime::train::Hyperparameters;
use mlops_runtime::trainer::{self, TrainConfig, TrainError};
use mlops_runtime::validate::Policy;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "mlops-runtime", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a CSV dataset and write the artifact and result JSON.
    Train(TrainArgs),
    /// Serve a model artifact over Open Inference Protocol v2 REST.
    Serve(ServeArgs),
    /// Print the sha256 digest of a dataset (or any object) as a one-line JSON result,
    /// also written to the termination message: the operator's data-trigger check.
    Digest(DigestArgs),
}

#[derive(Args)]
struct DigestArgs {
    /// file://, pvc://, s3:// or a local path.
    #[arg(long, env = "MLOPS_DATASET_URI")]
    uri: String,
    #[arg(long, env = "MLOPS_TERMINATION_MESSAGE_PATH", default_value = DEFAULT_TERMINATION_PATH)]
    termination_message_path: PathBuf,
}

#[derive(Args)]
struct TrainArgs {
    #[arg(long, env = "MLOPS_MODEL_NAME", default_value = "model")]
    model_name: String,
    #[arg(long, env = "MLOPS_RUN_ID")]
    run_id: Option<String>,
    /// file://, pvc://, s3:// or a local path of a CSV file with a header row.
    #[arg(long, env = "MLOPS_DATASET_URI")]
    dataset_uri: String,
    /// Optional `sha256:<hex>` pin; the run fails when the data differs.
    #[arg(long, env = "MLOPS_DATASET_DIGEST")]
    dataset_digest: Option<String>,
    #[arg(long, env = "MLOPS_LABEL_COLUMN")]
    label_column: String,
    /// JSON validation policy (see runtime/README.md).
    #[arg(long, env = "MLOPS_VALIDATION", default_value = "")]
    validation: String,
    /// JSON split, e.g. {"train":0.7,"validation":0.15,"test":0.15,"seed":42}.
    #[arg(long, env = "MLOPS_SPLIT", default_value = "")]
    split: String,
    /// JSON object of strings; `algorithm` picks the model.
    #[arg(long, env = "MLOPS_HYPERPARAMETERS", default_value = "")]
    hyperparameters: String,
    /// Prefix (or `.json` object) where the artifact goes.
    #[arg(long, env = "MLOPS_OUTPUT_URI")]
    output_uri: String,
    #[arg(long, env = "MLOPS_TERMINATION_MESSAGE_PATH", default_value = DEFAULT_TERMINATION_PATH)]
    termination_message_path: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "MLOPS_MODEL_NAME")]
    model_name: Option<String>,
    #[arg(long, env = "MLOPS_MODEL_VERSION")]
    model_version: Option<String>,
    #[arg(long, env = "MLOPS_MODEL_URI")]
    model_uri: String,
    #[arg(long, env = "MLOPS_MODEL_DIGEST")]
    model_digest: Option<String>,
    #[arg(long, env = "MLOPS_HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// Address to bind; defaults to POD_IP, else 0.0.0.0.
    #[arg(long, env = "MLOPS_HTTP_HOST")]
    http_host: Option<String>,
    #[arg(long, env = "POD_IP", hide = true)]
    pod_ip: Option<String>,
    /// Largest accepted request body.
    #[arg(long, env = "MLOPS_MAX_REQUEST_BYTES", default_value_t = 4 << 20)]
    max_request_bytes: usize,
    /// Rows in the sliding drift window.
    #[arg(long, env = "MLOPS_DRIFT_WINDOW", default_value_t = 1000)]
    drift_window: usize,
    /// Rows needed before drift is exported.
    #[arg(long, env = "MLOPS_DRIFT_MIN_ROWS", default_value_t = 100)]
    drift_min_rows: usize,
    /// Seconds to wait for in-flight requests after SIGTERM.
    #[arg(long, env = "MLOPS_DRAIN_SECONDS", default_value_t = 20.0)]
    drain_seconds: f64,
    /// Test-only: fraction of inference requests answered 500.
    #[arg(long, env = "MLOPS_FAULT_ERROR_RATE", default_value_t = 0.0)]
    fault_error_rate: f64,
    /// Test-only: milliseconds added to every inference.
    #[arg(long, env = "MLOPS_FAULT_LATENCY_MS", default_value_t = 0)]
    fault_latency_ms: u64,
    /// Test-only: exit non-zero instead of loading the model.
    #[arg(long, env = "MLOPS_FAULT_CRASH_ON_LOAD", default_value = "false", value_parser = parse_flag)]
    fault_crash_on_load: bool,
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

fn main() -> ExitCode {
    let format = std::env::var("MLOPS_LOG_FORMAT").unwrap_or_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MLOPS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    match Cli::parse().command {
        Command::Train(args) => train(args),
        Command::Serve(args) => serve(args),
        Command::Digest(args) => digest(args),
    }
}

/// `{"version":1,"digest":"sha256:…","bytes":N}` on success; one line and exit 1 otherwise.
fn digest(args: DigestArgs) -> ExitCode {
    let (message, code) = match mlops_runtime::storage::read(&args.uri) {
        Ok(bytes) => {
            let json = serde_json::json!({
                "version": 1,
                "digest": mlops_runtime::sha256_digest(&bytes),
                "bytes": bytes.len(),
            });
            (json.to_string(), 0)
        }
        Err(e) => (result::failure_line(&e.to_string()), 1),
    };
    if code == 0 {
        println!("{message}");
    } else {
        eprintln!("mlops-runtime digest: {message}");
    }
    if let Err(e) = result::write_message(&args.termination_message_path, &message) {
        eprintln!(
            "mlops-runtime digest: cannot write termination message to {}: {e}",
            args.termination_message_path.display()
        );
        return ExitCode::from(1);
    }
    ExitCode::from(code)
}

fn train(args: TrainArgs) -> ExitCode {
    let path = args.termination_message_path.clone();
    let outcome = train_config(&args).and_then(|cfg| trainer::run(&cfg));
    let (message, code) = match outcome.map_err(|e| (e.to_string(), e.exit_code())) {
        Ok(res) => match result::render(&res) {
            Ok(json) => {
                println!("{json}");
                (json, 0)
            }
            Err(e) => (e, 1),
        },
        Err((e, code)) => (e, code),
    };
    let message = if code == 0 {
        message
    } else {
        let line = result::failure_line(&message);
        eprintln!("mlops-runtime train: {line}");
        line
    };
    if let Err(e) = result::write_message(&path, &message) {
        eprintln!("mlops-runtime train: cannot write termination message to {}: {e}", path.display());
        return ExitCode::from(1);
    }
    ExitCode::from(code as u8)
}

fn train_config(args: &TrainArgs) -> Result<TrainConfig, TrainError> {
    let data = TrainError::Data;
    let validation = Policy::parse(&args.validation).map_err(data)?;
    for w in &validation.warnings {
        tracing::warn!("{w}");
    }
    Ok(TrainConfig {
        model_name: args.model_name.clone(),
        run_id: args.run_id.clone().filter(|r| !r.is_empty()),
        dataset_uri: args.dataset_uri.clone(),
        dataset_digest: args.dataset_digest.clone(),
        label_column: args.label_column.clone(),
        validation,
        split: SplitSpec::parse(&args.split).map_err(data)?,
        hyperparameters: Hyperparameters::parse(&args.hyperparameters).map_err(data)?,
        output_uri: args.output_uri.clone(),
    })
}

fn serve(args: ServeArgs) -> ExitCode {
    let fail = |msg: String| {
        tracing::error!("{msg}");
        eprintln!("mlops-runtime serve: {msg}");
        ExitCode::from(1)
    };
    if !(0.0..=1.0).contains(&args.fault_error_rate) {
        return fail("MLOPS_FAULT_ERROR_RATE must be between 0 and 1".into());
    }
    let host = args.http_host.as_deref().or(args.pod_ip.as_deref());
    let addr = match serve::listen_address(host, args.http_port) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let faults = Faults::new(
        args.fault_error_rate,
        Duration::from_millis(args.fault_latency_ms),
        args.fault_crash_on_load,
    );
    if faults.any() {
        tracing::warn!(?faults, "test-only fault injection is ON");
    }
    let config = ServeConfig {
        model_name: args.model_name,
        model_version: args.model_version,
        model_uri: args.model_uri,
        model_digest: args.model_digest,
        max_body_bytes: args.max_request_bytes,
        drift_window: args.drift_window,
        drift_min_rows: args.drift_min_rows,
        drain: Duration::from_secs_f64(args.drain_seconds.max(0.0)),
        faults,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return fail(format!("bind {addr}: {e}")),
        };
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(address = %local, "listening");
        match serve::run(AppState::new(config), listener, serve::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
}
