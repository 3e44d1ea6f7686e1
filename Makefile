# One place for every developer and CI command. `make test` and `make demo` create
# .venv on first use, so a fresh clone needs nothing but Python >= 3.10.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest

# The example system on honcho; free ports, so it never collides with anything running.
demo: $(STAMP)
	$(VENV)/bin/service_framework up --free_ports -cl WARNING examples/orders/system.toml

bench: $(STAMP)
	$(PY) benchmarks/validation.py
	$(PY) benchmarks/inline.py
	$(PY) benchmarks/reqrep.py
	$(PY) benchmarks/reqrep_clients.py
	$(PY) benchmarks/pubsub.py
	$(PY) benchmarks/pubsub_fanout.py
	$(PY) benchmarks/ndarray.py
	$(PY) benchmarks/coldpath.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
