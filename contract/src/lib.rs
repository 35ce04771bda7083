//! The contract between the operator and the trainer and server pods it runs: the
//! environment variable names it sets, the trainer's result document and its limits. The
//! operator and the reference runtime both depend on this crate, so the two cannot drift.

pub mod result;

/// Environment variables the operator sets on trainer containers (and the reference
/// trainer reads). Every value is a string; JSON where noted.
pub mod trainer_env {
    /// `spec.model` of the TrainingJob.
    pub const MODEL_NAME: &str = "MLOPS_MODEL_NAME";
    /// The run's id (`status.runs[].name`), also the produced ModelVersion's name.
    pub const RUN_ID: &str = "MLOPS_RUN_ID";
    /// Where the dataset is, as the container sees it (`s3://…` or a `file://` mount).
    pub const DATASET_URI: &str = "MLOPS_DATASET_URI";
    /// The dataset digest pin (`sha256:<hex>`), when the spec has one.
    pub const DATASET_DIGEST: &str = "MLOPS_DATASET_DIGEST";
    /// The label column of tabular data, when set.
    pub const LABEL_COLUMN: &str = "MLOPS_LABEL_COLUMN";
    /// JSON: the data validation policy, one entry per configured check.
    pub const VALIDATION: &str = "MLOPS_VALIDATION";
    /// JSON: train / validation / test ratios and the seed, defaults filled in.
    pub const SPLIT: &str = "MLOPS_SPLIT";
    /// JSON: the hyper-parameters, a string map.
    pub const HYPERPARAMETERS: &str = "MLOPS_HYPERPARAMETERS";
    /// Where the artifacts go (`s3://…` or a `file://` mount).
    pub const OUTPUT_URI: &str = "MLOPS_OUTPUT_URI";
    /// Prefix of the output location's S3 credentials (`MLOPS_OUTPUT_AWS_ACCESS_KEY_ID`, …).
    pub const OUTPUT_CREDENTIALS_PREFIX: &str = "MLOPS_OUTPUT_";
    /// Distributed runs: the number of workers and this worker's rank.
    pub const WORKERS: &str = "MLOPS_WORKERS";
    pub const RANK: &str = "MLOPS_RANK";
    /// Where the trainer writes its result: the operator sets it to the container's
    /// `terminationMessagePath` (by default [`DEFAULT_TERMINATION_MESSAGE_PATH`]).
    pub const TERMINATION_MESSAGE_PATH: &str = "MLOPS_TERMINATION_MESSAGE_PATH";
    /// The kubelet's default termination message path, where the operator reads the result.
    /// The kubelet mounts this file writable by any user, also on a read-only root filesystem.
    pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
}

/// Environment variables the operator sets on serving containers.
pub mod server_env {
    /// The served model's name (`spec.model` of the InferenceService).
    pub const MODEL_NAME: &str = "MLOPS_MODEL_NAME";
    /// The pod's own address (from `status.podIP`), where the server listens.
    pub const POD_IP: &str = "POD_IP";
    /// The served ModelVersion's artifact location, name and digest.
    pub const MODEL_URI: &str = "MLOPS_MODEL_URI";
    pub const MODEL_VERSION: &str = "MLOPS_MODEL_VERSION";
    pub const MODEL_DIGEST: &str = "MLOPS_MODEL_DIGEST";
    /// The port the server listens on.
    pub const HTTP_PORT: &str = "MLOPS_HTTP_PORT";
    /// Test-only fault injection variables (`MLOPS_FAULT_ERROR_RATE`, …) start with this.
    pub const FAULT_PREFIX: &str = "MLOPS_FAULT_";

    // Limits the server reads. The operator does not set them; a user sets them in the
    // InferenceService's `spec.runtime.env`. Each has a default in the server.

    /// Largest request body in bytes (413 beyond).
    pub const MAX_REQUEST_BYTES: &str = "MLOPS_MAX_REQUEST_BYTES";
    /// Largest answer in bytes, bounded from the request's shape before any row is scored
    /// (413 beyond).
    pub const MAX_RESPONSE_BYTES: &str = "MLOPS_MAX_RESPONSE_BYTES";
    /// Seconds from a request's first byte to the end of its headers; a slower client is
    /// disconnected.
    pub const HEADER_TIMEOUT_SECONDS: &str = "MLOPS_HEADER_TIMEOUT_SECONDS";
    /// Seconds a keep-alive connection may stay idle (also: may take to read an answer).
    pub const IDLE_TIMEOUT_SECONDS: &str = "MLOPS_IDLE_TIMEOUT_SECONDS";
    /// Seconds from the end of a request's headers to its answer, body upload included
    /// (503 beyond).
    pub const REQUEST_TIMEOUT_SECONDS: &str = "MLOPS_REQUEST_TIMEOUT_SECONDS";
    /// Requests in flight at once; more are answered 503 with `Retry-After` at once. Health,
    /// readiness and `/metrics` are not counted and always answered.
    pub const MAX_CONCURRENT_REQUESTS: &str = "MLOPS_MAX_CONCURRENT_REQUESTS";
}
