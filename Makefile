# brainpipe developer targets. `make help` lists them.
# The README's two set-up commands are `make demo` and `make test`; .ci/run runs `make test`, then
# `make test-containers`.

PYTHON ?= python3
DEMO   ?= demo
CONFIG ?= configs/smoke.yaml

TUSZ_CONFIG ?= configs/tusz_smoke.yaml
TUSZ   ?= $(DEMO)/tusz

.PHONY: help install browser demo demo-fm demo-tusz demo-meg test test-fast test-cluster test-containers chaos lint bench clean

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

# Foundation-model demo: LaBraM's contract (200 Hz, µV, 1-s patches), random-initialised weights
# saved locally (the Hub is unreachable here; see README "Foundation models" for the real ones),
# a linear probe on CPU. Small LaBraM sizes so that it takes minutes. Random weights give the
# head weak features, so an epoch's balanced accuracy jumps (threshold near 0.5); its AUROC
# (about 0.99 on this corpus) and best.pt's eval metrics are the numbers to read.
FM_DEMO_SET = --set preprocess.montage=referential --set preprocess.sfreq=200 \
	--set preprocess.normalize=none --set preprocess.clip=null --set window.seconds=5 \
	--set window.stride_seconds=5 --set train.model=Labram --set train.pretrained=$(DEMO)/fm/weights \
	--set train.finetune=linear_probe --set train.epochs=3 --set train.batch_size=32 --set train.lr=0.005 \
	--set train.num_workers=0 --set train.device=cpu

demo-fm: install  ## synthetic TUAB -> build-cache at 200 Hz -> LaBraM from local weights -> linear probe -> metrics
	$(PYTHON) -m brainpipe synth --layout tuab --out $(DEMO)/fm/raw --n-subjects 24 --duration 60 90 --seed 0 --overwrite
	$(PYTHON) -m brainpipe index --raw $(DEMO)/fm/raw --index $(DEMO)/fm/index.npz --config $(CONFIG) $(FM_DEMO_SET)
	$(PYTHON) -m brainpipe build-cache --index $(DEMO)/fm/index.npz --cache $(DEMO)/fm/cache.h5 --config $(CONFIG) $(FM_DEMO_SET) --force
	$(PYTHON) scripts/save_random_weights.py Labram $(DEMO)/fm/weights --n-chans 19 --n-times 1000 --small
	rm -rf $(DEMO)/fm/runs/labram_probe
	$(PYTHON) -m brainpipe train --cache $(DEMO)/fm/cache.h5 --run-dir $(DEMO)/fm/runs/labram_probe --config $(CONFIG) $(FM_DEMO_SET)

demo-tusz: install  ## synthetic TUSZ -> index -> build-cache -> train -> predict -> score (CPU, minutes)
	$(PYTHON) -m brainpipe synth --layout tusz --out $(TUSZ)/raw --n-subjects 24 --seed 0 --overwrite
	$(PYTHON) -m brainpipe index --raw $(TUSZ)/raw --index $(TUSZ)/index.npz --config $(TUSZ_CONFIG)
	$(PYTHON) -m brainpipe build-cache --index $(TUSZ)/index.npz --cache $(TUSZ)/cache.h5 --config $(TUSZ_CONFIG) --force
	rm -rf $(TUSZ)/runs/smoke $(TUSZ)/pred
	$(PYTHON) -m brainpipe train --cache $(TUSZ)/cache.h5 --run-dir $(TUSZ)/runs/smoke --config $(TUSZ_CONFIG)
	$(PYTHON) -m brainpipe predict --cache $(TUSZ)/cache.h5 --checkpoint $(TUSZ)/runs/smoke/best.pt --split eval --out $(TUSZ)/pred --tune-on dev
	$(PYTHON) -m brainpipe score --ref $(TUSZ)/raw/edf/eval --hyp $(TUSZ)/pred/hyp --sweep --curve $(TUSZ)/pred/curve.csv

