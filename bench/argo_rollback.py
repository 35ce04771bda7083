"""The rollback benchmark of bench/rollback.sh, run against Argo Rollouts' controller
(built from its Go module by bench/argo-rollback.sh) on the same local cluster, node,
Prometheus, servers, load and intervals, so the two can be compared side by side.

A Rollout of 4 replicas serves iris (mlops-runtime serve); each run changes its pod
template to a version whose server fails every request (test-only fault injection), which
Argo canaries at 25 % (basic canary: by replica count, like our replica routing) with a
background AnalysisTemplate querying the same Prometheus every interval with the same
error-ratio query, failureLimit 0. Measured per run: the first 5xx the load generator sees
(onset), the last 5xx, and the Rollout showing the abort complete (canary scaled away,
stable available), polled every 100 ms.

The pods are those of our own runtime preset on the real node: the runtime image, the
restricted security context the operator gives its pods (the namespace enforces the
restricted Pod Security Standard, like the tests'), and the model read from the claim
`work`, a hostPath PersistentVolume over /tmp/mlops-e2e/<namespace> bound ahead as testkit
binds it. The load generator talks to the Service's ClusterIP (kube-proxy on the node).
"""

import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
KUBECONFIG = str(ROOT / ".dev/kubeconfig")
# The operator's serving pods (src/controllers/inference_service/desired.rs, pod_security.rs).
IMAGE = "ghcr.io/mlops-dev/mlops-runtime:0.1.0"
RUNTIME_USER = 65532
MODEL_MOUNT = "/mnt/mlops/model"
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]})


def kubectl(*args, stdin=None, check=True):
    r = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, *args], input=stdin, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {r.stderr}")
    return r.stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def post(addr):
    host, port = addr.split(":")
    try:
        s = socket.create_connection((host, int(port)), timeout=2)
        s.settimeout(3)
        s.sendall((f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n{BODY}").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        return int(data.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return 0


class Load:
    """~100 requests/s on fresh connections, each recorded as (time, status)."""

    def __init__(self, addr):
        self.addr, self.hits, self.stop = addr, [], False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        end = time.monotonic() + 1800
        while not self.stop and time.monotonic() < end:
            t = time.monotonic()
            self.hits.append((t, post(self.addr)))
            time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))

    def since(self, t):
        return [h for h in list(self.hits) if h[0] >= t]


def work_claim(ns):
    """The claim `work` of namespace `ns`, as testkit's TestEnv creates it: a hostPath
    PersistentVolume over /tmp/mlops-e2e/<ns> (mode 0777: pods run as their own users),
    bound ahead (claimRef + volumeName), no provisioner. Returns the folder."""
    workdir = pathlib.Path(f"/tmp/mlops-e2e/{ns}")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o777)
    pv = {"apiVersion": "v1", "kind": "PersistentVolume",
          "metadata": {"name": work_volume(ns), "labels": {"mlops.dev/e2e": "true"}},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                   "hostPath": {"path": str(workdir), "type": "Directory"},
                   "claimRef": {"namespace": ns, "name": "work"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "work", "namespace": ns},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": work_volume(ns),
                    "resources": {"requests": {"storage": "1Gi"}}}}
    kubectl("create", "-f", "-", stdin=json.dumps(pv))
    kubectl("create", "-f", "-", stdin=json.dumps(pvc))
    deadline = time.monotonic() + 30
    while kubectl("-n", ns, "get", "pvc", "work", "-o", "jsonpath={.status.phase}") != "Bound":
        if time.monotonic() > deadline:
            sys.exit(f"the claim work in {ns} never became Bound")
        time.sleep(0.2)
    return workdir


def work_volume(ns):
    return f"mlops-e2e-{ns}"


