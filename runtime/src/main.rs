//! `mlops-runtime train | serve | digest`: the reference trainer, the model server, and
//! the dataset digest the operator's data trigger runs.
//! Every flag mirrors an environment variable of the pod contract
//! (`contract::trainer_env`, `contract::server_env`).

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand};
use contract::{server_env, trainer_env};
use mlops_runtime::result::{self, DEFAULT_TERMINATION_PATH};
use mlops_runtime::serve::limits::{self, Limits, count_setting, timeout_setting};
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
    #[arg(long, env = trainer_env::DATASET_URI)]
    uri: String,
    #[arg(long, env = trainer_env::TERMINATION_MESSAGE_PATH, default_value = DEFAULT_TERMINATION_PATH)]
    termination_message_path: PathBuf,
    /// Test-only: panic at start (checks the termination message of a panic).
    #[arg(long, env = "MLOPS_FAULT_PANIC", hide = true, default_value = "false", value_parser = parse_flag)]
    fault_panic: bool,
}

#[derive(Args)]
struct TrainArgs {
    #[arg(long, env = trainer_env::MODEL_NAME, default_value = "model")]
    model_name: String,
    #[arg(long, env = trainer_env::RUN_ID)]
    run_id: Option<String>,
    /// file://, pvc://, s3:// or a local path of a CSV file with a header row.
    #[arg(long, env = trainer_env::DATASET_URI)]
    dataset_uri: String,
    /// Optional `sha256:<hex>` pin; the run fails when the data differs.
    #[arg(long, env = trainer_env::DATASET_DIGEST)]
    dataset_digest: Option<String>,
    #[arg(long, env = trainer_env::LABEL_COLUMN)]
    label_column: String,
    /// JSON validation policy (see runtime/README.md).
    #[arg(long, env = trainer_env::VALIDATION, default_value = "")]
    validation: String,
    /// JSON split, e.g. {"train":0.7,"validation":0.15,"test":0.15,"seed":42}.
    #[arg(long, env = trainer_env::SPLIT, default_value = "")]
    split: String,
    /// JSON object of strings; `algorithm` picks the model.
    #[arg(long, env = trainer_env::HYPERPARAMETERS, default_value = "")]
    hyperparameters: String,
    /// Prefix (or `.json` object) where the artifact goes.
    #[arg(long, env = trainer_env::OUTPUT_URI)]
    output_uri: String,
    #[arg(long, env = trainer_env::TERMINATION_MESSAGE_PATH, default_value = DEFAULT_TERMINATION_PATH)]
    termination_message_path: PathBuf,
    /// Test-only: panic at start (checks the termination message of a panic).
    #[arg(long, env = "MLOPS_FAULT_PANIC", hide = true, default_value = "false", value_parser = parse_flag)]
    fault_panic: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = server_env::MODEL_NAME)]
    model_name: Option<String>,
    #[arg(long, env = server_env::MODEL_VERSION)]
    model_version: Option<String>,
    #[arg(long, env = server_env::MODEL_URI)]
    model_uri: String,
    #[arg(long, env = server_env::MODEL_DIGEST)]
    model_digest: Option<String>,
    #[arg(long, env = server_env::HTTP_PORT, default_value_t = 8080)]
    http_port: u16,
    /// Address to bind; defaults to POD_IP, else 0.0.0.0.
    #[arg(long, env = "MLOPS_HTTP_HOST")]
    http_host: Option<String>,
    #[arg(long, env = "POD_IP", hide = true)]
    pod_ip: Option<String>,
    /// Largest accepted request body.
    #[arg(long, env = server_env::MAX_REQUEST_BYTES, default_value_t = 4 << 20)]
    max_request_bytes: usize,
    /// Largest answer, bounded from the request's shape before scoring (413 beyond).
    #[arg(long, env = server_env::MAX_RESPONSE_BYTES, default_value_t = limits::defaults::MAX_RESPONSE_BYTES)]
    max_response_bytes: usize,
    /// Seconds from a request's first byte to the end of its headers.
    #[arg(long, env = server_env::HEADER_TIMEOUT_SECONDS, default_value_t = limits::defaults::HEADER_TIMEOUT_SECONDS)]
    header_timeout_seconds: f64,
    /// Seconds a keep-alive connection may stay idle.
    #[arg(long, env = server_env::IDLE_TIMEOUT_SECONDS, default_value_t = limits::defaults::IDLE_TIMEOUT_SECONDS)]
    idle_timeout_seconds: f64,
    /// Seconds from the end of a request's headers to its answer (503 beyond).
    #[arg(long, env = server_env::REQUEST_TIMEOUT_SECONDS, default_value_t = limits::defaults::REQUEST_TIMEOUT_SECONDS)]
    request_timeout_seconds: f64,
    /// Requests in flight; more are answered 503 at once (probes and /metrics not counted).
    #[arg(long, env = server_env::MAX_CONCURRENT_REQUESTS, default_value_t = limits::defaults::MAX_CONCURRENT_REQUESTS)]
    max_concurrent_requests: usize,
    /// Rows in the sliding drift window.
    #[arg(long, env = "MLOPS_DRIFT_WINDOW", default_value_t = 1000)]
    drift_window: usize,
    /// Rows needed before drift is exported.
    #[arg(long, env = "MLOPS_DRIFT_MIN_ROWS", default_value_t = 100)]
    drift_min_rows: usize,
    /// Seconds after SIGTERM during which readiness is 503 but requests are still
    /// served (e.g. 5 on a real cluster, so routing stops before the listener closes).
    #[arg(long, env = "MLOPS_SHUTDOWN_DELAY_SECONDS", default_value_t = 0.0)]
    shutdown_delay_seconds: f64,
    /// Seconds to wait for in-flight requests once the listener is closed.
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
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return configuration_error(e),
    };
    match cli.command {
        Command::Train(args) => {
            report_panics_to(args.termination_message_path.clone());
            train(args)
        }
        Command::Serve(args) => serve(args),
        Command::Digest(args) => {
            report_panics_to(args.termination_message_path.clone());
            digest(args)
        }
    }
}

