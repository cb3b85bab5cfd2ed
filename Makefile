# Two commands: `make repro` (the offline miniature pipeline) and `make test` (the test suite).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: repro test data lint lab strip clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# (Re)install when the pins change. `constraints.txt` pins every transitive dependency.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --upgrade --quiet "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# The miniature's Fashion-MNIST files: found, or installed (Debian package, as root or with password-less sudo),
# or a stop at once with the one command to run (lptlib/install.py).
data: $(STAMP)
	$(BIN)/python -m lptlib.install

# Paper scale: write `preset: <name>` and your data paths into params.yaml (docs/paper-scale.md), then `make repro`.
repro: data
	$(BIN)/nbstripout --extra-keys=metadata.language_info notebooks/*.ipynb
	$(BIN)/python -m lptlib.hygiene notebooks/*.ipynb
	PATH="$$(cd '$(BIN)' && pwd):$$PATH" $(BIN)/dvc repro

test: lint data
	PATH="$$(cd '$(BIN)' && pwd):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): lint and formatting of the package, tests and notebooks
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lab: $(STAMP)
	PATH="$$(cd '$(BIN)' && pwd):$$PATH" $(BIN)/jupyter lab notebooks

strip: $(STAMP)
	$(BIN)/nbstripout --extra-keys=metadata.language_info notebooks/*.ipynb
	$(BIN)/python -m lptlib.hygiene notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)
