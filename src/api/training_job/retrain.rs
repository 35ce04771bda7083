//! Continuous training: the schedule, drift and data triggers that start new runs.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::common::LocalRef;

/// Continuous training. Any trigger starts a run unless one is already active
/// (`maxConcurrentRuns`) or the last triggered run started less than `cooldownSeconds`
/// ago; a storm of triggers gives one run.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.schedule) || has(self.drift) || has(self.data)").message(
    "retrain needs at least one trigger: schedule, drift or data"
))]
#[x_kube(validation = Rule::new("!has(self.timeZone) || has(self.schedule)").message(
    "retrain.timeZone needs retrain.schedule"
))]
#[serde(rename_all = "camelCase")]
pub struct Retrain {
    /// Cron schedule: five fields (minute hour day-of-month month day-of-week) or a macro
    /// such as `@daily`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(
        r"self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[^ ]+( +[^ ]+){4})$')"
    ).message(
        "schedule must be a cron expression with 5 fields (minute hour day-of-month month day-of-week) or a macro such as @daily"
    ))]
    #[schemars(length(max = 128))]
    pub schedule: Option<String>,

    /// IANA time zone of the schedule (e.g. `Europe/Paris`). Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,

    /// What happens to schedule times missed while the operator was down:
    /// `RunOnce` (default) starts one run for the most recent missed time if it is within
    /// `startingDeadlineSeconds`; `Skip` waits for the next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_schedule_policy: Option<MissedSchedulePolicy>,

    /// How late a missed schedule time may still start a run under `RunOnce`. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: Option<i64>,

    /// Re-train when the drift of a served model stays above a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftTrigger>,

    /// Re-train when the dataset changes (its digest or ETag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataTrigger>,

    /// Least time between the start of a triggered run and a drift or data trigger
    /// starting the next one; pending triggers wait and then start one run. The schedule is
    /// not held back (it is its own rate). Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub cooldown_seconds: Option<i64>,

    /// Most runs of this TrainingJob active at once. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub max_concurrent_runs: Option<i32>,
}

/// When re-training is missed schedule times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MissedSchedulePolicy {
    /// One run for the most recent missed time, if within `startingDeadlineSeconds`.
    #[default]
    RunOnce,
    /// Missed times are skipped.
    Skip,
}

/// Drift trigger: fires when the drift value stays above `threshold` for `forSeconds`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.inferenceServiceRef) || has(self.query)").message(
    "drift needs inferenceServiceRef or query"
))]
#[serde(rename_all = "camelCase")]
pub struct DriftTrigger {
    /// InferenceService (same namespace) whose drift is watched. Without `query`, the drift
    /// value is the highest `mlops_feature_drift_psi` of its stable pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_service_ref: Option<LocalRef>,

    /// PromQL instant query giving the drift value (overrides the default). Placeholders:
    /// `{{namespace}}`, `{{name}}` (the InferenceService), `{{model}}`, `{{modelVersion}}`
    /// (the InferenceService's stable version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub query: Option<String>,

    /// Drift value above which the trigger arms (e.g. PSI 0.2).
    pub threshold: f64,

    /// How long the value must stay above the threshold before a run starts. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub for_seconds: Option<i64>,

    /// How often the query runs. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5))]
    pub check_interval_seconds: Option<i64>,
}

/// Data trigger: the dataset's digest is checked at an interval; a change starts a run on
/// the new snapshot. `s3://` and `pvc://` datasets are hashed by a short check Job running
/// the reference runtime (`mlops-runtime digest`) with the TrainingJob's own dataset
/// access: its credentials Secret, its claim mounted read-only, its trainer template's
/// ServiceAccount; the operator holds no data credentials and reads no dataset itself. A
/// `file://` dataset is part of the trainer image, so admission refuses a data trigger on
/// it. A failed check is reported in `status.triggers.message` and never fires.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataTrigger {
    /// How often the dataset is checked. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10))]
    pub check_interval_seconds: Option<i64>,
}
