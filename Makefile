# `make demo` and `make test` set everything up themselves in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip's own index is used for everything; torch is whatever build pip resolves (unpinned).

.PHONY: demo test test-fast venv clean bench gpu-check

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ssl_rs.demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

# skips the tests marked slow (DDP and other multi-process runs, the method x regularizer matrix,
# long end-to-end runs); `make test` (CI) runs everything
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_knn.py
	$(PY) benchmarks/bench_augment.py
	$(PY) benchmarks/bench_georank_loss.py

# the GPU check (docs/benchmarks.md, "GPU check"): on a CUDA machine; `make gpu-check ARGS=--dry-run` anywhere
gpu-check: $(STAMP)
	GPU_CHECK_PYTHON=$(PY) bash benchmarks/gpu_check.sh $(ARGS)

clean:
	rm -rf demo_out runs .pytest_cache
