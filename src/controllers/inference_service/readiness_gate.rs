//! The `mlops.dev/scraped` pod readiness gate (`analysis.waitForFirstScrape`), as pure
//! functions. Not to be confused with a ModelVersion's quality gates: this is a pod
//! condition that holds a serving pod out of its Service's endpoints. A gated pod is Ready, and so gets traffic, only once the operator sets this
//! condition. The stable version's pods are opened at once. A canary's pod is opened once
//! Prometheus scrapes it, just before its next scrape (predicted from the last two: targets
//! are scraped at a fixed phase), so its first requests are in the very next sample and a
//! bad canary is judged within about a second of its first answer. Any pod is opened after
//! [`OPEN_AFTER_SECONDS`] regardless, so a Prometheus that never sees it cannot hold a
//! version back forever (the `onNoData` policy then decides).

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{Pod, PodReadinessGate},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::api::{self, InferenceService};

/// The pod condition type of the gate.
pub const SCRAPED: &str = "mlops.dev/scraped";
/// A gated pod older than this is opened even if no scrape was seen.
pub const OPEN_AFTER_SECONDS: i64 = 60;
/// How long before a canary pod's predicted next scrape its gate opens (at most half the
/// scrape interval): the time for Ready to reach the Service's endpoints.
pub const OPEN_LEAD_SECONDS: f64 = 1.0;

/// Whether the service's pods carry the readiness gate.
pub fn enabled(isvc: &InferenceService) -> bool {
    isvc.spec.rollout.as_ref().and_then(|r| r.analysis.as_ref()).and_then(|a| a.wait_for_first_scrape)
        == Some(true)
}

/// The pod template's readiness gates.
pub fn pod_readiness_gates(isvc: &InferenceService) -> Option<Vec<PodReadinessGate>> {
    enabled(isvc).then(|| vec![PodReadinessGate { condition_type: SCRAPED.into() }])
}

/// Gated pods whose gate is not open yet (and that are not going away).
pub fn closed_gates(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_ref())
                .is_some_and(|g| g.iter().any(|g| g.condition_type == SCRAPED))
        })
        .filter(|p| {
            !p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == SCRAPED && c.status == "True"))
        })
        .collect()
}

/// Whether a closed pod's gate needs a look at Prometheus: canary pods that could be
/// scraped already (they have an address) and are not old enough to be opened anyway.
pub fn needs_scrape_check(pod: &Pod, stable_version: Option<&str>, now: &Time) -> bool {
    !is_stable(pod, stable_version)
        && pod.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
        && age(pod, now) < OPEN_AFTER_SECONDS
}

/// Why a closed gate opens now; `None` keeps it closed. `scrapes`: when Prometheus
/// scraped the pod (`up == 1` sample times, ascending, in seconds); `prometheus`: one is
/// configured at all.
pub fn gate_opening(
    pod: &Pod,
    stable_version: Option<&str>,
    scrapes: &[f64],
    prometheus: bool,
    now: &Time,
) -> Option<(&'static str, String)> {
    if is_stable(pod, stable_version) {
        return Some(("StableVersion", "the stable version's pods need no first scrape".into()));
    }
    if let [.., previous, last] = scrapes {
        let interval = (last - previous).max(0.1);
        let next = last + interval;
        let now_s = now.0.as_millisecond() as f64 / 1000.0;
        if now_s >= next - OPEN_LEAD_SECONDS.min(interval / 2.0) {
            return Some((
                "Scraped",
                format!(
                    "Prometheus scrapes the pod every {interval:.1}s; opened just before its next scrape"
                ),
            ));
        }
    }
    if !prometheus {
        return Some(("NoPrometheus", "no --prometheus-url: nothing to wait for".into()));
    }
    (age(pod, now) >= OPEN_AFTER_SECONDS).then(|| {
        ("NotScraped", format!("no scrape within {OPEN_AFTER_SECONDS}s; traffic allowed, onNoData decides"))
    })
}

/// When to look at a canary pod's closed gate again: at its opening time once the scrape
/// phase is known, else in a second (scrapes come seconds apart), so a held pod costs at
/// most a reconcile a second.
pub fn recheck_in(scrapes: &[f64], now: &Time) -> Duration {
    if let [.., previous, last] = scrapes {
        let interval = (last - previous).max(0.1);
        let open_at = last + interval - OPEN_LEAD_SECONDS.min(interval / 2.0);
        let now_s = now.0.as_millisecond() as f64 / 1000.0;
        return Duration::from_millis(((open_at - now_s) * 1000.0).round().clamp(50.0, 1000.0) as u64);
    }
    Duration::from_secs(1)
}

/// The range query giving when Prometheus scraped the pod (its `up` samples).
pub fn up_query(namespace: &str, pod: &str) -> String {
    format!("up{{namespace=\"{namespace}\",pod=\"{pod}\"}}[1m]")
}

