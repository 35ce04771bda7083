//! The model server container of an InferenceService.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DEFAULT_PORT;
use crate::api::common::LocalRef;

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