def rollout(ns, name, version, fault, interval, model_uri, prom):
    env = [{"name": "MLOPS_MODEL_NAME", "value": "iris"}, {"name": "MLOPS_MODEL_VERSION", "value": version},
           {"name": "MLOPS_MODEL_URI", "value": model_uri}, {"name": "MLOPS_HTTP_PORT", "value": "8080"},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "HOME", "value": "/home/mlops"}]
    if fault:
        env.append({"name": "MLOPS_FAULT_ERROR_RATE", "value": "1"})
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 4, "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name},
                             "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                                             "prometheus.io/path": "/metrics"}},
                # What the operator gives its MlopsRuntime pods: restricted, read-only root,
                # emptyDirs for /tmp and HOME, the model's claim mounted read-only.
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUNTIME_USER,
                                        "runAsGroup": RUNTIME_USER, "fsGroup": RUNTIME_USER,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "server", "image": IMAGE, "args": ["serve"],
                        "env": env, "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080},
                                           "periodSeconds": 2, "failureThreshold": 3},
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True},
                        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
                                         {"name": "mlops-tmp", "mountPath": "/tmp"},
                                         {"name": "mlops-home", "mountPath": "/home/mlops"}]}],
                    "volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": "work", "readOnly": True}},
                                {"name": "mlops-tmp", "emptyDir": {}}, {"name": "mlops-home", "emptyDir": {}}]}},
            "strategy": {"canary": {
                "steps": [{"setWeight": 25}, {"pause": {"duration": "120s"}}],
                "analysis": {"templates": [{"templateName": "error-rate"}], "startingStep": 0,
                             "args": [{"name": "version", "value": version}]}}}}}


def template(ns, interval, prom):
    q = (f'sum(mlops_requests_total{{namespace="{ns}",model_version="{{{{args.version}}}}",code=~"5.."}}) / '
         f'sum(mlops_requests_total{{namespace="{ns}",model_version="{{{{args.version}}}}"}})')
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "error-rate", "namespace": ns},
            "spec": {"args": [{"name": "version"}], "metrics": [{
                "name": "error-rate", "interval": f"{interval}s", "failureLimit": 0,
                # An empty result (no 5xx series yet) passes, as onNoData: Wait lets a step wait.
                "successCondition": "len(result) == 0 || result[0] <= 0.05",
                "provider": {"prometheus": {"address": prom, "query": q}}}]}}


