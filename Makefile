# The commands README.md names. `make test` is what CI runs (after .ci/run installed the tools).
CARGO ?= cargo
BERTH := target/debug/berth

.PHONY: build test lint fmt crds docs check-generated clean

build:
	$(CARGO) build --all-targets

## Everything CI checks: formatting, lints, then every test (unit, contract, integration).
test:
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
	$(BERTH) crds --out-dir charts/berth/crds

docs: build
	$(BERTH) crds --markdown > docs/api.md

clean:
	$(CARGO) clean

.PHONY: demo-images

# The berth-demo/* images the Docker host backend, its tests and `make demo` use, built offline
# from Debian packages with `docker import`. Cached by tag: FORCE=1 make demo-images rebuilds.
demo-images:
	tests/images/build.sh

.PHONY: bench-backup

## Throughput of `berth backup run` on ~1 GB next to `pg_dump | zstd`, and berth's peak memory
## (BENCH_ROWS=... to scale; needs postgresql, zstd and GNU time).
bench-backup:
	$(CARGO) bench -p berth --bench backup_throughput
