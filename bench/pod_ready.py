"""Pod create -> Ready on the local node (kubelet + containerd), timed from the client.

Creates pods one after another in a namespace of its own (Pod Security `restricted`
enforced), each a small HTTP server (the python image) with an httpGet readiness probe,
and times from the create request to the watch event that shows Ready=True; then the same
number at once. Prints the figures; deletes the namespace. Used by bench/pod-ready.sh.
"""
import base64
import json
import os
import ssl
import statistics
import tempfile
import threading
import time
import urllib.request

RUNS = int(os.environ.get("BENCH_RUNS", "10"))


class Api:
    """The API server of the local cluster's kubeconfig (written by hack/cluster.sh: one
    cluster, one user, certificates inline), over HTTPS with the client certificate."""

    def __init__(self, path):
        fields = {}
        for line in open(path):
            key, _, value = line.strip().partition(": ")
            fields.setdefault(key, value)
        self.server = fields["server"]
        self.dir = tempfile.mkdtemp(prefix="pod-ready-")
        files = {}
        for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            files[key] = os.path.join(self.dir, key)
            with open(files[key], "wb") as f:
                f.write(base64.b64decode(fields[key]))
        self.ctx = ssl.create_default_context(cafile=files["certificate-authority-data"])
        self.ctx.load_cert_chain(files["client-certificate-data"], files["client-key-data"])

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
            return json.load(r)

    def stream(self, path):
        with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=130) as r:
            for line in r:
                yield json.loads(line)


def pod(name):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "web", "image": "docker.io/library/python:3.11",
                                     "command": ["python3", "-m", "http.server", "8080"],
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "readOnlyRootFilesystem": True,
                                                         "capabilities": {"drop": ["ALL"]}},
                                     "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                        "periodSeconds": 1}}]}}


def ready(p):
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in p.get("status", {}).get("conditions", []) or [])


def create_and_wait(api, ns, name):
    t0 = time.monotonic()
    api.request("POST", f"/api/v1/namespaces/{ns}/pods", pod(name))
    path = f"/api/v1/namespaces/{ns}/pods?watch=1&fieldSelector=metadata.name%3D{name}&timeoutSeconds=120"
    for event in api.stream(path):
        if ready(event["object"]):
            return time.monotonic() - t0
    raise SystemExit(f"pod {name} was not Ready within 120 s")


def main():
    api = Api(os.environ.get("KUBECONFIG", ".dev/kubeconfig"))
    ns = f"bench-pod-ready-{int(time.time()) % 100000}"
    api.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    try:
        for _ in range(100):  # the namespace's default ServiceAccount comes from a controller
            try:
                api.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")
                break
            except urllib.error.HTTPError:
                time.sleep(0.1)
        one = [create_and_wait(api, ns, f"one-{i}") for i in range(RUNS)]
        times = {}
        threads = [threading.Thread(target=lambda i=i: times.__setitem__(i, create_and_wait(api, ns, f"many-{i}")))
                   for i in range(RUNS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        all_ready = time.monotonic() - t0
        q = statistics.quantiles(one, n=10)
        print(f"pod create -> Ready, {RUNS} one after another: median {statistics.median(one):.2f} s, "
              f"p90 {q[-1]:.2f} s, min {min(one):.2f} s, max {max(one):.2f} s")
        print(f"{RUNS} pods created at once: all Ready after {all_ready:.2f} s")
    finally:
        api.request("DELETE", f"/api/v1/namespaces/{ns}")


if __name__ == "__main__":
    main()
