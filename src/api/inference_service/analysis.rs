//! Canary analysis: pod health and Prometheus metric checks.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::MAX_METRIC_CHECKS;

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
        length(max = MAX_METRIC_CHECKS),
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
