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
	# clip-retrieval's web front end, for `serve --clip-front` and its browser test; its own
	# dependencies pin versions that clash with ours, and none of its code is run
	$(PY) -m pip install --quiet --no-deps clip-retrieval==2.45.0
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/lookalike demo --workdir lookalike-demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) lookalike-demo .pytest_cache
