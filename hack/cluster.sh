#!/usr/bin/env bash
# The local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a KWOK
# node controller as host processes, built by hack/build-tools.sh, and one real node
# (hack/node.sh: containerd, kubelet, kube-proxy, CoreDNS) that runs the pods.
#
#   hack/cluster.sh up       start (no-op when one is already running); waits until usable
#   hack/cluster.sh down     stop every process it started and remove its data
#   hack/cluster.sh status   exit 0 when a cluster started here answers /readyz
#   hack/cluster.sh node-up  (re)start only the node and Prometheus (part of up)
#
# State lives in .dev/ at the repository root: .dev/kubeconfig (for kubectl and tests),
# .dev/cluster/ (pids, ports, logs, PKI), .dev/containerd/ (images, kept across restarts).
# Etcd data goes to a temporary folder. The API server listens on the node address
# 10.244.0.1, which exists only on this machine's bridge (hack/node.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dev=$root/.dev
state=$dev/cluster
kubeconfig=$dev/kubeconfig
BIN=$("$root/hack/build-tools.sh" --print)
export PATH=$BIN:$PATH
NODE_IP=10.244.0.1

log() { printf '[cluster] %s\n' "$*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

readyz() { kubectl --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; }

# start NAME CMD...: runs CMD in its own session (so down can kill the whole group), logging
# to $state/logs/NAME.log, and records its pid.
start() {
  local name=$1; shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$state/pids/$name"
}

# Kills each recorded process group: SIGTERM, a short grace period, then SIGKILL.
stop_all() {
  [[ -d $state/pids ]] || return 0
  local f pid
  for f in "$state"/pids/*; do
    [[ -f $f ]] || continue
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local alive=0
    for f in "$state"/pids/*; do
      [[ -f $f ]] || continue
      kill -0 -- "-$(cat "$f")" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for f in "$state"/pids/*; do
    [[ -f $f ]] || continue
    kill -KILL -- "-$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

pki() {
  local p=$state/pki
  mkdir -p "$p"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=mlops-local-ca" -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  # leaf NAME SUBJECT [SAN]: an EC key and a certificate signed by the local CA.
  leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
      -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
    local ext=$p/$1.ext
    echo "basicConstraints=CA:FALSE" >"$ext"
    echo "keyUsage=digitalSignature,keyEncipherment" >>"$ext"
    [[ -n ${3:-} ]] && echo "subjectAltName=$3" >>"$ext"
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
      -days 3650 -extfile "$ext" -out "$p/$1.crt" 2>/dev/null
  }
  leaf apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1"
  leaf admin "/O=system:masters/CN=admin"
  # Service-account tokens are signed with their own RSA key.
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
}

write_kubeconfig() {
  local p=$state/pki
  cat >"$kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mlops-local
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 "$p/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$p/admin.crt")
    client-key-data: $(base64 -w0 "$p/admin.key")
contexts:
- name: mlops-local
  context: {cluster: mlops-local, user: admin}
current-context: mlops-local
KC
  chmod 600 "$kubeconfig"
}

up() {
  if [[ -f $state/ports ]] && readyz; then
    # A node or Prometheus that died comes back; both are no-ops when running. Images
    # rebuilt since (new binaries) are imported, so new pods run them.
    if ! { [[ -f $state/pids/kubelet ]] && kill -0 "$(cat "$state/pids/kubelet")" 2>/dev/null; }; then
      node_up
    else
      "$root/hack/node.sh" images
    fi
    "$root/hack/prometheus.sh" up || log "Prometheus did not start: tests that query it will fail (hack/ensure-deps.sh installs it)"
    log "already running (kubeconfig: .dev/kubeconfig)"; return 0; fi
  [[ -d $state ]] && { log "removing a stale cluster"; down_quiet; }
  "$root/hack/build-tools.sh"
  local t0=$SECONDS
  mkdir -p "$state/pids" "$state/logs"
  local data; data=$(mktemp -d /tmp/mlops-cluster.XXXXXX)
  echo "$data" >"$state/data-dir"
  ETCD_PORT=$(free_port); ETCD_PEER=$(free_port); API_PORT=$(free_port)
  KCM_PORT=$(free_port); SCHED_PORT=$(free_port); KWOK_PORT=$(free_port)
  printf 'ETCD_PORT=%s\nAPI_PORT=%s\nKCM_PORT=%s\nSCHED_PORT=%s\nKWOK_PORT=%s\n' \
    "$ETCD_PORT" "$API_PORT" "$KCM_PORT" "$SCHED_PORT" "$KWOK_PORT" >"$state/ports"
  pki
  write_kubeconfig
  # The bridge first: its address is the API server's.
  "$root/hack/node.sh" network
  local p=$state/pki

  start etcd etcd --name local --data-dir "$data/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER" --unsafe-no-fsync --log-level warn

  # The API server listens on the node's bridge address only (never an uplink), so pods reach
  # it through the kubernetes Service; it calls kubelets by their InternalIP, never by a name
  # it would have to resolve.
  start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --secure-port "$API_PORT" --advertise-address "$NODE_IP" \
    --kubelet-preferred-address-types InternalIP --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" --authorization-mode Node,RBAC --allow-privileged=true \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --kubelet-client-certificate "$p/admin.crt" \
    --kubelet-client-key "$p/admin.key" --kubelet-certificate-authority "$p/ca.crt"

  for _ in $(seq 600); do readyz && break; sleep 0.1; done
  readyz || { log "kube-apiserver did not become ready; see $state/logs/kube-apiserver.log"; tail -20 "$state/logs/kube-apiserver.log" >&2; exit 1; }

  start kube-controller-manager kube-controller-manager --kubeconfig "$kubeconfig" \
    --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --kube-api-qps 200 --kube-api-burst 400 --node-monitor-grace-period 60s \
    --pvclaimbinder-sync-period 1s
  start kube-scheduler kube-scheduler --kubeconfig "$kubeconfig" \
    --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" \
    --kube-api-qps 200 --kube-api-burst 400
  # KWOK plays the kubelet for nodes annotated kwok.x-k8s.io/node=fake (scale tests and
  # the control-plane proofs); pods on the real node (local-node) really run.
  kwok_stages >"$state/kwok.yaml"
  start kwok kwok --kubeconfig "$kubeconfig" --config "$state/kwok.yaml" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 --server-address "127.0.0.1:$KWOK_PORT"

  gateway_api_crds

  for _ in $(seq 600); do
    kubectl --kubeconfig "$kubeconfig" -n default get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.2
  done
  kubectl --kubeconfig "$kubeconfig" -n default get serviceaccount default >/dev/null 2>&1 \
    || { log "the default ServiceAccount never appeared; see $state/logs/kube-controller-manager.log"; exit 1; }
  node_up
  log "ready in $((SECONDS - t0)) s — export KUBECONFIG=$kubeconfig"
}

# The real node (hack/node.sh), then Prometheus (hack/prometheus.sh), which scrapes annotated
# pods. Both stop with `down`.
node_up() {
  "$root/hack/node.sh" up
  "$root/hack/prometheus.sh" up || log "Prometheus did not start: tests that query it will fail (hack/ensure-deps.sh installs it)"
}

# KWOK's stock lifecycle stages (node ready + lease heartbeat; pods ready, completed,
# deleted), read from the kwok module that hack/build-tools.sh built from.
kwok_stages() {
  # shellcheck source=versions.env
  source "$root/hack/versions.env"
  local dir
  dir=$(GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  local f
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$dir/kustomize/stage/$f"
  done
}

# The Gateway API CRDs (standard channel), from that project's own Go module, so that
# InferenceServices with gatewayAPI traffic routing can be tested.
gateway_api_crds() {
  # shellcheck source=versions.env
  source "$root/hack/versions.env"
  local dir
  dir=$(GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@v$GATEWAY_API_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  kubectl --kubeconfig "$kubeconfig" apply --server-side -f "$dir/config/crd/standard/" >/dev/null
  # Applied is not served yet: tests using HTTPRoutes start right after `up`.
  kubectl --kubeconfig "$kubeconfig" wait --for=condition=Established --timeout=60s \
    -f "$dir/config/crd/standard/" >/dev/null
}

down_quiet() {
  # The node before the control plane, so the kubelet does not restart what is being stopped.
  "$root/hack/node.sh" down
  stop_all
  if [[ -f $state/data-dir ]]; then rm -rf "$(cat "$state/data-dir")"; fi
  rm -rf "$state" "$kubeconfig" "$dev/prometheus-url"
}

case ${1:-} in
  up) up ;;
  down) down_quiet; log "stopped" ;;
  status) [[ -f $state/ports ]] && readyz ;;
  node-up) readyz || { log "no cluster is running: hack/cluster.sh up"; exit 1; }; node_up ;;
  *) echo "usage: $0 up|down|status|node-up" >&2; exit 2 ;;
esac
