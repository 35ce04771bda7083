//! A minimal Prometheus HTTP API client: instant queries over plain HTTP, one number per
//! query. An empty result is `NoData` (the check's `onNoData` decides); a query error, a
//! non-numeric answer or several series are errors, counted apart from failures.
//!
//! Every query is a namespace's: it is scoped to that namespace ([`super::scope`]) before
//! it leaves, and its answer is bounded (time, bytes, series), so a check can neither read
//! another tenant's series nor make the operator wait or grow without limit. Nothing of an
//! answer but its numbers is kept: result labels are never read, and label sets quoted in
//! Prometheus' error messages are blanked.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;

use super::scope;
use crate::rollout::Sample;

/// Bounds on every query.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// The whole request: connecting, Prometheus' evaluation and reading the answer.
    pub timeout: Duration,
    /// Bytes of an answer read at most; a longer answer is refused unread.
    pub max_response_bytes: usize,
    /// Series in a result at most.
    pub max_series: usize,
}

pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_SERIES: usize = 100;
/// The label the usual relabelling of Kubernetes discovery (`__meta_kubernetes_namespace`)
/// gives every series of a pod, as the local Prometheus does.
pub const DEFAULT_NAMESPACE_LABEL: &str = "namespace";

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECONDS),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_series: DEFAULT_MAX_SERIES,
        }
    }
}

impl Limits {
    /// What Prometheus is asked for (its `timeout` parameter): a little less than the
    /// whole request, so that it gives up, and frees what the query holds, first.
    pub fn evaluation_timeout(&self) -> Duration {
        self.timeout.saturating_sub(Duration::from_secs(1)).max(self.timeout / 2)
    }
}

#[derive(Clone, Debug)]
pub struct Prometheus {
    base: String,
    namespace_label: String,
    limits: Limits,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Prometheus {
    /// `base` like `http://prometheus.monitoring:9090`; `namespace_label` is the series
    /// label that holds a pod's namespace there.
    pub fn new(base: &str, namespace_label: &str, limits: Limits) -> Prometheus {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(limits.timeout.min(Duration::from_secs(3))));
        Prometheus {
            base: base.trim_end_matches('/').to_string(),
            namespace_label: namespace_label.to_string(),
            limits,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// One number measured by `promql`, a query of namespace `namespace`.
    pub async fn query(&self, namespace: &str, promql: &str) -> Sample {
        match self.fetch(namespace, promql).await {
            Ok(body) => parse(&body, self.limits.max_series),
            Err(e) => Sample::Error(e),
        }
    }

    /// The timestamps (seconds, ascending) of the samples equal to 1 of a range-vector
    /// query of namespace `namespace` with one series, e.g. `up{pod="x"}[1m]`: when a
    /// target was scraped.
    pub async fn sample_times(&self, namespace: &str, promql: &str) -> Result<Vec<f64>, String> {
        parse_times(&self.fetch(namespace, promql).await?, self.limits.max_series)
    }

    /// The answer to `promql` scoped to `namespace`, within the limits.
    async fn fetch(&self, namespace: &str, promql: &str) -> Result<Vec<u8>, String> {
        let scoped =
            scope::scoped_query(promql, &self.namespace_label, namespace).map_err(|e| e.to_string())?;
        let timeout = self.limits.timeout;
        tokio::time::timeout(timeout, self.request(&scoped))
            .await
            .unwrap_or_else(|_| Err(format!("Prometheus did not answer within {} s", timeout.as_secs_f64())))
    }

    async fn request(&self, promql: &str) -> Result<Vec<u8>, String> {
        let evaluation = self.limits.evaluation_timeout();
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .append_pair("timeout", &format!("{}ms", evaluation.as_millis()))
            // A Prometheus that knows `limit` (3.x) stops at this many series; an older
            // one ignores it. Either way the answer is counted here.
            .append_pair("limit", &(self.limits.max_series + 1).to_string())
            .finish();
        let uri: hyper::Uri = format!("{}/api/v1/query?{query}", self.base)
            .parse()
            .map_err(|e| format!("bad Prometheus URL: {e}"))?;
        let resp = self.client.get(uri).await.map_err(|e| format!("Prometheus unreachable: {e}"))?;
        let status = resp.status();
        let max = self.limits.max_response_bytes;
        let too_big = || {
            format!(
                "Prometheus' answer is larger than {} (--prometheus-max-response-bytes); narrow the query",
                bytes(max)
            )
        };
        let announced = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > max as u64) {
            return Err(too_big());
        }
        // Streamed, and dropped (with its connection) at the cap: never held whole.
        let body = Limited::new(resp.into_body(), max)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    too_big()
                } else {
                    format!("reading Prometheus' answer: {e}")
                }
            })?
            .to_bytes();
        if !status.is_success() && status.as_u16() != 400 && status.as_u16() != 422 {
            return Err(format!("Prometheus answered HTTP {status}"));
        }
        Ok(body.to_vec())
    }
}

