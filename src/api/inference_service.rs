//! InferenceService: serve a model and move it safely between versions.
//!
//! The version to serve is pinned (`spec.version`) or followed (`track: LatestValidated`).
//! A new version is rolled out as a canary through `rollout.steps`, watched by health and
//! metric checks, promoted after a healthy bake, or rolled back — and every decision is
//! recorded in status. The operator never writes `spec`.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, ManualActions};
use super::conditions::Condition;
use super::model_version::{MODEL_NAME_MESSAGE, MODEL_NAME_RULE};

/// Most rollout steps.
pub const MAX_STEPS: usize = 20;
/// Most metric checks.
pub const MAX_METRIC_CHECKS: usize = 16;
/// Most measurements kept per check in status.
pub const MEASUREMENT_LIMIT: usize = 10;
/// Most entries the controller keeps in `status.history`.
pub const HISTORY_LIMIT: usize = 20;
/// Most versions remembered in `status.failedVersions`.
pub const FAILED_VERSIONS_LIMIT: usize = 16;
/// Defaults of optional fields, shared by every controller.
pub const DEFAULT_REPLICAS: i32 = 1;
pub const DEFAULT_PORT: i32 = 8080;
pub const DEFAULT_MIN_REPLICAS: i32 = 1;
pub const DEFAULT_TARGET_CPU_UTILIZATION: i32 = 80;
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i64 = 600;
pub const DEFAULT_BAKE_SECONDS: i64 = 300;
pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: i64 = 600;
pub const DEFAULT_ANALYSIS_INTERVAL_SECONDS: i64 = 30;
pub const DEFAULT_FAILURE_LIMIT: i32 = 0;
pub const DEFAULT_QUERY_ERROR_LIMIT: i32 = 3;
pub const DEFAULT_READY_DEADLINE_SECONDS: i64 = 300;
pub const DEFAULT_MAX_RESTARTS: i32 = 2;

/// Serve a model: a pinned version or the newest validated one, rolled out progressively
/// with health and metric analysis and automatic rollback.
// kube's repeated `printcolumn(...)` arguments trip clippy's duplicate-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mlops.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    namespaced,
    status = "InferenceServiceStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "isvc",
    category = "mlops",
    selectable = ".spec.model",
    doc = "Serves a model version and moves traffic between versions with canary analysis and automatic rollback.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Stable", type_ = "string", json_path = ".status.stable.version"),
    printcolumn(name = "Canary", type_ = "string", json_path = ".status.canary.version"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.canary.weight"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.canary.phase"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url", priority = 1),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.version) != has(self.track)").message(
    "set exactly one of version (pin a ModelVersion) or track (follow the newest validated version)"
))]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// Model to serve (a DNS label). Only ModelVersions of this model are served.
    #[x_kube(validation = Rule::new(MODEL_NAME_RULE).message(MODEL_NAME_MESSAGE))]
    #[schemars(length(max = 63))]
    pub model: String,

    /// Pin: name of the ModelVersion to serve. It must belong to `model` and be
    /// `Validated=True`; if its rollout fails, the previous version keeps serving and the
    /// service reports `Degraded`. Mutually exclusive with `track`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub version: Option<String>,

    /// Follow policy instead of a pin: `LatestValidated` serves the newest ModelVersion of
    /// `model` with `Validated=True`. Mutually exclusive with `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackPolicy>,

    /// The model server container.
    #[serde(default)]
    pub runtime: Runtime,

    /// Total serving pods across stable and canary (default 1). Exposed as the scale
    /// subresource; with `autoscaling`, the HorizontalPodAutoscaler drives it, so leave it
    /// out of Git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// HorizontalPodAutoscaler on CPU utilisation, scaling this service through its scale
    /// subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// How a new version replaces the serving one. Unset: straight to 100 % once Ready,
    /// with the default bake and health analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

impl InferenceServiceSpec {
    /// `replicas` with its default.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(DEFAULT_REPLICAS)
    }
}

/// Version follow policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrackPolicy {
    /// The newest ModelVersion of the model with `Validated=True`: latest creation time
    /// (whole seconds), then the greatest name among those created in the same second.
    #[default]
    LatestValidated,
}

