//! End-to-end test harness for the local cluster (`make cluster-up`).
//!
//! Every end-to-end test starts with [`TestEnv::start`]: it connects through
//! `KUBECONFIG` or the repository's `.dev/kubeconfig`, creates a namespace of its own and
//! deletes it when the test ends. When no cluster answers, it panics with how to start one:
//! a test never returns early and counts as passed without having run.
//!
//! So that a plain `cargo test` stays green and honest on a machine without a cluster,
//! every end-to-end test is ignored by default, always with this text:
//!
//! ```text
//! #[ignore = "end-to-end: needs the local cluster (make cluster-up); make test runs it"]
//! ```
//!
//! and a test that needs only the pinned tools (helm, promtool; [`tool`]) with
//! `#[ignore = "needs the pinned tools (make tools); make test runs it"]`. The runner's
//! summary then counts them as ignored, never as passed. `make test` (hack/test.sh) runs
//! them all with `--include-ignored`, except the benchmarks (`bench_*`, bench/).
//!
//! Waits are bounded and name what they waited for: [`wait_until`], [`wait_for`],
//! [`wait_condition`], [`TestEnv::wait_event`], and on the operator
//! [`Operator::wait_pass`] / [`Operator::wait_idle`], which replace "sleep, then assert
//! that nothing happened" with proof that the operator looked at the change.

use std::{
    fmt::Debug,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    events::v1::Event,
};
use kube::{
    Api, Client, Config, Resource,
    api::{DeleteParams, ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::de::DeserializeOwned;

mod api_proxy;
mod operator;
mod s3;

pub use api_proxy::ApiProxy;
pub use operator::Operator;
pub use s3::S3Server;

/// The repository root (this crate lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit has a parent").to_path_buf()
}

/// The kubeconfig the tests use: `KUBECONFIG` when set, else `.dev/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".dev/kubeconfig"))
}

const HOW_TO_START: &str = "no local cluster is reachable: start one with `make cluster-up` \
     (or run everything with `make test`)";

/// One test's view of the cluster: a client and a namespace that is deleted on drop.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    config: Config,
}

impl TestEnv {
    /// Connects and creates a fresh namespace named after the test; panics with how to
    /// start a cluster when none answers (the test is then a failure, never a pass).
    pub async fn start(test_name: &str) -> TestEnv {
        // Pod Security Admission at `restricted`, enforced: every pod the operator creates
        // for a test must pass the policy a careful platform team sets.
        TestEnv::start_with_pod_security(test_name, "restricted").await
    }