/// `n` bytes in words (`1 MiB`, `4096 bytes`).
fn bytes(n: usize) -> String {
    const MIB: usize = 1024 * 1024;
    match n {
        n if n >= MIB && n % MIB == 0 => format!("{} MiB", n / MIB),
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n / 1024),
        n => format!("{n} bytes"),
    }
}

/// Prometheus' error message without the label sets it may quote (the series of a failed
/// match, say): whatever comes back, no series label reaches a status or an Event.
fn redact(error: &str) -> String {
    let mut out = String::with_capacity(error.len());
    let mut rest = error;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                let inner = &rest[open + 1..open + close];
                out.push_str(if inner.contains('=') { "{…}" } else { &rest[open..=open + close] });
                rest = &rest[open + close + 1..];
            }
            None => {
                out.push('{');
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    crate::controllers::truncate(out, 500)
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

/// Turns a Prometheus `/api/v1/query` answer into a sample.
pub fn parse(body: &[u8], max_series: usize) -> Sample {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => return Sample::Error(format!("not a Prometheus answer: {e}")),
    };
    if answer.status != "success" {
        return Sample::Error(redact(answer.error.as_deref().unwrap_or("query failed")));
    }
    let Some(data) = answer.data else { return Sample::Error("answer without data".into()) };
    if let Err(e) = series_within(&data, max_series) {
        return Sample::Error(e);
    }
    let value_of = |pair: &serde_json::Value| -> Sample {
        match pair.get(1).and_then(|v| v.as_str()).map(str::parse::<f64>) {
            Some(Ok(v)) if v.is_nan() => Sample::NoData,
            Some(Ok(v)) => Sample::Value(v),
            _ => Sample::Error(format!("unexpected sample {pair}")),
        }
    };
    match data.result_type.as_str() {
        "scalar" => value_of(&data.result),
        "vector" => match data.result.as_array().map(Vec::as_slice) {
            Some([]) => Sample::NoData,
            Some([one]) => value_of(one.get("value").unwrap_or(&serde_json::Value::Null)),
            Some(many) => Sample::Error(format!(
                "query returned {} series; aggregate it to one (e.g. sum(...))",
                many.len()
            )),
            None => Sample::Error("vector result is not a list".into()),
        },
        other => Sample::Error(format!("query returned a {other}; an instant query must return one number")),
    }
}