/// The strategic-merge patch of pods/status that opens the gate.
pub fn open_gate_patch(reason: &str, message: &str, now: &Time) -> Value {
    json!({"status": {"conditions": [{
        "type": SCRAPED, "status": "True", "reason": reason, "message": message,
        "lastTransitionTime": now, "lastProbeTime": null,
    }]}})
}

fn is_stable(pod: &Pod, stable_version: Option<&str>) -> bool {
    stable_version.is_some()
        && pod.labels().get(api::LABEL_MODEL_VERSION).map(String::as_str) == stable_version
}

fn age(pod: &Pod, now: &Time) -> i64 {
    pod.metadata.creation_timestamp.as_ref().map_or(0, |t| now.0.duration_since(t.0).as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(version: &str, created: &str, gated: bool, open: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{version}-x"), "creationTimestamp": created,
                         "labels": {api::LABEL_MODEL_VERSION: version}},
            "spec": {"containers": [], "readinessGates": if gated { json!([{"conditionType": SCRAPED}]) } else { json!([]) }},
            "status": {"podIP": "127.0.0.9",
                       "conditions": if open { json!([{"type": SCRAPED, "status": "True"}]) } else { json!([]) }}
        }))
        .unwrap()
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn only_gated_pods_with_a_closed_gate_are_closed() {
        let pods = [
            pod("v2", "2025-01-01T00:00:00Z", true, false),
            pod("v2", "2025-01-01T00:00:00Z", true, true),
            pod("v2", "2025-01-01T00:00:00Z", false, false),
        ];
        assert_eq!(closed_gates(&pods).len(), 1);
    }

    #[test]
    fn stable_pods_open_at_once_canaries_just_before_a_scrape_or_after_a_minute() {
        let epoch = 1735689600.0; // 2025-01-01T00:00:00Z
        let now = t("2025-01-01T00:00:10Z");
        let stable = pod("v1", "2025-01-01T00:00:09Z", true, false);
        assert_eq!(gate_opening(&stable, Some("v1"), &[], true, &now).unwrap().0, "StableVersion");
        assert!(!needs_scrape_check(&stable, Some("v1"), &now));

        let canary = pod("v2", "2025-01-01T00:00:05Z", true, false);
        assert!(needs_scrape_check(&canary, Some("v1"), &now));
        assert_eq!(gate_opening(&canary, Some("v1"), &[], true, &now), None, "not scraped yet: held");
        let at = |s: &str| {
            gate_opening(&canary, Some("v1"), &[epoch + 6.0, epoch + 8.0], true, &t(s)).map(|o| o.0)
        };
        // Scraped at :06 and :08, so next at :10: opened from :09 (the lead), not before.
        assert_eq!(at("2025-01-01T00:00:08.500Z"), None);
        assert_eq!(at("2025-01-01T00:00:09.100Z"), Some("Scraped"));
        assert_eq!(at("2025-01-01T00:00:12Z"), Some("Scraped"), "a missed window opens late, not never");
        // One scrape says nothing about the phase yet.
        assert_eq!(gate_opening(&canary, Some("v1"), &[epoch + 8.0], true, &now), None);
        assert_eq!(gate_opening(&canary, Some("v1"), &[], false, &now).unwrap().0, "NoPrometheus");
        let later = t("2025-01-01T00:01:05Z");
        assert!(!needs_scrape_check(&canary, Some("v1"), &later));
        assert_eq!(gate_opening(&canary, Some("v1"), &[], true, &later).unwrap().0, "NotScraped");
        // The first version of a service has no stable yet: it waits for its scrapes too.
        assert_eq!(gate_opening(&canary, None, &[], true, &now), None);
    }

    #[test]
    fn a_held_pod_is_looked_at_when_it_may_open_or_each_second() {
        let epoch = 1735689600.0; // 2025-01-01T00:00:00Z
        let scrapes = [epoch + 6.0, epoch + 8.0]; // next at :10, opens from :09
        let wait = |now: &str| recheck_in(&scrapes, &t(now));
        assert_eq!(wait("2025-01-01T00:00:08.200Z"), Duration::from_millis(800));
        assert_eq!(wait("2025-01-01T00:00:08.900Z"), Duration::from_millis(100));
        assert_eq!(wait("2025-01-01T00:00:09.500Z"), Duration::from_millis(50), "due: at once");
        assert_eq!(recheck_in(&[epoch + 8.0], &t("2025-01-01T00:00:08.200Z")), Duration::from_secs(1));
    }

    #[test]
    fn the_query_and_the_patch() {
        assert_eq!(up_query("ml", "web-v2-x"), r#"up{namespace="ml",pod="web-v2-x"}[1m]"#);
        let p = open_gate_patch("Scraped", "m", &t("2025-01-01T00:00:10Z"));
        assert_eq!(p["status"]["conditions"][0]["type"], SCRAPED);
        assert_eq!(p["status"]["conditions"][0]["status"], "True");
    }
}
