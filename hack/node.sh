#!/usr/bin/env bash
# The real node of the local cluster: containerd + runc run the pods, a kubelet and kube-proxy
# (iptables mode) built from Go modules at the pinned Kubernetes version, CoreDNS answering for
# cluster.local only, and a bridge with a private pod range that exists only on this machine.
# hack/cluster.sh calls it; run it directly only to restart the node.
#
#   hack/node.sh network  create the bridge (the API server binds its address; cluster.sh)
#   hack/node.sh images   rebuild the images (cached by content) and import what changed
#   hack/node.sh up     start containerd, import the images, start kubelet, kube-proxy, CoreDNS
#   hack/node.sh down   stop all of it and remove every trace (processes, shims, mounts,
#                       network namespaces, veths, the bridge, iptables chains, cgroups, sysctls)
#   hack/node.sh leftovers   print what `down` should have removed and is still there (exit 1)
#
# Addresses (one real node per machine: the kubelet touches global paths and cgroups):
#   bridge mlops0 10.244.0.1/16 = the node's IP; pods get 10.244.0.0/24; Services 10.0.0.0/24
#   (routed to the bridge, so no packet for a pod or a ClusterIP can leave the machine);
#   forwarding out of the machine's uplinks is dropped; CoreDNS on 10.244.0.1:53.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dev=$root/.dev
state=$dev/cluster
node=$state/node
# containerd's content and snapshots outlive a `down`, so a second `up` imports nothing.
ctrd=$dev/containerd
kubeconfig=$dev/kubeconfig
BIN=$("$root/hack/build-tools.sh" --print)
export PATH=$BIN:$PATH

NODE_NAME=local-node
BRIDGE=mlops0
NODE_IP=10.244.0.1
BRIDGE_CIDR=10.244.0.1/16
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.0.0.0/24
SOCK=$ctrd/containerd.sock
CHAIN=MLOPS-NODE-FORWARD
# Global paths a kubelet uses whatever --root-dir says (removed on down when we made them).
GLOBAL_DIRS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/netns /opt/cni)
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory kernel.panic kernel.panic_on_oops)

log() { printf '[node] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kc() { kubectl --kubeconfig "$kubeconfig" "$@"; }

# start NAME CMD...: runs CMD in a session of its own, logging to $state/logs/NAME.log; the pid
# is written from inside the background job, since under job control `$!` is not the daemon.
start() {
  local name=$1; shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$state/pids/$name"
}

uplinks() { ip -o route show default | awk '{for (i=1;i<NF;i++) if ($i=="dev") print $(i+1)}' | sort -u; }

network_up() {
  mkdir -p "$node"
  # Remember every sysctl before we (or the kubelet, or the bridge plugin) change it.
  if [[ ! -f $node/sysctls ]]; then
    local s
    for s in "${SYSCTLS[@]}"; do
      [[ -e /proc/sys/${s//.//} ]] && echo "$s=$(sysctl -n "$s")"
    done >"$node/sysctls"
  fi
  for d in "${GLOBAL_DIRS[@]}"; do [[ -e $d ]] || echo "$d"; done >"$node/created-dirs"
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$BRIDGE_CIDR" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # No packet addressed to a ClusterIP may follow the default route out.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  # Forwarding is needed between pods and the host; never out of the machine.
  iptables -N "$CHAIN" 2>/dev/null || iptables -F "$CHAIN"
  local u
  for u in $(uplinks); do iptables -A "$CHAIN" -o "$u" -j DROP; done
  iptables -A "$CHAIN" -s "$CLUSTER_CIDR" ! -o "$BRIDGE" -j DROP
  iptables -C FORWARD -j "$CHAIN" 2>/dev/null || iptables -I FORWARD 1 -j "$CHAIN"
  sysctl -qw net.ipv4.ip_forward=1
  # Pod -> ClusterIP -> pod on the same bridge needs bridged traffic to pass iptables.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
}

cni_config() {
  mkdir -p "$node/net.d"
  cat >"$node/net.d/10-mlops.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "mlops",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$CLUSTER_CIDR", "gateway": "$NODE_IP",
                 "rangeStart": "10.244.0.2", "rangeEnd": "10.244.0.254"}]],
               "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$node/cni-ipam"}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
JSON
}

containerd_up() {
  mkdir -p "$ctrd/root" "$ctrd/state"
  # No registry: every image, the sandbox's pause image included, is built here
  # (hack/build-images.sh, cached by content) and imported.
  "$root/hack/build-images.sh" build
  local pause; pause=$("$root/hack/build-images.sh" pause-name)
  cat >"$node/containerd.toml" <<TOML
version = 2
root = "$ctrd/root"
state = "$ctrd/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$ctrd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  # Root here lacks CAP_SYS_RESOURCE: a negative OOM score for the sandbox would be refused.
  restrict_oom_score_adj = true
  # The kernel has no AppArmor.
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/net.d"
  # No registry is reachable: every image is imported (hack/build-images.sh).
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
TOML
  start containerd containerd --config "$node/containerd.toml"
  for _ in $(seq 100); do ctr --address "$SOCK" version >/dev/null 2>&1 && break; sleep 0.1; done
  ctr --address "$SOCK" version >/dev/null 2>&1 || { log "containerd did not start; see $state/logs/containerd.log"; tail -20 "$state/logs/containerd.log" >&2; exit 1; }
  "$root/hack/build-images.sh" import "$SOCK"
}

