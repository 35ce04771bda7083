//! Pod status as a pure function of what the agent knows about its processes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: String,
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: String },
    Terminated(Terminated),
}

/// One container as the agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: State,
    pub last_state: Option<Terminated>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// Terminated and will not run again (restart policy says so).
    pub done: bool,
    pub container_id: Option<String>,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: String::new(),
            state: State::Waiting { reason: "ContainerCreating".into(), message: None },
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            done: false,
            container_id: None,
        }
    }

    fn succeeded(&self) -> bool {
        self.done && matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }

    fn ever_ran(&self) -> bool {
        !matches!(self.state, State::Waiting { .. }) || self.last_state.is_some() || self.restart_count > 0
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodRecord {
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: String,
    pub init: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    /// The pod's readiness gates: condition type, and whether that condition is True.
    pub gates: Vec<(String, bool)>,
}

/// The readiness gates of `pod` with the state of their conditions (set by other
/// controllers): a gated pod is Ready only when every gate's condition is True.
pub fn gates(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<(String, bool)> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .map(|g| {
            let open = conditions
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == g.condition_type && c.status == "True"));
            (g.condition_type.clone(), open)
        })
        .collect()
}

/// The pod phase, with the kubelet's rules.
pub fn phase(rec: &PodRecord) -> &'static str {
    if rec.init.iter().any(|c| c.done && !c.succeeded()) {
        return "Failed";
    }
    if !rec.containers.is_empty() && rec.containers.iter().all(|c| c.done) {
        return if rec.containers.iter().all(ContainerRecord::succeeded) { "Succeeded" } else { "Failed" };
    }
    if rec.containers.iter().any(ContainerRecord::ever_ran) {
        return "Running";
    }
    "Pending"
}

pub fn initialized(rec: &PodRecord) -> bool {
    rec.init.iter().all(ContainerRecord::succeeded)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Option<String>,
    pub message: Option<String>,
}

pub fn conditions(rec: &PodRecord) -> Vec<Condition> {
    let cond = |type_, status, reason: Option<&str>, message: Option<String>| Condition {
        type_,
        status,
        reason: reason.map(str::to_owned),
        message,
    };
    let terminal = matches!(phase(rec), "Succeeded" | "Failed");
    let init_ok = initialized(rec);
    let unready: Vec<&str> = rec.containers.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
    let ready = unready.is_empty() && !terminal;
    let not_ready_msg =
        (!unready.is_empty()).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let not_ready_reason = if terminal { "PodCompleted" } else { "ContainersNotReady" };
    let closed_gates: Vec<&str> =
        rec.gates.iter().filter(|(_, open)| !open).map(|(t, _)| t.as_str()).collect();
    let uninit: Vec<&str> = rec.init.iter().filter(|c| !c.succeeded()).map(|c| c.name.as_str()).collect();
    vec![
        cond("PodReadyToStartContainers", rec.pod_ip.is_some(), None, None),
        if init_ok {
            cond("Initialized", true, None, None)
        } else {
            cond(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!("containers with incomplete status: [{}]", uninit.join(" "))),
            )
        },
        if ready {
            cond("ContainersReady", true, None, None)
        } else {
            cond("ContainersReady", false, Some(not_ready_reason), not_ready_msg.clone())
        },
        if ready && closed_gates.is_empty() {
            cond("Ready", true, None, None)
        } else if ready {
            // The kubelet's wording for a gate whose condition is not True.
            cond(
                "Ready",
                false,
                Some("ReadinessGatesNotReady"),
                Some(format!(
                    "corresponding condition of pod readiness gate \"{}\" is not True",
                    closed_gates[0]
                )),
            )
        } else {
            cond("Ready", false, Some(not_ready_reason), not_ready_msg)
        },
        cond("PodScheduled", true, None, None),
    ]
}

/// When each condition last changed: kept across status computations so that
/// `lastTransitionTime` moves only on a real transition.
#[derive(Debug, Default, Clone)]
pub struct ConditionClock(BTreeMap<&'static str, (bool, String)>);

impl ConditionClock {
    fn stamp(&mut self, type_: &'static str, status: bool, now: &str) -> String {
        let entry = self.0.entry(type_).or_insert_with(|| (status, now.to_owned()));
        if entry.0 != status {
            *entry = (status, now.to_owned());
        }
        entry.1.clone()
    }
}

fn terminated_json(t: &Terminated) -> Value {
    // Absent fields are explicit nulls: the body is a strategic-merge patch, and a null
    // removes what an earlier run left there.
    json!({
        "exitCode": t.exit_code,
        "signal": t.signal,
        "reason": t.reason,
        "message": t.message,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
        "containerID": t.container_id,
    })
}

fn state_json(s: &State) -> Value {
    match s {
        State::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}, "running": null, "terminated": null})
        }
        State::Running { started_at } => {
            json!({"running": {"startedAt": started_at}, "waiting": null, "terminated": null})
        }
        State::Terminated(t) => json!({"terminated": terminated_json(t), "waiting": null, "running": null}),
    }
}

fn container_json(c: &ContainerRecord) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id,
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
        "state": state_json(&c.state),
        "lastState": c.last_state.as_ref().map(|t| json!({"terminated": terminated_json(t)})).unwrap_or(json!({})),
    });
    if let Some(id) = &c.container_id {
        v["containerID"] = json!(id);
    }
    v
}

