# fer-platform: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOME_DIR ?= .fer
NODE_STAMP := node_modules/.package-lock.json
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test lint dev bench clean node chromium redis

install: $(STAMP)

# Azurite, the Azure Storage emulator the cloud tests start, pinned in package-lock.json (Node 20).
# npm ci rewrites node_modules/.package-lock.json, so this runs again only when the lock file changes.
node: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 20 and npm (the tests run Azurite)"; exit 1; }
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

# Debian's chromium, the headless browser the page tests drive through Playwright (executable_path; never
# `playwright install`, which downloads a browser). Installed once, when /usr/bin/chromium is missing.
chromium: $(CHROMIUM)

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "apt-get not found: install Chromium as $(CHROMIUM)"; exit 1; }
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends chromium

# Debian's redis-server, the Celery broker the scale-out tests start on 127.0.0.1 (persistence off).
# Installed once, when it is missing.
REDIS := /usr/bin/redis-server
redis: $(REDIS)

$(REDIS):
	@command -v apt-get >/dev/null || { echo "apt-get not found: install redis-server as $(REDIS)"; exit 1; }
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends redis-server

# torch's build. On a host without an NVIDIA GPU, PyTorch's CPU build from its own index: a ~200 MB download
# instead of PyPI's CUDA build with its ~3 GB of nvidia-* wheels, and ~290 MiB less resident in every
# process that imports it (BENCHMARKS.md, "the torch build"). Where that index cannot be reached, PyPI's
# build, with one line saying so. A GPU host takes PyPI's (CUDA) build; `make TORCH_INDEX=` always does.
# Linux x86_64 only: elsewhere PyPI's build is the CPU one already.
HAS_GPU := $(shell { [ -e /dev/nvidiactl ] || command -v nvidia-smi; } >/dev/null 2>&1 && echo 1)
LINUX_X86 := $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m))
TORCH_INDEX ?= $(if $(HAS_GPU),,$(if $(LINUX_X86),https://download.pytorch.org/whl/cpu))
TORCH_PINS = $(shell grep -E '^(torch|torchvision)==' constraints.txt)
# true when the venv holds exactly the pinned torch and torchvision, CPU builds (`2.14.1+cpu`)
TORCH_IS_CPU = import importlib.metadata as m, sys; pins = [p.split("==") for p in sys.argv[1:]]; \
  sys.exit(any(m.version(name) != version + "+cpu" for name, version in pins))

# Exact versions come from constraints.txt (torch/torchvision pinned as a matching pair).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24" setuptools wheel
	@if [ -n "$(TORCH_INDEX)" ] && ! $(BIN)/python -c '$(TORCH_IS_CPU)' $(TORCH_PINS) 2>/dev/null; then \
	  $(BIN)/pip install --quiet --timeout 30 --retries 1 --no-deps --force-reinstall \
	    --index-url $(TORCH_INDEX) $(TORCH_PINS) 2>$(VENV)/torch-index.log; \
	  if $(BIN)/python -c '$(TORCH_IS_CPU)' $(TORCH_PINS) 2>/dev/null; then \
	    echo "torch: the CPU build, from $(TORCH_INDEX) (no NVIDIA GPU here)"; \
	  else \
	    echo "torch: no CPU build came from $(TORCH_INDEX) (why: $(VENV)/torch-index.log): PyPI's build"; \
	  fi; \
	fi
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,celery,kubernetes]'
	touch $(STAMP)

demo: install
	$(BIN)/fer-platform --home $(HOME_DIR) demo

# The formatter and the linter first (seconds), then the suite.
test: install node chromium redis lint
	$(BIN)/pytest

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

dev: install
	$(BIN)/fer-platform --home $(HOME_DIR) dev

bench: install
	$(BIN)/python bench/run_all.py

clean:
	-$(BIN)/fer-platform --home $(HOME_DIR) db stop
	rm -rf $(HOME_DIR)