/// The model server container. Speaks Open Inference Protocol v2 REST, loads the artifact
/// from `MLOPS_MODEL_URI`, exports Prometheus metrics at `/metrics`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// Preset for a known server: `MlopsRuntime` (the reference `mlops-runtime serve`, the
    /// default), `MLServer` or `Triton`. Sets image, command, args and probes; fields given
    /// here override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<RuntimePreset>,

    /// Server image; default from the preset (for `MlopsRuntime`, the operator's configured
    /// runtime image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 4096)))]
    pub command: Vec<String>,

    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(max = 4096)))]
    pub args: Vec<String>,

    /// Extra environment variables (the `MLOPS_*` contract variables and the credentials of
    /// `credentialsSecretRef` win over these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,

    /// HTTP port the server listens on (`MLOPS_HTTP_PORT`). Default 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// CPU, memory and accelerator requests and limits of each serving pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Secret (same namespace) with S3 credentials for an `s3://` artifact, passed to the
    /// server container by reference (`secretKeyRef`): `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`. The operator never reads it; its values are never copied into
    /// status or Events. Unset: the server uses its ServiceAccount's identity, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,

    /// ServiceAccount the serving pods run as (same namespace; it must exist), for workload
    /// identity such as IRSA or GKE Workload Identity instead of a credentials Secret.
    /// Unset: the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(SERVICE_ACCOUNT_NAME_RULE).message(SERVICE_ACCOUNT_NAME_MESSAGE))]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

/// CEL rule for a ServiceAccount name: a lowercase DNS subdomain (length bounded by the
/// schema's maxLength, which keeps the rule's cost bounded).
const SERVICE_ACCOUNT_NAME_RULE: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
const SERVICE_ACCOUNT_NAME_MESSAGE: &str = "runtime.serviceAccountName must be a lowercase DNS subdomain: \
     a-z, 0-9, '-' and '.', each dot-separated part starting and ending with a letter or digit";

impl Runtime {
    /// `port` with its default.
    pub fn port(&self) -> i32 {
        self.port.unwrap_or(DEFAULT_PORT)
    }
}

/// Known model servers speaking Open Inference Protocol v2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RuntimePreset {
    /// The reference runtime, `mlops-runtime serve`.
    #[default]
    MlopsRuntime,
    /// Seldon MLServer.
    #[serde(rename = "MLServer")]
    MlServer,
    /// NVIDIA Triton Inference Server.
    Triton,
}

/// HorizontalPodAutoscaler settings.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message(
    "autoscaling.minReplicas must be less than or equal to maxReplicas"
))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Lower bound of total replicas. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Upper bound of total replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent of requests. Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// Progressive rollout of a new version.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Traffic steps for the canary, weights strictly increasing. After the last step the
    /// canary gets 100 %, bakes for `bakeSeconds`, then becomes stable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new(
        "self.map(s, s.weight).isSorted() && self.all(a, self.exists_one(b, b.weight == a.weight))"
    ).message("rollout step weights must be strictly increasing"))]
    #[schemars(length(max = 20), extend("x-kubernetes-list-type" = "atomic"))]
    pub steps: Vec<RolloutStep>,

    /// How traffic is split between stable and canary. Default `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,

    /// A step that makes no progress (canary not Ready, analysis waiting for data) for this
    /// long fails the rollout. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i64>,

    /// How long analysis keeps running after the canary reaches 100 %; a failure during the
    /// bake still reverts. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub bake_seconds: Option<i64>,

    /// How long the previous stable Deployment is kept after promotion, so a revert is a
    /// single write; it is then scaled to zero. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i64>,

    /// Health and metric checks run while the canary has traffic and during the bake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// One rollout step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Percent of traffic the canary gets at this step (0–100).
    #[schemars(range(min = 0, max = 100))]
    pub weight: i32,
    /// How long to stay at this step with passing analysis before the next. Default 0
    /// (move on as soon as the canary is Ready and one analysis interval passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub pause_seconds: Option<i64>,
}

/// Traffic split mechanism; set exactly one.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.replicas) != has(self.gatewayAPI)").message(
    "trafficRouting needs exactly one of replicas or gatewayAPI"
))]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// Weight by replica ratio behind one Service (canary replicas = ceil(total × weight)).
    /// No mesh or gateway needed. Write `replicas: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasRouting>,

    /// Weighted `backendRefs` on a Gateway API HTTPRoute owned by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "gatewayAPI")]
    pub gateway_api: Option<GatewayApiRouting>,
}

/// Replica-ratio routing has no settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplicasRouting {}

/// Gateway API routing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// Gateway the HTTPRoute attaches to (its `parentRefs`).
    pub gateway_ref: GatewayRef,
    /// Name of the HTTPRoute the operator creates and owns. Default: the InferenceService's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub http_route_name: Option<String>,
    /// Host names the route matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)), extend("x-kubernetes-list-type" = "set"))]
    pub hostnames: Vec<String>,
}

