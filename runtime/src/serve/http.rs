//! HTTP routes: Open Inference Protocol v2 REST plus `/metrics`.
//!
//! Every error is JSON `{"error": "..."}`; a malformed request is a 4xx that
//! names the bad field, never a 5xx (500 comes only from fault injection).

use super::metrics::Reason;
use super::protocol::{self, AnswerShape, PREDICT_OUTPUT, PROBA_OUTPUT, push_json_f64, push_json_str};
use super::{AppState, Served};
use crate::model::Prediction;
use axum::Router;
use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

type AppRef = Arc<AppState>;

pub fn router(state: AppRef) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// An error answer not yet rendered (small, so `Result`s stay cheap).
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, &self.message)
    }
}

/// The `{name}` and, on the versioned routes, `{version}` segments of a model route.
#[derive(Deserialize)]
struct ModelRef {
    name: String,
    version: Option<String>,
}

/// A segment that cannot be read (e.g. not UTF-8 once percent-decoded) is a
/// JSON 400 naming it, like every other client error.
impl<S: Send + Sync> FromRequestParts<S> for ModelRef {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<ModelRef>::from_request_parts(parts, state).await.map(|Path(m)| m).map_err(path_error)
    }
}

fn path_error(rejection: PathRejection) -> ApiError {
    let status = rejection.status();
    if let PathRejection::FailedToDeserializePathParams(e) = &rejection
        && let ErrorKind::InvalidUtf8InPathParam { key } = e.kind()
    {
        return ApiError::new(status, format!("{key}: not valid UTF-8 once percent-decoded"));
    }
    ApiError::new(status, format!("path: {}", rejection.body_text()))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
}

async fn live() -> Response {
    json(StatusCode::OK, r#"{"live":true}"#.into())
}

async fn ready(State(s): State<AppRef>) -> Response {
    if s.ready() {
        json(StatusCode::OK, r#"{"ready":true}"#.into())
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#.into())
    }
}

async fn server_metadata() -> Response {
    json(
        StatusCode::OK,
        serde_json::json!({
            "name": "mlops-runtime",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": [],
        })
        .to_string(),
    )
}

/// The served model when `name` (and `version`, if given) match it.
fn lookup<'a>(s: &'a AppState, name: &str, version: Option<&str>) -> Result<&'a Served, ApiError> {
    let served = s
        .served
        .get()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is not loaded yet"))?;
    if served.name != name {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model {name:?} is not served here (this server serves {:?})", served.name),
        ));
    }
    if let Some(v) = version
        && v != served.version
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "version {v:?} of model {name:?} is not served here (this server serves {:?})",
                served.version
            ),
        ));
    }
    Ok(served)
}

fn metadata(s: &AppState, name: &str, version: Option<&str>) -> Response {
    let served = match lookup(s, name, version) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let card = &served.model.card;
    let output = if served.regression {
        serde_json::json!([{ "name": PREDICT_OUTPUT, "datatype": "FP64", "shape": [-1] }])
    } else {
        serde_json::json!([
            { "name": PREDICT_OUTPUT, "datatype": "BYTES", "shape": [-1] },
            { "name": PROBA_OUTPUT, "datatype": "FP64", "shape": [-1, card.classes.len()] },
        ])
    };
    json(
        StatusCode::OK,
        serde_json::json!({
            "name": served.name,
            "versions": [served.version],
            "platform": "mlops-runtime",
            "inputs": [{ "name": "input-0", "datatype": "FP64", "shape": [-1, card.features.len()] }],
            "outputs": output,
            "parameters": {
                "algorithm": card.algorithm,
                "features": card.features,
                "classes": card.classes,
                "label": card.label,
            },
        })
        .to_string(),
    )
}

async fn model_metadata(State(s): State<AppRef>, m: ModelRef) -> Response {
    metadata(&s, &m.name, m.version.as_deref())
}

fn model_readiness(s: &AppState, name: &str, version: Option<&str>) -> Response {
    match lookup(s, name, version) {
        Ok(served) if s.ready() => {
            json(StatusCode::OK, serde_json::json!({ "name": served.name, "ready": true }).to_string())
        }
        Ok(served) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "name": served.name, "ready": false }).to_string(),
        ),
        Err(e) => e.into_response(),
    }
}

async fn model_ready(State(s): State<AppRef>, m: ModelRef) -> Response {
    model_readiness(&s, &m.name, m.version.as_deref())
}