def main():
    runs = int(os.environ.get("BENCH_RUNS", "10"))
    interval = int(os.environ.get("BENCH_INTERVAL_SECONDS", "2"))
    controller = sys.argv[1]
    prom = (ROOT / ".dev/prometheus-url").read_text().strip()
    ns = f"argo-bench-{int(time.time()) % 100000}"
    # Pod Security Admission at restricted, enforced, as in the tests' namespaces.
    kubectl("create", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
            "mlops.dev/e2e": "true", "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}}}))
    try:
        bench(ns, controller, runs, interval, prom)
    finally:
        # The volume goes with the namespace (its folder stays below /tmp for a post-mortem).
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        kubectl("delete", "pv", work_volume(ns), "--wait=false", "--ignore-not-found", check=False)


def bench(ns, controller, runs, interval, prom):
    workdir = work_claim(ns)
    subprocess.run([str(ROOT / "target/debug/mlops-runtime"), "train"], check=True, capture_output=True, env={
        **os.environ, "MLOPS_DATASET_URI": str(ROOT / "runtime/testdata/iris.csv"), "MLOPS_LABEL_COLUMN": "species",
        "MLOPS_OUTPUT_URI": f"file://{workdir}/model.json", "MLOPS_TERMINATION_MESSAGE_PATH": str(workdir / "r.json")})
    # The pods read it from the claim, mounted where the operator mounts a pvc:// artifact.
    model_uri = f"file://{MODEL_MOUNT}/model.json"
    log = open(workdir / "controller.log", "w")
    ctl = subprocess.Popen([controller, "--kubeconfig", KUBECONFIG, "--namespaced", "-n", ns,
                            "--leader-elect=false", "--healthzPort", str(free_port()),
                            "--metricsport", str(free_port())], stdout=log, stderr=subprocess.STDOUT)
    try:
        kubectl("apply", "-f", "-", stdin=json.dumps(template(ns, interval, prom)))
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}
        kubectl("apply", "-f", "-", stdin=json.dumps(svc))
        kubectl("apply", "-f", "-", stdin=json.dumps(rollout(ns, "web", "v1", False, interval, model_uri, prom)))
        addr = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            st = json.loads(kubectl("-n", ns, "get", "rollout", "web", "-o", "json"))
            # The host reaches the Service at its ClusterIP (kube-proxy on the local node).
            spec = json.loads(kubectl("-n", ns, "get", "svc", "web", "-o", "json"))["spec"]
            if spec.get("clusterIP") not in (None, "", "None") and spec.get("ports"):
                addr = f"{spec['clusterIP']}:{spec['ports'][0]['port']}"
            if st.get("status", {}).get("availableReplicas") == 4 and addr:
                break
            time.sleep(0.5)
        else:
            sys.exit(f"the Rollout never became available; see {workdir}/controller.log")
        load = Load(addr)
        time.sleep(3)
        floor = 2 + interval
        results = []
        early = 0
        for run in range(1, runs + 1):
            version = f"bad-{run}"
            t0 = time.monotonic()
            kubectl("apply", "-f", "-", stdin=json.dumps(rollout(ns, "web", version, True, interval, model_uri, prom)))
            onset = None
            complete = None
            aborted_at = None
            deadline = time.monotonic() + 300
            while complete is None:
                if onset is None:
                    bad = [h for h in load.since(t0) if h[1] >= 500]
                    onset = bad[0][0] if bad else None
                st = json.loads(kubectl("-n", ns, "get", "rollout", "web", "-o", "json")).get("status", {})
                if st.get("abort") and aborted_at is None:
                    aborted_at = time.monotonic()
                # Argo can judge the canary's still-empty result as failed and abort before any
                # request reached it: no onset to time from. Counted apart, not as a result.
                if onset is None and aborted_at is not None and time.monotonic() - aborted_at > 5:
                    break
                canary_rs = st.get("currentPodHash") != st.get("stableRS")
                if st.get("abort") and onset is not None and st.get("availableReplicas", 0) >= 4 \
                        and not [p for p in json.loads(kubectl("-n", ns, "get", "pods", "-l",
                                 f"rollouts-pod-template-hash={st.get('currentPodHash')}", "-o", "json"))["items"]
                                 if canary_rs and p["status"].get("phase") == "Running"]:
                    complete = time.monotonic()
                if time.monotonic() > deadline:
                    sys.exit(f"run {run}: no abort; status {json.dumps(st)[:800]}")
                time.sleep(0.1)
            if complete is None:
                early += 1
                print(f"run {run:2}: aborted before any request reached the canary "
                      "(an empty result judged as a failure); not timed", flush=True)
            else:
                time.sleep(3)
                hits = load.since(onset)
                last = max(h[0] for h in hits if h[1] >= 500)
                total = max(complete, last) - onset
                print(f"run {run:2}: last 5xx {last - onset:5.2f} s, abort complete {total:5.2f} s after onset "
                      f"({total / floor:.2f}x floor); {sum(1 for h in hits if h[1] >= 500)} errors", flush=True)
                results.append((last - onset, total))
            # Back to the stable template (Argo's fast rollback to the stable ReplicaSet), and
            # clear the abort as `kubectl argo rollouts retry` does.
            kubectl("apply", "-f", "-", stdin=json.dumps(rollout(ns, "web", "v1", False, interval, model_uri, prom)))
            kubectl("-n", ns, "patch", "rollout", "web", "--subresource=status", "--type", "merge",
                    "-p", '{"status":{"abort":false}}')
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                st = json.loads(kubectl("-n", ns, "get", "rollout", "web", "-o", "json")).get("status", {})
                if not st.get("abort") and st.get("phase") == "Healthy":
                    break
                time.sleep(0.5)
            time.sleep(2)
        load.stop = True

        def pick(v, q):
            v = sorted(v)
            return v[max(1, min(len(v), -(-int(q * len(v) * 1000) // 1000))) - 1]

        a = [r[0] for r in results]
        b = [r[1] for r in results]
        print(f"floor = scrape interval 2 s + analysis interval {interval} s = {floor} s")
        print(f"Argo Rollouts: {len(results)} timed runs, {early} aborted before the canary served")
        print(f"Argo Rollouts: fault onset -> last 5xx:       median {statistics.median(a):.2f} s "
              f"({statistics.median(a) / floor:.2f}x floor), p90 {pick(a, 0.9):.2f} s ({pick(a, 0.9) / floor:.2f}x)")
        print(f"Argo Rollouts: fault onset -> abort complete: median {statistics.median(b):.2f} s "
              f"({statistics.median(b) / floor:.2f}x floor), p90 {pick(b, 0.9):.2f} s ({pick(b, 0.9) / floor:.2f}x)")
    finally:
        ctl.terminate()
        ctl.wait(timeout=20)


if __name__ == "__main__":
    main()