# The MEG demo, scaled to a CPU: 100 Hz instead of 1 kHz (so 2 s windows are 200 samples, every
# 0.5 s), magnetometers only, a small encoder. configs/meg.yaml holds the CamCAN-scale settings.
MEG_DEMO_SET = --set preprocess.sfreq=100 --set preprocess.h_freq=40 --set preprocess.notch_freqs=[] \
	--set preprocess.meg_picks=mag --set cache.workers=2 --set train.device=cpu --set train.epochs=4 \
	--set train.num_workers=0 --set train.batch_size=32 --set train.embedding_dim=32 --set train.lr=0.005 \
	--set train.val_fraction=0.2 \
	--set "train.model_kwargs={n_filters_time: 16, n_filters_spat: 16, pool_time_length: 20, pool_time_stride: 10}"

demo-meg: install  ## synthetic MEG corpus -> index -> build-cache -> train subject pairs (CPU) -> EER
	$(PYTHON) -m brainpipe synth --layout meg --out $(DEMO)/meg/raw --n-subjects 20 --sessions 2 2 --duration 20 20 --seed 0 --overwrite
	$(PYTHON) -m brainpipe index --raw $(DEMO)/meg/raw --index $(DEMO)/meg/index.npz --config configs/meg.yaml $(MEG_DEMO_SET)
	$(PYTHON) -m brainpipe build-cache --index $(DEMO)/meg/index.npz --cache $(DEMO)/meg/cache.h5 --config configs/meg.yaml $(MEG_DEMO_SET) --force
	$(PYTHON) -m brainpipe inspect $(DEMO)/meg/cache.h5
	rm -rf $(DEMO)/meg/runs/pairs
	$(PYTHON) -m brainpipe train --cache $(DEMO)/meg/cache.h5 --run-dir $(DEMO)/meg/runs/pairs --config configs/meg.yaml $(MEG_DEMO_SET)
	$(PYTHON) -m brainpipe embed --cache $(DEMO)/meg/cache.h5 --checkpoint $(DEMO)/meg/runs/pairs/best.pt --out $(DEMO)/meg/embeddings.h5

test: install browser  ## lint, format check and the whole test suite
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest

# tests/test_report.py opens the report in Debian's headless chromium; installed when missing (root).
browser:  ## install chromium for the report's browser test when it is missing (apt-get, root)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test-fast:  ## the inner loop: every test but the slow end-to-end ones (no install, no lint)
	$(PYTHON) -m pytest -m "not slow and not cluster and not containers" -q

test-cluster: install  ## the Slurm tests: a real single-node Slurm (root; apt-gets slurm + munge when missing)
	$(PYTHON) -m pytest -m cluster tests/cluster

chaos:  ## replay issue 16's fault cases (worker kill, concurrent build, finalize kill, full disk, SIGTERM, shm)
	scripts/chaos.sh

lint:  ## ruff fix and format
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

bench:  ## the benchmarks (index, cache, loader, predict, CPU conv); each prints ours beside the baseline
	$(PYTHON) scripts/bench_index.py
	$(PYTHON) scripts/bench_cache.py
	$(PYTHON) scripts/bench_loader.py
	$(PYTHON) scripts/bench_predict.py
	$(PYTHON) scripts/bench_conv.py

# A private dockerd (root; installs Debian's docker.io if missing), stand-in base images, then
# compose.yaml for real: build, index -> build-cache -> train, re-run, errors, tensorboard. Its
# dockerd is stopped even when pytest is interrupted.
test-containers: install  ## the images and compose.yaml through a real Docker engine (root; minutes)
	@status=0; $(PYTHON) -m pytest -m containers tests/containers || status=$$?; \
	  scripts/containers/engine.sh down >/dev/null; exit $$status

clean:  ## remove demo data and caches
	rm -rf $(DEMO) .pytest_cache .ruff_cache