fn init_logging() {
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
}

/// What clap refuses. `--help` and `--version` print as usual (exit 0). Any
/// other refusal of `train`, `serve` or `digest` is one line on stderr and, for
/// `train` and `digest`, in the termination message (the operator shows it),
/// with exit code 2: the pod spec must change. Clap's own rendering is kept
/// only when no subcommand was recognised.
fn configuration_error(e: clap::Error) -> ExitCode {
    let command = std::env::args_os().nth(1).and_then(|c| c.into_string().ok());
    let command = match (e.kind(), command.as_deref()) {
        (ErrorKind::DisplayHelp | ErrorKind::DisplayVersion, _) => e.exit(),
        (_, Some(c @ ("train" | "serve" | "digest"))) => c,
        _ => e.exit(),
    };
    let line = result::failure_line(&format!("configuration: {}", configuration_reason(&e, command)));
    eprintln!("mlops-runtime {command}: {line}");
    if command != "serve" {
        let path = termination_path_unparsed();
        if let Err(err) = result::write_message(&path, &line) {
            eprintln!(
                "mlops-runtime {command}: cannot write termination message to {}: {err}",
                path.display()
            );
        }
    }
    ExitCode::from(2)
}

/// The termination message path when clap could not parse the rest: the flag,
/// else the variable, else the default (clap's order of precedence).
fn termination_path_unparsed() -> PathBuf {
    const FLAG: &str = "--termination-message-path";
    let mut args = std::env::args_os().skip(2);
    let mut flag = None;
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        if arg == FLAG {
            flag = args.next().map(PathBuf::from);
        } else if let Some(value) = arg.strip_prefix(FLAG).and_then(|v| v.strip_prefix('=')) {
            flag = Some(PathBuf::from(value));
        }
    }
    flag.or_else(|| {
        std::env::var_os(trainer_env::TERMINATION_MESSAGE_PATH).filter(|p| !p.is_empty()).map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_TERMINATION_PATH))
}

