# brainpipe developer targets. `make help` lists them.
# The README's two set-up commands are `make demo` and `make test`; .ci/run runs `make test`, then
# `make test-containers`.

PYTHON ?= python3
DEMO   ?= demo
CONFIG ?= configs/smoke.yaml

.PHONY: help install demo test lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install:  ## install brainpipe with the train and dev extras (CPU torch 2.13.0 pinned first)
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[train,dev]"

demo: install  ## synthetic TUAB corpus -> index -> build-cache -> train (CPU, minutes) -> metrics
	$(PYTHON) -m brainpipe synth --layout tuab --out $(DEMO)/raw --n-subjects 40 --seed 0 --overwrite
	$(PYTHON) -m brainpipe index --raw $(DEMO)/raw --index $(DEMO)/index.npz --config $(CONFIG)
	$(PYTHON) -m brainpipe inspect $(DEMO)/index.npz
	$(PYTHON) -m brainpipe build-cache --index $(DEMO)/index.npz --cache $(DEMO)/cache.h5 --config $(CONFIG) --force
	$(PYTHON) -m brainpipe inspect $(DEMO)/cache.h5
	rm -rf $(DEMO)/runs/smoke
	$(PYTHON) -m brainpipe train --cache $(DEMO)/cache.h5 --run-dir $(DEMO)/runs/smoke --config $(CONFIG)

test: install  ## lint, format check and the whole test suite
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest

lint:  ## ruff fix and format
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

bench:  ## the benchmarks (index, cache, loader); each prints ours beside the baseline
	$(PYTHON) scripts/bench_index.py
	$(PYTHON) scripts/bench_cache.py
	$(PYTHON) scripts/bench_loader.py

.PHONY: test-containers
# A private dockerd (root; installs Debian's docker.io if missing), stand-in base images, then
# compose.yaml for real: build, index -> build-cache -> train, re-run, errors, tensorboard. Its
# dockerd is stopped even when pytest is interrupted.
test-containers: install  ## the images and compose.yaml through a real Docker engine (root; minutes)
	@status=0; $(PYTHON) -m pytest -m containers tests/containers || status=$$?; \
	  scripts/containers/engine.sh down >/dev/null; exit $$status

clean:  ## remove demo data and caches
	rm -rf $(DEMO) .pytest_cache .ruff_cache
