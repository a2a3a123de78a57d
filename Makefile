# fer-platform: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOME_DIR ?= .fer

.PHONY: install demo test dev bench clean node

install: $(STAMP)

# Exact versions come from constraints.txt (torch/torchvision pinned as a matching PyPI pair).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24" setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/fer-platform --home $(HOME_DIR) demo

test: install
	$(BIN)/pytest

dev: install
	$(BIN)/fer-platform --home $(HOME_DIR) dev

bench: install
	$(BIN)/python bench/run_all.py

clean:
	-$(BIN)/fer-platform --home $(HOME_DIR) db stop
	rm -rf $(HOME_DIR)
