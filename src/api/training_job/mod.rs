//! TrainingJob: a training recipe. Each execution is a *run*: one `batch/v1` Job whose
//! successful result becomes one ModelVersion.
//!
//! A run starts when the TrainingJob is created or its spec changes (a new generation),
//! when a `spec.retrain` trigger fires, or on the `mlops.dev/retry` annotation. A finished
//! run is never re-launched because its Job disappeared.

mod dataset;
mod output;
mod retrain;
mod status;
#[cfg(test)]
mod tests;
mod trainer;

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use dataset::{DataAction, DataCheck, DataValidation, Dataset, OutlierCheck, OutlierMethod, Split};
pub use output::{ModelVersionTemplate, Output, Retention};
pub use retrain::{DataTrigger, DriftTrigger, MissedSchedulePolicy, Retrain};
pub use status::{RunOutcome, RunRecord, RunTrigger, TrainingJobStatus, TriggerStatus, TriggerType};
pub use trainer::{Source, Trainer};

use super::model_version::{
    MAX_HYPERPARAMETER_LEN, MAX_HYPERPARAMETERS, MAX_MODEL_NAME_LEN, MODEL_NAME_MESSAGE, MODEL_NAME_RULE,
};

/// Most workers of a distributed run.
pub const MAX_WORKERS: i32 = 64;
/// Most entries the controller keeps in `status.runs` (the schema allows a little more).
pub const RUN_HISTORY_LIMIT: usize = 10;
/// Defaults of optional fields, shared by every controller.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 0;
pub const DEFAULT_SPLIT_SEED: i64 = 42;
pub const DEFAULT_MASTER_PORT: i32 = 29500;
pub const DEFAULT_DRIFT_FOR_SECONDS: i64 = 300;
pub const DEFAULT_DRIFT_CHECK_INTERVAL_SECONDS: i64 = 60;
pub const DEFAULT_DATA_CHECK_INTERVAL_SECONDS: i64 = 300;
pub const DEFAULT_COOLDOWN_SECONDS: i64 = 3600;
pub const DEFAULT_STARTING_DEADLINE_SECONDS: i64 = 3600;
/// A run's Job (and pods, with their logs) is deleted a day after it finishes unless
/// `ttlSecondsAfterFinished` says otherwise: the run's record stays in status.
pub const DEFAULT_TTL_SECONDS_AFTER_FINISHED: i32 = 86400;
/// Produced versions kept besides those in use, unless `modelVersion.retention` says.
pub const DEFAULT_RETENTION_KEEP_LAST: i32 = 20;

/// A training recipe: which data, which code, which trainer image, and how the resulting
/// versions are validated. Each execution is a run (one batch/v1 Job).
// kube's repeated `printcolumn(...)` arguments trip clippy's duplicate-attribute lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mlops.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    namespaced,
    status = "TrainingJobStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "tj",
    category = "mlops",
    selectable = ".spec.model",
    doc = "A training recipe; each execution is a run that produces one ModelVersion.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Succeeded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Succeeded\")].status"
    ),
    printcolumn(name = "Last Run", type_ = "string", json_path = ".status.lastRun"),
    printcolumn(name = "Latest Version", type_ = "string", json_path = ".status.latestModelVersion"),
    printcolumn(name = "Workers", type_ = "integer", json_path = ".spec.workers", priority = 1),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
// The operator never reads a user-named file itself, and a Job cannot see the trainer
// image's files: a file:// dataset changes only with the image, which is a new generation.
#[x_kube(validation = Rule::new(
    "!has(self.retrain) || !has(self.retrain.data) || !self.dataset.uri.startsWith('file://')"
).message(
    "retrain.data watches s3:// and pvc:// datasets; a file:// dataset is part of the trainer image and changes only with it (a new generation starts a run)"
))]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// Model the produced versions belong to (a DNS label, at most 63 characters).
    #[x_kube(validation = Rule::new(MODEL_NAME_RULE).message(MODEL_NAME_MESSAGE))]
    #[schemars(length(max = MAX_MODEL_NAME_LEN))]
    pub model: String,

    /// The training data, how it is validated and split.
    pub dataset: Dataset,

    /// Hyper-parameters handed to the trainer as a JSON object of strings
    /// (`MLOPS_HYPERPARAMETERS`); the reference trainer reads `algorithm` here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_HYPERPARAMETERS,
        "additionalProperties" = {"type": "string", "maxLength": MAX_HYPERPARAMETER_LEN}
    ))]
    pub hyperparameters: BTreeMap<String, String>,

    /// Repository and revision of the training code, recorded in the lineage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,

    /// The trainer container: image, command, args, env, resources, or a full pod template.
    ///
    /// Pod security: the pod a run would get is checked against the namespace's pod policy
    /// (the restricted Pod Security Standard unless the cluster admin allows baseline or
    /// privileged there); a violation creates no Job and reports PodPolicyViolation naming
    /// each field. What the template leaves unset is filled in, never against what it sets:
    /// on the pod runAsNonRoot true, runAsUser, runAsGroup and fsGroup 65532 (unless it asks
    /// for root with runAsNonRoot false or runAsUser 0), seccompProfile RuntimeDefault,
    /// automountServiceAccountToken false; on every container allowPrivilegeEscalation false
    /// and capabilities drop ALL; on the trainer container readOnlyRootFilesystem true, an
    /// emptyDir at /tmp and HOME=/home/mlops on another. The trainer writes its result (or
    /// its failure reason) to the file MLOPS_TERMINATION_MESSAGE_PATH names
    /// (terminationMessagePolicy File): status never carries its logs.
    pub trainer: Trainer,

    /// Number of training pods. 1 runs one pod; more runs an Indexed Job with a headless
    /// Service and the rendezvous variables (master address and port, world size, rank).
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = MAX_WORKERS))]
    pub workers: i32,

    /// Where the trainer writes the model artifact.
    pub output: Output,

    /// Retries of a failed training pod within one run (the Job's `backoffLimit`). Default 0:
    /// a training failure rarely goes away by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: Option<i32>,

    /// Wall-clock limit of one run; the run fails with `DeadlineExceeded` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// Seconds after a run finishes before its Job (and pods) are deleted (default 86400,
    /// a day). The run's record in `status.runs` stays; a deleted Job never causes a new run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Suspend: no new run starts, and the Job of an active run is suspended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Labels and validation gates given to every ModelVersion this job produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<ModelVersionTemplate>,

    /// Continuous training: triggers that start new runs (schedule, drift, new data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrain: Option<Retrain>,
}

fn default_workers() -> i32 {
    1
}

impl TrainingJobSpec {
    /// `backoffLimit` with its default.
    pub fn backoff_limit(&self) -> i32 {
        self.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT)
    }
}
