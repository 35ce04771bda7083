#!/usr/bin/env bash
# Builds the local control plane and its tools from Go modules, pinned in hack/versions.env,
# into a per-version cache outside the repository. A tool whose cached binary already reports
# the pinned version is not rebuilt, so a second run does no build work.
#
#   hack/build-tools.sh            build everything missing
#   hack/build-tools.sh --print    print the bin directory (builds nothing)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
CACHE=${MLOPS_TOOLS_CACHE:-$HOME/.cache/mlops-operator}
BIN=$CACHE/bin
mkdir -p "$BIN" "$CACHE/work"

if [[ ${1:-} == --print ]]; then echo "$BIN"; exit 0; fi

log() { printf '[build-tools] %s\n' "$*" >&2; }

# has NAME VERSION: true when $BIN/NAME exists and its version output mentions VERSION.
has() {
  [[ -x $BIN/$1 ]] || return 1
  local out
  # shellcheck disable=SC2086 # the version command may be several words
  out=$("$BIN/$1" ${3:---version} 2>&1 | head -3) || true
  [[ $out == *"$2"* ]]
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION
  if has kube-apiserver "v$v" && has kube-controller-manager "v$v" && has kube-scheduler "v$v" \
    && has kubelet "v$v" && has kube-proxy "v$v" && has kubectl "v$v" "version --client"; then
    log "kubernetes v$v cached"; return; fi
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl v$v (cold: ~20 min on 2 cores)"
  local w=$CACHE/work/kubernetes-$v
  rm -rf "$w"; mkdir -p "$w"; cd "$w"
  go mod init mlops.dev/kcp-build >/dev/null 2>&1
  # k8s.io/kubernetes replaces its staging modules with local folders; replace each with its
  # published v0.x twin. The list comes from the module's own go.mod, never typed by hand.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$v" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  local staging
  staging=$(sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*|\1|p' "$gomod")
  [[ -n $staging ]] || { log "no staging modules found in $gomod"; exit 1; }
  for m in $staging; do go mod edit "-replace=$m=$m@v0.${v#1.}"; done
  go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$v" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@v$v" "k8s.io/kubernetes/cmd/kube-scheduler@v$v" \
    "k8s.io/kubernetes/cmd/kubelet@v$v" "k8s.io/kubernetes/cmd/kube-proxy@v$v" "k8s.io/kubernetes/cmd/kubectl@v$v"
  local minor=${v#1.}; minor=${minor%%.*}
  local ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldf+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=2025-01-01T00:00:00Z"
  done
  go build -trimpath -ldflags "$ldf" -o "$BIN/" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  local v=$ETCD_VERSION
  if has etcd "$v"; then log "etcd $v cached"; return; fi
  log "building etcd $v"
  local w=$CACHE/work/etcd-$v
  rm -rf "$w"; mkdir -p "$w"; cd "$w"
  go mod init mlops.dev/etcd-build >/dev/null 2>&1
  go get -tool "go.etcd.io/etcd/server/v3@v$v"
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
}

# go_install NAME MODULE/PATH VERSION LDFLAGS: tools whose modules have no replace directives.
go_install() {
  local name=$1 pkg=$2 v=$3 ldf=$4
  if has "$name" "$v" "${5:-}"; then log "$name $v cached"; return; fi
  log "building $name $v"
  GOBIN=$BIN go install -trimpath -ldflags "-s -w $ldf" "$pkg@v$v"
}

build_kubernetes
build_etcd
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION" --version
go_install kwokctl sigs.k8s.io/kwok/cmd/kwokctl "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION" --version
# Cluster DNS for the real node (runs on the host, answers only for the cluster's zone).
go_install coredns github.com/coredns/coredns "$COREDNS_VERSION" "-X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS_VERSION" -version
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" version
# A real S3 server (Versity S3 Gateway, POSIX backend) for the s3:// end-to-end tests.
go_install versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION" "-X main.Version=v$VERSITYGW_VERSION"
log "tools ready in $BIN"
