//! The controllers, one module per kind, and what they share: the [`Context`] (client,
//! Event recorder, metrics), the error type and its retry policy, and the server-side
//! apply helpers. Each kind's `mod.rs` is the thin I/O shell around pure `desired` and
//! `status` functions.

pub mod apply;
pub mod inference_service;
#[cfg(test)]
pub mod mock_api;
pub mod model_version;
pub mod names;
pub mod ownership;
pub mod pod_security;
pub mod training_job;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::warn;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{api::FIELD_MANAGER, metrics::Metrics};

/// What the operator's flags set for the controllers.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Only this namespace is watched when set (a namespace-scoped install, or a test).
    pub watch_namespace: Option<String>,
    /// Where metric checks and drift queries are measured, each scoped to its object's
    /// namespace and bounded; `None` makes every metric check a query error.
    pub prometheus: Option<crate::analysis::prometheus::Prometheus>,
    /// The reference runtime image, which runs the data trigger's dataset checks.
    pub runtime_image: String,
    /// Honour the `mlops.dev/test-fault-env` annotation (tests and demos only).
    pub fault_injection: bool,
    /// The pod security level of each namespace, which the pods users shape must meet.
    pub pod_policy: pod_security::policy::PodPolicy,
}

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    reporter: Reporter,
    pub metrics: Metrics,
    /// Where metric checks are measured; `None` makes every metric check a query error.
    pub prometheus: Option<crate::analysis::prometheus::Prometheus>,
    /// Only this namespace is watched when set (a namespace-scoped install, or a test).
    pub watch_namespace: Option<String>,
    /// The reference runtime image, which runs the data trigger's dataset checks.
    pub runtime_image: String,
    /// Honour the `mlops.dev/test-fault-env` annotation (tests and demos only).
    pub fault_injection: bool,
    /// The pod security level of each namespace, which the pods users shape must meet.
    pub pod_policy: pod_security::policy::PodPolicy,
    /// Consecutive failed reconciles per object, for exponential backoff, and the last
    /// failure's message (a Warning Event is published once per distinct failure).
    failures: Mutex<HashMap<String, (u32, String)>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, instance: String, settings: Settings) -> Arc<Context> {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(instance) };
        Arc::new(Context {
            reporter,
            client,
            metrics,
            watch_namespace: settings.watch_namespace,
            runtime_image: settings.runtime_image,
            fault_injection: settings.fault_injection,
            pod_policy: settings.pod_policy,
            prometheus: settings.prometheus,
            failures: Mutex::default(),
        })
    }

    /// The API the controllers watch `K` through: every namespace, or the one configured.
    pub fn watched<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.watch_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        format!("{}/{}/{}", K::kind(&()), obj.meta().namespace.as_deref().unwrap_or(""), obj.name_any())
    }

    /// Called after a successful reconcile: the next failure starts the backoff anew.
    pub fn reset_failures<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.failures.lock().expect("failures lock").remove(&Self::key(obj));
    }

    /// The retry policy for a failed reconcile: counted in metrics by a static reason,
    /// logged, and requeued with a per-object exponential backoff (never a hot loop).
    pub fn error_action<K: Resource<DynamicType = ()>>(
        &self,
        controller: &'static str,
        obj: &K,
        err: &Error,
    ) -> Action {
        let attempt = {
            let mut failures = self.failures.lock().expect("failures lock");
            let (n, _) = failures.entry(Self::key(obj)).or_default();
            *n = n.saturating_add(1);
            *n - 1
        };
        self.metrics.reconcile_failed(controller, err.reason());
        let delay = backoff(attempt);
        warn!(controller, object = %Self::key(obj), error = %err, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    }

    /// Makes a failed pass visible on `obj`: `Ready=False` (and `Stalled=True` when a human
    /// must act) with the reason and the API server's message, written only when it
    /// changes, and one Warning Event per distinct failure. Best effort: the error itself
    /// still goes to [`Context::error_action`] for the backoff.
    pub async fn report_failure<K: Reported>(&self, obj: &K, err: &Error) {
        let Some(failure) = apply::Failure::of(err) else { return };
        let new = {
            let mut failures = self.failures.lock().expect("failures lock");
            let (_, last) = failures.entry(Self::key(obj)).or_default();
            let new = *last != failure.message;
            last.clone_from(&failure.message);
            new
        };
        // The watch cache's copy may be older than our last status write: read it fresh so
        // the failure condition is added to the status as it is, not as it was.
        let api: Api<K> = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        match api.get_opt(&obj.name_any()).await {
            Ok(Some(fresh)) if fresh.meta().deletion_timestamp.is_none() => {
                let mut status = fresh.status_or_default();
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                if failure.apply_to(K::conditions_mut(&mut status), fresh.meta().generation, &now)
                    && let Err(e) = apply_status(&api, &fresh, &status).await
                {
                    warn!(error = %e, "writing the failure condition failed");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "reading the object to report a failure failed"),
        }
        if new {
            self.event(obj, EventType::Warning, failure.reason, "Reconcile", failure.message).await;
        }
    }

    /// The end of every reconcile: a success resets the object's backoff; a failure is
    /// made visible on the object ([`Context::report_failure`]) and returned for the
    /// backoff ([`Context::error_action`]).
    pub async fn reported<K: Reported>(&self, obj: &K, result: Result<Action>) -> Result<Action> {
        match &result {
            Ok(_) => self.reset_failures(obj),
            Err(err) => self.report_failure(obj, err).await,
        }
        result
    }

    /// Publishes an Event about `obj`. Events are best effort: a failure is logged, never
    /// fails the reconcile. Each call uses a fresh recorder: kube's recorder folds events
    /// with the same reason into one series for minutes and keeps the first note, so a
    /// second `RolledBack` or `RunFailed` would show the first one's version and reason.
    /// Controllers publish only on transitions, so there is no series to fold.
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "publishing an Event failed");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {}", api_message(.0))]
    Kube(#[from] kube::Error),
    /// A step on one child object failed: "apply Service iris-stable: <why>".
    #[error("{step} {kind} {name}: {}", api_message(.source))]
    Child { step: &'static str, kind: String, name: String, source: Box<kube::Error> },
    #[error("serializing an object: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Children's names held by objects the owner does not control: nothing was written.
    #[error("{}", ownership::describe(owner_kind, conflicts))]
    ChildConflict { owner_kind: String, conflicts: Vec<ownership::Conflict> },
}

impl Error {
    pub fn child(step: &'static str, kind: &str, name: &str, source: kube::Error) -> Error {
        Error::Child { step, kind: kind.into(), name: name.into(), source: Box::new(source) }
    }
}

/// The API server's own message for an API error (what a user can act on), else the
/// client error.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

/// A kind whose failed passes [`Context::report_failure`] can show in its conditions.
pub trait Reported:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
    type Status: Serialize + Default;
    /// The stored status, or an empty one.
    fn status_or_default(&self) -> Self::Status;
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<crate::api::Condition>;
}

macro_rules! reported {
    ($kind:ty, $status:ty) => {
        impl Reported for $kind {
            type Status = $status;
            fn status_or_default(&self) -> $status {
                self.status.clone().unwrap_or_default()
            }
            fn conditions_mut(status: &mut $status) -> &mut Vec<crate::api::Condition> {
                &mut status.conditions
            }
        }
    };
}
reported!(crate::api::TrainingJob, crate::api::TrainingJobStatus);
reported!(crate::api::ModelVersion, crate::api::ModelVersionStatus);
reported!(crate::api::InferenceService, crate::api::InferenceServiceStatus);

impl Error {
    /// A short static label for the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "transport",
            Error::Child { source, .. } if matches!(&**source, kube::Error::Api(s) if s.code == 409) => {
                "conflict"
            }
            Error::Child { source, .. } if matches!(&**source, kube::Error::Api(s) if s.code == 422 || s.code == 400) => {
                "child_rejected"
            }
            Error::Child { .. } => "child_error",
            Error::Serialize(_) => "serialize",
            Error::ChildConflict { .. } => "child_conflict",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Transient errors retry with a growing delay per object; spec errors never come here
/// (they become a `Stalled` condition and a normal, slow requeue).
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(8))).min(Duration::from_secs(120))
}

