# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench notebooks redis browser iproute2 clean openfhe-env orion-env

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-installs whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) openfhe-env

# The bootstrapping CKKS engine: OpenFHE's wheel imports only on CPython 3.10, so it gets an environment of
# its own, which he_compute starts as a child process (schemes/ckks/ofhe.py).  PYTHON310 names the interpreter.
PYTHON310 ?= $(shell ls "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.10*/bin/python 2>/dev/null | tail -1)
OPENFHE_STAMP := .venv-openfhe/.installed

$(OPENFHE_STAMP):
	@test -n "$(PYTHON310)" || { echo "Error: no CPython 3.10 found for the OpenFHE engine: install one (pyenv install 3.10) or set PYTHON310" >&2; exit 1; }
	$(PYTHON310) -m venv .venv-openfhe
	.venv-openfhe/bin/pip install --quiet openfhe==1.6.1.0.22.4 numpy
	touch $(OPENFHE_STAMP)

openfhe-env: $(OPENFHE_STAMP)

# Orion (orion-fhe, PyTorch to CKKS on Lattigo), only for the side-by-side benchmark (python -m bench orion):
# it wants scipy <= 1.14.1 and torchvision, which the main environment must not get, so it has an environment
# of its own that reads everything else (torch 2.3.1, numpy) from the main one through a .pth file.
ORION_STAMP := .venv-orion/.installed

$(ORION_STAMP): | $(STAMP)
	$(PYTHON) -m venv .venv-orion
	echo "$(CURDIR)/$(VENV)/lib/python3.11/site-packages" > .venv-orion/lib/python3.11/site-packages/zz_main_venv.pth
	.venv-orion/bin/pip install --quiet scipy==1.14.1 h5py==3.12.1 numpy==1.26.4  # numpy: the one torch 2.3.1 was built for
	.venv-orion/bin/pip install --quiet --no-deps orion-fhe==1.0.2 torchvision==0.18.1
	touch $(ORION_STAMP)

orion-env: $(ORION_STAMP)

# Redis for the scale-out queue tests: Debian's redis-server, started by the tests themselves.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null \
	  || echo "warning: could not install redis-server; Redis tests will fail" >&2; }

# A real headless browser for the coordinator's status page test: Debian's chromium and its driver.
browser:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
	  || echo "warning: could not install chromium; the status page test will fail" >&2; }

# ip and tc for the link benchmark (network namespaces, a shaped veth pair): Debian's iproute2.
iproute2:
	@{ command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; } || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2) >/dev/null \
	  || echo "warning: could not install iproute2; the link benchmark will fail" >&2; }

demo: install
	$(BIN)/python -m he_compute.demo

# Types (mypy, strict for the wire, the plumbing and the worker) and ruff's bug-catching rules.
lint: install
	$(BIN)/ruff check he_compute tests bench
	$(BIN)/mypy

test: install redis browser lint
	$(BIN)/python -m pytest -q

# Minutes, not tens of minutes: no FHE compilation heavier than a small tree, no notebooks (README).
test-fast: install redis lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: install redis iproute2 orion-env
	$(BIN)/python -m bench

# Re-executes the five tutorials in place, so that the stored notebooks show this code's outputs
# (minutes: notebooks 1 and 3 compile TFHE circuits); tests/test_notebooks.py checks they are current.
notebooks: install redis
	$(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) .venv-openfhe .venv-orion .hec demo-out
