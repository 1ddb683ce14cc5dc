# mmkd — the two commands: `make demo` and `make test` (and `make lint` before a commit).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The tested version of every dependency; pyproject.toml keeps the ranges a library user installs from.
PIN    := -c constraints.txt
# CLIP_benchmark's own environment, for the comparison `make bench` runs (bench/bench_clip_benchmark.py)
CLIPBENCH       := .venv-clipbench
CLIPBENCH_STAMP := $(CLIPBENCH)/.installed

.PHONY: docs-results demo test test-slow lint bench clipbench reliability paper-dry-run venv constraints browser clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIN) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet $(PIN) -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m mmkd demo --out runs/demo

# Copy a rerun of the demo's selection and test comparison (docs/DISTILLATION.md, "Reproduce") into the docs.
RUN ?= runs/evidence
docs-results: $(STAMP)
	$(PY) docs/results/publish.py $(RUN)

# The suite is mostly short CLI runs in subprocesses, each starting Python and torch on one core; two pytest
# workers (pytest-xdist), each given whole test files, keep both cores busy. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -x --timeout 900 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m mypy

test-slow: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m slow --timeout 3600

bench: $(STAMP) $(CLIPBENCH_STAMP)
	OMP_NUM_THREADS=2 $(PY) bench/run_all.py $(BENCH_ARGS)

# CLIP_benchmark, which bench/bench_clip_benchmark.py compares with, in its own environment at the compared
# version (it needs numpy < 2.4 and `requests`, which it imports without declaring; CPU is enough).
$(CLIPBENCH_STAMP):
	test -x $(CLIPBENCH)/bin/python || $(PYTHON) -m venv $(CLIPBENCH)
	$(CLIPBENCH)/bin/python -m pip install --quiet --upgrade pip
	$(CLIPBENCH)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 clip_benchmark==1.6.2 \
		requests 'numpy<2.4'
	touch $(CLIPBENCH_STAMP)

clipbench: $(CLIPBENCH_STAMP)

# the paper's pipeline at full size with random weights in the published formats (about 10 GB scratch)
paper-dry-run: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) bench/paper_dry_run.py --readme README.md

reliability: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m slow tests/reliability --timeout 3600

# After a change of dependencies: pin what .venv now has (mmkd itself left out).
constraints: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -viE '^(mmkd|pip)=='; } > constraints.tmp
	mv constraints.tmp constraints.txt

# Headless Chromium for the report page test (tests/test_report.py; it skips without chromium); needs root.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-dejavu-core; }

clean:
	rm -rf $(VENV) $(CLIPBENCH) runs build src/*.egg-info