async fn metrics(State(s): State<AppRef>) -> Response {
    let mut body = match s.served.get() {
        Some(served) => served.metrics.render(&served.model.card.features),
        None => "# the model is not loaded yet\n".into(),
    };
    s.limit_metrics.render_into(&mut body, s.in_flight.load(std::sync::atomic::Ordering::Relaxed));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Runs one inference and records its status and latency (a bad path too).
async fn infer(
    State(s): State<AppRef>,
    model: Result<ModelRef, ApiError>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let faults = &s.config.faults;
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let served = match model.and_then(|m| lookup(&s, &m.name, m.version.as_deref())) {
        Ok(m) => m,
        Err(e) => {
            if let Some(served) = s.served.get() {
                served.metrics.observe_request(e.status.as_u16(), started.elapsed().as_secs_f64());
            }
            return e.into_response();
        }
    };
    let response = match predict(&s, served, body) {
        Ok(body) => json(StatusCode::OK, body),
        Err(e) => e.into_response(),
    };
    served.metrics.observe_request(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Refuses, before any row is scored, a batch whose answer could exceed
/// `MLOPS_MAX_RESPONSE_BYTES` (its size is bounded by its shape).
fn refuse_huge_answer(s: &AppState, served: &Served, batch: &protocol::Batch) -> Result<(), ApiError> {
    let limit = s.config.limits.max_response_bytes;
    let shape = AnswerShape {
        head_bytes: served.response_head.len(),
        id_bytes: batch.id.as_ref().map(String::len),
        predict_value_bytes: served.predict_value_bytes,
        classes: served.model.predictor.n_outputs(),
    };
    let bound = protocol::answer_bound(batch.rows, batch.outputs, &shape);
    if bound <= limit {
        return Ok(());
    }
    s.limit_metrics.reject(Reason::ResponseTooLarge);
    Err(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "outputs: the answer to {} rows could take {bound} bytes, over the {limit}-byte limit \
             (MLOPS_MAX_RESPONSE_BYTES); send at most {} rows per request",
            batch.rows,
            protocol::rows_within(limit, batch.outputs, &shape)
        ),
    ))
}

/// Decodes, predicts and encodes; the `Err` side is an error response.
fn predict(s: &AppState, served: &Served, body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            s.limit_metrics.reject(Reason::RequestTooLarge);
            ApiError::new(
                status,
                format!(
                    "body: request larger than {} bytes (MLOPS_MAX_REQUEST_BYTES)",
                    s.config.max_body_bytes
                ),
            )
        } else {
            ApiError::new(status, format!("body: {}", rejection.body_text()))
        }
    })?;
    let bad = |e: protocol::BadRequest| ApiError::new(StatusCode::BAD_REQUEST, e.to_string());
    let request = protocol::parse(&body).map_err(bad)?;
    let card = &served.model.card;
    let batch = protocol::decode(request, &card.features, served.regression).map_err(bad)?;
    refuse_huge_answer(s, served, &batch)?;
    if s.config.faults.inject_error() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected fault (MLOPS_FAULT_ERROR_RATE, test-only)",
        ));
    }

    let f = card.features.len();
    let predictor = &served.model.predictor;
    // Every row is scored before anything is written or counted, so one row the
    // model cannot score fails the whole request and no output is ever null.
    let mut predictions = Vec::with_capacity(batch.rows);
    for (r, row) in batch.x.chunks_exact(f).enumerate() {
        let p = predictor.predict(row).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{} row {r}: values too large to score", batch.source),
            )
        })?;
        predictions.push(p);
    }
    let metrics = &served.metrics;
    metrics.observe_inputs(&batch.x, f);
    for p in &predictions {
        if let Prediction::Class(c) = p {
            metrics.observe_class(*c);
        }
    }

    let mut out = String::with_capacity(96 + batch.rows * 16);
    out.push('{');
    out.push_str(&served.response_head);
    if let Some(id) = &batch.id {
        out.push_str(",\"id\":");
        push_json_str(&mut out, id);
    }
    out.push_str(",\"outputs\":[");
    if batch.outputs.predict {
        let datatype = if served.regression { "FP64" } else { "BYTES" };
        let _ = write!(
            out,
            "{{\"name\":\"{PREDICT_OUTPUT}\",\"datatype\":\"{datatype}\",\"shape\":[{}],\"data\":[",
            batch.rows
        );
        for (i, p) in predictions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match p {
                Prediction::Class(c) => out.push_str(&served.class_json[*c]),
                Prediction::Value(v) => push_json_f64(&mut out, *v),
            }
        }
        out.push_str("]}");
    }
    if batch.outputs.probabilities {
        let k = predictor.n_outputs();
        if batch.outputs.predict {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"name\":\"{PROBA_OUTPUT}\",\"datatype\":\"FP64\",\"shape\":[{},{k}],\"data\":[",
            batch.rows
        );
        let mut probs = vec![0.0; k];
        for (i, row) in batch.x.chunks_exact(f).enumerate() {
            predictor.probabilities(row, &mut probs);
            for (j, p) in probs.iter().enumerate() {
                if i + j > 0 {
                    out.push(',');
                }
                push_json_f64(&mut out, *p);
            }
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    metrics.observe_rows(batch.rows as u64);
    Ok(out)
}
