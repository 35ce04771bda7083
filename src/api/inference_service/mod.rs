//! InferenceService: serve a model and move it safely between versions.
//!
//! The version to serve is pinned (`spec.version`) or followed (`track: LatestValidated`).
//! A new version is rolled out as a canary through `rollout.steps`, watched by health and
//! metric checks, promoted after a healthy bake, or rolled back — and every decision is
//! recorded in status. The operator never writes `spec`.

mod analysis;
mod rollout;
mod runtime;
mod status;
#[cfg(test)]
mod tests;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use analysis::{Analysis, HealthCheck, MetricCheck, NoDataPolicy};
pub use rollout::{GatewayApiRouting, GatewayRef, ReplicasRouting, Rollout, RolloutStep, TrafficRouting};
pub use runtime::{Runtime, RuntimePreset};
pub use status::{
    CanaryPhase, CanaryStatus, CheckKind, CheckStatus, CheckVerdict, Decision, DecisionAction,
    DeliveryStatus, HistoryEntry, InferenceServiceStatus, Measurement, RolloutOutcome, StableStatus,
};

use super::model_version::{Gate, MAX_GATES, MAX_MODEL_NAME_LEN, MODEL_NAME_MESSAGE, MODEL_NAME_RULE};

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
    #[schemars(length(max = MAX_MODEL_NAME_LEN))]
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
    ///
    /// Pod security: serving pods pass the restricted Pod Security Standard. They run as
    /// the preset image's non-root user (runAsUser, runAsGroup and fsGroup 65532 for
    /// MlopsRuntime, the default preset, with its image or yours; 1000 for MLServer and
    /// Triton) with
    /// runAsNonRoot true, seccompProfile RuntimeDefault, allowPrivilegeEscalation false,
    /// capabilities drop ALL, and a read-only root filesystem with emptyDirs at /tmp and at
    /// HOME=/home/mlops (HOME in env wins).
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

    /// Gates this service requires of a version before it deploys it, on top of the
    /// version's own: whoever may create ModelVersions cannot skip this service's
    /// validation. Evaluated on the version's `spec.metrics`; a relative gate compares with
    /// this service's stable version. A tracked version that fails them is passed over
    /// (the service keeps serving and says why); a pinned one leaves `Ready=False`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GATES), extend("x-kubernetes-list-type" = "atomic"))]
    pub gates: Vec<Gate>,
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