    /// [`TestEnv::start`] with the namespace's Pod Security Admission enforcing `level`
    /// (`restricted`, `baseline` or `privileged`), for a test of what a laxer namespace
    /// may run (a root trainer under `baseline`).
    pub async fn start_with_pod_security(test_name: &str, level: &str) -> TestEnv {
        let config =
            connect_config().await.unwrap_or_else(|why| panic!("{test_name}: {HOW_TO_START} ({why})"));
        let client = Client::try_from(config.clone()).expect("client from a valid config");
        let namespace = unique_name(test_name);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {
                "mlops.dev/e2e": "true",
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {namespace}: {e}"));
        // Pods need the namespace's default ServiceAccount, which the controller-manager adds.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &namespace);
        wait_until(Duration::from_secs(30), "the default ServiceAccount", || async {
            sa.get_opt("default").await.ok().flatten().map(|_| ())
        })
        .await;
        let env = TestEnv { client, namespace, config };
        env.create_work_claim().await;
        env
    }

    /// The claim `work` of every test namespace: a hostPath PersistentVolume on the local
    /// node over [`TestEnv::work_dir`], so what a pod writes at `pvc://work/<path>` the test
    /// reads on the host, and what the test puts there a pod reads (the real node shares no
    /// other folder with the host). Bound ahead (claimRef + volumeName): no provisioner.
    async fn create_work_claim(&self) {
        use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
        let dir = self.work_dir();
        std::fs::create_dir_all(&dir).expect("the test's work folder");
        // Pods run as non-root users of their own choosing; the folder is the test's alone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod work folder");
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": self.work_volume(), "labels": {"mlops.dev/e2e": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                "hostPath": {"path": dir.display().to_string(), "type": "Directory"},
                "claimRef": {"namespace": self.namespace, "name": WORK_CLAIM},
            }
        }))
        .expect("PersistentVolume object");
        Api::<PersistentVolume>::all(self.client.clone())
            .create(&PostParams::default(), &pv)
            .await
            .unwrap_or_else(|e| panic!("creating PersistentVolume {}: {e}", self.work_volume()));
        let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": WORK_CLAIM},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": self.work_volume(),
                     "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .expect("PersistentVolumeClaim object");
        self.api::<PersistentVolumeClaim>()
            .create(&PostParams::default(), &pvc)
            .await
            .unwrap_or_else(|e| panic!("creating PersistentVolumeClaim {WORK_CLAIM}: {e}"));
        // A pod of an unbound claim waits for the scheduler's next retry: start bound.
        let claims = self.api::<PersistentVolumeClaim>();
        wait_until(Duration::from_secs(30), "the claim `work` to be Bound", || async {
            let pvc = claims.get_opt(WORK_CLAIM).await.ok()??;
            (pvc.status?.phase.as_deref() == Some("Bound")).then_some(())
        })
        .await;
    }

    fn work_volume(&self) -> String {
        format!("mlops-e2e-{}", self.namespace)
    }

    /// The host folder behind the claim `work` (`/tmp/mlops-e2e/<namespace>`).
    pub fn work_dir(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/mlops-e2e/{}", self.namespace))
    }

    /// `pvc://work/<path>`: `path` below [`TestEnv::work_dir`] as pods address it.
    pub fn work_uri(&self, path: &str) -> String {
        format!("pvc://{WORK_CLAIM}/{}", path.trim_start_matches('/'))
    }

    /// A namespaced API in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Runs kubectl against the test cluster (in the test's namespace unless `-n` is given).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        kubectl_in(Some(&self.namespace), args, stdin)
    }

    /// `kubectl patch <resource> <name> --type merge -p <patch>` in the test's namespace;
    /// panics with kubectl's output when refused.
    pub fn merge_patch(&self, resource: &str, name: &str, patch: &serde_json::Value) {
        let out = self.kubectl(&["patch", resource, name, "--type", "merge", "-p", &patch.to_string()], None);
        assert!(out.status.success(), "kubectl patch {resource} {name}: {}", output_text(&out));
    }

    /// Waits until an Event with `reason` whose note contains `text` exists in the test's
    /// namespace and returns it. Events are written after the status they report, so a
    /// test that has seen the status must still wait for its Event. The panic on timeout
    /// lists the Events that were there.
    pub async fn wait_event(&self, reason: &str, text: &str, timeout: Duration) -> Event {
        let events: Api<Event> = self.api();
        let start = Instant::now();
        loop {
            let seen = events.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
            if let Some(e) = seen.iter().find(|e| {
                e.reason.as_deref() == Some(reason) && e.note.as_deref().unwrap_or("").contains(text)
            }) {
                return e.clone();
            }
            if start.elapsed() > timeout {
                let shown: Vec<String> = seen
                    .iter()
                    .map(|e| {
                        format!("{}: {}", e.reason.as_deref().unwrap_or(""), e.note.as_deref().unwrap_or(""))
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for an Event {reason} saying {text:?}; Events:\n{}",
                    shown.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `clusterIP:port` of Service `name`'s first port, once the Service exists. The host
    /// reaches ClusterIPs as pods do (kube-proxy on the local node); callers wait for an
    /// answer, since kube-proxy programs a new Service within a moment.
    pub async fn service_address(&self, name: &str) -> String {
        let services: Api<Service> = self.api();
        let svc = wait_for(&services, name, Duration::from_secs(60), "a ClusterIP and a port", |s| {
            s.spec.as_ref().is_some_and(|sp| {
                sp.cluster_ip.as_deref().is_some_and(|ip| ip != "None")
                    && sp.ports.as_ref().is_some_and(|p| !p.is_empty())
            })
        })
        .await;
        service_socket(&svc).expect("checked above").to_string()
    }

    /// Annotates object `resource/name` (a kubectl resource, e.g. `isvc/web`) with a new
    /// value, which wakes its controller (they watch every change): with
    /// [`Operator::wait_pass`] it makes sure the operator has looked at the object as it
    /// is now.
    pub fn poke(&self, resource: &str) {
        let value = unique_name("poke");
        let out = self
            .kubectl(&["annotate", "--overwrite", resource, &format!("e2e.mlops.dev/poke={value}")], None);
        assert!(out.status.success(), "annotating {resource}: {}", output_text(&out));
    }
}

/// Writes `bytes` at `rel` below test namespace `ns`'s work folder (see
/// [`TestEnv::work_dir`]), readable by any pod user; returns its `pvc://work/<rel>` URI.
pub fn put_work_file(ns: &str, rel: &str, bytes: &[u8]) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = PathBuf::from(format!("/tmp/mlops-e2e/{ns}/{rel}"));
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("work subfolder");
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    format!("pvc://{WORK_CLAIM}/{rel}")
}

/// The iris CSV of `runtime/testdata`, copied into test namespace `ns`'s work folder;
/// returns `pvc://work/iris.csv`.
pub fn work_iris(ns: &str) -> String {
    let bytes =
        std::fs::read(repo_root().join("runtime/testdata/iris.csv")).expect("runtime/testdata/iris.csv");
    put_work_file(ns, "iris.csv", &bytes)
}

/// The claim every test namespace has (see [`TestEnv::work_dir`]).
pub const WORK_CLAIM: &str = "work";

/// `clusterIP:port` of a Service's first port.
pub fn service_socket(svc: &Service) -> Option<std::net::SocketAddr> {
    let spec = svc.spec.as_ref()?;
    let ip: std::net::IpAddr = spec.cluster_ip.as_deref()?.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, u16::try_from(spec.ports.as_ref()?.first()?.port).ok()?))
}

/// The local node's address (the bridge the API server listens on), where pods reach
/// servers a test starts on the host, such as [`S3Server`].
pub fn node_ip() -> std::net::IpAddr {
    let text = std::fs::read_to_string(kubeconfig_path()).expect("the kubeconfig");
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server: https://")).expect("a server line");
    let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
    host.parse().unwrap_or_else(|e| panic!("the API server address {host:?} is not an IP: {e}"))
}

/// True for addresses that stay on this machine: loopback, and the local cluster's
/// private ranges (Services 10.0.0.0/24, the node's bridge and pods 10.244.0.0/16).
pub fn is_local_cluster_address(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback() || (o[0] == 10 && o[1] == 0 && o[2] == 0) || (o[0] == 10 && o[1] == 244)
        }
        std::net::IpAddr::V6(v6) => v6.is_loopback(),
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down: delete from a
        // thread with a runtime and a client of its own. Tests never wait for the namespace
        // to finish terminating; the namespace controller does that.
        let config = self.config.clone();
        let ns = self.namespace.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let client = Client::try_from(config)?;
                Api::<Namespace>::all(client).delete(&ns, &DeleteParams::background()).await?;
                anyhow::Ok(())
            })
        });
        if let Ok(Err(e)) = done.join() {
            eprintln!("warning: deleting test namespace {}: {e}", self.namespace);
        }
        // The test's operator has stopped by now (it is declared after the TestEnv), so
        // nobody will lift the ModelVersions' deletion protection: lift it here, or the
        // namespace would stay Terminating forever. The work volume goes too (its folder
        // stays for a post-mortem, below /tmp).
        kubectl_in(None, &["delete", "pv", &self.work_volume(), "--wait=false", "--ignore-not-found"], None);
        let listed = kubectl_in(Some(&self.namespace), &["get", "modelversions", "-o", "name"], None);
        for mv in String::from_utf8_lossy(&listed.stdout).lines().filter(|l| !l.is_empty()) {
            kubectl_in(
                Some(&self.namespace),
                &["patch", mv, "--type", "merge", "-p", r#"{"metadata":{"finalizers":null}}"#],
                None,
            );
        }
    }
}

