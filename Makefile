# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build that lies on this project's dev machines; override for GPUs, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test lint pillow-simd clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/facetrain demo

# Multi-process gloo tests crawl without one thread per rank on small machines.
test: install
	OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# Swap pillow-simd in for pillow (same `PIL` package); rerun after any install that pulls pillow.
pillow-simd: install
	$(PY) -m pip install --force-reinstall --no-deps pillow-simd

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
