#!/usr/bin/env bash
# Benchmark: mlops-runtime serve versus MLServer (mlserver + mlserver-sklearn)
# on the same iris logistic regression, one after the other on 127.0.0.1,
# driven by the same load generator (wrk) at concurrency 1, 16 and 64.
#
#   bench/runtime.sh                 # full run (DURATION=10 s per level)
#   DURATION=3 bench/runtime.sh      # quicker
#
# Needs: cargo, python3 (3.9+), wrk (Debian package `wrk`), taskset.
# MLServer is installed into a venv cached outside the repository, in
# ${MLOPS_CACHE:-~/.cache/mlops-operator}/mlserver-<version>-venv.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MLOPS_CACHE:-$HOME/.cache/mlops-operator}
# shellcheck source=../hack/versions.env
source "$ROOT/hack/versions.env"
# Pinned (hack/versions.env) so the comparison is reproducible; a new pin, a new venv.
VENV=$CACHE/mlserver-$MLSERVER_VERSION-venv
MLSERVER_PACKAGES=${MLSERVER_PACKAGES:-"mlserver==$MLSERVER_VERSION mlserver-sklearn==$MLSERVER_VERSION scikit-learn==$SCIKIT_LEARN_VERSION"}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }

if [ ! -x "$VENV/bin/mlserver" ]; then
  echo "installing MLServer into $VENV" >&2
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet $MLSERVER_PACKAGES
fi

# oha (open-loop load at a fixed rate) for the equal-load rows, built once from crates.io.
OHA=$CACHE/oha-$OHA_VERSION/bin/oha
if [ ! -x "$OHA" ]; then
  echo "building oha $OHA_VERSION into $CACHE/oha-$OHA_VERSION (once)" >&2
  cargo install --quiet --locked --root "$CACHE/oha-$OHA_VERSION" "oha@$OHA_VERSION"
fi

echo "building mlops-runtime (release)" >&2
(cd "$ROOT" && cargo build --release --quiet -p mlops-runtime)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac

exec "$VENV/bin/python" "$ROOT/bench/runtime_bench.py" \
  --runtime "$TARGET_DIR/release/mlops-runtime" \
  --mlserver "$VENV/bin/mlserver" \
  --dataset "$ROOT/runtime/testdata/iris.csv" \
  --duration "${DURATION:-10}" \
  --oha "$OHA"
