# Two commands do everything on a fresh machine:
#   make demo   set up, then index generated sample images and search them
#   make test   set up, then lint and run the test suite
# And one for the peers benchmark (bench/peers.py; its own venv, since peers pin old packages):
#   make bench-peers   [PEERS_N=50000 PEERS_ENGINES="lookalike qdrant" PEERS_WORKDIR=DIR]
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench bench-peers clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

PEERS_VENV ?= .venv-peers
PEERS_N ?= 1000000
PEERS_WORKDIR ?= peers-work
PEERS_ENGINES ?=

$(PEERS_VENV)/.installed: pyproject.toml bench/peers-requirements.txt
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -e '.[engine]' -r bench/peers-requirements.txt
	touch $@

bench-peers: $(PEERS_VENV)/.installed
	$(PEERS_VENV)/bin/python bench/peers.py --n $(PEERS_N) --workdir $(PEERS_WORKDIR) \
		$(if $(PEERS_ENGINES),--engines $(PEERS_ENGINES))

demo: $(VENV)/.installed
	$(VENV)/bin/lookalike demo --workdir lookalike-demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) lookalike-demo .pytest_cache