node_pki() {
  local p=$state/pki
  [[ -f $p/kubelet.crt ]] && return 0
  # Client certificate for the Node authorizer, serving certificate for logs/exec/port-forward.
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -keyout "$p/kubelet-client.key" -out "$p/kubelet-client.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$p/kubelet-client.ext"
  openssl x509 -req -in "$p/kubelet-client.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
    -days 3650 -extfile "$p/kubelet-client.ext" -out "$p/kubelet-client.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$NODE_NAME" \
    -keyout "$p/kubelet.key" -out "$p/kubelet.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:%s\n' \
    "$NODE_IP" "$NODE_NAME" >"$p/kubelet.ext"
  openssl x509 -req -in "$p/kubelet.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
    -days 3650 -extfile "$p/kubelet.ext" -out "$p/kubelet.crt" 2>/dev/null
}

# A kubeconfig for a component: the API server on the node address, a client certificate.
component_kubeconfig() {
  local file=$1 cert=$2 key=$3 server
  server=$(kc config view --raw -o jsonpath='{.clusters[0].cluster.server}')
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$server", certificate-authority: "$state/pki/ca.crt"}
users:
- name: component
  user: {client-certificate: "$cert", client-key: "$key"}
contexts:
- name: local
  context: {cluster: local, user: component}
current-context: local
KC
}

kubelet_up() {
  node_pki
  local p=$state/pki port healthz
  port=$(free_port); healthz=$(free_port)
  component_kubeconfig "$node/kubelet.kubeconfig" "$p/kubelet-client.crt" "$p/kubelet-client.key"
  mkdir -p "$node/kubelet"
  cat >"$node/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $p/kubelet.crt
tlsPrivateKeyFile: $p/kubelet.key
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
failSwapOn: false
protectKernelDefaults: false
podCIDR: $POD_CIDR
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
# Pods never see the host's resolver: only cluster DNS answers.
resolvConf: ""
serializeImagePulls: false
maxPods: 250
kubeAPIQPS: 50
kubeAPIBurst: 100
# Imported images have no registry to come back from: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
# Status changes reach the API server quickly; the tests wait on them.
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
YAML
  start kubelet kubelet --config "$node/kubelet.yaml" --kubeconfig "$node/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --cert-dir "$node/kubelet/pki" --v 1
}

kube_proxy_up() {
  local metrics healthz
  metrics=$(free_port); healthz=$(free_port)
  cat >"$node/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
bindAddress: $NODE_IP
clusterCIDR: $CLUSTER_CIDR
nodePortAddresses: [$NODE_IP/32]
metricsBindAddress: 127.0.0.1:$metrics
healthzBindAddress: 127.0.0.1:$healthz
oomScoreAdj: 0
conntrack: {maxPerCore: 0}
iptables: {localhostNodePorts: false, syncPeriod: 30s, minSyncPeriod: 0s}
YAML
  start kube-proxy kube-proxy --config "$node/kube-proxy.yaml"
}

coredns_up() {
  cat >"$node/Corefile" <<COREFILE
# Cluster names only: no forward plugin, so nothing in a pod resolves a name outside the cluster.
cluster.local:53 in-addr.arpa:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $kubeconfig mlops-local
        pods insecure
        ttl 5
    }
    cache 5
}
.:53 {
    bind $NODE_IP
    errors
}
COREFILE
  start coredns coredns -conf "$node/Corefile"
}

wait_node_ready() {
  local ready
  for _ in $(seq 300); do
    ready=$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    [[ $ready == True ]] && return 0
    kill -0 "$(cat "$state/pids/kubelet")" 2>/dev/null || break
    sleep 0.2
  done
  log "node $NODE_NAME did not become Ready within 60 s; see $state/logs/kubelet.log"
  tail -20 "$state/logs/kubelet.log" >&2
  exit 1
}

up() {
  mkdir -p "$state/pids" "$state/logs"
  local t0=$SECONDS
  network_up
  cni_config
  containerd_up
  kubelet_up
  kube_proxy_up
  coredns_up
  wait_node_ready
  log "node $NODE_NAME Ready in $((SECONDS - t0)) s (containerd, kubelet, kube-proxy, CoreDNS)"
}

# ---- down: every trace, in dependency order ----

kill_pidfile() {
  local f=$state/pids/$1 pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f"
}