/// The `status` object the agent sends (a strategic-merge patch body for pods/status).
pub fn status_body(rec: &PodRecord, clock: &mut ConditionClock, now: &str) -> Value {
    let conditions: Vec<Value> = conditions(rec)
        .into_iter()
        .map(|c| {
            json!({
                "type": c.type_,
                "status": if c.status { "True" } else { "False" },
                "lastTransitionTime": clock.stamp(c.type_, c.status, now),
                "lastProbeTime": null,
                "reason": c.reason,
                "message": c.message,
            })
        })
        .collect();
    let mut status = json!({
        "phase": phase(rec),
        "hostIP": rec.host_ip,
        "hostIPs": [{"ip": rec.host_ip}],
        "startTime": rec.start_time,
        "conditions": conditions,
        "containerStatuses": rec.containers.iter().map(container_json).collect::<Vec<_>>(),
    });
    if !rec.init.is_empty() {
        status["initContainerStatuses"] = json!(rec.init.iter().map(container_json).collect::<Vec<_>>());
    }
    if let Some(ip) = &rec.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed".into() } else { "Error".into() },
            message: Some("msg".into()),
            started_at: Some("t0".into()),
            finished_at: "t1".into(),
            container_id: "mlops-node://1".into(),
        }
    }

    fn rec(states: Vec<(State, bool, bool)>) -> PodRecord {
        PodRecord {
            pod_ip: Some("127.1.0.1".into()),
            host_ip: "127.0.0.1".into(),
            start_time: "t0".into(),
            init: vec![],
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, (state, ready, done))| ContainerRecord {
                    state,
                    ready,
                    done,
                    ..ContainerRecord::new(&format!("c{i}"), "img")
                })
                .collect(),
            gates: vec![],
        }
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_condition_is_true() {
        let running = State::Running { started_at: "t".into() };
        let mut r = rec(vec![(running, true, false)]);
        r.gates = vec![("mlops.dev/scraped".into(), false)];
        let c = conditions(&r);
        let find = |c: &[Condition], t: &str| c.iter().find(|x| x.type_ == t).unwrap().clone();
        assert!(find(&c, "ContainersReady").status);
        let ready = find(&c, "Ready");
        assert!(!ready.status);
        assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert!(ready.message.unwrap().contains("mlops.dev/scraped"));
        r.gates[0].1 = true;
        assert!(find(&conditions(&r), "Ready").status);

        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "spec": {"containers": [], "readinessGates": [{"conditionType": "a"}, {"conditionType": "b"}]},
            "status": {"conditions": [{"type": "a", "status": "True"}, {"type": "b", "status": "False"}]}
        }))
        .unwrap();
        assert_eq!(gates(&pod), [("a".to_string(), true), ("b".to_string(), false)]);
    }

    #[test]
    fn phases() {
        let waiting = State::Waiting { reason: "ErrImagePull".into(), message: None };
        let running = State::Running { started_at: "t".into() };
        assert_eq!(phase(&rec(vec![(waiting.clone(), false, false)])), "Pending");
        assert_eq!(phase(&rec(vec![(running.clone(), true, false), (waiting, false, false)])), "Running");
        assert_eq!(phase(&rec(vec![(State::Terminated(term(0)), false, true)])), "Succeeded");
        assert_eq!(
            phase(&rec(vec![
                (State::Terminated(term(0)), false, true),
                (State::Terminated(term(3)), false, true)
            ])),
            "Failed"
        );
        // Terminated but about to restart: still Running.
        assert_eq!(phase(&rec(vec![(State::Terminated(term(1)), false, false)])), "Running");
        let mut r = rec(vec![(running, true, false)]);
        r.init.push(ContainerRecord {
            state: State::Terminated(term(1)),
            done: true,
            ..ContainerRecord::new("i", "img")
        });
        assert_eq!(phase(&r), "Failed");
        assert!(!initialized(&r));
    }

    #[test]
    fn ready_conditions_and_completed_reason() {
        let running = State::Running { started_at: "t".into() };
        let r = rec(vec![(running.clone(), true, false), (running, false, false)]);
        let c = conditions(&r);
        let ready = c.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(!ready.status);
        assert_eq!(ready.message.as_deref(), Some("containers with unready status: [c1]"));
        let done = rec(vec![(State::Terminated(term(0)), false, true)]);
        let ready = conditions(&done).into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn body_and_transition_times() {
        let mut clock = ConditionClock::default();
        let running = State::Running { started_at: "t".into() };
        let mut r = rec(vec![(running, false, false)]);
        let b1 = status_body(&r, &mut clock, "T1");
        assert_eq!(b1["phase"], "Running");
        assert_eq!(b1["podIP"], "127.1.0.1");
        assert_eq!(b1["containerStatuses"][0]["state"]["running"]["startedAt"], "t");
        let ready_time = |b: &Value| {
            b["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()["lastTransitionTime"].clone()
        };
        assert_eq!(ready_time(&b1), "T1");
        assert_eq!(ready_time(&status_body(&r, &mut clock, "T2")), "T1");
        r.containers[0].ready = true;
        assert_eq!(ready_time(&status_body(&r, &mut clock, "T3")), "T3");
        r.containers[0].state = State::Terminated(term(0));
        r.containers[0].done = true;
        r.containers[0].ready = false;
        let b = status_body(&r, &mut clock, "T4");
        assert_eq!(b["containerStatuses"][0]["state"]["terminated"]["message"], "msg");
        assert_eq!(b["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0);
        assert_eq!(b["phase"], "Succeeded");
    }
}
