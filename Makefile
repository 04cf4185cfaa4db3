# imaged: every target installs what it needs (Debian packages, then a venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := containerd runc containernetworking-plugins iproute2 docker-registry skopeo umoci busybox-static zstd zsh bash-completion strace systemd
CONFIG ?= .run/imaged.yaml

.PHONY: all deps venv peers protos run demo test lint fmt bench soak clean

all: test

# Debian packages the daemon (make run) and the suite need; installed only when missing.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Regenerates src/imaged/pb from protos/ (tests/test_protos.py checks they agree).
protos: venv
	$(PY) tools/genprotos.py

run: deps venv
	$(PY) tools/devrun.py

# Offline images to pull and verify: a local registry, a signed and an unsigned image, a rule (run `make run` first).
demo: deps venv
	$(PY) tools/demo.py

# Real peers built from their Go modules (tools/peers.py): containerd 2.x, crictl + critest, cosign v3,
# olareg (OCI referrers API) and distribution v3 (pull-through cache),
# into ~/.cache/imaged-peers (IMAGED_PEERS_CACHE); reused when present. IMAGED_PEERS=none skips them.
peers: venv
	$(PY) tools/peers.py build

# A failed peer build does not stop the suite: the tests that need that peer fail, naming the error.
test: deps venv lint
	@$(PY) tools/peers.py build || echo "peers: a build failed (above); the tests that need it will fail"
	$(VENV)/bin/pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/ruff format --check src tests tools
	$(VENV)/bin/mypy

fmt: venv
	$(VENV)/bin/ruff format src tests tools
	$(VENV)/bin/ruff check --fix src tests tools

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

# Performance against containerd's own ctr, as ratios in one run (not part of make test).
bench: deps venv $(VENV)/.bench
	$(PY) -m bench

# The long load and kill loop (not part of make test).
soak: deps venv
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/soak --soak

clean:
	rm -rf .run build dist .pytest_cache .mypy_cache
