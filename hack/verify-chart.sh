#!/usr/bin/env bash
# Lints and renders the Helm chart, then has the local cluster's API server validate what
# would be installed: server-side dry-run applies of a fresh render, of the committed
# manifests/install.yaml and of manifests/examples/. Nothing of the install is persisted;
# the CRDs are installed for real (as the e2e tests do) so that the examples can be checked.
#
# Namespaced objects cannot be dry-run into a namespace that a dry-run only pretends to
# create, so everything goes into a scratch namespace that exists for the duration of the
# run (created with the restricted Pod Security Standard enforced, so a pod template that
# breaks it is reported) and is deleted afterwards. install.yaml is checked there with its
# namespace renamed; hack/verify-generated.sh checks it is otherwise the chart's render.
#
# Without a reachable cluster the lint and render still run, and the cluster part is
# skipped with a message (a failure when CI is set), like the e2e tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PATH=$(hack/build-tools.sh --print):$PATH
export PATH
export KUBECONFIG=${KUBECONFIG:-$root/.dev/kubeconfig}
CHART=charts/mlops-operator
log() { printf '[verify-chart] %s\n' "$*" >&2; }
tmp=$(mktemp -d)
ns=""
cleanup() {
  if [[ -n $ns ]]; then kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

log "helm lint --strict (defaults and the other supported shapes)"
helm lint --strict "$CHART"
helm lint --strict "$CHART" --set watchNamespace=team-a --set crds.install=false \
  --set replicaCount=1 --set metrics.serviceMonitor.enabled=true --set image.digest="sha256:$(printf '0%.0s' {1..64})"
if helm lint --strict "$CHART" --set no.such.value=1 >"$tmp/unknown.txt" 2>&1; then
  log "values.schema.json accepted an unknown value"; exit 1
fi

log "render"
helm template mlops-operator "$CHART" --namespace mlops-system >"$tmp/render.yaml"

if ! kubectl version --request-timeout=5s >/dev/null 2>&1; then
  msg="no local cluster is reachable: start one with 'make cluster-up'"
  if [[ -n ${CI:-} ]]; then log "$msg"; exit 1; fi
  log "SKIPPED the server-side dry-run: $msg"; exit 0
fi

ns=verify-chart-$(date +%s)-$$
kubectl create namespace "$ns" >/dev/null
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted >/dev/null

# dry_run FILE: server-side dry-run apply; any PodSecurity warning fails too.
dry_run() {
  kubectl apply --server-side --force-conflicts --dry-run=server -f "$1" 2>&1 | tee "$tmp/apply.txt" >&2
  local rc=${PIPESTATUS[0]}
  if ((rc != 0)); then log "dry-run of $2 failed"; exit 1; fi
  if grep -q 'would violate PodSecurity' "$tmp/apply.txt"; then log "$2 violates the restricted Pod Security Standard"; exit 1; fi
}

log "server-side dry-run of the chart rendered into namespace $ns"
helm template mlops-operator "$CHART" --namespace "$ns" >"$tmp/render-ns.yaml"
dry_run "$tmp/render-ns.yaml" "the chart render"

log "server-side dry-run of manifests/install.yaml (namespace mlops-system renamed $ns)"
sed "s/\bmlops-system\b/$ns/g" manifests/install.yaml >"$tmp/install.yaml"
dry_run "$tmp/install.yaml" "manifests/install.yaml"

log "server-side dry-run of manifests/examples/ (CRDs installed for real)"
kubectl apply --server-side --force-conflicts -f crds/mlops.dev.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s \
  crd/trainingjobs.mlops.dev crd/modelversions.mlops.dev crd/inferenceservices.mlops.dev >/dev/null
kubectl apply --server-side --dry-run=server -n "$ns" -f manifests/examples/

log "ok"
