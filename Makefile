# Two commands do everything on a fresh machine:
#   make demo   set up, then index generated sample images and search them
#   make test   set up, then lint and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/lookalike demo --workdir lookalike-demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) lookalike-demo .pytest_cache