/// Timestamps of the samples equal to 1 in a matrix answer (all series together).
pub fn parse_times(body: &[u8], max_series: usize) -> Result<Vec<f64>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("not a Prometheus answer: {e}"))?;
    if answer.status != "success" {
        return Err(redact(answer.error.as_deref().unwrap_or("query failed")));
    }
    let data = answer.data.ok_or("answer without data")?;
    series_within(&data, max_series)?;
    if data.result_type != "matrix" {
        return Err(format!("expected a range vector, got a {}", data.result_type));
    }
    let mut times: Vec<f64> = data
        .result
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|series| series.get("values")?.as_array())
        .flatten()
        .filter(|pair| pair.get(1).and_then(|v| v.as_str()) == Some("1"))
        .filter_map(|pair| pair.get(0)?.as_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// A result of at most `max` series (a scalar is one).
fn series_within(data: &Data, max: usize) -> Result<(), String> {
    match data.result.as_array() {
        Some(series) if series.len() > max && matches!(data.result_type.as_str(), "vector" | "matrix") => {
            Err(format!(
                "the query returned more than {max} series (--prometheus-max-series); aggregate it (e.g. sum(...))"
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    #[test]
    fn scrape_times_from_a_range_vector() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[10.5,"1"],[8.5,"1"],[12.5,"0"]]}]}}"#;
        assert_eq!(parse_times(body, 100), Ok(vec![8.5, 10.5]));
        let empty = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(parse_times(empty, 100), Ok(vec![]));
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_times(vector, 100).is_err());
    }

    #[test]
    fn answers_become_samples() {
        let one = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.25"]}]}}"#;
        assert_eq!(parse(one, 100), Sample::Value(0.25));
        let none = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse(none, 100), Sample::NoData);
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(parse(nan, 100), Sample::NoData, "0/0 rates are no data, not a failure");
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#;
        assert_eq!(parse(scalar, 1), Sample::Value(3.0));
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(matches!(parse(two, 100), Sample::Error(m) if m.contains("2 series")));
        assert!(matches!(parse(two, 1), Sample::Error(m) if m.contains("more than 1 series")));
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert!(matches!(parse(bad, 100), Sample::Error(m) if m.contains("parse error")));
        assert!(matches!(parse(b"<html>", 100), Sample::Error(_)));
    }

    #[test]
    fn series_labels_quoted_in_errors_are_blanked() {
        let body = br#"{"status":"error","errorType":"execution","error":"found duplicate series for the match group {} on the left hand-side of the operation: [{__name__=\"up\", instance=\"10.244.0.7:8080\", pod=\"web-v1-abc\"}, {__name__=\"up\", pod=\"web-v1-def\"}];many-to-many matching not allowed"}"#;
        let Sample::Error(m) = parse(body, 100) else { panic!("an error") };
        assert_eq!(
            m,
            "found duplicate series for the match group {} on the left hand-side of the operation: [{…}, {…}];many-to-many matching not allowed"
        );
        assert_eq!(redact("unbalanced { a=b"), "unbalanced { a=b");
    }

    #[test]
    fn sizes_in_words() {
        assert_eq!(bytes(1024 * 1024), "1 MiB");
        assert_eq!(bytes(64 * 1024), "64 KiB");
        assert_eq!(bytes(1000), "1000 bytes");
        let limits = Limits::default();
        assert_eq!(limits.evaluation_timeout(), Duration::from_secs(9));
        let short = Limits { timeout: Duration::from_secs(1), ..Limits::default() };
        assert_eq!(short.evaluation_timeout(), Duration::from_millis(500));
    }

    /// A one-connection HTTP server on loopback: hands the request line to the test and
    /// answers with `respond`.
    async fn server<F, Fut>(respond: F) -> (String, tokio::sync::oneshot::Receiver<String>)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string();
            let _ = tx.send(head);
            respond(stream).await;
        });
        (url, rx)
    }

    fn decoded(request_line: &str) -> Vec<(String, String)> {
        let target = request_line.split(' ').nth(1).unwrap();
        let query = target.split_once('?').unwrap().1;
        form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }

    #[tokio::test]
    async fn the_query_sent_is_scoped_and_carries_its_evaluation_timeout() {
        let (url, request) = server(|mut s| async move {
            let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]}}"#;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body.as_bytes()).await.unwrap();
        })
        .await;
        let p = Prometheus::new(&url, "namespace", Limits::default());
        assert_eq!(p.query("ml", "sum(up)").await, Sample::Value(2.0));
        let params = decoded(&request.await.unwrap());
        assert!(params.contains(&("query".into(), r#"sum(up{namespace="ml"})"#.into())), "{params:?}");
        assert!(params.contains(&("timeout".into(), "9000ms".into())), "{params:?}");
        assert!(params.contains(&("limit".into(), "101".into())), "{params:?}");
    }

    #[tokio::test]
    async fn a_query_of_another_namespace_never_leaves() {
        // Nothing listens there: an attempt would be "unreachable", not a refusal.
        let p = Prometheus::new("http://127.0.0.1:9", "namespace", Limits::default());
        let Sample::Error(m) = p.query("ml", r#"up{namespace="other"}"#).await else { panic!("refused") };
        assert!(m.contains(r#"namespace="other""#), "{m}");
        let Sample::Error(m) = p.query("ml", "sum(").await else { panic!("refused") };
        assert!(m.starts_with("the query does not parse"), "{m}");
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_cap() {
        let (url, _request) = server(|mut s| async move {
            // Chunked, no length announced, and more than the cap: the client must stop.
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            for _ in 0..1024 {
                if s.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let limits = Limits { max_response_bytes: 256 * 1024, ..Limits::default() };
        let p = Prometheus::new(&url, "namespace", limits);
        let Sample::Error(m) = p.query("ml", "up").await else { panic!("refused") };
        assert!(m.contains("larger than 256 KiB"), "{m}");
    }

    #[tokio::test]
    async fn an_announced_oversized_answer_is_not_read() {
        let (url, _request) = server(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\n{").await;
            // Keeps the connection open: a client that waited for the body would hang.
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let p = Prometheus::new(&url, "namespace", Limits::default());
        let Sample::Error(m) = p.query("ml", "up").await else { panic!("refused") };
        assert!(m.contains("larger than 1 MiB"), "{m}");
    }

    #[tokio::test]
    async fn a_silent_prometheus_is_given_up_on_in_time() {
        let (url, _request) = server(|s| async move {
            // Holds the connection open and says nothing.
            let _open = s;
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let limits = Limits { timeout: Duration::from_millis(300), ..Limits::default() };
        let p = Prometheus::new(&url, "namespace", limits);
        let started = std::time::Instant::now();
        let Sample::Error(m) = p.query("ml", "up").await else { panic!("an error") };
        assert!(m.contains("did not answer within 0.3 s"), "{m}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
