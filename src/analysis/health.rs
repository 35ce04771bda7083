//! Health of one version's pods (a canary's, or a stable's that has no Ready pod) from pod
//! status, pure. Image pull failures and CrashLoopBackOff fail at once; restarts above the
//! limit fail; pods not Ready within the deadline fail.

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kube::ResourceExt;

use crate::{
    api::inference_service::{DEFAULT_MAX_RESTARTS, DEFAULT_READY_DEADLINE_SECONDS, HealthCheck},
    rollout::Health,
};

const IMAGE_FAILURES: [&str; 4] =
    ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

pub fn version_health(pods: &[Pod], check: Option<&HealthCheck>, now: &Time) -> Health {
    let max_restarts = check.and_then(|c| c.max_restarts).unwrap_or(DEFAULT_MAX_RESTARTS);
    let deadline = check.and_then(|c| c.ready_deadline_seconds).unwrap_or(DEFAULT_READY_DEADLINE_SECONDS);
    if pods.is_empty() {
        return Health::Pending("no canary pod yet".into());
    }
    let mut not_ready = Vec::new();
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        for cs in status.container_statuses.iter().flatten() {
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
            let reason = waiting.and_then(|w| w.reason.clone()).unwrap_or_default();
            if reason == "CrashLoopBackOff" {
                return Health::Failed {
                    reason: "HealthCheckFailed",
                    value: Some(cs.restart_count as f64),
                    bound: Some(max_restarts as f64),
                    message: format!(
                        "pod {} container {} is in CrashLoopBackOff ({} restarts)",
                        pod.name_any(),
                        cs.name,
                        cs.restart_count
                    ),
                };
            }
            if IMAGE_FAILURES.contains(&reason.as_str()) {
                let detail = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
                return Health::Failed {
                    reason: "HealthCheckFailed",
                    value: None,
                    bound: None,
                    message: format!("pod {} container {}: {reason} {detail}", pod.name_any(), cs.name)
                        .trim_end()
                        .to_string(),
                };
            }
            if cs.restart_count > max_restarts {
                return Health::Failed {
                    reason: "HealthCheckFailed",
                    value: Some(cs.restart_count as f64),
                    bound: Some(max_restarts as f64),
                    message: format!(
                        "pod {} container {} restarted {} times, more than {max_restarts}",
                        pod.name_any(),
                        cs.name,
                        cs.restart_count
                    ),
                };
            }
        }
        let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            let age = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| now.0.duration_since(t.0).as_secs())
                .unwrap_or(0);
            if age > deadline {
                return Health::Failed {
                    reason: "HealthCheckFailed",
                    value: Some(age as f64),
                    bound: Some(deadline as f64),
                    message: format!(
                        "pod {} is not Ready {age} s after creation (deadline {deadline} s)",
                        pod.name_any()
                    ),
                };
            }
            not_ready.push(pod.name_any());
        }
    }
    if not_ready.is_empty() {
        Health::Healthy
    } else {
        Health::Pending(format!("waiting for {} to become Ready", not_ready.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + s).unwrap())
    }

    fn pod(ready: bool, restarts: i32, waiting: Option<&str>) -> Pod {
        let state = match waiting {
            Some(r) => json!({"waiting": {"reason": r, "message": "details"}}),
            None => json!({"running": {}}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": "p", "creationTimestamp": "2023-11-14T22:13:20Z"},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "server", "ready": ready, "restartCount": restarts, "image": "i", "imageID": "",
                                       "state": state}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn verdicts() {
        let check = HealthCheck { ready_deadline_seconds: Some(30), max_restarts: Some(1) };
        let cases: Vec<(Vec<Pod>, i64, &str)> = vec![
            (vec![], 0, "pending"),
            (vec![pod(true, 0, None)], 0, "healthy"),
            (vec![pod(false, 0, None)], 10, "pending"),
            (vec![pod(false, 0, None)], 31, "failed"),
            (vec![pod(true, 2, None)], 0, "failed"),
            (vec![pod(false, 1, Some("CrashLoopBackOff"))], 0, "failed"),
            (vec![pod(false, 0, Some("ImagePullBackOff"))], 0, "failed"),
        ];
        for (pods, at, want) in cases {
            let got = match version_health(&pods, Some(&check), &t(at)) {
                Health::Healthy => "healthy",
                Health::Pending(_) => "pending",
                Health::Failed { .. } => "failed",
            };
            assert_eq!(got, want, "{pods:?} at {at}");
        }
        let Health::Failed { value, bound, message, .. } =
            version_health(&[pod(true, 2, None)], Some(&check), &t(0))
        else {
            panic!("restarts fail")
        };
        assert_eq!((value, bound), (Some(2.0), Some(1.0)));
        assert!(message.contains("restarted 2 times"));
    }
}
