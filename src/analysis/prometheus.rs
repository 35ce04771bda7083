//! A minimal Prometheus HTTP API client: instant queries over plain HTTP, one number per
//! query. An empty result is `NoData` (the check's `onNoData` decides); a query error, a
//! non-numeric answer or several series are errors, counted apart from failures.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;

use crate::rollout::Sample;

#[derive(Clone)]
pub struct Prometheus {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Prometheus {
    /// `base` like `http://prometheus.monitoring:9090`.
    pub fn new(base: &str) -> Prometheus {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        Prometheus {
            base: base.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn query(&self, promql: &str) -> Sample {
        match tokio::time::timeout(Duration::from_secs(10), self.fetch(promql)).await {
            Ok(Ok(body)) => parse(&body),
            Ok(Err(e)) => Sample::Error(e),
            Err(_) => Sample::Error("Prometheus did not answer within 10 s".into()),
        }
    }

    /// The timestamps (seconds, ascending) of the samples equal to 1 of a range-vector
    /// query with one series, e.g. `up{pod="x"}[1m]`: when a target was scraped.
    pub async fn sample_times(&self, promql: &str) -> Result<Vec<f64>, String> {
        match tokio::time::timeout(Duration::from_secs(10), self.fetch(promql)).await {
            Ok(Ok(body)) => parse_times(&body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("Prometheus did not answer within 10 s".into()),
        }
    }

    async fn fetch(&self, promql: &str) -> Result<Vec<u8>, String> {
        let query: String =
            form_urlencoded::Serializer::new(String::new()).append_pair("query", promql).finish();
        let uri: hyper::Uri = format!("{}/api/v1/query?{query}", self.base)
            .parse()
            .map_err(|e| format!("bad Prometheus URL: {e}"))?;
        let resp = self.client.get(uri).await.map_err(|e| format!("Prometheus unreachable: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading Prometheus' answer: {e}"))?
            .to_bytes();
        if !status.is_success() && status.as_u16() != 400 && status.as_u16() != 422 {
            return Err(format!("Prometheus answered HTTP {status}"));
        }
        Ok(body.to_vec())
    }
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
pub fn parse(body: &[u8]) -> Sample {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => return Sample::Error(format!("not a Prometheus answer: {e}")),
    };
    if answer.status != "success" {
        return Sample::Error(answer.error.unwrap_or_else(|| "query failed".into()));
    }
    let Some(data) = answer.data else { return Sample::Error("answer without data".into()) };
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
pub fn parse_times(body: &[u8]) -> Result<Vec<f64>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("not a Prometheus answer: {e}"))?;
    if answer.status != "success" {
        return Err(answer.error.unwrap_or_else(|| "query failed".into()));
    }
    let data = answer.data.ok_or("answer without data")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_times_from_a_range_vector() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[10.5,"1"],[8.5,"1"],[12.5,"0"]]}]}}"#;
        assert_eq!(parse_times(body), Ok(vec![8.5, 10.5]));
        let empty = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(parse_times(empty), Ok(vec![]));
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_times(vector).is_err());
    }

    #[test]
    fn answers_become_samples() {
        let one = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.25"]}]}}"#;
        assert_eq!(parse(one), Sample::Value(0.25));
        let none = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse(none), Sample::NoData);
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(parse(nan), Sample::NoData, "0/0 rates are no data, not a failure");
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#;
        assert_eq!(parse(scalar), Sample::Value(3.0));
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(matches!(parse(two), Sample::Error(m) if m.contains("2 series")));
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert!(matches!(parse(bad), Sample::Error(m) if m.contains("parse error")));
        assert!(matches!(parse(b"<html>"), Sample::Error(_)));
    }
}
