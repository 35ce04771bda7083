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

.PHONY: tools
tools: ## build the pinned control-plane tools into the cache (no-op when cached)
	hack/ensure-deps.sh
	hack/build-tools.sh

.PHONY: cluster-up
cluster-up: tools ## start the local cluster; kubeconfig in .dev/kubeconfig
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## stop the local cluster and everything it started
	hack/cluster.sh down

.PHONY: generate
generate: ## regenerate committed generated files (CRDs)
	mkdir -p crds
	cargo run --quiet --bin mlops-operator -- crd > crds/mlops.dev.yaml

.PHONY: verify
verify: ## fail when generated files drift
	hack/verify-generated.sh
