# brainpipe developer targets. `make help` lists them.
# The README's two set-up commands are `make demo` and `make test`; .ci/run runs `make test`.

PYTHON ?= python3
DEMO   ?= demo
CONFIG ?= configs/smoke.yaml

.PHONY: help install demo demo-meg test lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

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

# The MEG demo, scaled to a CPU: 100 Hz instead of 1 kHz (so 2 s windows are 200 samples, every
# 0.5 s), magnetometers only, a small encoder. configs/meg.yaml holds the CamCAN-scale settings.
MEG_DEMO_SET = --set preprocess.sfreq=100 --set preprocess.h_freq=40 --set preprocess.notch_freqs=[] \
	--set preprocess.meg_picks=mag --set cache.workers=2 --set train.device=cpu --set train.epochs=4 \
	--set train.num_workers=0 --set train.batch_size=32 --set train.embedding_dim=32 --set train.lr=0.005 \
	--set train.val_fraction=0.2 \
	--set "train.model_kwargs={n_filters_time: 16, n_filters_spat: 16, pool_time_length: 20, pool_time_stride: 10}"

demo-meg:  ## synthetic MEG corpus -> index -> build-cache -> train subject pairs (CPU) -> EER (after make install)
	$(PYTHON) -m brainpipe synth --layout meg --out $(DEMO)/meg/raw --n-subjects 20 --sessions 2 2 --duration 20 20 --seed 0 --overwrite
	$(PYTHON) -m brainpipe index --raw $(DEMO)/meg/raw --index $(DEMO)/meg/index.npz --config configs/meg.yaml $(MEG_DEMO_SET)
	$(PYTHON) -m brainpipe build-cache --index $(DEMO)/meg/index.npz --cache $(DEMO)/meg/cache.h5 --config configs/meg.yaml $(MEG_DEMO_SET) --force
	$(PYTHON) -m brainpipe inspect $(DEMO)/meg/cache.h5
	rm -rf $(DEMO)/meg/runs/pairs
	$(PYTHON) -m brainpipe train --cache $(DEMO)/meg/cache.h5 --run-dir $(DEMO)/meg/runs/pairs --config configs/meg.yaml $(MEG_DEMO_SET)
	$(PYTHON) -m brainpipe embed --cache $(DEMO)/meg/cache.h5 --checkpoint $(DEMO)/meg/runs/pairs/best.pt --out $(DEMO)/meg/embeddings.h5

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

clean:  ## remove demo data and caches
	rm -rf $(DEMO) .pytest_cache .ruff_cache
