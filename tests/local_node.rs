//! End-to-end proofs that the local node (`mlops-node`, started by `hack/cluster.sh up`)
//! really runs pods as host processes: readiness through a real probe, traffic through
//! the loopback Service proxy, CrashLoopBackOff, Job success and failure as the Job
//! controller sees them, termination messages, graceful deletion, headless-Service names
//! between the pods of an Indexed Job, and Prometheus scraping a pod.
//!
//! The workloads are small Python and shell programs (images `python:3.12` and `busybox`
//! map to `python3` and `sh` in the node's image map).

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{Pod, Service},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};
use testkit::{TestEnv, output_text, repo_root, wait_for, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(90);

/// A Python `http.server` that answers every GET with its pod's name, on POD_IP:8080.
const NAME_SERVER: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["POD_NAME"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
"#;

async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("valid object");
    api.create(&PostParams::default(), &obj).await.expect("create")
}

/// One HTTP/1.0 GET over a fresh connection: (status code, body).
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

fn pod_json(p: &Pod) -> Value {
    serde_json::to_value(p).expect("pod to json")
}

async fn pods_with(env: &TestEnv, selector: &str) -> Vec<Pod> {
    env.api::<Pod>().list(&ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default()
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn deployment_becomes_ready_and_serves_through_the_loopback_service() {
    let env = TestEnv::start("node-deployment").await;
    create(
        &env.api::<Deployment>(),
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "web",
                        "image": "python:3.12",
                        "command": ["python3", "-c", NAME_SERVER],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
                    }]}
                }
            }
        }),
    )
    .await;
    create(
        &env.api::<Service>(),
        json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}
        }),
    )
    .await;
    wait_for(&env.api::<Deployment>(), "web", WAIT, "2 ready replicas", |d| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
    })
    .await;
    let pods = pods_with(&env, "app=web").await;
    for p in &pods {
        let v = pod_json(p);
        assert_eq!(v["spec"]["nodeName"], "local-node");
        let ip = v["status"]["podIP"].as_str().expect("pod IP");
        assert!(ip.starts_with("127."), "loopback pod IP, got {ip}");
        assert_eq!(v["status"]["containerStatuses"][0]["ready"], true);
    }

    // The proxy's address is published on the Service and in .dev/services/.
    let svc = wait_for(&env.api::<Service>(), "web", WAIT, "the local-address annotation", |s| {
        s.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("mlops.dev/local-address"))
    })
    .await;
    let addr = svc.metadata.annotations.unwrap()["mlops.dev/local-address"].clone();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let file = repo_root().join(".dev/services").join(format!("{}_web_80", env.namespace));
    assert_eq!(std::fs::read_to_string(&file).expect("address file").trim(), addr);

    // Connections are spread round-robin over both ready pods.
    let names: Vec<String> = pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    let seen = wait_until(WAIT, "both pods answering through the Service", || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let (code, body) = http_get(&addr, "/").await?;
            if code != 200 {
                return None;
            }
            seen.insert(body);
        }
        (seen.len() == 2).then_some(seen)
    })
    .await;
    for n in names {
        assert!(seen.contains(&n), "{n} never answered; saw {seen:?}");
    }
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn crashing_container_reaches_crash_loop_back_off() {
    let env = TestEnv::start("node-crashloop").await;
    let pods = env.api::<Pod>();
    create(
        &pods,
        json!({
            "metadata": {"name": "crash"},
            "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo dying; exit 1"]}]}
        }),
    )
    .await;
    let restarts =
        |p: &Pod| pod_json(p)["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0);
    let first = wait_for(&pods, "crash", WAIT, "CrashLoopBackOff after at least two restarts", |p| {
        let v = pod_json(p);
        v["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && restarts(p) >= 2
    })
    .await;
    let v = pod_json(&first);
    assert_eq!(v["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(v["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(v["status"]["phase"], "Running");
    // The log file holds every run; `kubectl logs` shows one run, `--previous` the run
    // before the restart (the kubelet's rule), never all of them.
    let runs_shown = |flags: &[&str]| {
        let out = env.kubectl(&[&["logs", "crash"], flags].concat(), None);
        assert!(out.status.success(), "kubectl logs {flags:?}: {}", output_text(&out));
        output_text(&out).matches("dying").count()
    };
    assert_eq!(runs_shown(&["--previous"]), 1);
    // The current run may have just started and printed nothing yet.
    wait_until(WAIT, "kubectl logs showing exactly one run", || async {
        (runs_shown(&[]) == 1).then_some(())
    })
    .await;
    let before = restarts(&first);
    wait_for(&pods, "crash", WAIT, "a growing restart count", |p| restarts(p) > before).await;
    // The node records the back-off as an Event on the pod, as a kubelet does.
    let events = env.api::<k8s_openapi::api::events::v1::Event>();
    wait_until(WAIT, "a BackOff event for the pod", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("BackOff")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("crash")
        })
    })
    .await;
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn job_completes_with_the_termination_message_in_pod_status() {
    let env = TestEnv::start("node-job-ok").await;
    let script = r#"echo "hello from the trainer"; printf '{"version":1,"metrics":{"accuracy":0.93}}' > "$MLOPS_TERMINATION_MESSAGE_PATH""#;
    create(
        &env.api::<Job>(),
        json!({
            "metadata": {"name": "train"},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "trainer", "image": "busybox", "command": ["sh", "-c", script]}]
                }}
            }
        }),
    )
    .await;
    testkit::wait_condition(&env.api::<Job>(), "train", "Complete", "True", WAIT).await;
    let pods = pods_with(&env, "job-name=train").await;
    assert_eq!(pods.len(), 1);
    let v = pod_json(&pods[0]);
    assert_eq!(v["status"]["phase"], "Succeeded");
    let term = &v["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 0);
    assert_eq!(term["reason"], "Completed");
    assert_eq!(term["message"], r#"{"version":1,"metrics":{"accuracy":0.93}}"#);

    // The API server reaches the node for `kubectl logs`.
    let name = pods[0].metadata.name.clone().unwrap();
    let out = env.kubectl(&["logs", &name], None);
    assert!(output_text(&out).contains("hello from the trainer"), "kubectl logs: {}", output_text(&out));
    // It never restarted: no previous run, and the kubelet's BadRequest says so.
    let out = env.kubectl(&["logs", &name, "--previous"], None);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains(r#"previous terminated container "trainer""#),
        "kubectl logs --previous: {}",
        output_text(&out)
    );
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn job_pod_exiting_3_is_counted_failed() {
    let env = TestEnv::start("node-job-fail").await;
    create(
        &env.api::<Job>(),
        json!({
            "metadata": {"name": "bad"},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "trainer", "image": "busybox",
                        "command": ["sh", "-c", "echo 'bad data: 12 rows missing the label' >&2; exit 3"],
                        "terminationMessagePolicy": "FallbackToLogsOnError"
                    }]
                }}
            }
        }),
    )
    .await;
    let job = testkit::wait_condition(&env.api::<Job>(), "bad", "Failed", "True", WAIT).await;
    assert_eq!(job.status.and_then(|s| s.failed), Some(1));
    let pods = pods_with(&env, "job-name=bad").await;
    let v = pod_json(&pods[0]);
    assert_eq!(v["status"]["phase"], "Failed");
    let term = &v["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 3);
    assert_eq!(term["reason"], "Error");
    assert_eq!(term["message"], "bad data: 12 rows missing the label");
}

