# The README's two commands: `make demo` and `make test`. Each sets itself up.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# faiss-cpu and faiss-gpu install the same module: pick one by what this machine has.
FAISS_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(FAISS_EXTRA)
DEMO_DIR ?= .demo
# pip on this image prints a line per package about local mirrors it skips; hide only those.
PIP_FILTER := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing vista-memory[$(FAISS_EXTRA),dev] into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(FAISS_EXTRA),dev]" 2>&1 | $(PIP_FILTER)
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@echo "== 1. generate a synthetic lifelong dataset (power-law lengths, bad rows injected)"
	cd $(DEMO_DIR) && ../$(BIN)/vista data synth --users 1000 --max-events 100000 --quiet
	@echo "== 2. validate it: bad rows go to quarantine with a reason, nothing is lost"
	cd $(DEMO_DIR) && ../$(BIN)/vista data validate --quiet
	@echo "== 3. train VISTA end to end (1 short epoch on the demo data; see vista evaluate for the full comparison)"
	cd $(DEMO_DIR) && VISTA_TRAIN__TARGETS_PER_USER=8 VISTA_TRAIN__EVAL_TARGETS_PER_USER=8 ../$(BIN)/vista train --epochs 1 --quiet
	@echo "== 4. summarize the longest user's whole history in-process (K x d tokens, whatever n is)"
	cd $(DEMO_DIR) && ../$(BIN)/vista summarize 0
	@echo "== demo finished; outputs under $(DEMO_DIR)/data and $(DEMO_DIR)/artifacts"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