/// Server-side applies `obj` (which must carry apiVersion, kind and name) with the
/// operator's field manager, taking ownership of the fields it sends.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

/// Deletes `name` in the background; an object already gone is fine (idempotent).
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &kube::api::DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// Server-side applies the status subresource: `status` is the whole status we own.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = obj.name_any();
    api.patch_status(&name, &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::child("write the status of", &K::kind(&()), &name, e))?;
    Ok(())
}

pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The settings of the shell tests' operator: namespace `ns`, nothing else configured.
#[cfg(test)]
pub fn test_settings() -> Settings {
    Settings {
        watch_namespace: Some("ns".into()),
        runtime_image: "runtime:dev".into(),
        ..Settings::default()
    }
}

/// Runs every controller until `shutdown` resolves.
pub async fn run_all(ctx: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let controllers = futures::future::join3(
        training_job::run(ctx.clone(), stopped(stop.clone())),
        model_version::run(ctx.clone(), stopped(stop.clone())),
        inference_service::run(ctx.clone(), stopped(stop.clone())),
    );
    // Ends with the controllers (at shutdown); the deletion watches never end by themselves.
    let forget = futures::future::join3(
        forget_deleted::<crate::api::TrainingJob>(&ctx, |m, ns, name| m.forget_training_job(ns, name)),
        forget_deleted::<crate::api::ModelVersion>(&ctx, |_, _, _| {}),
        forget_deleted::<crate::api::InferenceService>(&ctx, |m, ns, name| {
            m.forget_inference_service(ns, name)
        }),
    );
    tokio::select! {
        _ = controllers => {}
        _ = forget => {}
    }
}

