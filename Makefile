# Two commands: `make repro` (the offline miniature pipeline) and `make test` (the test suite).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: repro test lab preset strip clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# (Re)install when the pins change. `constraints.txt` pins every transitive dependency.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --upgrade --quiet "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# `make repro PRESET=places_lt SET="data.root=... data.split_dir=..."` switches params.yaml first.
repro: $(STAMP)
ifdef PRESET
	$(BIN)/python -m lptlib.presets $(PRESET) $(foreach s,$(SET),--set $(s))
endif
	$(BIN)/nbstripout --extra-keys=metadata.language_info notebooks/*.ipynb
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest $(PYTEST_ARGS)

lab: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/jupyter lab notebooks

# Switch params.yaml to a paper-scale preset, e.g.
#   make preset PRESET=places_lt SET="data.root=/data/places365 data.split_dir=/data/Places_LT"
preset: $(STAMP)
	$(BIN)/python -m lptlib.presets $(PRESET) $(foreach s,$(SET),--set $(s))

strip: $(STAMP)
	$(BIN)/nbstripout --extra-keys=metadata.language_info notebooks/*.ipynb

clean-venv:
	rm -rf $(VENV)
