#!/usr/bin/env bash
# Fails when a committed generated file differs from what the code generates now.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
status=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [[ -d crds ]]; then
  cargo run --quiet --locked --bin mlops-operator -- crd >"$tmp/crds.yaml"
  if ! diff -u crds/mlops.dev.yaml "$tmp/crds.yaml" >"$tmp/crds.diff"; then
    echo "crds/ is out of date: run 'make generate' and commit the result" >&2
    head -40 "$tmp/crds.diff" >&2; status=1
  fi
fi
exit $status
