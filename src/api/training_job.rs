//! TrainingJob: a training recipe. Each execution is a *run*: one `batch/v1` Job whose
//! successful result becomes one ModelVersion.
//!
//! A run starts when the TrainingJob is created or its spec changes (a new generation),
//! when a `spec.retrain` trigger fires, or on the `mlops.dev/retry` annotation. A finished
//! run is never re-launched because its Job disappeared.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, ManualActions};
use super::conditions::Condition;
use super::model_version::{
    DIGEST_MESSAGE, DIGEST_RULE, Gate, MODEL_NAME_MESSAGE, MODEL_NAME_RULE, PVC_URI_MESSAGE, PVC_URI_RULE,
    STORAGE_URI_RULE,
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
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// Model the produced versions belong to (a DNS label, at most 63 characters).
    #[x_kube(validation = Rule::new(MODEL_NAME_RULE).message(MODEL_NAME_MESSAGE))]
    #[schemars(length(max = 63))]
    pub model: String,

    /// The training data, how it is validated and split.
    pub dataset: Dataset,

    /// Hyper-parameters handed to the trainer as a JSON object of strings
    /// (`MLOPS_HYPERPARAMETERS`); the reference trainer reads `algorithm` here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub hyperparameters: BTreeMap<String, String>,

    /// Repository and revision of the training code, recorded in the lineage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,

    /// The trainer container: image, command, args, env, resources, or a full pod template.
    pub trainer: Trainer,

    /// Number of training pods. 1 runs one pod; more runs an Indexed Job with a headless
    /// Service and the rendezvous variables (master address and port, world size, rank).
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = 64))]
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

    /// Seconds after a run finishes before its Job (and pods) are deleted. The run's record
    /// in `status.runs` stays; a deleted Job never causes a new run.
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

/// The training data.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dataset {
    /// Dataset location: `s3://bucket/key`, `pvc://claim/path` (the claim is mounted and
    /// the trainer gets a local path) or `file:///path`.
    #[x_kube(validation = Rule::new(STORAGE_URI_RULE).message(
        "dataset uri must start with s3://, pvc:// or file://"
    ))]
    #[x_kube(validation = Rule::new(PVC_URI_RULE).message(PVC_URI_MESSAGE))]
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,

    /// Optional pin (`sha256:<hex>`): the trainer refuses data with another digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DIGEST_RULE).message(DIGEST_MESSAGE))]
    #[schemars(length(max = 71))]
    pub digest: Option<String>,

    /// Target column of a tabular dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub label_column: Option<String>,

    /// Data validation policy: what to do with missing values, duplicates and outliers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<DataValidation>,

    /// Train / validation / test ratios and shuffle seed. Default 0.7 / 0.15 / 0.15, seed 42.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,

    /// Secret (same namespace) with S3 credentials for an `s3://` uri, exposed to the
    /// trainer as environment variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// optionally `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`. Never copied into
    /// status or Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
}

/// Data validation policy per check. An absent check is not run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataValidation {
    /// Rows with a missing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<DataCheck>,
    /// Exact duplicate rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<DataCheck>,
    /// Rows with a numeric feature far from the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outliers: Option<OutlierCheck>,
}

/// Policy of one data check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataCheck {
    /// `Fail` the run, `Drop` the flagged rows, or `Keep` them (report only).
    pub action: DataAction,
    /// If set, the run fails when more than this fraction (0–1) of the rows is flagged,
    /// whatever the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_fraction: Option<f64>,
}

/// Policy of the outlier check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierCheck {
    /// `Fail` the run, `Drop` the flagged rows, or `Keep` them (report only).
    pub action: DataAction,
    /// `ZScore` (distance from the mean in standard deviations) or `IQR` (distance outside
    /// the inter-quartile range in IQRs). Default `ZScore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<OutlierMethod>,
    /// Cut-off of the method: default 3 for `ZScore`, 1.5 for `IQR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub threshold: Option<f64>,
    /// If set, the run fails when more than this fraction (0–1) of the rows is flagged,
    /// whatever the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_fraction: Option<f64>,
}

/// What a data check does with the rows it flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DataAction {
    /// The run fails with a one-line reason.
    #[default]
    Fail,
    /// The flagged rows are removed.
    Drop,
    /// The flagged rows are kept and only reported.
    Keep,
}