/// `the label column is required (MLOPS_LABEL_COLUMN or --label-column)` for
/// missing settings; otherwise clap's first line, with the variable it names.
fn configuration_reason(e: &clap::Error, command: &str) -> String {
    let cli = Cli::command();
    let sub = cli.find_subcommand(command);
    // clap names arguments as `--label-column <LABEL_COLUMN>`.
    let named = |arg: &str| -> Option<(String, Option<String>)> {
        let long = arg.trim_start_matches('-').split([' ', '=']).next().unwrap_or(arg);
        let arg = sub?.get_arguments().find(|a| a.get_long() == Some(long))?;
        Some((long.to_string(), arg.get_env().map(|v| v.to_string_lossy().into_owned())))
    };
    let how = |long: &str, env: Option<String>| match env {
        Some(env) => format!("{env} or --{long}"),
        None => format!("--{long}"),
    };
    let args: Vec<&str> = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::Strings(v)) => v.iter().map(String::as_str).collect(),
        Some(ContextValue::String(v)) => vec![v.as_str()],
        _ => Vec::new(),
    };
    if e.kind() == ErrorKind::MissingRequiredArgument && !args.is_empty() {
        let missing: Vec<String> = args
            .iter()
            .map(|a| {
                let (long, env) = named(a).unwrap_or_else(|| (a.trim_start_matches('-').to_string(), None));
                let what: Vec<&str> = long.split('-').map(|w| if w == "uri" { "URI" } else { w }).collect();
                format!("the {} is required ({})", what.join(" "), how(&long, env))
            })
            .collect();
        return missing.join("; ");
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first).to_string();
    match args.as_slice() {
        [arg] => match named(arg) {
            Some((long, env)) => format!("{first} (set by {})", how(&long, env)),
            None => first,
        },
        _ => first,
    }
}

/// A panic ends the process with exit code 101; the termination message gets
/// one line saying where, so the failure is not reported as an empty message.
fn report_panics_to(path: PathBuf) {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        let _ = result::write_message(
            &path,
            &result::failure_line(&format!("internal error (panic{at}): {what}")),
        );
    }));
}

/// `{"version":1,"digest":"sha256:…","bytes":N}` on success; one line and exit 1 otherwise.
fn digest(args: DigestArgs) -> ExitCode {
    if args.fault_panic {
        panic!("MLOPS_FAULT_PANIC is set (test-only fault)");
    }
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
    if args.fault_panic {
        panic!("MLOPS_FAULT_PANIC is set (test-only fault)");
    }
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

fn serve_limits(args: &ServeArgs) -> Result<Limits, String> {
    Ok(Limits {
        header_timeout: timeout_setting(server_env::HEADER_TIMEOUT_SECONDS, args.header_timeout_seconds)?,
        idle_timeout: timeout_setting(server_env::IDLE_TIMEOUT_SECONDS, args.idle_timeout_seconds)?,
        request_timeout: timeout_setting(server_env::REQUEST_TIMEOUT_SECONDS, args.request_timeout_seconds)?,
        max_concurrent_requests: count_setting(
            server_env::MAX_CONCURRENT_REQUESTS,
            args.max_concurrent_requests,
            1,
            limits::MAX_CONCURRENT_REQUESTS,
        )?,
        max_response_bytes: count_setting(
            server_env::MAX_RESPONSE_BYTES,
            args.max_response_bytes,
            limits::MIN_RESPONSE_BYTES,
            limits::MAX_RESPONSE_BYTES,
        )?,
    })
}

fn serve(args: ServeArgs) -> ExitCode {
    let fail = |msg: String| {
        tracing::error!("{msg}");
        eprintln!("mlops-runtime serve: {msg}");
        ExitCode::from(1)
    };
    // A setting the pod spec must change: exit 2, as clap's own refusals.
    let refuse = |msg: String| {
        let msg = format!("configuration: {msg}");
        tracing::error!("{msg}");
        eprintln!("mlops-runtime serve: {msg}");
        ExitCode::from(2)
    };
    if !(0.0..=1.0).contains(&args.fault_error_rate) {
        return refuse("MLOPS_FAULT_ERROR_RATE must be between 0 and 1".into());
    }
    let delay = args.shutdown_delay_seconds;
    let shutdown_delay = match serve::seconds_setting(
        "MLOPS_SHUTDOWN_DELAY_SECONDS",
        delay,
        serve::MAX_SHUTDOWN_DELAY_SECONDS,
    ) {
        Ok(d) => d,
        Err(e) => return refuse(e),
    };
    let drain =
        match serve::seconds_setting("MLOPS_DRAIN_SECONDS", args.drain_seconds, serve::MAX_DRAIN_SECONDS) {
            Ok(d) => d,
            Err(e) => return refuse(e),
        };
    let limits = match serve_limits(&args) {
        Ok(l) => l,
        Err(e) => return refuse(e),
    };
    let host = args.http_host.as_deref().or(args.pod_ip.as_deref());
    let addr = match serve::listen_address(host, args.http_port) {
        Ok(a) => a,
        Err(e) => return refuse(e),
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
        limits,
        drift_window: args.drift_window,
        drift_min_rows: args.drift_min_rows,
        shutdown_delay,
        drain,
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
