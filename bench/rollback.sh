#!/usr/bin/env bash
# Rollback benchmark (issue 6 item 8): on the local cluster (make cluster-up, with its
# Prometheus), an InferenceService of 4 replicas serves iris-v1 under ~100 requests/s of real
# inference traffic sent from the host to its Service's ClusterIP (kube-proxy on the local
# node balances the connections over the pods); each run imports a new version whose
# server answers 500 to every inference request (test-only fault injection), which becomes
# the canary at 25 % (one pod). It measures, per run:
#   - fault onset: the first 5xx the load generator sees (the canary's first request);
#   - last 5xx seen: when traffic stopped reaching the bad version;
#   - rollback complete: the InferenceService status shows the rollback done (no canary,
#     stable iris-v1 Ready), polled every 100 ms;
# and prints each run, the median and the p90 beside the floor
# (Prometheus scrape interval 2 s + analysis interval), first with the default analysis,
# then with analysis.waitForFirstScrape (BENCH_GATE=off|on runs one of them).
#
#   bench/rollback.sh                 # 10 runs, intervalSeconds 2
#   BENCH_RUNS=20 BENCH_INTERVAL_SECONDS=1 bench/rollback.sh
#   BENCH_QUERY=rate bench/rollback.sh   # rate() over 5 s instead of the since-start ratio
#
# The scenario lives in tests/inference_bench.rs (bench_rollback, ignored in normal test runs) so
# it shares the end-to-end harness: own namespace (Pod Security `restricted`, the model on its
# claim `work`), own operator, real servers (the runtime image, run by the node's containerd).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.cache/mlops-operator/bin:$PATH"
[[ -f .dev/kubeconfig ]] || { echo "no local cluster: make cluster-up" >&2; exit 1; }
[[ -f .dev/prometheus-url ]] || { echo "no local Prometheus: hack/prometheus.sh up" >&2; exit 1; }
export BENCH_RUNS=${BENCH_RUNS:-10} BENCH_INTERVAL_SECONDS=${BENCH_INTERVAL_SECONDS:-2}
# The servers run the runtime image, which carries target/debug/mlops-runtime: build it and
# import the image as make test does.
cargo build --workspace --locked
hack/node.sh images
cargo test --test inference_bench -- --ignored --exact bench_rollback --nocapture
# The same scenario against Argo Rollouts, in the same run (BENCH_SKIP_ARGO=1 to skip).
if [[ ${BENCH_SKIP_ARGO:-0} != 1 ]]; then
  bench/argo-rollback.sh
fi