impl DataAction {
    /// The lowercase name used in the trainer contract (`MLOPS_VALIDATION`, result JSON).
    pub fn contract_name(self) -> &'static str {
        match self {
            DataAction::Fail => "fail",
            DataAction::Drop => "drop",
            DataAction::Keep => "keep",
        }
    }
}

/// Outlier detection method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OutlierMethod {
    #[default]
    ZScore,
    #[serde(rename = "IQR")]
    Iqr,
}

/// Split ratios; they must sum to 1.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new(
    "self.train + self.validation + self.test >= 0.999 && self.train + self.validation + self.test <= 1.001"
).message("split ratios train + validation + test must sum to 1"))]
#[x_kube(validation = Rule::new("self.train > 0.0").message("split.train must be greater than 0"))]
#[serde(rename_all = "camelCase")]
pub struct Split {
    /// Share of rows used for training (0–1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub train: f64,
    /// Share of rows used for validation (0–1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub validation: f64,
    /// Share of rows held out for the test metrics (0–1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub test: f64,
    /// Shuffle seed, so the same data gives the same split. Default 42.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

impl Default for Split {
    fn default() -> Self {
        Self { train: 0.7, validation: 0.15, test: 0.15, seed: Some(DEFAULT_SPLIT_SEED) }
    }
}

/// Repository and revision of the training code.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Repository URL of the training code.
    #[schemars(length(max = 2048))]
    pub repository: String,
    /// Commit, tag or branch of the training code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub revision: Option<String>,
    /// Commit time of the revision; the origin of the lead-time delivery metric when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<Time>,
}

/// The trainer container. Either `image` (with optional command, args, env, resources) or
/// a full pod `template`; with both, the fields given here override the template's
/// container named `trainer` (or its first container).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.image) || has(self.template)").message(
    "trainer needs an image or a pod template"
))]
#[serde(rename_all = "camelCase")]
pub struct Trainer {
    /// Trainer image, e.g. the reference `mlops-runtime` image (entrypoint `train`).
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

    /// Extra environment variables (the `MLOPS_*` contract variables are set by the operator
    /// and win over these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,

    /// CPU, memory and accelerator requests and limits of each training pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Full pod template (core/v1 PodTemplateSpec) for node selectors, tolerations, volumes,
    /// sidecars. Not validated by this schema; the API server validates the Job built from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "opaque_pod_template")]
    pub template: Option<PodTemplateSpec>,
}

/// A PodTemplateSpec kept opaque in the CRD: the full schema would make the CRD too large
/// for client-side apply, and the Job built from it is validated by the API server.
fn opaque_pod_template(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
        "description": "Full pod template (core/v1 PodTemplateSpec) for node selectors, tolerations, volumes, sidecars. Not validated by this schema; the API server validates the Job built from it."
    })
}

/// Where the trainer writes the artifact.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Artifact location prefix: `s3://`, `pvc://claim/path` or `file:///path`. Each run
    /// writes below it in a folder named after the run.
    #[x_kube(validation = Rule::new(STORAGE_URI_RULE).message(
        "output uri must start with s3://, pvc:// or file://"
    ))]
    #[x_kube(validation = Rule::new(PVC_URI_RULE).message(PVC_URI_MESSAGE))]
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,

    /// Secret with S3 credentials for an `s3://` uri (same keys as `dataset.credentialsSecretRef`).
    /// When it differs from the dataset's, the trainer gets it as `MLOPS_OUTPUT_AWS_*` and
    /// writes the artifact with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
}

