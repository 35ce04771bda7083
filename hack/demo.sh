#!/usr/bin/env bash
# `make demo`: the whole life of a model on a local cluster, narrated.
#   train -> validated ModelVersion -> served and answering -> retrained -> canaried and
#   promoted -> a faulty version canaried and rolled back by its error-rate check ->
#   the delivery metrics. Builds and starts whatever is missing; stops what it started
#   (MLOPS_DEMO_KEEP=1 leaves the cluster and the demo's resources to explore; the
#   operator always stops with the demo, and the end says how to start it again).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
NS=mlops-demo
demo=$root/.dev/demo
t0=$SECONDS

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
say() { printf '[%4ss] %s\n' "$((SECONDS - t0))" "$*"; }
k() { kubectl -n "$NS" "$@"; }

bold "0. Setting up: tools, build, local cluster (first run builds Kubernetes from Go modules: ~15 min)"
hack/ensure-deps.sh
hack/build-tools.sh
PATH=$(hack/build-tools.sh --print):$PATH
export PATH
cargo build --quiet --workspace
started_cluster=0
hack/cluster.sh status || started_cluster=1
hack/cluster.sh up
export KUBECONFIG=$root/.dev/kubeconfig
mkdir -p "$demo"
kubectl apply --server-side --force-conflicts -f crds/mlops.dev.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null

if kubectl get namespace "$NS" >/dev/null 2>&1; then
  say "removing the previous demo namespace"
  kubectl delete namespace "$NS" --wait=true --timeout=120s >/dev/null
fi
kubectl create namespace "$NS" >/dev/null
# Pods of the demo pass Pod Security "restricted", enforced.
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted >/dev/null
# The data and the models live on a volume the demo shares with its pods: a hostPath
# PersistentVolume on the local node, pre-bound to the claim `work` (no provisioner here).
rm -rf "$demo/work"; mkdir -p "$demo/work"; chmod 0777 "$demo/work"
cp runtime/testdata/iris.csv "$demo/work/iris.csv"
kubectl delete pv mlops-demo-work --ignore-not-found >/dev/null
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: mlops-demo-work}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteMany, ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $demo/work, type: Directory}
  claimRef: {namespace: $NS, name: work}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: work, namespace: $NS}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: mlops-demo-work
  resources: {requests: {storage: 1Gi}}
YAML

metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/debug/mlops-operator run --metrics-addr "127.0.0.1:$metrics_port" --namespace "$NS" --watch-namespace "$NS" \
  --prometheus-url "$(cat .dev/prometheus-url)" --enable-fault-injection >"$demo/operator.log" 2>&1 &
operator=$!
traffic=
cleanup() {
  [[ -n $traffic ]] && kill "$traffic" 2>/dev/null
  kill "$operator" 2>/dev/null && wait "$operator" 2>/dev/null
  if [[ ${MLOPS_DEMO_KEEP:-0} == 1 ]]; then
    bold "Left running (MLOPS_DEMO_KEEP=1): export KUBECONFIG=$KUBECONFIG; kubectl -n $NS get mlops."
    bold "The operator was stopped; restart it with: ./target/debug/mlops-operator run --prometheus-url \$(cat .dev/prometheus-url)"
    bold "Stop everything with: make cluster-down"
  elif ((started_cluster)); then
    bold "Stopping the local cluster this demo started (make cluster-down)"
    hack/cluster.sh down
  else
    bold "The cluster was already running and is left as it was; stop it with: make cluster-down"
  fi
}
trap cleanup EXIT
say "operator running (metrics on 127.0.0.1:$metrics_port, log $demo/operator.log)"

fill() {
  sed -e "s#__DATASET__#pvc://work/iris.csv#" -e "s#__OUTPUT__#pvc://work/models#" \
    -e "s#__ARTIFACT__#${ARTIFACT:-}#" -e "s#__DIGEST__#${DIGEST:-}#" "$1"
}
wait_cond() { k wait --for=condition="$2" --timeout="${3:-180s}" "$1" >/dev/null; }
gate_table() {
  MV=$(k get mv "$1" -o json) python3 - <<'PY'
import json, os
for g in json.loads(os.environ["MV"]).get("status", {}).get("gateResults", []):
    show = lambda v: "-" if v is None else f"{v:g}"
    note = f"  ({g['message']})" if g.get("bound") is None and g.get("message") else ""
    print(f"    {g['gate']:<26} value {show(g.get('value')):<9} bound {show(g.get('bound')):<8} {g['verdict']}{note}")
PY
}
# The host reaches ClusterIPs through the local node's kube-proxy, as pods do.
service_address() { k get svc iris -o jsonpath='{.spec.clusterIP}:{.spec.ports[0].port}'; }
infer() {
  curl -s -XPOST "http://$(service_address)/v2/models/iris/infer" -H 'content-type: application/json' \
    -d '{"inputs":[{"name":"measurements","shape":[3,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2, 6.0,2.9,4.5,1.5, 6.7,3.0,5.2,2.3]}]}'
}
# Prints each change of stable/canary/phase/weight until the rollout of $1 ends:
# promoted ($2 = promoted) or rolled back ($2 = rollback).
wait_settled() {
  local s last=
  for _ in $(seq 900); do
    s=$(k get isvc iris -o jsonpath='{.status.stable.version}/{.status.canary.version}/{.status.canary.phase}/{.status.canary.weight}')
    [[ $s != "$last" ]] && say "stable/canary/phase/weight: $s"
    last=$s
    case $2 in
      promoted) [[ $s == "$1///" ]] && return 0 ;;
      rollback) [[ $s == *"///" ]] && k get isvc iris -o jsonpath='{.status.failedVersions}' | grep -q "\"$1\"" && return 0 ;;
    esac
    sleep 0.5
  done
  echo "timed out waiting for the rollout of $1" >&2
  return 1
}