/// Drops what the operator holds in memory about deleted objects of kind `K`: the backoff
/// entry of their failures and, through `forget`, their metric series. Without this, a
/// cluster where objects come and go grows the operator's memory and `/metrics` forever
/// (the controllers are not called for objects that are gone).
async fn forget_deleted<K>(ctx: &Context, forget: impl Fn(&Metrics, &str, &str))
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    // Metadata only: nothing else of the object is needed.
    let api = ctx.watched::<kube::core::PartialObjectMeta<K>>();
    let deletions = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(deletions);
    while let Some(event) = deletions.next().await {
        if let Ok(watcher::Event::Delete(gone)) = event {
            let (ns, name) = (gone.namespace().unwrap_or_default(), gone.name_any());
            ctx.failures.lock().expect("failures lock").remove(&format!("{}/{ns}/{name}", K::kind(&())));
            ctx.metrics.forget(gone.uid().as_deref(), |m| forget(m, &ns, &name));
        }
    }
}

/// The keys of an S3 credentials Secret and whether each may be absent.
pub const S3_CREDENTIAL_KEYS: [(&str, bool); 5] = [
    ("AWS_ACCESS_KEY_ID", false),
    ("AWS_SECRET_ACCESS_KEY", false),
    ("AWS_SESSION_TOKEN", true),
    ("AWS_REGION", true),
    ("AWS_ENDPOINT_URL", true),
];

/// S3 credentials from `secret` as container variables named `<prefix><key>`, each a
/// `secretKeyRef` (optional keys `optional: true`): the values are resolved by the kubelet
/// and never pass through the operator, its status or its Events.
pub fn s3_credentials_env(prefix: &str, secret: &str) -> Vec<k8s_openapi::api::core::v1::EnvVar> {
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
    S3_CREDENTIAL_KEYS
        .iter()
        .map(|&(key, optional)| EnvVar {
            name: format!("{prefix}{key}"),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.into(),
                    key: key.into(),
                    optional: Some(optional),
                }),
                ..EnvVarSource::default()
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert!(backoff(5) > backoff(4));
        assert_eq!(backoff(30), Duration::from_secs(120));
    }

    #[test]
    fn s3_credentials_are_secret_key_references() {
        let env = s3_credentials_env("MLOPS_OUTPUT_", "creds");
        let refs: Vec<(String, String, Option<bool>)> = env
            .iter()
            .map(|e| {
                assert_eq!(e.value, None, "{} must not be a literal", e.name);
                let r = e.value_from.as_ref().unwrap().secret_key_ref.clone().unwrap();
                assert_eq!(r.name, "creds");
                (e.name.clone(), r.key, r.optional)
            })
            .collect();
        let expected = [
            ("MLOPS_OUTPUT_AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID", false),
            ("MLOPS_OUTPUT_AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", false),
            ("MLOPS_OUTPUT_AWS_SESSION_TOKEN", "AWS_SESSION_TOKEN", true),
            ("MLOPS_OUTPUT_AWS_REGION", "AWS_REGION", true),
            ("MLOPS_OUTPUT_AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL", true),
        ]
        .map(|(n, k, o)| (n.to_string(), k.to_string(), Some(o)));
        assert_eq!(refs, expected);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h…");
        assert_eq!(truncate("short".into(), 10), "short");
    }
}
