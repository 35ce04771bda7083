# Developer entry points. `make demo` runs the main job on a local cluster; `make test`
# passes the tests from a fresh machine. Both do their own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: test
test: ## everything: deps, tools, lint, generated-file drift, local cluster, all tests
	hack/test.sh

.PHONY: lint-shell
lint-shell: ## shellcheck the scripts in hack/ and bench/ (make test does it too)
	shellcheck -x -P SCRIPTDIR hack/*.sh bench/*.sh .ci/run

.PHONY: tools
tools: ## build the pinned control-plane tools into the cache (no-op when cached)
	hack/ensure-deps.sh
	hack/build-tools.sh

.PHONY: images
images: ## build the container images from their Containerfiles, no engine needed (cached)
	hack/ensure-deps.sh
	hack/build-images.sh build

.PHONY: cluster-up
cluster-up: tools ## start the local cluster; kubeconfig in .dev/kubeconfig
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## stop the local cluster and everything it started
	hack/cluster.sh down

.PHONY: generate
generate: ## regenerate committed generated files (CRDs, the chart's CRD copy and RBAC rules, manifests/install.yaml)
	hack/verify-generated.sh --update

.PHONY: verify
verify: ## fail when generated files drift; lint, render and dry-run the chart on the local cluster
	hack/verify-generated.sh
	hack/verify-chart.sh

# ---- the local node and Prometheus (hack/node.sh, hack/prometheus.sh) ----
.PHONY: node-up prometheus-up prometheus-down
node-up: ## start the local node (containerd, kubelet, kube-proxy, CoreDNS) and Prometheus if they are down
	hack/cluster.sh node-up

prometheus-up: ## start Prometheus for the local cluster; URL in .dev/prometheus-url
	hack/prometheus.sh up

prometheus-down: ## stop Prometheus
	hack/prometheus.sh down

.PHONY: demo
demo: ## the main job: train, validate, serve, canary, promote and roll back on a local cluster
	hack/demo.sh

.PHONY: bench-runtime
bench-runtime: ## serve iris with mlops-runtime and with MLServer, same load, side by side
	bench/runtime.sh

.PHONY: bench-rollback
bench-rollback: ## time from fault onset to all traffic on stable, 10 runs, beside the floor
	bench/rollback.sh

.PHONY: bench-pod-ready
bench-pod-ready: ## pod create -> Ready on the local node (kubelet + containerd), 10 in a row and 10 at once
	bench/pod-ready.sh