/// Reference to a Gateway API Gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Gateway name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Gateway namespace. Default: the InferenceService's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Listener of the Gateway to attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub section_name: Option<String>,
}

/// Canary analysis: health checks always, metric checks when listed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Seconds between two measurements of each metric check. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: Option<i64>,

    /// Failed measurements of one check tolerated; one more rolls back. Default 0: the
    /// first failure rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub failure_limit: Option<i32>,

    /// Consecutive query errors (Prometheus unreachable, bad query) of one check tolerated;
    /// one more rolls back. Counted apart from failures. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub query_error_limit: Option<i32>,

    /// Pod health of the canary (always checked, with defaults when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,

    /// Send a version's pods traffic only once Prometheus has scraped them
    /// (`up{namespace, pod} == 1`), so no request reaches a canary no check can see yet,
    /// and a bad canary is caught by its first scrape. The pods get the readiness gate
    /// `mlops.dev/scraped`, which the operator opens: at once for the stable version's
    /// pods, on the first scrape for the canary's, and after 60 s regardless (then the
    /// `onNoData` policy decides). Pods of a gated version that start while the operator
    /// is down wait for it to become Ready. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_first_scrape: Option<bool>,

    /// Prometheus metric checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub metrics: Vec<MetricCheck>,
}

/// Pod health of the canary. CrashLoopBackOff and image pull failures always fail it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Canary pods must be Ready within this many seconds of creation. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ready_deadline_seconds: Option<i64>,
    /// Container restarts of a canary pod above this fail the check. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_restarts: Option<i32>,
}

/// A Prometheus instant query whose value must stay within bounds.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.min) || has(self.max)").message(
    "a metric check needs min or max"
))]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message(
    "metric check min must be less than or equal to max"
))]
#[serde(rename_all = "camelCase")]
pub struct MetricCheck {
    /// Check name, unique in the list; shown in status and rollback decisions.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// PromQL instant query returning one number. Placeholders: `{{namespace}}`, `{{name}}`
    /// (the InferenceService), `{{modelVersion}}`, `{{role}}` (`stable` or `canary`).
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,

    /// The value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,

    /// The value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,

    /// What an empty result means, chosen explicitly: `Fail`, `Pass`, or `Wait` (no verdict;
    /// the step waits, bounded by `progressDeadlineSeconds`).
    pub on_no_data: NoDataPolicy,
}

/// Verdict of an empty query result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NoDataPolicy {
    #[default]
    Fail,
    Pass,
    Wait,
}

/// Observed state of an InferenceService.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing`, `Degraded`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The version holding the stable traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<StableStatus>,

    /// The version being rolled out, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,

    /// The version a revert returns to: the last one that finished a healthy bake (the
    /// stable during a rollout; the previous stable during `scaleDownDelaySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_target: Option<String>,

    /// Versions rolled back here; not retried automatically until a newer version exists
    /// or `mlops.dev/retry` is set. Bounded, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub failed_versions: Vec<String>,

    /// In-cluster URL of the OIP v2 endpoint, e.g. `http://iris.ml.svc:8080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Total serving pods observed (scale subresource).
    #[serde(default)]
    pub replicas: i32,

    /// Label selector of all serving pods, in string form (scale subresource, for the HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Rollouts, oldest first, bounded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub history: Vec<HistoryEntry>,

    /// The four delivery metrics of this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStatus>,

    /// The latest promotion, rollback or abort and what it was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<Decision>,

    /// Manual-control annotation values already handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_actions: Option<ManualActions>,
}

/// The stable version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StableStatus {
    /// ModelVersion name.
    pub version: String,
    /// Percent of traffic it receives.
    pub weight: i32,
    /// Pods of its Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods of its Deployment.
    #[serde(default)]
    pub ready_replicas: i32,
    /// When it became stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_time: Option<Time>,
}

/// The version being rolled out. Everything the state machine needs lives here, so a
/// restarted operator resumes where it was.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// ModelVersion name.
    pub version: String,
    /// Index of the current step in `spec.rollout.steps` (equal to the number of steps
    /// during the final 100 % and bake).
    pub step: i32,
    /// Percent of traffic it receives.
    pub weight: i32,
    /// Where the rollout is.
    pub phase: CanaryPhase,
    /// Pods of its Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods of its Deployment.
    #[serde(default)]
    pub ready_replicas: i32,
    /// When the rollout of this version started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the current step (or the bake) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_start_time: Option<Time>,
    /// Results of each check, one entry per check (`health` plus each metric check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 17),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub analysis: Vec<CheckStatus>,
}

