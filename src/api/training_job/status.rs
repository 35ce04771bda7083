//! Observed state of a TrainingJob: its runs and the state of its retrain triggers.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::common::ManualActions;
use crate::api::conditions::Condition;

/// Observed state of a TrainingJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Succeeded`, `Failed`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Runs, oldest first, at most `RUN_HISTORY_LIMIT` kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub runs: Vec<RunRecord>,

    /// Names of the runs in progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub active_runs: Vec<String>,

    /// Number of the latest run started; the next run is `lastRunNumber + 1`. Never
    /// decreases, so run names are never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_number: Option<i64>,

    /// Outcome of the latest run, for `kubectl get` (`Running`, `Succeeded`, `Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunOutcome>,

    /// ModelVersion produced by the latest successful run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_model_version: Option<String>,

    /// State of the retrain triggers (lives here so a restarted operator resumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<TriggerStatus>,

    /// Manual-control annotation values already handled (`mlops.dev/retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_actions: Option<ManualActions>,
}

/// One execution of a TrainingJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Run id, `<trainingjob>-r<number>`; also the name of the run's Job.
    pub name: String,
    /// Sequence number of the run.
    pub number: i64,
    /// Name of the `batch/v1` Job of this run.
    pub job_name: String,
    /// `metadata.generation` of the TrainingJob the run was started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// What started the run.
    pub trigger: RunTrigger,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Pending, Running, Succeeded or Failed.
    pub outcome: RunOutcome,
    /// ModelVersion created from the run's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// CamelCase reason of a failure: `BackoffLimitExceeded`, `DeadlineExceeded`, `BadData`,
    /// `ResultInvalid`, `ResultMissing`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details in words (trainer's one-line reason, exit code, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exit code of the failed trainer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Outcome of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunOutcome {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl RunOutcome {
    /// Whether the run has finished.
    pub fn is_finished(self) -> bool {
        matches!(self, RunOutcome::Succeeded | RunOutcome::Failed)
    }
}

/// What started a run; also copied into the produced ModelVersion's lineage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunTrigger {
    /// Kind of trigger.
    #[serde(rename = "type")]
    pub type_: TriggerType,
    /// When the trigger fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Schedule: the scheduled time the run stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_time: Option<Time>,
    /// Drift: the drift value that crossed the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_value: Option<f64>,
    /// Data: the new dataset digest (or ETag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub dataset_digest: Option<String>,
    /// Details in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// Kind of run trigger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TriggerType {
    /// The TrainingJob was created or its spec changed (a new generation).
    #[default]
    Spec,
    /// `retrain.schedule` fired.
    Schedule,
    /// `retrain.drift` held above its threshold.
    Drift,
    /// `retrain.data` saw a new dataset digest.
    Data,
    /// The `mlops.dev/retry` annotation.
    Manual,
}

/// Persisted state of the retrain triggers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// Latest schedule time handled (run started or deliberately skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// Next schedule time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// When a trigger last started a run (the cooldown counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger_time: Option<Time>,
    /// Latest drift value measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_value: Option<f64>,
    /// Since when the drift value has been above the threshold (unset when below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_above_since: Option<Time>,
    /// When the drift query last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drift_check_time: Option<Time>,
    /// Dataset digest the latest run started with (at first, the digest of the first
    /// check): a check that finds another digest wants a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_digest: Option<String>,
    /// Dataset digest seen at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_dataset_digest: Option<String>,
    /// When the dataset was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_data_check_time: Option<Time>,
    /// Why the latest drift check measured nothing; kept until a check measures a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub drift_check_problem: Option<String>,
    /// Why the latest dataset check failed; kept until a check reads a digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub data_check_problem: Option<String>,
    /// What the triggers are waiting for or why a check failed (cooldown, no data, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
