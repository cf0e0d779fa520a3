# recfleet: two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .venv-tools/bin/uv)
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/python/.stamp

.PHONY: help install protos run test test-unit lint bench chaos images chart-base clean tools chromium

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(UV):
	python3 -m venv .venv-tools && .venv-tools/bin/pip install -q uv==$(UV_VERSION)

.venv/.stamp: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python 3.11 --all-extras
	@touch $@

install: .venv/.stamp $(GEN_STAMP)  ## create .venv from uv.lock and generate the protos

# promtool from Debian's prometheus package (no server is installed or started), pinned by
# version and checksum; tests/deploy/test_alert_rules.py runs .venv-tools/bin/promtool.
PROMETHEUS_DEB_VERSION := 2.42.0+ds-5+deb12u1
PROMETHEUS_DEB_SHA256 := 81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55
PROMETHEUS_DIR := .venv-tools/prometheus-$(PROMETHEUS_DEB_VERSION)

tools: $(PROMETHEUS_DIR)/usr/bin/promtool chromium  ## promtool for the alert-rule tests, into .venv-tools/bin; chromium for the console's browser tests

# The operator console's browser tests (tests/e2e/test_console.py) drive Debian's chromium through
# Playwright (no browser download): installed once from the distribution when missing.
chromium:
	@command -v chromium >/dev/null || { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; }

$(PROMETHEUS_DIR)/usr/bin/promtool:
	rm -rf $(PROMETHEUS_DIR) && mkdir -p $(PROMETHEUS_DIR) .venv-tools/bin
	cd $(PROMETHEUS_DIR) && { apt-get download -q prometheus=$(PROMETHEUS_DEB_VERSION) \
		|| { apt-get update -q && apt-get download -q prometheus=$(PROMETHEUS_DEB_VERSION); }; }
	echo "$(PROMETHEUS_DEB_SHA256)  $(PROMETHEUS_DIR)/prometheus_$(PROMETHEUS_DEB_VERSION)_amd64.deb" | sha256sum --check --strict
	dpkg-deb -x $(PROMETHEUS_DIR)/prometheus_$(PROMETHEUS_DEB_VERSION)_amd64.deb $(PROMETHEUS_DIR)
	rm $(PROMETHEUS_DIR)/prometheus_$(PROMETHEUS_DEB_VERSION)_amd64.deb
	$@ --version
	ln -sfn ../prometheus-$(PROMETHEUS_DEB_VERSION)/usr/bin/promtool .venv-tools/bin/promtool

$(GEN_STAMP): $(PROTOS) .venv/.stamp
	rm -rf gen/python && mkdir -p gen/python
	PATH=$$PWD/.venv/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=gen/python --grpc_python_out=gen/python \
		--mypy_out=gen/python --mypy_grpc_out=gen/python $(PROTOS)
	@touch $@

protos: $(GEN_STAMP)  ## generate Python code and type stubs from protos/ into gen/python

run: install  ## prepare data, train, start the whole fleet; serves the gateway on 127.0.0.1:$${RECFLEET_GATEWAY_PORT:-8080}
	$(PY) -m recfleet_ctl.localfleet run $(if $(RETRAIN),--retrain)

test: install tools  ## the whole test suite against real Postgres, Redis and a Kafka-protocol broker
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-unit: install tools  ## unit tests only: no Postgres, Redis, broker or fleet needed
	$(PY) -m pytest -q -m "not integration and not e2e"; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: install  ## ruff (rules and format), the layer contracts (import-linter), the type checker
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	.venv/bin/lint-imports
	$(PY) -m mypy  # files, search path and strictness: [tool.mypy] in pyproject.toml

bench: install  ## end-to-end latency benchmark through the gateway (see bench/README.md)
	$(PY) bench/e2e_latency.py

chaos: install  ## the chaos suite: each dependency killed, frozen or slowed under load; writes docs/reliability.md
	$(PY) bench/chaos.py --docs $(CHAOS_ARGS)

clean:  ## remove generated code and local state
	rm -rf gen/python .state

IMAGE_REGISTRY ?= ghcr.io/recfleet
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' deploy/helm/recfleet/Chart.yaml)

# $(call image,NAME,MODULE,PORTS,LIBGOMP,TARGET): one image from deploy/docker/Dockerfile. It
# installs the pyproject extra NAME, runs `python -m MODULE`, exposes PORTS (the chart's), and
# gets the system OpenMP runtime when LIBGOMP is 1 (LightGBM and implicit link it).
define image
docker build -f deploy/docker/Dockerfile --target $(5) --build-arg EXTRA=$(1) --build-arg SERVICE=$(2) --build-arg PORTS="$(3)" --build-arg LIBGOMP=$(4) -t $(IMAGE_REGISTRY)/$(1):$(IMAGE_TAG) .
$(if $(PUSH),docker push $(IMAGE_REGISTRY)/$(1):$(IMAGE_TAG))
endef

images:  ## build the six images with Docker (IMAGE_REGISTRY, IMAGE_TAG; PUSH=1 pushes them)
	@docker info >/dev/null 2>&1 || { echo "make images needs Docker: a docker client and a running daemon"; exit 1; }
	$(call image,gateway,recfleet_gateway,8080 9090,0,service)
	$(call image,candidate-gen,recfleet_candidates,50051 9101,0,service)
	$(call image,ranking,recfleet_ranking,50071 9103,1,service)
	$(call image,feature-store,recfleet_features,50061 9102,0,service)
	$(call image,event-ingest,recfleet_ingest,50081 9104,0,service)
	$(call image,jobs,recfleet_jobs,,1,jobs)

chart-base: | .venv/.stamp  ## render deploy/kustomize/base and components from the Helm chart
	$(PY) deploy/kustomize/render.py
