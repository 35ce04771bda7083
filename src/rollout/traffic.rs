//! Where traffic goes, as replica counts and weights, from the rollout state. Pure.
//!
//! `replicas` routing (the default): one Service selects the pods of both versions, so a
//! version's share of traffic is its share of Ready pods: canary replicas =
//! ceil(total × weight / 100), the stable keeps the rest and at least one pod until 100 %.
//! The reported weight is the effective one, which replica granularity may round.
//! `gatewayAPI` routing: exact weights on an HTTPRoute; the stable keeps all its pods until
//! promotion so a revert is one write.

use super::Settings;
use crate::api::inference_service::{CanaryPhase, InferenceServiceSpec, InferenceServiceStatus};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub version: String,
    pub replicas: i32,
    /// Percent of traffic.
    pub weight: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub total: i32,
    pub stable: Option<Placement>,
    pub canary: Option<Placement>,
    /// The previous stable, kept at zero replicas so a revert is a single write.
    pub standby: Option<String>,
    pub gateway: bool,
}

pub fn placement(spec: &InferenceServiceSpec, st: &InferenceServiceStatus, s: &Settings) -> Traffic {
    let total = spec.replicas().max(0);
    let gateway = spec
        .rollout
        .as_ref()
        .and_then(|r| r.traffic_routing.as_ref())
        .is_some_and(|t| t.gateway_api.is_some());
    let mut t = Traffic { total, gateway, ..Traffic::default() };
    let Some(stable) = &st.stable else { return t };
    let full = |version: &str| Placement { version: version.into(), replicas: total, weight: 100 };
    let canary = st.canary.as_ref().filter(|c| c.version != stable.version);
    match canary {
        None => {
            t.stable = Some(full(&stable.version));
            t.standby = st.rollback_target.clone().filter(|v| v != &stable.version);
        }
        Some(c) if c.phase == CanaryPhase::RollingBack => {
            t.stable = Some(full(&stable.version));
            t.canary = Some(Placement { version: c.version.clone(), replicas: 0, weight: 0 });
        }
        Some(c) => {
            let w = if c.phase == CanaryPhase::Baking { 100 } else { s.weight(c.step) }.clamp(0, 100);
            let canary_replicas = ((total as i64 * w as i64 + 99) / 100).max(1) as i32;
            if gateway {
                t.stable =
                    Some(Placement { version: stable.version.clone(), replicas: total, weight: 100 - w });
                t.canary =
                    Some(Placement { version: c.version.clone(), replicas: canary_replicas, weight: w });
            } else {
                let stable_replicas = if w >= 100 { 0 } else { (total - canary_replicas).max(1) };
                let sum = (canary_replicas + stable_replicas).max(1);
                let effective = (100 * canary_replicas + sum / 2) / sum;
                t.stable = Some(Placement {
                    version: stable.version.clone(),
                    replicas: stable_replicas,
                    weight: 100 - effective,
                });
                t.canary = Some(Placement {
                    version: c.version.clone(),
                    replicas: canary_replicas,
                    weight: effective,
                });
            }
        }
    }
    t
}
