#!/usr/bin/env bash
# The rollback benchmark's scenario against Argo Rollouts' controller, on the same local
# cluster, node, Prometheus, servers (the runtime image, restricted, the model on a claim),
# load and intervals (bench/argo_rollback.py). The controller is built once from its Go
# module (the version in hack/versions.env; newer releases need a newer Go than this
# machine has) into the tool cache; nothing of it enters the repository. Called by
# bench/rollback.sh after our own runs, for a side-by-side.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=../hack/versions.env
source hack/versions.env
tools_bin=$(hack/build-tools.sh --print)
export PATH="$tools_bin:$PATH" GOTOOLCHAIN=local GOFLAGS=-mod=mod
[[ -f .dev/kubeconfig ]] || { echo "no local cluster: make cluster-up" >&2; exit 1; }
CACHE=${MLOPS_TOOLS_CACHE:-$HOME/.cache/mlops-operator}
dir=$CACHE/argo-rollouts-$ARGO_ROLLOUTS_VERSION
bin=$dir/rollouts-controller
if [[ ! -x $bin ]]; then
  echo "building Argo Rollouts $ARGO_ROLLOUTS_VERSION from its Go module (once; several minutes)" >&2
  src=$(go mod download -json "github.com/argoproj/argo-rollouts@v$ARGO_ROLLOUTS_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$dir"
  rm -rf "$dir/src" && cp -r "$src" "$dir/src" && chmod -R u+w "$dir/src"
  (cd "$dir/src" && go build -o "$bin" ./cmd/rollouts-controller)
fi
crds=$dir/src/manifests/crds
kubectl --kubeconfig .dev/kubeconfig apply --server-side -f "$crds/rollout-crd.yaml" \
  -f "$crds/analysis-template-crd.yaml" -f "$crds/analysis-run-crd.yaml" \
  -f "$crds/cluster-analysis-template-crd.yaml" -f "$crds/experiment-crd.yaml" >/dev/null
# The host trains the model with target/debug/mlops-runtime; the pods run the runtime image,
# which carries it: build and import it (cached by content; bench/rollback.sh has done it).
cargo build --quiet --workspace --locked
hack/node.sh images
exec python3 bench/argo_rollback.py "$bin"
