#!/usr/bin/env bash
# Pod create -> Ready on the local node (kubelet, containerd, runc), timed from the client:
# BENCH_RUNS pods one after another, then as many at once (bench/pod_ready.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[[ -f .dev/kubeconfig ]] || { echo "no local cluster: make cluster-up" >&2; exit 1; }
export KUBECONFIG=$root/.dev/kubeconfig
exec python3 bench/pod_ready.py
