//! Observed state of an InferenceService: stable and canary, analysis, history, delivery metrics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MAX_METRIC_CHECKS, MEASUREMENT_LIMIT};
use crate::api::common::ManualActions;
use crate::api::conditions::Condition;

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
        length(max = MAX_METRIC_CHECKS + 1),
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
    #[schemars(length(max = MEASUREMENT_LIMIT), extend("x-kubernetes-list-type" = "atomic"))]
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
