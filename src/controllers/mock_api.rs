//! The middle test tier: a controller's I/O shell against a scripted API server, with no
//! cluster. A test gives a responder (request → status and JSON body), runs one reconcile,
//! and asserts the requests it made, in order: what a pass reads, writes and deletes.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::{Client, client::Body};
use serde_json::Value;

/// One request the shell made.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    /// Path and query, e.g. `/apis/apps/v1/namespaces/ns/deployments/iris-r1?fieldManager=…`.
    pub uri: String,
    pub body: Option<Value>,
}

impl Call {
    /// `"PATCH /apis/apps/v1/namespaces/ns/deployments/iris-r1"`: method and path, no query.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri.split('?').next().unwrap_or_default())
    }

    pub fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

/// What the responder answers: an HTTP status and a JSON body.
pub type Reply = (u16, Value);

/// A `Client` whose requests go to `respond`; the returned log fills as the shell runs.
pub fn client<F>(respond: F) -> (Client, Arc<Mutex<Vec<Call>>>)
where
    F: Fn(&Call) -> Reply + Send + Sync + 'static,
{
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let calls = log.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes =
                http_body_util::BodyExt::collect(body).await.map(|b| b.to_bytes()).unwrap_or_default();
            let call = Call {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                body: serde_json::from_slice(&bytes).ok(),
            };
            let (status, reply) = respond(&call);
            calls.lock().unwrap().push(call);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), log)
}

/// The `Status` body the API server sends with an error.
pub fn status(code: u16, reason: &str, message: &str) -> Reply {
    (
        code,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code
        }),
    )
}

/// `404 NotFound` for a GET of an absent object.
pub fn not_found() -> Reply {
    status(404, "NotFound", "not found")
}

/// An empty list of `kind`.
pub fn empty_list(kind: &str) -> Reply {
    list(kind, vec![])
}

/// A list of `kind` holding `items`.
pub fn list(kind: &str, items: Vec<Value>) -> Reply {
    (
        200,
        serde_json::json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

/// Echoes a server-side apply (PATCH) or create (POST) body back, as the API server does
/// with the object it stored.
pub fn echo(call: &Call) -> Reply {
    let mut obj = call.body.clone().unwrap_or(Value::Null);
    if obj.get("metadata").is_some() && obj["metadata"].get("uid").is_none() {
        obj["metadata"]["uid"] = "uid-echo".into();
    }
    (if call.method == "POST" { 201 } else { 200 }, obj)
}

/// The request lines, in order (see [`Call::line`]).
pub fn lines(log: &Arc<Mutex<Vec<Call>>>) -> Vec<String> {
    log.lock().unwrap().iter().map(Call::line).collect()
}

/// The writes (anything but GET), in order.
pub fn writes(log: &Arc<Mutex<Vec<Call>>>) -> Vec<Call> {
    log.lock().unwrap().iter().filter(|c| c.is_write()).cloned().collect()
}
