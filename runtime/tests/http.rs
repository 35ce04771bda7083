//! HTTP round trips against an in-process server on 127.0.0.1:0:
//! train → serve → infer, malformed bodies, drift, faults and draining.

mod common;

use common::*;
use mlops_runtime::serve::fault::Faults;
use std::time::Duration;

fn infer_url(s: &TestServer) -> String {
    format!("{}/v2/models/iris/infer", s.base)
}

#[test]
fn train_serve_infer_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let model = train_iris(dir.path(), "");
    let server = TestServer::start(serve_config(&model));
    server.wait_ready();

    assert_eq!(get(&format!("{}/v2/health/live", server.base)).0, 200);
    assert_eq!(get(&format!("{}/v2/models/iris/ready", server.base)).0, 200);
    let (code, meta) = get(&format!("{}/v2/models/iris", server.base));
    assert_eq!(code, 200);
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["versions"][0], "v1");
    assert_eq!(meta["parameters"]["classes"][2], "virginica");

    // One typical flower of each species, batched.
    let body = rows_request(&[[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.8, 3.1, 5.7, 2.2]]);
    let (code, out) = post(&infer_url(&server), &body);
    assert_eq!(code, 200, "{out}");
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["model_name"], "iris");
    assert_eq!(out["model_version"], "v1");
    assert_eq!(out["outputs"][0]["shape"], serde_json::json!([3]));
    assert_eq!(out["outputs"][0]["data"], serde_json::json!(["setosa", "versicolor", "virginica"]));

    // The versioned route and the probabilities output.
    let body = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.0,3.4,1.5,0.2]}],
                   "outputs":[{"name":"predict_proba"}]}"#;
    let (code, out) = post(&format!("{}/v2/models/iris/versions/v1/infer", server.base), body);
    assert_eq!(code, 200, "{out}");
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    let probs: Vec<f64> = serde_json::from_value(out["outputs"][0]["data"].clone()).unwrap();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9 && probs[0] > 0.9);

    let (_, metrics) = get(&format!("{}/metrics", server.base));
    assert_eq!(
        metric(&metrics, r#"mlops_requests_total{code="200",model_name="iris",model_version="v1"}"#),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, r#"mlops_predictions_total{class="setosa","#), Some(2.0));
    assert!(metrics.contains("mlops_request_duration_seconds_bucket"));
    assert!(metrics.contains(r#"mlops_model_info{algorithm="logistic_regression""#));
    server.stop().unwrap();
}

#[test]
fn malformed_requests_get_4xx_json_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(serve_config(&train_iris(dir.path(), "")));
    server.wait_ready();
    let url = infer_url(&server);
    let too_big = format!(
        r#"{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP64","data":[{}]}}]}}"#,
        "1,".repeat(40_000)
    );
    let bodies: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("not json", "hello".into()),
        ("truncated", r#"{"inputs":[{"name":"#.into()),
        ("array", "[1,2]".into()),
        ("no inputs", "{}".into()),
        (
            "string data",
            r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":["a","b","c","d"]}]}"#.into(),
        ),
        (
            "bool data",
            r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[true,1,1,1]}]}"#.into(),
        ),
        ("wrong width", rows_request(&[[1.0; 4]]).replace("[1,4]", "[1,3]")),
        (
            "shape mismatch",
            r#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[1,2,3,4]}]}"#.into(),
        ),
        ("bytes", r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"BYTES","data":[1,2,3,4]}]}"#.into()),
        (
            "negative shape",
            r#"{"inputs":[{"name":"x","shape":[-1,4],"datatype":"FP64","data":[1,2,3,4]}]}"#.into(),
        ),
        (
            "huge shape",
            r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296],"datatype":"FP64","data":[1]}]}"#
                .into(),
        ),
        ("deep nesting", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
        ("too large", too_big),
    ];
    for (what, body) in &bodies {
        let (code, text) = post(&url, body);
        assert!((400..500).contains(&code), "{what}: {code} {text}");
        let err: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {text}"));
        assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {text}");
    }
    // Bytes that are not UTF-8, outside and inside a string.
    let raw: [&[u8]; 2] = [b"{\"inputs\":\xff}", b"{\"id\":\"\xff\xfe\",\"inputs\":[]}"];
    for body in raw {
        let (code, text) = post(&url, body);
        assert_eq!(code, 400, "{text}");
        let err: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(err["error"].as_str().unwrap().starts_with("body: invalid JSON"), "{text}");
    }
    let (code, text) =
        post(&url, r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1,"x",3,4]}]}"#);
    assert_eq!(code, 400);
    assert!(text.contains("inputs[0].data[1]"), "{text}");
    let (code, _) = post(&format!("{}/v2/models/other/infer", server.base), rows_request(&[[1.0; 4]]));
    assert_eq!(code, 404);
    assert_eq!(get(&format!("{}/v2/nowhere", server.base)).0, 404);

    // Still alive and answering.
    let (code, _) = post(&url, rows_request(&[[5.0, 3.4, 1.5, 0.2]]));
    assert_eq!(code, 200);
    let (_, metrics) = get(&format!("{}/metrics", server.base));
    assert_eq!(metric(&metrics, r#"mlops_requests_total{code="500""#), Some(0.0));
    assert!(metric(&metrics, r#"mlops_requests_total{code="400""#).unwrap() >= 10.0);
    assert_eq!(metric(&metrics, r#"mlops_requests_total{code="413""#), Some(1.0));
    server.stop().unwrap();
}

/// Rows like the training data (the iris rows themselves) and the same rows
/// shifted by +2 cm on every feature.
fn iris_rows(shift: f64) -> Vec<[f64; 4]> {
    iris_csv()
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<f64> = l.split(',').take(4).map(|c| c.parse::<f64>().unwrap() + shift).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

fn drift_scores(server: &TestServer) -> Vec<f64> {
    let (_, text) = get(&format!("{}/metrics", server.base));
    IRIS_FEATURES
        .iter()
        .map(|f| {
            metric(&text, &format!("mlops_feature_drift_psi{{feature=\"{f}\""))
                .unwrap_or_else(|| panic!("no drift series for {f}: {text}"))
        })
        .collect()
}

#[test]
fn drift_stays_low_in_distribution_and_rises_under_shift() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(serve_config(&train_iris(dir.path(), "")));
    server.wait_ready();
    let url = infer_url(&server);

    // Below the minimum window the series is absent, not misleading.
    post(&url, rows_request(&iris_rows(0.0)[..10]));
    let (_, text) = get(&format!("{}/metrics", server.base));
    assert!(!text.contains("mlops_feature_drift_psi{"), "{text}");

    for _ in 0..4 {
        let (code, _) = post(&url, rows_request(&iris_rows(0.0)));
        assert_eq!(code, 200);
    }
    let stable = drift_scores(&server);
    assert!(stable.iter().all(|s| *s < 0.1), "in-distribution PSI {stable:?}");

    for _ in 0..4 {
        post(&url, rows_request(&iris_rows(2.0)));
    }
    let shifted = drift_scores(&server);
    assert!(shifted.iter().all(|s| *s > 0.5), "shifted PSI {shifted:?}");
    server.stop().unwrap();
}

#[test]
fn injected_errors_are_500_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = serve_config(&train_iris(dir.path(), ""));
    cfg.faults = Faults::new(1.0, Duration::ZERO, false);
    let server = TestServer::start(cfg);
    server.wait_ready();
    let (code, text) = post(&infer_url(&server), rows_request(&[[5.0, 3.4, 1.5, 0.2]]));
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("injected fault"));
    // A malformed request is still the client's fault, not an injected one.
    assert_eq!(post(&infer_url(&server), "{").0, 400);
    let (_, metrics) = get(&format!("{}/metrics", server.base));
    assert_eq!(metric(&metrics, r#"mlops_requests_total{code="500""#), Some(1.0));
    server.stop().unwrap();
}

#[test]
fn crash_on_load_ends_the_server_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = serve_config(&train_iris(dir.path(), ""));
    cfg.faults = Faults::new(0.0, Duration::ZERO, true);
    let server = TestServer::start(cfg);
    for _ in 0..200 {
        if server.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = server.stop().unwrap_err();
    assert!(err.contains("MLOPS_FAULT_CRASH_ON_LOAD"), "{err}");
}

#[test]
fn wrong_digest_refuses_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = serve_config(&train_iris(dir.path(), ""));
    cfg.model_digest = Some(format!("sha256:{}", "1".repeat(64)));
    let server = TestServer::start(cfg);
    while !server.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(server.stop().unwrap_err().contains("does not match"));
}

#[test]
fn in_flight_requests_finish_during_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = serve_config(&train_iris(dir.path(), ""));
    cfg.faults = Faults::new(0.0, Duration::from_millis(400), false);
    let server = TestServer::start(cfg);
    server.wait_ready();
    let url = infer_url(&server);
    let pending = std::thread::spawn(move || post(&url, rows_request(&[[5.0, 3.4, 1.5, 0.2]])));
    std::thread::sleep(Duration::from_millis(100));
    let base = server.base.clone();
    server.stop().unwrap();
    let (code, _) = pending.join().unwrap();
    assert_eq!(code, 200);
    // And the listener is closed afterwards.
    assert_eq!(get(&format!("{base}/v2/health/live")).0, 0);
}

#[test]
fn values_too_large_to_score_are_400_naming_the_row_never_null() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(serve_config(&train_iris(dir.path(), "")));
    server.wait_ready();
    let url = infer_url(&server);
    for x in [1e308, -1e308] {
        for outputs in [r#"[{"name":"predict"}]"#, r#"[{"name":"predict_proba"}]"#] {
            let body = format!(
                r#"{{"inputs":[{{"name":"x","shape":[2,4],"datatype":"FP64","data":[5,3.4,1.5,0.2,{x},{x},{x},{x}]}}],"outputs":{outputs}}}"#
            );
            let (code, text) = post(&url, &body);
            assert_eq!(code, 400, "{x} {outputs}: {text}");
            assert_eq!(
                text, r#"{"error":"inputs[0].data row 1: values too large to score"}"#,
                "{x} {outputs}"
            );
        }
    }
    // One tensor per feature: the row is named, not a tensor.
    let columns: Vec<serde_json::Value> = IRIS_FEATURES
        .iter()
        .map(|f| serde_json::json!({"name": f, "shape": [1], "datatype": "FP64", "data": [1e308]}))
        .collect();
    let (code, text) = post(&url, serde_json::json!({ "inputs": columns }).to_string());
    assert_eq!((code, text.as_str()), (400, r#"{"error":"inputs row 0: values too large to score"}"#));
    // FP32 cannot hold 1e308 at all: refused at the value.
    let (code, text) = post(&url, rows_request(&[[1e308; 4]]).replace("FP64", "FP32"));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("inputs[0].data[0]: 1e308 does not fit in FP32"), "{text}");
    // Large but scorable rows still answer, with finite probabilities.
    let body = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1e300,0,0,0]}],
                   "outputs":[{"name":"predict"},{"name":"predict_proba"}]}"#;
    let (code, text) = post(&url, body);
    assert_eq!(code, 200, "{text}");
    assert!(!text.contains("null"), "{text}");

    let (_, metrics) = get(&format!("{}/metrics", server.base));
    assert_eq!(metric(&metrics, r#"mlops_requests_total{code="400""#), Some(6.0), "{metrics}");
    assert_eq!(metric(&metrics, "mlops_inference_rows_total"), Some(1.0), "{metrics}");
    server.stop().unwrap();

    // A forest only compares, so the same extreme rows are scored.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(serve_config(&train_iris(dir.path(), r#"{"algorithm":"random_forest"}"#)));
    server.wait_ready();
    let (code, text) = post(&infer_url(&server), rows_request(&[[1e308; 4], [-1e308; 4]]));
    assert_eq!(code, 200, "{text}");
    assert!(!text.contains("null"), "{text}");
    server.stop().unwrap();
}

#[test]
fn unreadable_path_segments_are_json_400_naming_them_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(serve_config(&train_iris(dir.path(), "")));
    server.wait_ready();
    let body = rows_request(&[[5.0, 3.4, 1.5, 0.2]]);
    let cases = [
        ("/v2/models/%FF/infer", "name"),
        ("/v2/models/iris/versions/%FF/infer", "version"),
        ("/v2/models/%C3%28/versions/v1/infer", "name"),
    ];
    for (path, field) in cases {
        let (code, text) = post(&format!("{}{path}", server.base), &body);
        assert_eq!(code, 400, "{path}: {text}");
        let err: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
        assert_eq!(err["error"], format!("{field}: not valid UTF-8 once percent-decoded"), "{path}");
    }
    for path in ["/v2/models/%FF", "/v2/models/iris/versions/%FF/ready"] {
        let (code, text) = get(&format!("{}{path}", server.base));
        assert_eq!(code, 400, "{path}: {text}");
        assert!(text.starts_with(r#"{"error":""#), "{path}: {text}");
    }
    // Percent-encoded UTF-8 is still a name.
    let (code, _) = post(&format!("{}/v2/models/%69ris/infer", server.base), &body);
    assert_eq!(code, 200);
    let (_, metrics) = get(&format!("{}/metrics", server.base));
    // The three inferences with a bad path; metadata and readiness are not counted.
    assert_eq!(metric(&metrics, r#"mlops_requests_total{code="400""#), Some(3.0), "{metrics}");
    server.stop().unwrap();
}

#[test]
fn shutdown_delay_keeps_serving_while_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = serve_config(&train_iris(dir.path(), ""));
    cfg.shutdown_delay = Duration::from_millis(1500);
    let mut server = TestServer::start(cfg);
    server.wait_ready();
    let started = std::time::Instant::now();
    server.signal_shutdown();
    let ready = format!("{}/v2/health/ready", server.base);
    for _ in 0..100 {
        if get(&ready).0 == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, text) = get(&ready);
    assert_eq!((code, text.as_str()), (503, r#"{"ready":false}"#));
    assert_eq!(get(&format!("{}/v2/models/iris/ready", server.base)).0, 503);
    // New connections are still accepted and answered during the delay.
    let (code, text) = post(&infer_url(&server), rows_request(&[[5.0, 3.4, 1.5, 0.2]]));
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("setosa"), "{text}");
    assert_eq!(get(&format!("{}/v2/health/live", server.base)).0, 200);
    assert!(started.elapsed() < Duration::from_millis(1500), "the checks above ran after the delay");

    let base = server.base.clone();
    server.stop().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(get(&format!("{base}/v2/health/live")).0, 0);
}
