#!/usr/bin/env bash
# `make test`: everything from a fresh machine to a verdict. Installs what is missing, builds
# the tools (cached), checks formatting, lints (Rust and shell) and generated files, starts a
# local cluster unless one is running, runs every test (end-to-end ones included), and stops
# what it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
t0=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - t0))" >&2; }

step "dependencies"
hack/ensure-deps.sh
step "tools from Go modules"
hack/build-tools.sh
PATH=$(hack/build-tools.sh --print):$PATH
export PATH

step "build (the images carry these binaries)"
cargo build --workspace --locked
# The images, from their Containerfiles (cached by content; the binaries are the build above);
# tests/images.rs checks them against the Containerfiles.
step "images"
hack/build-images.sh build
step "format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# -x -P SCRIPTDIR: follow `source` of hack/versions.env, relative to each script.
shellcheck -x -P SCRIPTDIR hack/*.sh bench/*.sh .ci/run
step "generated files"
hack/verify-generated.sh

started=0
cleanup() { if ((started)); then step "stopping the cluster"; hack/cluster.sh down; fi; }
trap cleanup EXIT
if ! hack/cluster.sh status; then
  step "starting the local cluster"
  started=1
fi
# Also on a running cluster: makes sure its node and Prometheus run (no-op if they do) and
# imports the images just built.
hack/cluster.sh up
export KUBECONFIG=$root/.dev/kubeconfig

# End-to-end tests are #[ignore]d so that a plain `cargo test` never counts them as passed
# without a cluster; here the cluster runs, so they run too. The benchmarks (bench_*) are
# bench/'s. --no-fail-fast: one failing test binary must not hide the others' results;
# cargo still exits non-zero when any failed.
step "tests"
cargo test --workspace --locked --no-fail-fast -- --include-ignored --skip bench_ \
  --test-threads "${TEST_THREADS:-4}"
# The clean stop, proven: after `down`, nothing of the node may remain on this machine (no
# processes or shims, mounts, network namespaces, veths, bridge, KUBE-* chains, cgroups).
if ((started)); then
  step "clean stop"
  started=0
  hack/cluster.sh down
  if ! hack/node.sh leftovers; then
    echo "hack/cluster.sh down left the above behind" >&2
    exit 1
  fi
fi
step "done"
