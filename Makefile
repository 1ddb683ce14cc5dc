# mmkd — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow bench reliability venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m mmkd demo --out runs/demo

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -x --timeout 900

test-slow: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m slow --timeout 3600

bench: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) bench/run_all.py $(BENCH_ARGS)

reliability: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m slow tests/reliability --timeout 3600

clean:
	rm -rf $(VENV) runs build src/*.egg-info
