//! Observed state of a ModelVersion: gate verdicts and where it serves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::GateOp;
use crate::api::conditions::Condition;

/// Observed state of a ModelVersion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionStatus {
    /// `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Validated` (gates), `Ready` (valid and usable), `DeletionBlocked`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Verdict of each gate of `spec.gates`, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub gate_results: Vec<GateResult>,

    /// InferenceServices (same namespace) sending traffic to this version, as stable or canary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub serving_in: Vec<String>,

    /// InferenceServices that keep this version as the target of a revert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub rollback_target_of: Vec<String>,

    /// InferenceServices where a rollout of this version was rolled back (bounded, newest last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub failed_in: Vec<FailedIn>,
}

/// Verdict of one gate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// The gate in human form, e.g. `accuracy >= 0.9` or `f1 >= serving - 0.01`.
    pub gate: String,
    /// Metric name.
    pub metric: String,
    /// Comparison operator.
    pub operator: GateOp,
    /// Bound the value was compared with; absent for a relative gate without a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<f64>,
    /// Measured value from `spec.metrics`; absent when the metric is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// ModelVersion whose metric was the baseline of a relative gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_version: Option<String>,
    /// Passed or Failed.
    pub verdict: GateVerdict,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Verdict of a gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GateVerdict {
    #[default]
    Passed,
    Failed,
}

/// A rollback of this version in one InferenceService.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedIn {
    /// InferenceService name (same namespace).
    pub inference_service: String,
    /// When the rollback was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The check that failed (metric check name, or `health`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
    /// CamelCase reason, e.g. `MetricCheckFailed`, `HealthCheckFailed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Details in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
