#!/usr/bin/env bash
# Prometheus for the local cluster: Debian's `prometheus`, on the node address 10.244.0.1
# (the host and pods, such as an operator installed by its chart, both reach it) with a free port,
# scraping every 2 s the pods annotated prometheus.io/scrape: "true" (prometheus.io/port,
# prometheus.io/path) at podIP:port. Series carry namespace, pod, and every pod label
# (label names sanitised: app.kubernetes.io/name -> app_kubernetes_io_name). Debian's build
# has no Kubernetes discovery, so targets come from a file_sd file that mlops-scrape-targets
# (testkit/src/bin) writes from a watch of the node's pods.
#
#   hack/prometheus.sh up      start (no-op when running); URL written to .dev/prometheus-url
#   hack/prometheus.sh down    stop it (hack/cluster.sh down stops it too)
#   hack/prometheus.sh url     print the URL
#
# Only pod addresses of the local node's private range (10.244.0.0/16) are scraped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dev=$root/.dev
state=$dev/cluster
dir=$state/prometheus
url_file=$dev/prometheus-url
kubeconfig=$dev/kubeconfig
targets=$dir/targets.json
node_name=local-node
node_ip=10.244.0.1

log() { printf '[prometheus] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
running() {
  local p
  for p in prometheus scrape-targets; do
    [[ -f $state/pids/$p ]] && kill -0 "$(cat "$state/pids/$p")" 2>/dev/null || return 1
  done
}
ready() { curl -fsS "$1/-/ready" >/dev/null 2>&1; }

up() {
  command -v prometheus >/dev/null || { log "prometheus is not installed (hack/ensure-deps.sh installs it)"; exit 1; }
  [[ -f $kubeconfig ]] || { log "no local cluster (.dev/kubeconfig): hack/cluster.sh up"; exit 1; }
  if running && [[ -f $url_file ]] && ready "$(cat "$url_file")"; then
    log "already running at $(cat "$url_file")"; return 0; fi
  down_quiet
  mkdir -p "$dir/data" "$state/pids" "$state/logs"
  local port; port=$(free_port)
  cat >"$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 2s
  scrape_timeout: 1500ms
  evaluation_interval: 2s
scrape_configs:
  # Debian builds prometheus without Kubernetes discovery: mlops-scrape-targets watches the
  # API server and writes the annotated pods of the node to this file_sd file.
  - job_name: kubernetes-pods
    file_sd_configs:
      - files: [$targets]
        refresh_interval: 2s
    relabel_configs:
      # Only pods of the local node (its private range); never anything off this host.
      - source_labels: [__address__]
        regex: '10\\.244\\..+'
        action: keep
YAML
  (cd "$root" && cargo build --quiet --locked -p testkit --bin mlops-scrape-targets)
  echo '[]' >"$targets"
  setsid "${CARGO_TARGET_DIR:-$root/target}/debug/mlops-scrape-targets" "$kubeconfig" "$node_name" "$targets" \
    >"$state/logs/scrape-targets.log" 2>&1 </dev/null &
  echo $! >"$state/pids/scrape-targets"
  setsid prometheus --config.file "$dir/prometheus.yml" --storage.tsdb.path "$dir/data" \
    --storage.tsdb.retention.time 1d --web.listen-address "$node_ip:$port" \
    --web.enable-lifecycle --log.level warn >"$state/logs/prometheus.log" 2>&1 </dev/null &
  echo $! >"$state/pids/prometheus"
  local url=http://$node_ip:$port
  for _ in $(seq 150); do ready "$url" && break; sleep 0.2; done
  ready "$url" || { log "prometheus did not become ready; see $state/logs/prometheus.log"; tail -20 "$state/logs/prometheus.log" >&2; exit 1; }
  echo "$url" >"$url_file"
  log "ready at $url (URL in .dev/prometheus-url)"
}

down_quiet() {
  local p pid
  for p in scrape-targets prometheus; do
    [[ -f $state/pids/$p ]] || continue
    pid=$(cat "$state/pids/$p")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$state/pids/$p"
  done
  rm -rf "$dir" "$url_file"
}

case ${1:-} in
  up) up ;;
  down) down_quiet; log "stopped" ;;
  url) cat "$url_file" ;;
  *) echo "usage: $0 up|down|url" >&2; exit 2 ;;
esac
