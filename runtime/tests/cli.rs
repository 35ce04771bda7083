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
