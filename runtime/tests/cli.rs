//! The built binary, as a pod runs it: environment in, termination message
//! and exit code out; `serve` on an ephemeral port, stopped with SIGTERM.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mlops-runtime");

fn train(dir: &std::path::Path, csv: &str, extra: &[(&str, &str)]) -> (i32, String) {
    let data = dir.join("data.csv");
    std::fs::write(&data, csv).unwrap();
    let message = dir.join("termination-log");
    let status = Command::new(BIN)
        .arg("train")
        .env_clear()
        .env("MLOPS_MODEL_NAME", "iris")
        .env("MLOPS_RUN_ID", "run-7")
        .env("MLOPS_DATASET_URI", format!("file://{}", data.display()))
        .env("MLOPS_LABEL_COLUMN", "species")
        .env("MLOPS_SPLIT", r#"{"train":0.7,"validation":0.15,"test":0.15,"seed":42}"#)
        .env("MLOPS_VALIDATION", r#"{"missing":"drop","duplicates":"drop","outliers":"keep"}"#)
        .env("MLOPS_HYPERPARAMETERS", r#"{"algorithm":"logistic_regression"}"#)
        .env("MLOPS_OUTPUT_URI", format!("file://{}/out", dir.display()))
        .env("MLOPS_TERMINATION_MESSAGE_PATH", &message)
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    (status.code().unwrap_or(-1), std::fs::read_to_string(&message).unwrap_or_default())
}

#[test]
fn train_writes_the_result_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (code, message) = train(dir.path(), &iris_csv(), &[]);
    assert_eq!(code, 0, "{message}");
    assert!(message.len() <= 4096);
    let r: serde_json::Value = serde_json::from_str(&message).unwrap();
    assert_eq!(r["version"], 1);
    assert_eq!(r["artifact"]["format"], "mlops-runtime-json/v1");
    assert_eq!(r["validation"]["duplicates"]["removed"], r["validation"]["duplicates"]["found"]);
    assert_eq!(r["dataset"]["total"], 150 - r["validation"]["duplicates"]["removed"].as_u64().unwrap());
    let artifact = std::fs::read(dir.path().join("out/model.json")).unwrap();
    assert_eq!(r["artifact"]["digest"], mlops_runtime::sha256_digest(&artifact));
    assert_eq!(r["metrics"]["artifactSizeBytes"], artifact.len() as f64);
    let card: serde_json::Value = serde_json::from_slice(&artifact).unwrap();
    assert_eq!(card["formatVersion"], 1);
    assert_eq!(card["modelCard"]["runId"], "run-7");
}

#[test]
fn bad_data_exits_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (code, message) = train(dir.path(), "a,b\n1,2\n", &[]);
    assert_eq!(code, 2);
    assert!(message.contains("label column \"species\""), "{message}");
    assert!(!message.contains('\n'));

    let (code, message) = train(
        dir.path(),
        &iris_csv().replacen("5.1,", ",", 1),
        &[("MLOPS_VALIDATION", r#"{"missing":"fail"}"#)],
    );
    assert_eq!(code, 2);
    assert!(message.starts_with("validation: missing check failed: 1 of 150"), "{message}");

    let (code, message) = train(dir.path(), &iris_csv(), &[("MLOPS_SPLIT", r#"{"train":2}"#)]);
    assert_eq!(code, 2);
    assert!(message.contains("MLOPS_SPLIT"), "{message}");
}

#[test]
fn half_set_output_credentials_fail_before_training_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let (code, message) = train(
        dir.path(),
        &iris_csv(),
        &[
            ("MLOPS_OUTPUT_URI", "s3://models/iris"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("MLOPS_OUTPUT_AWS_ACCESS_KEY_ID", "AKIDOUTPUTONLY"),
        ],
    );
    assert_eq!(code, 1, "{message}");
    assert!(message.contains("MLOPS_OUTPUT_AWS_SECRET_ACCESS_KEY"), "{message}");
    assert!(!message.contains("AKIDOUTPUTONLY"), "{message}");
}

#[test]
fn serve_binds_answers_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (code, message) = train(dir.path(), &iris_csv(), &[]);
    assert_eq!(code, 0, "{message}");
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("MLOPS_MODEL_URI", format!("file://{}/out/model.json", dir.path().display()))
        .env("MLOPS_MODEL_VERSION", "v7")
        .env("MLOPS_HTTP_PORT", "0")
        .env("POD_IP", "127.0.0.1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("address=").nth(1).map(|a| a.trim().to_string()))
        .expect("the server logs its address");
    let base = format!("http://{addr}");
    for _ in 0..200 {
        if get(&format!("{base}/v2/health/ready")).0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, out) = post(&format!("{base}/v2/models/iris/infer"), rows_request(&[[6.8, 3.1, 5.7, 2.2]]));
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("virginica") && out.contains(r#""model_version":"v7""#), "{out}");

    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_crash_on_load_exits_non_zero() {
    let status = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("MLOPS_MODEL_URI", "/nonexistent/model.json")
        .env("MLOPS_HTTP_PORT", "0")
        .env("MLOPS_HTTP_HOST", "127.0.0.1")
        .env("MLOPS_FAULT_CRASH_ON_LOAD", "true")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn digest_reports_the_dataset_sha256_or_one_line_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.csv");
    std::fs::write(&data, "a,b\n1,2\n").unwrap();
    let message = dir.path().join("termination-log");
    let run = |uri: String| {
        let status = Command::new(BIN)
            .arg("digest")
            .env_clear()
            .env("MLOPS_DATASET_URI", uri)
            .env("MLOPS_TERMINATION_MESSAGE_PATH", &message)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        (status.code().unwrap_or(-1), std::fs::read_to_string(&message).unwrap_or_default())
    };
    let (code, text) = run(format!("file://{}", data.display()));
    assert_eq!(code, 0, "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["version"], 1);
    assert_eq!(r["digest"], mlops_runtime::sha256_digest(b"a,b\n1,2\n"));
    assert_eq!(r["bytes"], 8);

    let (code, text) = run(format!("file://{}/missing.csv", dir.path().display()));
    assert_eq!(code, 1);
    assert!(text.contains("missing.csv") && !text.contains('\n'), "{text}");
}

/// The binary with only `envs` set; exit code, stdout, stderr.
fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env_clear().envs(envs.iter().copied()).output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn configuration_errors_write_one_line_to_the_termination_message() {
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("termination-log");
    let path = message.to_str().unwrap();
    let env = [
        ("MLOPS_DATASET_URI", "file:///data.csv"),
        ("MLOPS_OUTPUT_URI", "file:///out"),
        ("MLOPS_TERMINATION_MESSAGE_PATH", path),
    ];
    let (code, _, stderr) = run(&["train"], &env);
    assert_eq!(code, 2, "{stderr}");
    let expected = "configuration: the label column is required (MLOPS_LABEL_COLUMN or --label-column)";
    assert_eq!(std::fs::read_to_string(&message).unwrap(), expected);
    assert_eq!(stderr.trim_end(), format!("mlops-runtime train: {expected}"));

    // A refused flag, with the path given as a flag rather than the variable.
    std::fs::remove_file(&message).unwrap();
    let (code, _, _) = run(&["train", "--termination-message-path", path, "--no-such-flag"], &[]);
    assert_eq!(code, 2);
    let text = std::fs::read_to_string(&message).unwrap();
    assert!(text.starts_with("configuration: unexpected argument '--no-such-flag'"), "{text}");
    assert!(!text.contains('\n'), "{text}");

    let (code, _, _) = run(&["digest"], &[("MLOPS_TERMINATION_MESSAGE_PATH", path)]);
    assert_eq!(code, 2);
    assert_eq!(
        std::fs::read_to_string(&message).unwrap(),
        "configuration: the URI is required (MLOPS_DATASET_URI or --uri)"
    );
}

#[test]
fn help_and_version_print_normally() {
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("termination-log");
    let env = [("MLOPS_TERMINATION_MESSAGE_PATH", message.to_str().unwrap())];
    let (code, stdout, _) = run(&["train", "--help"], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains("MLOPS_LABEL_COLUMN") && stdout.contains("Usage:"), "{stdout}");
    let (code, stdout, _) = run(&["--version"], &env);
    assert_eq!((code, stdout.trim()), (0, format!("mlops-runtime {}", env!("CARGO_PKG_VERSION")).as_str()));
    assert!(!message.exists());
}

#[test]
fn a_panic_leaves_one_line_in_the_termination_message() {
    let dir = tempfile::tempdir().unwrap();
    let message = dir.path().join("termination-log");
    let (code, message_text) = train(dir.path(), &iris_csv(), &[("MLOPS_FAULT_PANIC", "true")]);
    assert_eq!(code, 101);
    assert!(message_text.starts_with("internal error (panic at "), "{message_text}");
    assert!(message_text.ends_with("MLOPS_FAULT_PANIC is set (test-only fault)"), "{message_text}");
    assert!(!message_text.contains('\n'));

    std::fs::remove_file(&message).unwrap();
    let (code, _, _) = run(
        &["digest", "--uri", "file:///nothing"],
        &[("MLOPS_TERMINATION_MESSAGE_PATH", message.to_str().unwrap()), ("MLOPS_FAULT_PANIC", "1")],
    );
    assert_eq!(code, 101);
    assert!(std::fs::read_to_string(&message).unwrap().starts_with("internal error (panic at "));
}

#[test]
fn serve_refuses_unusable_durations_with_one_line() {
    let cases = [
        ("MLOPS_DRAIN_SECONDS", "inf", "from 0 to 3600, got inf"),
        ("MLOPS_DRAIN_SECONDS", "NaN", "from 0 to 3600, got NaN"),
        ("MLOPS_DRAIN_SECONDS", "-1", "from 0 to 3600, got -1"),
        ("MLOPS_SHUTDOWN_DELAY_SECONDS", "301", "from 0 to 300, got 301"),
        ("MLOPS_SHUTDOWN_DELAY_SECONDS", "-inf", "from 0 to 300, got -inf"),
    ];
    for (name, value, expected) in cases {
        let (code, _, stderr) = run(
            &["serve"],
            &[
                ("MLOPS_MODEL_URI", "/nonexistent/model.json"),
                ("MLOPS_HTTP_HOST", "127.0.0.1"),
                (name, value),
            ],
        );
        assert_eq!(code, 2, "{name}={value}: {stderr}");
        let line =
            format!("mlops-runtime serve: configuration: {name} must be a number of seconds {expected}");
        assert!(stderr.lines().any(|l| l == line), "{name}={value}: {stderr}");
    }
}
