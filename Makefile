# The commands README.md names. `make test` is what CI runs (after .ci/run installed the tools).
CARGO ?= cargo
BERTH := target/debug/berth

.PHONY: build test check lint fmt crds docs check-generated clean bench

build:
	$(CARGO) build --all-targets

## Everything CI checks: installs/starts what the tests need (.ci/setup: packages, images, the
## real Kubernetes of ../shared/k8s), then formatting, lints and every test (unit, contract,
## integration, Kubernetes e2e). `make check` skips the setup.
test:
	@env=$$(bash .ci/setup) || exit 1; eval "$$env"; export BERTH_E2E_KUBECONFIG BERTH_E2E_SCRATCH_KUBECONFIG; $(MAKE) --no-print-directory check

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate the checked-in CRDs and the API reference from the Rust types.
crds: build
	$(BERTH) crds --out-dir crds
	$(BERTH) crds --out-dir charts/berth/files/crds

docs: build
	$(BERTH) crds --markdown > docs/api.md

clean:
	$(CARGO) clean

.PHONY: demo-images

# The berth-demo/* images the Docker host backend, its tests and `make demo` use, built offline
# from Debian packages with `docker import`. Cached by tag: FORCE=1 make demo-images rebuilds.
demo-images:
	tests/images/build.sh

.PHONY: e2e-k8s bench-plan

# The Kubernetes end-to-end suite against a real cluster: installs the CRDs, runs the AppStack
# controller in-process in fresh namespaces (deleted afterwards). Needs a kubeconfig allowed to
# install CRDs and create namespaces: make e2e-k8s BERTH_E2E_KUBECONFIG=~/.kube/config
e2e-k8s:
	@test -n "$(BERTH_E2E_KUBECONFIG)" || { echo "set BERTH_E2E_KUBECONFIG to a kubeconfig (the tests skip without it)"; exit 2; }
	BERTH_E2E_KUBECONFIG="$(BERTH_E2E_KUBECONFIG)" $(CARGO) test --test e2e_k8s -- --nocapture --test-threads=1

# CPU time of planning + building one AppStack, and operator memory with 1,000 AppStacks and
# their children in the reflector caches.
bench-plan:
	$(CARGO) bench --bench plan
.PHONY: bench-autoscale

## Autoscaler figures against a real redis-server: reaction time from a depth change to the
## scale request (pollInterval 1s, p50/p99 over TRIALS=100; polling only, then with keyspace
## notifications) and one poll cycle of 1,000 Workers.
bench-autoscale:
	$(CARGO) bench -p berth --bench autoscale

.PHONY: bench-k8s
## The real `berth operator` (BENCH_PROFILE=dist build, as in the image) against a private control-plane-only
## Kubernetes it starts and deletes itself (K8S_HOME=/var/tmp/berth-k8s-bench, apiserver :6643)
## with STACKS=1000 AppStacks: peak and settled RSS, then requests over IDLE_SECS=300 idle
## seconds by verb (berth_kube_requests_total and the apiserver's apiserver_request_total).
## Needs root (start.sh) and kubectl. BERTH_BIN=path skips the build.
BENCH_PROFILE ?= dist
bench-k8s:
	@if [ -z "$(BERTH_BIN)" ]; then $(CARGO) build --profile $(BENCH_PROFILE) -p berth --bin berth; fi
	BERTH=$(or $(BERTH_BIN),$(or $(CARGO_TARGET_DIR),target)/$(if $(filter dev,$(BENCH_PROFILE)),debug,$(BENCH_PROFILE))/berth) \
	  bash operator/benches/k8s_operator.sh

.PHONY: bench-backup

## Throughput of `berth backup run` on ~1 GB next to `pg_dump | zstd`, and berth's peak memory
## (BENCH_ROWS=... to scale; needs postgresql, zstd and GNU time). BACKUP_PROFILE=dist measures
## the image's build (backup Jobs run it; a longer build).
BACKUP_PROFILE ?= bench
bench-backup:
	$(CARGO) bench --profile $(BACKUP_PROFILE) -p berth --bench backup_throughput
## The Docker host demo: examples/demo/ on the local engine (README's first command).
## `make demo` builds berth and the demo images when missing, starts `berth host run` in the
## background (state, log and pid in .berth-demo/), waits until the stack is Ready, and prints
## the URL and the status. `make demo-status`, `make demo-down` (VOLUMES=1 also drops the data).
.PHONY: demo demo-status demo-down bench-docker
DEMO_DIR ?= .berth-demo
DEMO_BERTH ?= $(or $(CARGO_TARGET_DIR),target)/debug/berth
DEMO_PORT ?= 8080
DEMO_FLAGS = --state-dir $(DEMO_DIR)/state --instance berth-demo