/// Phase of a rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CanaryPhase {
    /// Canary pods are starting; no traffic yet.
    #[default]
    Starting,
    /// At a step, analysis running.
    Progressing,
    /// At 100 %, analysis still running until `bakeSeconds` pass.
    Baking,
    /// Traffic returning to the stable version after a failed check or an abort.
    RollingBack,
}

/// State of one check of the canary analysis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    /// `health` or the metric check's name.
    pub name: String,
    /// Health or Metric.
    pub kind: CheckKind,
    /// Verdict of the latest measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<CheckVerdict>,
    /// Failed measurements so far (compared with `failureLimit`).
    #[serde(default)]
    pub failures: i32,
    /// Consecutive query errors (compared with `queryErrorLimit`).
    #[serde(default)]
    pub query_errors: i32,
    /// Since when the query has returned no data (for `onNoData: Wait`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data_since: Option<Time>,
    /// Latest measurements, oldest first, bounded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), extend("x-kubernetes-list-type" = "atomic"))]
    pub measurements: Vec<Measurement>,
}

/// Kind of check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CheckKind {
    #[default]
    Health,
    Metric,
}

/// Verdict of one measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CheckVerdict {
    #[default]
    Passed,
    Failed,
    /// Empty result, handled by `onNoData`.
    NoData,
    /// The query itself failed.
    Error,
}

/// One measurement of a check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// When it was taken.
    pub time: Time,
    /// Measured value (absent for no data or errors; for health, e.g. the restart count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Verdict.
    pub verdict: CheckVerdict,
    /// Details in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One rollout in the history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// ModelVersion rolled out.
    pub version: String,
    /// When the rollout started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it ended (promoted, rolled back, aborted or superseded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How it ended.
    pub outcome: RolloutOutcome,
    /// CamelCase reason, e.g. `MetricCheckFailed`, `HealthCheckFailed`, `ProgressDeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a rollout ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutOutcome {
    /// Finished its bake and became stable.
    #[default]
    Promoted,
    /// A check failed; traffic went back to the stable version.
    RolledBack,
    /// Stopped by the `mlops.dev/abort` annotation.
    Aborted,
    /// Replaced by a newer version before it finished.
    Superseded,
}

/// Delivery metrics of this service, by these definitions:
/// a *deployment* is a rollout that reached the end of its bake (Promoted); a *failed
/// deployment* is one rolled back; *change failure rate* = failed / (deployments + failed);
/// *lead time* runs from the version's origin (source `commitTime` when given, else the
/// training run's start) to 100 % traffic; *time to restore* runs from the first failed
/// check to all traffic on a healthy version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// Successful deployments (deployment frequency numerator).
    #[serde(default)]
    pub deployments: i64,
    /// Rolled-back deployments.
    #[serde(default)]
    pub failed_deployments: i64,
    /// failedDeployments / (deployments + failedDeployments), 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_failure_rate: Option<f64>,
    /// When the latest successful deployment finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deployment_time: Option<Time>,
    /// Lead time of the latest successful deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_lead_time_seconds: Option<i64>,
    /// Time to restore of the latest rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time_to_restore_seconds: Option<i64>,
}