/// What produced ModelVersions get besides the run's results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionTemplate {
    /// Labels added to each produced ModelVersion.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    pub labels: BTreeMap<String, String>,

    /// Gates copied into each produced ModelVersion's `spec.gates`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "atomic"))]
    pub gates: Vec<Gate>,
}

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
/// ServiceAccount; the operator holds no data credentials. `file://` datasets are hashed by
/// the operator itself (the file as its filesystem sees it: the local platform, or a
/// shared mount). A failed check is reported in `status.triggers.message` and never fires.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataTrigger {
    /// How often the dataset is checked. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10))]
    pub check_interval_seconds: Option<i64>,
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    const FULL: &str = r#"
apiVersion: mlops.dev/v1alpha1
kind: TrainingJob
metadata: {name: iris, namespace: ml}
spec:
  model: iris
  dataset:
    uri: s3://data/iris.csv
    digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    labelColumn: species
    validation:
      missing: {action: Drop, maxFraction: 0.1}
      duplicates: {action: Keep}
      outliers: {action: Fail, method: IQR, threshold: 1.5}
    split: {train: 0.8, validation: 0.1, test: 0.1, seed: 7}
    credentialsSecretRef: {name: s3-creds}
  hyperparameters: {algorithm: logistic, epochs: "20"}
  source: {repository: "https://git.example/iris", revision: abc123, commitTime: "2025-01-01T00:00:00Z"}
  trainer:
    image: mlops-runtime:dev
    args: [train]
    env: [{name: LOG, value: debug}]
    resources: {limits: {cpu: "1"}}
  workers: 2
  output: {uri: "pvc://models/iris"}
  backoffLimit: 1
  activeDeadlineSeconds: 600
  ttlSecondsAfterFinished: 60
  modelVersion:
    labels: {team: a}
    gates: [{metric: accuracy, op: ">=", value: 0.9}]
  retrain:
    schedule: "0 3 * * *"
    timeZone: Europe/Paris
    missedSchedulePolicy: Skip
    drift: {inferenceServiceRef: {name: iris}, threshold: 0.2, forSeconds: 120}
    data: {checkIntervalSeconds: 60}
    cooldownSeconds: 600
    maxConcurrentRuns: 1
"#;

    #[test]
    fn full_object_round_trips() {
        let tj: TrainingJob = serde_yaml::from_str(FULL).unwrap();
        assert_eq!(tj.spec.workers, 2);
        assert_eq!(
            tj.spec.dataset.validation.as_ref().unwrap().outliers.as_ref().unwrap().method,
            Some(OutlierMethod::Iqr)
        );
        assert_eq!(
            tj.spec.retrain.as_ref().unwrap().missed_schedule_policy,
            Some(MissedSchedulePolicy::Skip)
        );
        let back: TrainingJob = serde_json::from_value(serde_json::to_value(&tj).unwrap()).unwrap();
        assert_eq!(back, tj);
    }

    #[test]
    fn defaults_apply() {
        let spec: TrainingJobSpec = serde_json::from_value(json!({
            "model": "m",
            "dataset": {"uri": "file:///d.csv"},
            "trainer": {"image": "i"},
            "output": {"uri": "file:///out"}
        }))
        .unwrap();
        assert_eq!(spec.workers, 1);
        assert!(!spec.suspend);
        assert_eq!(spec.backoff_limit(), DEFAULT_BACKOFF_LIMIT);
        assert_eq!(Split::default().seed, Some(42));
        // Defaults that are not set are not written back.
        let v = serde_json::to_value(&spec).unwrap();
        assert!(v.get("suspend").is_none());
        assert!(v.get("hyperparameters").is_none());
    }

    #[test]
    fn status_round_trips() {
        let status = TrainingJobStatus {
            observed_generation: Some(3),
            runs: vec![RunRecord {
                name: "iris-r1".into(),
                number: 1,
                job_name: "iris-r1".into(),
                trigger: RunTrigger {
                    type_: TriggerType::Drift,
                    drift_value: Some(0.3),
                    ..Default::default()
                },
                outcome: RunOutcome::Succeeded,
                model_version: Some("iris-r1".into()),
                ..Default::default()
            }],
            last_run_number: Some(1),
            ..Default::default()
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(v["runs"][0]["trigger"], json!({"type": "Drift", "driftValue": 0.3}));
        assert_eq!(serde_json::from_value::<TrainingJobStatus>(v).unwrap(), status);
        assert!(RunOutcome::Failed.is_finished() && !RunOutcome::Running.is_finished());
        assert_eq!(DataAction::Drop.contract_name(), "drop");
    }

    #[test]
    fn crd_has_rules() {
        let crd = serde_json::to_string(&TrainingJob::crd()).unwrap();
        for needle in [
            "split ratios train + validation + test must sum to 1",
            "dataset uri must start with s3://, pvc:// or file://",
            "trainer needs an image or a pod template",
            "retrain needs at least one trigger",
            "drift needs inferenceServiceRef or query",
            MODEL_NAME_MESSAGE,
            r#""x-kubernetes-preserve-unknown-fields":true"#,
            r#""shortNames":["tj"]"#,
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle}");
        }
    }
}