demo:
	$(CARGO) build -p berth
	tests/images/build.sh
	@mkdir -p $(DEMO_DIR)
	@if [ -f $(DEMO_DIR)/berth.pid ] && kill -0 $$(cat $(DEMO_DIR)/berth.pid) 2>/dev/null; then \
	  echo "berth is already running (pid $$(cat $(DEMO_DIR)/berth.pid))"; \
	else \
	  nohup $(DEMO_BERTH) host run --manifests examples/demo $(DEMO_FLAGS) \
	    --http-port 127.0.0.1:$(DEMO_PORT) --proxy-image berth-demo/nginx:latest \
	    > $(DEMO_DIR)/berth.log 2>&1 & echo $$! > $(DEMO_DIR)/berth.pid; \
	fi
	@echo "waiting for the demo stack (log: $(DEMO_DIR)/berth.log) ..."
	@for i in $$(seq 1 180); do \
	  if $(DEMO_BERTH) host status $(DEMO_FLAGS) -o json | grep -q '"phase": "Ready"'; then break; fi; \
	  if ! kill -0 $$(cat $(DEMO_DIR)/berth.pid) 2>/dev/null; then cat $(DEMO_DIR)/berth.log; exit 1; fi; \
	  sleep 1; \
	done
	@$(DEMO_BERTH) host status $(DEMO_FLAGS)
	@echo
	@echo "The demo answers at http://demo.localhost:$(DEMO_PORT)/ (127.0.0.1:$(DEMO_PORT), Host: demo.localhost):"
	@echo "  curl -H 'Host: demo.localhost' http://127.0.0.1:$(DEMO_PORT)/"

demo-status:
	@$(DEMO_BERTH) host status $(DEMO_FLAGS)

demo-down:
	-@if [ -f $(DEMO_DIR)/berth.pid ]; then kill $$(cat $(DEMO_DIR)/berth.pid) 2>/dev/null; rm -f $(DEMO_DIR)/berth.pid; fi
	$(DEMO_BERTH) host down --manifests examples/demo $(DEMO_FLAGS) $(if $(VOLUMES),--volumes,)

## berth vs docker compose on the same stack: converge time, recovery time, failed requests
## during an image update under load. Prints the figures and their ratios.
bench-docker:
	$(CARGO) bench -p berth --bench docker_compose

## Certificate figures on the Docker host with a real Pebble: time from the manifest to HTTPS
## served, and requests (and failures) during a renewal's graceful proxy reload.
.PHONY: bench-cert
bench-cert:
	$(CARGO) test -p berth --test cert_docker_host -- --nocapture 2>&1 | grep figure:

## The berth image (operator/Dockerfile): a build of berth with the `dist` profile (release with
## LTO, optimized for size, see Cargo.toml), stripped, copied onto a base
## with glibc, libgcc and CA certificates, tagged berth:<version> and berth:dev. Offline by
## default: the base berth-base:bookworm is made from this host's Debian packages
## (tests/images/build.sh berth-base, `docker import`); BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot
## builds the same Dockerfile on distroless. IMAGE_PROFILE=dev packs a debug build (quick local
## iterations; stripped too). Prints the image size.
.PHONY: image
IMAGE_PROFILE ?= dist
IMAGE ?= berth
BASE_IMAGE ?= berth-base:bookworm
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' operator/Cargo.toml | head -n1)
IMAGE_CTX := $(or $(CARGO_TARGET_DIR),target)/image

image:
	$(CARGO) build --profile $(IMAGE_PROFILE) -p berth --bin berth
	@mkdir -p $(IMAGE_CTX)
	@rm -f $(IMAGE_CTX)/berth
	strip -o $(IMAGE_CTX)/berth $(or $(CARGO_TARGET_DIR),target)/$(if $(filter dev,$(IMAGE_PROFILE)),debug,$(IMAGE_PROFILE))/berth
	@if [ "$(BASE_IMAGE)" = berth-base:bookworm ]; then tests/images/build.sh berth-base; fi
	DOCKER_BUILDKIT=0 docker build -q -f operator/Dockerfile --build-arg BASE=$(BASE_IMAGE) \
	  --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) -t $(IMAGE):dev $(IMAGE_CTX) >/dev/null
	@docker image inspect -f '{{.Size}}' $(IMAGE):dev | \
	  awk '{printf "built $(IMAGE):$(VERSION) and $(IMAGE):dev: %.1f MB\n", $$1/1e6}'

## Every benchmark, one after the other (figures in docs/performance.md). Add new bench-*
## targets to this list.
bench: bench-plan bench-autoscale bench-backup bench-docker bench-cert
