# tfx-nsl developer entry points. Everything runs inside .venv, created from
# a Python 3.10 that really runs and installed with constraints.txt.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUTPUT_ROOT ?= runs
PYTEST_ARGS ?=
# Local Flink/Spark clusters (tfx_nsl/engines.py): jars cache and run folder.
export TFX_NSL_ENGINES_HOME ?= $(CURDIR)/.engines
# Where `make run` runs its Beam steps: direct, flink or spark.
ENGINE ?= direct

# Keras 2 for NSL, in every process we start (design.md, "Keras 2 only").
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# numpy's and faiss's OpenBLAS pick their kernels by CPU model; a VM that
# hides the model (these machines report "Intel(R) Xeon(R) Processor") gets
# the generic Prescott kernels, whose sgemm is 3x to 5x slower
# (docs/benchmarks.md). Unless set, name the kernels the CPU's flags allow.
ifeq ($(origin OPENBLAS_CORETYPE),undefined)
OPENBLAS_CORETYPE := $(shell if grep -qw avx512f /proc/cpuinfo 2>/dev/null; \
  then echo SkylakeX; elif grep -qw avx2 /proc/cpuinfo 2>/dev/null; \
  then echo Haswell; fi)
endif
ifneq ($(OPENBLAS_CORETYPE),)
export OPENBLAS_CORETYPE
endif

# First candidate that really runs Python 3.10 with venv: a pyenv shim on
# PATH may exist and still refuse to run, so each one is tried.
find_python310 = $(firstword $(foreach p,$(PYTHON) python3.10 \
    $(sort $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.10*/bin/python3.10)) \
    /usr/local/bin/python3.10 /usr/bin/python3.10,\
    $(shell $(p) -c 'import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 10)' \
        >/dev/null 2>&1 && echo $(p))))

.PHONY: help install run test test-fast clean constraints chromium bench-graph bench-augment \
  bench-quality bench-eval bench-engines bench-scale kfp-compile engines-fetch flink-up spark-up engines-down \
  docs

help:
	@echo "make run    run the NSL pipeline on the bundled digits data (outputs in $(OUTPUT_ROOT)/)"
	@echo "make test   run the test suite (Flink and Spark engine tests included)"
	@echo "make test-fast   the test suite without the engine tests"
	@echo "make run ENGINE=flink|spark   the pipeline's Beam steps on a local cluster"
	@echo "make flink-up | spark-up | engines-down   local clusters (docs/engines.md)"
	@echo "make bench-graph | bench-augment | bench-quality | bench-eval | bench-engines | bench-scale   benchmarks (docs/benchmarks.md)"
	@echo "make kfp-compile  compile the Kubeflow/Vertex pipeline spec (KFP_IMAGE=..., KFP_PIPELINE_ROOT=gs://...)"
	@echo "make docs   regenerate the component reference pages (docs/components/) from the docstrings"
	@echo "make clean  remove $(OUTPUT_ROOT)/, build outputs and .venv"

install: $(STAMP)

# Reinstalls when the constraints or the package metadata change.
$(STAMP): constraints.txt setup.py pyproject.toml
	@python310="$(call find_python310)"; \
	if [ -z "$$python310" ]; then \
	  echo "error: no working Python 3.10 found (tried PYTHON=$(PYTHON), python3.10 on PATH, pyenv versions, /usr/bin). Install Python 3.10 or pass PYTHON=/path/to/python3.10." >&2; \
	  exit 1; \
	fi; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then \
	  echo "Creating $(VENV) with $$python310"; rm -rf $(VENV); "$$python310" -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install --quiet -c constraints.txt pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt --no-build-isolation -e '.[test]'
	$(PY) -m pip check
	@touch $@

run: $(STAMP)
	$(VENV)/bin/tfx-nsl run --output-root $(OUTPUT_ROOT) --engine $(ENGINE)

docs: $(STAMP)
	$(PY) -m tfx_nsl.reference docs/components

# The engine tests start the clusters they need and stop them afterwards.
test: $(STAMP) chromium engines-fetch
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: $(STAMP) chromium
	$(VENV)/bin/pytest -m 'not engines' $(PYTEST_ARGS)

# Pinned, checksummed job-server and engine jars (tfx_nsl/engines.lock).
engines-fetch: $(STAMP)
	$(PY) -m tfx_nsl.engines fetch

flink-up: engines-fetch
	$(PY) -m tfx_nsl.engines up flink

spark-up: engines-fetch
	$(PY) -m tfx_nsl.engines up spark

engines-down:
	@if [ -x $(PY) ]; then $(PY) -m tfx_nsl.engines down; fi

# Headless Chromium renders the robustness report in a test (Debian package).
chromium:
	@command -v chromium >/dev/null || { \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -q && $$sudo apt-get install -y -q chromium; }

bench-graph: $(STAMP)
	$(PY) benchmarks/bench_graph.py $(BENCH_ARGS)

bench-augment: $(STAMP)
	$(PY) benchmarks/bench_augment.py $(BENCH_ARGS)

bench-quality: $(STAMP)
	$(PY) benchmarks/bench_quality.py $(BENCH_ARGS)

bench-eval: $(STAMP)
	$(PY) benchmarks/bench_eval.py $(BENCH_ARGS)

bench-engines: engines-fetch
	$(PY) benchmarks/bench_engines.py $(BENCH_ARGS)

bench-scale: engines-fetch
	$(PY) benchmarks/bench_scale.py $(BENCH_ARGS)

# Kubeflow: compile the pipeline into a KFP v2 spec (docs/kubeflow.md).
KFP_IMAGE ?= tfx-nsl:0.1.0
KFP_PIPELINE_ROOT ?= gs://YOUR_BUCKET/tfx-nsl
KFP_OUTPUT ?= build/kfp/tfx-nsl-digits.yaml
KFP_ARGS ?=

kfp-compile: $(STAMP)
	$(PY) -m tfx_nsl.kubeflow.runner --image '$(KFP_IMAGE)' \
	  --pipeline-root '$(KFP_PIPELINE_ROOT)' --output '$(KFP_OUTPUT)' $(KFP_ARGS)

# Re-pins every package from what the current .venv resolved.
constraints: $(STAMP)
	@{ sed -n '1,2p' constraints.txt; \
	   $(PY) -m pip freeze --all --exclude-editable | grep -v -i '^tfx-nsl'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean: engines-down
	rm -rf $(OUTPUT_ROOT) build dist *.egg-info $(VENV) .engines
