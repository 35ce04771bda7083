#!/usr/bin/env bash
# Installs what a fresh machine lacks for `make test` and `make demo`: Debian packages
# (openssl for the local PKI, prometheus for analysis, shellcheck for the scripts, umoci,
# mmdebstrap and containerd's ctr for the local images; containerd, runc, the CNI plugins,
# iptables and conntrack for the local node) and checks the toolchains.
# Everything else is built from Go modules or crates by the other scripts.
set -euo pipefail
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v setsid >/dev/null || missing+=(util-linux)
command -v prometheus >/dev/null || missing+=(prometheus)
# promtool (CI checks the chart's alert rules with it) ships in the same package.
command -v promtool >/dev/null || missing+=(prometheus)
command -v curl >/dev/null || missing+=(curl)
# make test lints hack/ and bench/ with it.
command -v shellcheck >/dev/null || missing+=(shellcheck)
# hack/build-images.sh: images without a container engine (umoci packs the layers, mmdebstrap
# makes the Debian roots, gcc -static the pause program, flock/unshare from util-linux) and
# ctr (containerd's client) to import them.
command -v umoci >/dev/null || missing+=(umoci)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
[[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
command -v ctr >/dev/null || missing+=(containerd)
command -v gcc >/dev/null || missing+=(gcc)
command -v strip >/dev/null || missing+=(binutils)
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
command -v flock >/dev/null || missing+=(util-linux)
# The local node (hack/node.sh): containerd and runc run the pods, the CNI plugins wire them
# to the bridge, iptables/conntrack for kube-proxy and the network guard, ip for the bridge.
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/portmap ]] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null || missing+=(iptables)
command -v conntrack >/dev/null || missing+=(conntrack)
command -v ip >/dev/null || missing+=(iproute2)
command -v sysctl >/dev/null || missing+=(procps)
if ((${#missing[@]})); then
  echo "[deps] installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's prometheus package starts its system service (the systemd unit, or without
  # systemd its init script); we run our own, so stop that service again, and only it.
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]]; then
    # Stops the pid in /run/prometheus/prometheus.pid, nothing else.
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
  # Likewise containerd's system service (the local node runs its own, on its own socket).
  if [[ " ${missing[*]} " == *" containerd "* && -d /run/systemd/system ]]; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
  fi
fi
for tool in go cargo python3; do
  command -v "$tool" >/dev/null || { echo "[deps] $tool is required but not installed" >&2; exit 1; }
done
cargo fmt --version >/dev/null && cargo clippy --version >/dev/null