bold "1. Train: a TrainingJob runs the reference trainer (a container image) in a Job on the local node"
fill examples/demo/trainingjob.yaml | k apply -f - >/dev/null
wait_cond trainingjob/iris Succeeded
say "run iris-r1 finished; the trainer's result became ModelVersion iris-r1:"
k get mlops
bold "   Gates of iris-r1 (absolute and relative to the serving version):"
gate_table iris-r1
k get mv iris-r1 -o jsonpath='    lineage: dataset {.spec.lineage.dataset.digest}, rows {.spec.lineage.dataset.rows}, source {.spec.lineage.source.revision}{"\n"}'

bold "2. Serve: an InferenceService tracking LatestValidated deploys iris-r1"
fill examples/demo/inferenceservice.yaml | k apply -f - >/dev/null
wait_cond isvc/iris Ready
say "serving at $(service_address) (in-cluster URL $(k get isvc iris -o jsonpath='{.status.url}'))"
say "inference: $(infer)"
ARTIFACT=$(k get mv iris-r1 -o jsonpath='{.spec.artifact.uri}')
DIGEST=$(k get mv iris-r1 -o jsonpath='{.spec.artifact.digest}')

# Steady traffic, one new connection per request so replica-weighted routing splits it.
(
  end=$((SECONDS + 900))
  while ((SECONDS < end)); do
    curl -s -o /dev/null -XPOST "http://$(service_address)/v2/models/iris/infer" -H 'content-type: application/json' \
      -d '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[5.9,3.0,5.1,1.8]}]}' || true
    sleep 0.05
  done
) &
traffic=$!

bold "3. Retrain: a new generation of the TrainingJob (random forest) produces iris-r2"
k patch trainingjob iris --type merge -p '{"spec":{"hyperparameters":{"algorithm":"random_forest"}}}' >/dev/null
for _ in $(seq 300); do k get mv iris-r2 >/dev/null 2>&1 && break; sleep 0.5; done
wait_cond mv/iris-r2 Validated
gate_table iris-r2
bold "   ...validated, so the InferenceService canaries it through 25 % and 50 %, bakes it at 100 %, and promotes it"
wait_settled iris-r2 promoted

bold "4. A faulty version (good offline metrics, but its server fails 30 % of requests) is imported"
fill examples/demo/faulty-version.yaml | k apply -f - >/dev/null
wait_cond mv/iris-faulty Validated
wait_settled iris-faulty rollback
bold "   Rolled back by itself. The decision, as recorded in status:"
k get isvc iris -o go-template='    check {{.status.lastDecision.check}}: measured {{.status.lastDecision.value}}, bound {{.status.lastDecision.bound}} at {{.status.lastDecision.time}}{{"\n"}}    {{.status.lastDecision.message}}{{"\n"}}'
k get isvc iris -o jsonpath='    Degraded: {.status.conditions[?(@.type=="Degraded")].message}{"\n"}'
say "inference still answered by $(infer | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_version"])')"

bold "5. The timeline (Events of the InferenceService)"
k get events --field-selector involvedObject.kind=InferenceService --sort-by=.metadata.creationTimestamp \
  -o custom-columns=TIME:.metadata.creationTimestamp,TYPE:.type,REASON:.reason,MESSAGE:.message --no-headers | sed 's/^/    /'
bold "   History"
k get isvc iris -o go-template='{{range .status.history}}    {{printf "%-12s" .version}} {{printf "%-10s" .outcome}} {{.reason}}{{"\n"}}{{end}}'

bold "6. Delivery metrics (the four DORA keys), from the operator's own events"
created=$(k get isvc iris -o jsonpath='{.metadata.creationTimestamp}')
ISVC=$(k get isvc iris -o json) python3 - <<'PY'
import datetime, json, os
isvc = json.loads(os.environ["ISVC"])
d = isvc["status"].get("delivery", {})
created = datetime.datetime.fromisoformat(isvc["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
hours = (datetime.datetime.now(datetime.timezone.utc) - created).total_seconds() / 3600
ok, failed = d.get("deployments", 0), d.get("failedDeployments", 0)
rate = d.get("changeFailureRate")
print(f"    deployment frequency   {ok} successful deployments in {hours * 60:.1f} min since the "
      f"InferenceService was created ({ok / hours:.0f} per hour at demo pace)")
print(f"    lead time for changes  {d.get('lastLeadTimeSeconds', '-')} s, ModelVersion created -> promoted (latest)")
print(f"    time to restore        {d.get('lastTimeToRestoreSeconds', '-')} s, canary failing -> stable alone again (latest rollback)")
print(f"    change failure rate    {failed} rolled back of {ok + failed} = " + ("-" if rate is None else f"{rate:.0%}"))
PY
say "InferenceService created at $created; the same figures as Prometheus series on the operator's /metrics:"
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^mlops_(deployments_total|lead_time_seconds_count|time_to_restore_seconds_(sum|count))' | sed 's/^/    /'
bold "   All resources:"
k get mlops
say "demo complete"
