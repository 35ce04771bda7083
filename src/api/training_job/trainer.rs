//! The code a TrainingJob runs: the trainer container and where its source comes from.

use k8s_openapi::api::core::v1::{EnvVar, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// and win over these). HOME set here replaces the operator's default (/home/mlops).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,

    /// CPU, memory and accelerator requests and limits of each training pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Full pod template (core/v1 PodTemplateSpec) for node selectors, tolerations, volumes,
    /// sidecars. Not validated by this schema; the API server validates the Job built from it.
    /// Its securityContext fields, volume mounts and HOME are kept; the restricted defaults
    /// (see trainer) fill in only what it leaves unset.
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
        "description": "Full pod template (core/v1 PodTemplateSpec) for node selectors, tolerations, volumes, sidecars. Not validated by this schema; the API server validates the Job built from it. Its securityContext fields, volume mounts and HOME are kept; the restricted defaults (see trainer) fill in only what it leaves unset."
    })
}