async fn connect_config() -> anyhow::Result<Config> {
    let path = kubeconfig_path();
    let kc = Kubeconfig::read_from(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config.clone())?;
    tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
        .await
        .map_err(|_| anyhow::anyhow!("API server at {} did not answer in 5 s", config.cluster_url))??;
    Ok(config)
}

/// A DNS-1123 name from the test name plus a short random suffix.
pub fn unique_name(prefix: &str) -> String {
    let clean: String =
        prefix.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let clean = clean.trim_matches('-');
    let clean = &clean[..clean.len().min(40)];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or(0);
    format!("{}-{:06x}", clean.trim_end_matches('-'), nanos & 0xff_ffff)
}

/// Polls `probe` every 200 ms until it returns `Some`, and panics naming `what` after
/// `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until object `name` satisfies `pred`; on timeout the panic message names what was
/// awaited and shows the object's last observed state.
pub async fn wait_for<K, P>(api: &Api<K>, name: &str, timeout: Duration, what: &str, pred: P) -> K
where
    K: Clone + DeserializeOwned + Debug + serde::Serialize,
    P: Fn(&K) -> bool,
{
    let start = Instant::now();
    let mut last: Option<K> = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(obj)) if pred(&obj) => return obj,
            Ok(obj) => last = obj,
            Err(e) => eprintln!("wait_for {name}: {e}"),
        }
        if start.elapsed() > timeout {
            let shown = last.map(|o| serde_yaml_like(&o)).unwrap_or_else(|| "<object not found>".into());
            panic!("timed out after {timeout:?} waiting for {name}: {what}\nlast seen:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the object's `status.conditions` has `type` with `status`.
pub async fn wait_condition<K>(api: &Api<K>, name: &str, type_: &str, status: &str, timeout: Duration) -> K
where
    K: Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let what = format!("condition {type_}={status}");
    wait_for(api, name, timeout, &what, |o| condition_status(o, type_).as_deref() == Some(status)).await
}

/// The status of condition `type_` in any object's `status.conditions`.
pub fn condition_status<K: serde::Serialize>(obj: &K, type_: &str) -> Option<String> {
    let v = serde_json::to_value(obj).ok()?;
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some(type_))
        .and_then(|c| c.get("status")?.as_str().map(str::to_owned))
}

