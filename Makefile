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
# Spark and lance start-up chatter (JVM warnings, log4j notices); errors still show.
SPARK_FILTER := { grep -v -E "^(netlib-(blas|lapack): JNI_OnLoad|WARNING: Using incubator|Using Spark's default log4j|Setting default log level|To adjust logging level|[0-9/]+ [0-9:]+ WARN |  warnings.warn|.*UserWarning: lance is not fork-safe)" || true; }

# Airflow for the demo: a project-local home with SQLite, this repo's dags/, no examples.
AIRFLOW_ENV = AIRFLOW_HOME=$(abspath $(DEMO_DIR))/airflow_home AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__DAGS_FOLDER=$(abspath dags) PATH=$(abspath $(BIN)):$$PATH

.PHONY: setup demo test lint bench-smoke clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing vista-memory[$(FAISS_EXTRA),dev] into $(VENV) (first time: a few minutes)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(FAISS_EXTRA),dev]" 2>&1 | $(PIP_FILTER)
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@printf '# The demo: the default VISTA (K=16 summary tokens + the ridge read-out over k=64 item\n# vectors started from the item co-occurrence SVD) with a GSU (each candidate also attends to its top-32 memory-bank\n# tokens), on synthetic data with a 1,000-item vocabulary (50 topics x 20 items; at the\n# default 20,000 items see BENCHMARKS.md, issue 21).\n[synth]\nn_users = 500\nn_topics = 50\nitems_per_topic = 20\nmax_events = 2500\nn_old_interests = 6\nn_current_interests = 2\n[model]\ngsu_k = 32\n[memory]\nenabled = true\n' > $(DEMO_DIR)/vista.toml
	@echo "== 1. generate a synthetic lifelong dataset (power-law lengths, bad rows injected)"
	cd $(DEMO_DIR) && VISTA_SYNTH__END_DATE=$$(date -u -d yesterday +%F) ../$(BIN)/vista data synth --quiet
	@echo "== 2. validate every day with Spark (local[*]): bad rows go to quarantine with a reason, nothing is lost"
	cd $(DEMO_DIR) && ../$(BIN)/vista job validate --all 2>&1 | $(SPARK_FILTER)
	@echo "== 3. train the default VISTA (the co-occurrence start, then 1 epoch: early stopping keeps whichever has the better validation AUC) and, on the same split, the no-history model beside it"
	cd $(DEMO_DIR) && ../$(BIN)/vista train --epochs 1 --baseline
	@echo "== 4. summarize every user with Spark up to the day before yesterday: workers fold histories and stage rows, nothing visible yet"
	cd $(DEMO_DIR) && ../$(BIN)/vista job summarize --full --date $$(date -u -d '2 days ago' +%F) 2>&1 | $(SPARK_FILTER)
	@echo "== 5. publish: one commit per table, then move the serving tag"
	cd $(DEMO_DIR) && ../$(BIN)/vista job publish --promote 2>&1 | $(SPARK_FILTER)
	@echo "== 5b. TWIN-V2 memory banks for the GSU with Spark: every user's history clustered (<= 256 events a cluster), one commit"
	cd $(DEMO_DIR) && ../$(BIN)/vista job cluster --full --date $$(date -u -d '2 days ago' +%F) 2>&1 | $(SPARK_FILTER)
	@echo "== 5c. pretrained item vectors at scale: Spark ALS over the training window's events, a new version of the store's item_vectors table ([train] pretrain_items = \"table\" starts a model from it)"
	cd $(DEMO_DIR) && ../$(BIN)/vista job item-vectors --training-window 2>&1 | $(SPARK_FILTER)
	@echo "== 6. the nightly Airflow DAG for yesterday (airflow dags test; SQLite in $(DEMO_DIR)/airflow_home):"
	@echo "      wait for events -> validate -> incremental summarize -> publish -> check -> promote -> cluster (the day joins each bank) -> compact"
	cd $(DEMO_DIR) && $(AIRFLOW_ENV) ../$(BIN)/airflow db migrate > airflow_migrate.log 2>&1 || { tail -30 airflow_migrate.log; exit 1; }
	cd $(DEMO_DIR) && $(AIRFLOW_ENV) ../$(BIN)/airflow dags test vista_nightly $$(date -u -d yesterday +%F) > airflow_nightly.log 2>&1 || { tail -60 airflow_nightly.log; exit 1; }
	@grep -o "DagRun Finished: dag_id=vista_nightly, logical_date=[^,]*" $(DEMO_DIR)/airflow_nightly.log; grep -o "state=success, run_type" $(DEMO_DIR)/airflow_nightly.log | head -1
	@echo "== 7. read the longest user's summary back from the store by id (now through yesterday)"
	cd $(DEMO_DIR) && ../$(BIN)/vista summary get 0
	cd $(DEMO_DIR) && ../$(BIN)/vista store info
	@echo "== 8. score candidates for that user from Python's OnlineScorer (one amortized pass over the summary plus each candidate's GSU picks from the memory bank; a user with no summary takes the cold-start path)"
	cd $(DEMO_DIR) && ../$(BIN)/vista score 0 1 2 3 42 4242 777
	cd $(DEMO_DIR) && ../$(BIN)/vista score 99999999 1 2 3
	@echo "== 8b. the scorer as a network service: vista serve on a free 127.0.0.1 port (dynamic batching on), the same user scored through HTTP (vista score --url), a look at /metrics, then stopped"
	@cd $(DEMO_DIR) && { ../$(BIN)/vista serve --port 0 > serve.log 2>&1 & echo $$! > serve.pid; } && \
	  for i in $$(seq 600); do grep -q "listening on" serve.log && break; kill -0 $$(cat serve.pid) 2>/dev/null || { cat serve.log; exit 1; }; sleep 0.1; done && \
	  url=$$(grep -o "http://[0-9.]*:[0-9]*" serve.log | head -1) && head -1 serve.log && \
	  { set +e; ../$(BIN)/vista score --url $$url 0 1 2 3 42 4242 777 && \
	    ../$(BIN)/python -c "import httpx, sys; u = sys.argv[1]; print(httpx.get(u + '/readyz').text); print(*[l for l in httpx.get(u + '/metrics').text.splitlines() if l.startswith(('vista_requests_total', 'vista_batch_requests_count', 'vista_summaries_table_version', 'vista_model_loaded'))], sep='\n')" $$url; \
	    rc=$$?; kill $$(cat serve.pid); wait $$(cat serve.pid) 2>/dev/null; exit $$rc; }
	@echo "== 9. long memory: TWIN-V2-cluster that user's whole history (<= 256 events a cluster) and GSU-search it for two candidates"
	cd $(DEMO_DIR) && ../$(BIN)/vista cluster 0 --candidates 42 4242 --k 2
	@echo "== demo finished; outputs under $(DEMO_DIR)/data, $(DEMO_DIR)/artifacts and $(DEMO_DIR)/airflow_nightly.log"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (lint + format), mypy on the four packages, and the dependency direction (import-linter).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every script under benchmarks/ once at its smallest sizes (a few minutes; not a measurement).
bench-smoke: $(STAMP)
	benchmarks/smoke.sh

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
