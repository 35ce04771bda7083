//! How a new version replaces the serving one: traffic steps and how traffic is split.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Analysis, MAX_STEPS};

/// Progressive rollout of a new version.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Traffic steps for the canary, weights strictly increasing. After the last step the
    /// canary gets 100 %, bakes for `bakeSeconds`, then becomes stable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new(
        "self.map(s, s.weight).isSorted() && self.all(a, self.exists_one(b, b.weight == a.weight))"
    ).message("rollout step weights must be strictly increasing"))]
    #[schemars(length(max = MAX_STEPS), extend("x-kubernetes-list-type" = "atomic"))]
    pub steps: Vec<RolloutStep>,

    /// How traffic is split between stable and canary. Default `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,

    /// A step that makes no progress (canary not Ready, analysis waiting for data) for this
    /// long fails the rollout. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i64>,

    /// How long analysis keeps running after the canary reaches 100 %; a failure during the
    /// bake still reverts. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub bake_seconds: Option<i64>,

    /// How long the previous stable Deployment is kept after promotion, so a revert is a
    /// single write; it is then scaled to zero. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i64>,

    /// Health and metric checks run while the canary has traffic and during the bake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// One rollout step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// Percent of traffic the canary gets at this step (0–100).
    #[schemars(range(min = 0, max = 100))]
    pub weight: i32,
    /// How long to stay at this step with passing analysis before the next. Default 0
    /// (move on as soon as the canary is Ready and one analysis interval passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub pause_seconds: Option<i64>,
}

/// Traffic split mechanism; set exactly one.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("has(self.replicas) != has(self.gatewayAPI)").message(
    "trafficRouting needs exactly one of replicas or gatewayAPI"
))]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    /// Weight by replica ratio behind one Service (canary replicas = ceil(total × weight)).
    /// No mesh or gateway needed. Write `replicas: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasRouting>,

    /// Weighted `backendRefs` on a Gateway API HTTPRoute owned by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "gatewayAPI")]
    pub gateway_api: Option<GatewayApiRouting>,
}

/// Replica-ratio routing has no settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReplicasRouting {}

/// Gateway API routing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// Gateway the HTTPRoute attaches to (its `parentRefs`).
    pub gateway_ref: GatewayRef,
    /// Name of the HTTPRoute the operator creates and owns. Default: the InferenceService's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub http_route_name: Option<String>,
    /// Host names the route matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)), extend("x-kubernetes-list-type" = "set"))]
    pub hostnames: Vec<String>,
}

/// Reference to a Gateway API Gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Gateway name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Gateway namespace. Default: the InferenceService's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Listener of the Gateway to attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub section_name: Option<String>,
}
