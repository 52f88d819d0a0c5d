# The two commands a newcomer runs: `make demo` and `make test`. Both install what is missing.
VENV := .venv
DATA := $(CURDIR)/.wanq

# The demo's simulator: ~2 s generations with a few faults of every kind.
DEMO_ENV := WANQ_DATA_DIR=$(DATA) WANQ_REDIS_URL= WANQ_PROVIDER_URL= \
	WANQ_SIM_LATENCY=2 WANQ_SIM_P_500=0.03 WANQ_SIM_P_429=0.03 WANQ_SIM_P_BROKEN=0.02 \
	WANQ_SIM_P_FAIL=0.03 WANQ_SIM_SEED=7 WANQ_ARCHIVE_DIR=$(DATA)/archive

.PHONY: setup demo test lint clean

setup:
	@ops/bootstrap.sh

demo: setup
	$(DEMO_ENV) $(VENV)/bin/wanq run ops/samples/demo.jsonl --allow-invalid --sim \
		--out $(DATA)/demo-results.jsonl

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(DATA) .pytest_cache