# Pids whose command line mentions our containerd socket (its shims run in sessions of
# their own and outlive containerd) or whose cgroup is under the kubelet's /kubepods.
node_pids() {
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    if { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "$SOCK"; then echo "$pid"; fi
  done
  cat /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs 2>/dev/null || true
}

# Mounts of ours: below .dev/ (containerd's root and state, the kubelet's root), the
# kubelet's global folder, and the pods' network namespaces (the CNI names them cni-*);
# nothing another tool mounted.
our_mounts() {
  awk -v a="$dev/" -v b="/var/lib/kubelet" -v c="/run/netns/cni-" \
    '{ if (index($2, a) == 1 || index($2, b) == 1 || index($2, c) == 1) print $2 }' /proc/self/mounts
}

down() {
  # The kubelet first, so it stops restarting containers; then containerd and its shims.
  kill_pidfile coredns
  kill_pidfile kubelet
  kill_pidfile kube-proxy
  kill_pidfile containerd
  local pid
  for pid in $(node_pids | sort -u); do kill -KILL "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do [[ -z $(node_pids) ]] && break; sleep 0.1; done
  # Network namespaces of pods (their veths go with them), then every mount, deepest first.
  local ns
  for ns in /run/netns/cni-*; do [[ -e $ns ]] && ip netns delete "${ns##*/}" 2>/dev/null; done
  local m
  for _ in 1 2 3; do
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(our_mounts | sort -r)
  done
  # kube-proxy's KUBE-* chains, then our forwarding guard.
  if command -v kube-proxy >/dev/null; then kube-proxy --cleanup >/dev/null 2>&1 || true; fi
  local t
  for t in filter nat mangle; do
    local c
    for c in $(iptables -t "$t" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^KUBE-/ {print $2}'); do
      iptables -t "$t" -S | awk -v c="$c" '$1=="-A" && $0 ~ ("-j " c "( |$)") {$1="-D"; print}' \
        | while read -r rule; do eval "iptables -t $t $rule" 2>/dev/null || true; done
      iptables -t "$t" -F "$c" 2>/dev/null || true
    done
    for c in $(iptables -t "$t" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^KUBE-/ {print $2}'); do
      iptables -t "$t" -X "$c" 2>/dev/null || true
    done
  done
  iptables -D FORWARD -j "$CHAIN" 2>/dev/null || true
  iptables -F "$CHAIN" 2>/dev/null || true
  iptables -X "$CHAIN" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  local v
  for v in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    [[ $(ip -o link show "$v" 2>/dev/null) == *"master $BRIDGE"* ]] && ip link del "$v" 2>/dev/null
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  # The kubelet's cgroups in every hierarchy, leaves first.
  local cg
  while read -r cg; do rmdir "$cg" 2>/dev/null || true; done < <(find /sys/fs/cgroup/*/kubepods -depth -type d 2>/dev/null)
  if [[ -f $node/sysctls ]]; then
    while IFS="=" read -r k val; do sysctl -qw "$k=$val" 2>/dev/null || true; done <"$node/sysctls"
  fi
  if [[ -f $node/created-dirs ]]; then
    while read -r d; do [[ -n $d ]] && rm -rf "$d"; done <"$node/created-dirs"
  fi
  rm -rf "$node" "$ctrd/state"
}

# What down must leave behind: nothing. Prints each leftover; exit 1 when there is one.
leftovers() {
  local bad=0
  [[ -n $(node_pids) ]] && { echo "processes: $(node_pids | sort -u | tr '\n' ' ')"; bad=1; }
  # Any process started with a path of ours (kubelet, kube-proxy, CoreDNS, containerd).
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    if { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "$node"; then
      echo "process $pid: $(tr '\0' ' ' <"$f")"; bad=1
    fi
  done
  [[ -n $(our_mounts) ]] && { echo "mounts: $(our_mounts | tr '\n' ' ')"; bad=1; }
  ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "bridge $BRIDGE"; bad=1; }
  [[ -n $(ip -o link show type veth 2>/dev/null) ]] && { echo "veths: $(ip -o link show type veth | awk -F': ' '{print $2}' | tr '\n' ' ')"; bad=1; }
  compgen -G '/run/netns/cni-*' >/dev/null && { echo "network namespaces: $(echo /run/netns/cni-*)"; bad=1; }
  local t
  for t in filter nat mangle; do
    iptables -t "$t" -S 2>/dev/null | grep -qE -- "-N (KUBE-|$CHAIN)" && { echo "iptables $t chains: $(iptables -t "$t" -S | grep -oE -- "-N (KUBE-[^ ]*|$CHAIN)" | tr '\n' ' ')"; bad=1; }
  done
  compgen -G "/sys/fs/cgroup/*/kubepods" >/dev/null && { echo "cgroups: $(echo /sys/fs/cgroup/*/kubepods)"; bad=1; }
  return $bad
}

case ${1:-} in
  up) up ;;
  network) mkdir -p "$state"; network_up ;;
  images) "$root/hack/build-images.sh" build; "$root/hack/build-images.sh" import "$SOCK" ;;
  down) down; log "stopped" ;;
  leftovers) leftovers ;;
  *) echo "usage: $0 network|up|images|down|leftovers" >&2; exit 2 ;;
esac