fn container_pid(p: &Pod) -> Option<u32> {
    let id = pod_json(p)["status"]["containerStatuses"][0]["containerID"].as_str()?.to_owned();
    id.rsplit('/').next()?.parse().ok()
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would say "Z" in its stat.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) != Some("Z"))
        .unwrap_or(false)
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn deleting_a_pod_kills_its_processes_and_removes_it() {
    let env = TestEnv::start("node-delete").await;
    let pods = env.api::<Pod>();
    // One exits on SIGTERM; one ignores it and is killed after its grace period.
    create(
        &pods,
        json!({
            "metadata": {"name": "polite"},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                "command": ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.2; done"]}]}
        }),
    )
    .await;
    create(
        &pods,
        json!({
            "metadata": {"name": "stubborn"},
            "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "main", "image": "busybox",
                "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"]}]}
        }),
    )
    .await;
    let mut pids = Vec::new();
    for name in ["polite", "stubborn"] {
        let p = wait_for(&pods, name, WAIT, "running", |p| {
            pod_json(p)["status"]["containerStatuses"][0]["state"]["running"].is_object()
        })
        .await;
        let pid = container_pid(&p).expect("a pid in containerID");
        assert!(alive(pid), "process {pid} of {name} is running");
        pids.push((name, pid));
    }
    for (name, _) in &pids {
        pods.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    for (name, pid) in pids {
        wait_until(WAIT, &format!("pod {name} removed"), || async {
            pods.get_opt(name).await.ok().flatten().is_none().then_some(())
        })
        .await;
        assert!(!alive(pid), "process {pid} of {name} survived its pod");
    }
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn indexed_job_pods_find_each_other_through_a_headless_service() {
    let env = TestEnv::start("node-indexed").await;
    // Index 0 listens on MASTER_ADDR (rewritten from "<job>-0.<service>" to its pod IP by
    // the node); index 1 connects to it and says hello; index 0 reports what it heard.
    let script = r#"
import os, socket, time
idx = int(os.environ["JOB_COMPLETION_INDEX"])
addr = os.environ["MASTER_ADDR"]
if idx == 0:
    s = socket.socket()
    s.bind((addr, 29500))
    s.listen()
    c, _ = s.accept()
    msg = c.recv(100).decode()
    open(os.environ["MLOPS_TERMINATION_MESSAGE_PATH"], "w").write(msg + " at " + addr)
else:
    for _ in range(300):
        try:
            c = socket.create_connection((addr, 29500), timeout=1)
            c.sendall(b"hello from rank 1")
            break
        except OSError:
            time.sleep(0.2)
    else:
        raise SystemExit("rank 0 never answered at " + addr)
"#;
    create(
        &env.api::<Service>(),
        json!({
            "metadata": {"name": "workers"},
            "spec": {"clusterIP": "None", "selector": {"job-name": "dist"}, "ports": [{"port": 29500}]}
        }),
    )
    .await;
    create(
        &env.api::<Job>(),
        json!({
            "metadata": {"name": "dist"},
            "spec": {
                "completions": 2, "parallelism": 2, "completionMode": "Indexed", "backoffLimit": 0,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "subdomain": "workers",
                    "containers": [{
                        "name": "worker", "image": "python:3.12",
                        "command": ["python3", "-c", script],
                        "env": [{"name": "MASTER_ADDR", "value": "dist-0.workers"}]
                    }]
                }}
            }
        }),
    )
    .await;
    testkit::wait_condition(&env.api::<Job>(), "dist", "Complete", "True", WAIT).await;
    let pods = pods_with(&env, "job-name=dist").await;
    let rank0 = pods
        .iter()
        .map(pod_json)
        .find(|v| v["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0")
        .expect("rank 0 pod");
    let ip = rank0["status"]["podIP"].as_str().unwrap().to_owned();
    assert_eq!(
        rank0["status"]["containerStatuses"][0]["state"]["terminated"]["message"],
        format!("hello from rank 1 at {ip}")
    );
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn prometheus_scrapes_an_annotated_pod() {
    let env = TestEnv::start("node-prometheus").await;
    let url_file = repo_root().join(".dev/prometheus-url");
    let url = std::fs::read_to_string(&url_file).unwrap_or_else(|_| {
        panic!(
            "no {}: Prometheus is started by hack/cluster.sh up (or hack/prometheus.sh up)",
            url_file.display()
        )
    });
    let prom = url.trim().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let exporter = r##"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"# TYPE mlops_e2e_answer gauge\nmlops_e2e_answer 42\n"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 9100), H).serve_forever()
"##;
    create(
        &env.api::<Pod>(),
        json!({
            "metadata": {
                "name": "exporter",
                "labels": {"app": "exporter", "mlops.dev/role": "stable"},
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9100", "prometheus.io/path": "/metrics"}
            },
            "spec": {"containers": [{"name": "main", "image": "python:3.12", "command": ["python3", "-c", exporter]}]}
        }),
    )
    .await;
    let query = format!("mlops_e2e_answer%7Bnamespace%3D%22{}%22%7D", env.namespace);
    let result = wait_until(WAIT, "a scraped series in Prometheus", || async {
        let (code, body) = http_get(&prom, &format!("/api/v1/query?query={query}")).await?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let first = v["data"]["result"].as_array()?.first()?.clone();
        Some(first)
    })
    .await;
    assert_eq!(result["metric"]["pod"], "exporter");
    assert_eq!(result["metric"]["app"], "exporter");
    assert_eq!(result["metric"]["mlops_dev_role"], "stable");
    assert_eq!(result["value"][1], "42");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn unmapped_image_waits_with_an_image_pull_reason() {
    let env = TestEnv::start("node-unmapped").await;
    let pods = env.api::<Pod>();
    create(
        &pods,
        json!({
            "metadata": {"name": "nowhere"},
            "spec": {"containers": [{"name": "main", "image": "example.invalid/nothing:1"}]}
        }),
    )
    .await;
    let p = wait_for(&pods, "nowhere", WAIT, "an image-pull waiting reason", |p| {
        let reason = pod_json(p)["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
        reason == "ErrImagePull" || reason == "ImagePullBackOff"
    })
    .await;
    let v = pod_json(&p);
    assert_eq!(v["status"]["phase"], "Pending");
    let msg = v["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("example.invalid/nothing:1"), "{msg}");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn failing_liveness_probe_restarts_the_container() {
    let env = TestEnv::start("node-liveness").await;
    let pods = env.api::<Pod>();
    // Alive for about two seconds (the marker file exists), then the exec liveness probe
    // fails and the node restarts the container; a tcpSocket readiness probe gates Ready.
    let server = "import os, socket, time\n\
                  open('alive', 'w').close()\n\
                  s = socket.socket(); s.bind((os.environ['POD_IP'], 7000)); s.listen()\n\
                  time.sleep(2)\n\
                  os.remove('alive')\n\
                  time.sleep(1000)\n";
    create(
        &pods,
        json!({
            "metadata": {"name": "flaky"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": "python:3.12", "command": ["python3", "-c", server],
                "readinessProbe": {"tcpSocket": {"port": 7000}, "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": ["test", "-f", "alive"]}, "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 1}
            }]}
        }),
    )
    .await;
    wait_for(&pods, "flaky", WAIT, "Ready through the tcpSocket probe", |p| {
        testkit::condition_status(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let p = wait_for(&pods, "flaky", WAIT, "a restart after the liveness probe failed", |p| {
        pod_json(p)["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0) >= 1
    })
    .await;
    let last = &pod_json(&p)["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 143, "killed by SIGTERM: {last}");
}

#[tokio::test]
#[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
async fn environment_comes_from_config_maps_secrets_and_field_refs() {
    let env = TestEnv::start("node-env").await;
    let _: k8s_openapi::api::core::v1::ConfigMap =
        create(&env.api(), json!({"metadata": {"name": "settings"}, "data": {"mode": "fast"}})).await;
    let _: k8s_openapi::api::core::v1::Secret =
        create(&env.api(), json!({"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})).await;
    let pods = env.api::<Pod>();
    create(
        &pods,
        json!({
            "metadata": {"name": "envpod"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", "printf '%s|%s|%s|%s|%s|%s' \"$MODE\" \"$TOKEN\" \"$NAME\" \"$NS\" \"$IP\" \"$URL\" > \"$MLOPS_TERMINATION_MESSAGE_PATH\""],
                "env": [
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "URL", "value": "http://$(IP):8080"}
                ]
            }]}
        }),
    )
    .await;
    let p =
        wait_for(&pods, "envpod", WAIT, "Succeeded", |p| pod_json(p)["status"]["phase"] == "Succeeded").await;
    let v = pod_json(&p);
    let ip = v["status"]["podIP"].as_str().unwrap();
    assert_eq!(
        v["status"]["containerStatuses"][0]["state"]["terminated"]["message"],
        format!("fast|s3cret|envpod|{}|{ip}|http://{ip}:8080", env.namespace)
    );
}