/// A rollout decision and its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Promote, Rollback or Abort.
    pub action: DecisionAction,
    /// ModelVersion the decision was about.
    pub version: String,
    /// Check that decided (`health`, a metric check name, `progressDeadline`, or `manual`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
    /// Measured value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Bound it was compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<f64>,
    /// When it was decided.
    pub time: Time,
    /// CamelCase reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Details in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Kind of rollout decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DecisionAction {
    #[default]
    Promote,
    Rollback,
    Abort,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn spec_round_trips() {
        let yaml = r#"
model: iris
track: LatestValidated
runtime: {preset: MLServer, port: 9000}
replicas: 4
rollout:
  steps: [{weight: 10, pauseSeconds: 60}, {weight: 50}]
  trafficRouting:
    gatewayAPI: {gatewayRef: {name: gw}, hostnames: [iris.example]}
  bakeSeconds: 120
  analysis:
    intervalSeconds: 10
    health: {readyDeadlineSeconds: 60, maxRestarts: 0}
    metrics:
      - {name: errors, query: "sum(rate(x[1m]))", max: 0.01, onNoData: Wait}
"#;
        let spec: InferenceServiceSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(spec.track, Some(TrackPolicy::LatestValidated));
        assert_eq!(spec.runtime.preset, Some(RuntimePreset::MlServer));
        assert_eq!(spec.runtime.port(), 9000);
        let routing = spec.rollout.as_ref().unwrap().traffic_routing.as_ref().unwrap();
        assert_eq!(routing.gateway_api.as_ref().unwrap().gateway_ref.name, "gw");
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["rollout"]["trafficRouting"]["gatewayAPI"]["hostnames"], json!(["iris.example"]));
        assert_eq!(serde_json::from_value::<InferenceServiceSpec>(v).unwrap(), spec);
    }

    #[test]
    fn runtime_credentials_and_identity_round_trip() {
        let yaml = r#"
model: iris
version: iris-r1
runtime: {credentialsSecretRef: {name: s3-creds}, serviceAccountName: model-reader}
"#;
        let spec: InferenceServiceSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(spec.runtime.credentials_secret_ref, Some(LocalRef::new("s3-creds")));
        assert_eq!(spec.runtime.service_account_name.as_deref(), Some("model-reader"));
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v["runtime"],
            json!({"credentialsSecretRef": {"name": "s3-creds"}, "serviceAccountName": "model-reader"})
        );
        assert_eq!(serde_json::from_value::<InferenceServiceSpec>(v).unwrap(), spec);
    }

    #[test]
    fn defaults_apply() {
        let spec: InferenceServiceSpec =
            serde_json::from_value(json!({"model": "m", "version": "m-r1"})).unwrap();
        assert_eq!(spec.replicas(), DEFAULT_REPLICAS);
        assert_eq!(spec.runtime.port(), DEFAULT_PORT);
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v, json!({"model": "m", "version": "m-r1", "runtime": {}}));
        let replicas: TrafficRouting = serde_json::from_value(json!({"replicas": {}})).unwrap();
        assert_eq!(replicas.replicas, Some(ReplicasRouting {}));
    }

    #[test]
    fn status_round_trips() {
        let t = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let status = InferenceServiceStatus {
            observed_generation: Some(2),
            stable: Some(StableStatus { version: "m-r1".into(), weight: 90, ..Default::default() }),
            canary: Some(CanaryStatus {
                version: "m-r2".into(),
                step: 0,
                weight: 10,
                phase: CanaryPhase::Progressing,
                analysis: vec![CheckStatus {
                    name: "errors".into(),
                    kind: CheckKind::Metric,
                    verdict: Some(CheckVerdict::NoData),
                    measurements: vec![Measurement {
                        time: t.clone(),
                        value: None,
                        verdict: CheckVerdict::NoData,
                        message: String::new(),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            replicas: 4,
            selector: Some("mlops.dev/inference-service=m".into()),
            last_decision: Some(Decision {
                action: DecisionAction::Rollback,
                version: "m-r0".into(),
                check: "errors".into(),
                value: Some(0.2),
                bound: Some(0.01),
                time: t,
                reason: "MetricCheckFailed".into(),
                message: String::new(),
            }),
            delivery: Some(DeliveryStatus {
                deployments: 3,
                failed_deployments: 1,
                change_failure_rate: Some(0.25),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["lastDecision"]["time"], json!("2023-11-14T22:13:20Z"));
        assert_eq!(v["canary"]["analysis"][0]["verdict"], json!("NoData"));
        assert_eq!(serde_json::from_value::<InferenceServiceStatus>(v).unwrap(), status);
    }

    #[test]
    fn crd_has_rules_and_scale() {
        let crd = serde_json::to_string(&InferenceService::crd()).unwrap();
        for needle in [
            "has(self.version) != has(self.track)",
            "rollout step weights must be strictly increasing",
            "autoscaling.minReplicas must be less than or equal to maxReplicas",
            "a metric check needs min or max",
            "trafficRouting needs exactly one of replicas or gatewayAPI",
            "runtime.serviceAccountName must be a lowercase DNS subdomain",
            r#""specReplicasPath":".spec.replicas""#,
            r#""labelSelectorPath":".status.selector""#,
            r#""shortNames":["isvc"]"#,
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle}");
        }
        // Every string a CEL rule reads is bounded, so the rule's cost is.
        let crd = serde_json::to_value(InferenceService::crd()).unwrap();
        let runtime = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["runtime"]["properties"];
        assert_eq!(runtime["serviceAccountName"]["maxLength"], json!(253));
        assert_eq!(runtime["credentialsSecretRef"]["properties"]["name"]["maxLength"], json!(253));
    }
}