fn serde_yaml_like<K: serde::Serialize>(obj: &K) -> String {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("managedFields");
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Runs kubectl with the test kubeconfig; `namespace` is passed as `-n` when given.
pub fn kubectl_in(namespace: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig_path());
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("kubectl is installed and on PATH");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("kubectl ran")
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Installs (server-side applies) the project's CRDs from `crds/` and waits until they are
/// established. Idempotent: every test that needs them calls it.
pub fn install_crds() {
    let crds = repo_root().join("crds/mlops.dev.yaml");
    let path = crds.to_string_lossy().to_string();
    let out = kubectl_in(None, &["apply", "--server-side", "--force-conflicts", "-f", &path], None);
    assert!(out.status.success(), "installing the CRDs: {}", output_text(&out));
    let out = kubectl_in(
        None,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/trainingjobs.mlops.dev",
            "crd/modelversions.mlops.dev",
            "crd/inferenceservices.mlops.dev",
        ],
        None,
    );
    assert!(out.status.success(), "waiting for the CRDs: {}", output_text(&out));
}

/// The message a fixture expects, from its first line `# expect: <text>`.
pub fn fixture_expectation(text: &str) -> Option<&str> {
    text.lines().next()?.strip_prefix("# expect:").map(str::trim)
}

/// The local cluster's Prometheus URL, from `.dev/prometheus-url` (written by
/// hack/prometheus.sh), or `MLOPS_PROMETHEUS_URL`.
pub fn prometheus_url() -> Option<String> {
    std::env::var("MLOPS_PROMETHEUS_URL").ok().or_else(|| {
        std::fs::read_to_string(repo_root().join(".dev/prometheus-url")).ok().map(|s| s.trim().to_string())
    })
}

/// A plain HTTP/1.1 GET on loopback; the body, or `None` on any failure or non-200.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// One HTTP/1.1 POST of a JSON body over a fresh loopback connection (so replica-weighted
/// routing spreads requests): the status code and body, or `None` on a transport failure.
pub fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    assert!(is_local_cluster_address(addr.ip()), "tests only talk to this machine: {addr}");
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_string()))
}

/// Trains the iris logistic regression once with the reference trainer
/// (`target/debug/mlops-runtime`, built by `make test`) into the work folder of test
/// namespace `dir` (`/tmp/mlops-e2e/<dir>/model.json`); returns the artifact URI as pods
/// address it, `pvc://work/model.json`.
pub fn train_iris(dir: &str) -> String {
    let dir = PathBuf::from(format!("/tmp/mlops-e2e/{dir}"));
    std::fs::create_dir_all(&dir).expect("model dir");
    let artifact = dir.join("model.json");
    let out = Command::new(repo_root().join("target/debug/mlops-runtime"))
        .arg("train")
        .env("MLOPS_MODEL_NAME", "iris")
        .env("MLOPS_RUN_ID", "e2e")
        .env("MLOPS_DATASET_URI", repo_root().join("runtime/testdata/iris.csv"))
        .env("MLOPS_LABEL_COLUMN", "species")
        .env("MLOPS_OUTPUT_URI", format!("file://{}", artifact.display()))
        .env("MLOPS_TERMINATION_MESSAGE_PATH", dir.join("result.json"))
        .output()
        .expect("running mlops-runtime train (cargo build -p mlops-runtime)");
    assert!(out.status.success(), "training: {}", output_text(&out));
    format!("pvc://{WORK_CLAIM}/model.json")
}

/// Where `hack/build-tools.sh` puts the tools it builds.
pub fn tools_bin() -> PathBuf {
    let cache = std::env::var_os("MLOPS_TOOLS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/mlops-operator")
    });
    cache.join("bin")
}

/// A tool a test needs, from PATH (hack/test.sh puts the tools cache there) or the tools
/// cache; panics with `hint` when it is in neither.
pub fn tool(name: &str, hint: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    let cached = tools_bin().join(name);
    on_path
        .or_else(|| cached.is_file().then_some(cached))
        .unwrap_or_else(|| panic!("{name} is not on PATH nor in the tools cache: {hint}"))
}
