# The project's command index. `make help` lists the targets.
# Everything runs in .venv (the oldest-Airflow targets in .venv-oldest), created from the committed
# locks with uv (bootstrapped with pip).

PYTHON ?= python3.11
UV_VERSION ?= 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements/ci.lock
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
OLD_VENV := .venv-oldest
OLD_LOCK := requirements/oldest.lock
OLD_STAMP := $(OLD_VENV)/.installed

.PHONY: help env demo test test-fast test-live test-live-celery test-live-oldest test-oldest-fast test-matrix test-ui ui-deps bench soak docs lint dist lock sandbox clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "uv==$(UV_VERSION)"

$(STAMP): $(LOCK) pyproject.toml | $(UV)
	test -x $(PY) || $(UV) venv -q -p "$$(command -v $(PYTHON))" $(VENV)
	$(UV) pip sync -q -p $(PY) $(LOCK)
	$(UV) pip install -q -p $(PY) --no-deps -e .
	touch $(STAMP)

env: $(STAMP) ## Create or refresh .venv from the lock (Python 3.11, newest Airflow 3.x)

$(OLD_STAMP): $(OLD_LOCK) pyproject.toml | $(UV)
	test -x $(OLD_VENV)/bin/python || $(UV) venv -q -p "$$(command -v $(PYTHON))" $(OLD_VENV)
	$(UV) pip sync -q -p $(OLD_VENV)/bin/python $(OLD_LOCK)
	$(UV) pip install -q -p $(OLD_VENV)/bin/python --no-deps -e .
	touch $(OLD_STAMP)

demo: $(STAMP) ## Start the embedded sandbox and run every example DAG end to end with `airflow dags test`
	$(PY) scripts/demo.py

test: $(STAMP) ## Run the whole test suite (unit, sandbox, example DAGs under real Airflow)
	$(PY) -m pytest -q --durations=15 --timeout=600 tests

test-fast: $(STAMP) ## The test suite without the example-DAG runs
	$(PY) -m pytest -q -m "not dag_run" --timeout=300 tests

test-live: $(STAMP) ## Every example DAG on a running Airflow (api-server, scheduler, dag-processor, triggerer) on PostgreSQL; CI runs it
	AUDIENCE_LIVE_TESTS=1 $(PY) -m pytest -q -m live --timeout=1200 tests/live

test-live-celery: $(STAMP) ## test-live on CeleryExecutor: Redis broker, two workers with separate homes; CI runs it
	AUDIENCE_LIVE_TESTS=1 AUDIENCE_LIVE_EXECUTOR=celery $(PY) -m pytest -q -m live --timeout=1200 tests/live

test-live-oldest: $(OLD_STAMP) ## test-live on the oldest supported Airflow (3.1, .venv-oldest); CI runs it
	AUDIENCE_LIVE_TESTS=1 $(OLD_VENV)/bin/python -m pytest -q -m live --timeout=1200 tests/live

# The UI test drives Debian's chromium through chromedriver; `make test-ui` installs them when missing.
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver

ui-deps: ## Install Debian's chromium, chromium-driver and a font for the UI test (apt-get, as root)
	apt-get update -q && apt-get install -y -q chromium chromium-driver fonts-dejavu-core

test-ui: $(STAMP) ## The UI test: real Airflow API server + headless Chromium; screenshots into docs/_static/screenshots
	@test -x $(CHROMIUM) && test -x $(CHROMEDRIVER) || $(MAKE) ui-deps
	AUDIENCE_UI_TESTS=1 $(PY) -m pytest -q -m ui --timeout=900 tests/ui

test-oldest-fast: $(OLD_STAMP) ## The suite without example-DAG runs on the oldest supported Airflow (3.1); CI runs it
	$(OLD_VENV)/bin/python -m pytest -q -m "not dag_run" --timeout=300 tests

test-matrix: $(STAMP) $(OLD_STAMP) ## The suite on the oldest supported Airflow 3.x (3.1, oldest.lock), then the newest
	$(OLD_VENV)/bin/python -m pytest -q --timeout=600 tests
	$(PY) -m pytest -q --timeout=600 tests

bench: $(STAMP) ## Contact-list engine benchmark (ratios against bare hashlib, peak memory, sync)
	$(PY) benchmarks/bench_contact_list.py

SCENARIOS ?= 200
soak: $(STAMP) ## Sync model (faults, kills, overlapping runs) for SCENARIOS scenarios per vendor; SEED=n replays
	$(PY) tests/sync_model/soak.py $(SCENARIOS) $(if $(SEED),--seed $(SEED))

docs: $(STAMP) ## Build the Sphinx docs (nitpicky, every page reread: -E) with warnings as errors
	$(PY) -m sphinx -E -W --keep-going -b html -q docs docs/_build/html

lint: $(STAMP) ## ruff and mypy (the package and the benchmarks)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check airflow_audience_provider
	$(VENV)/bin/mypy airflow_audience_provider benchmarks

dist: $(STAMP) ## Build the wheel and sdist into dist/
	$(PY) -m build --no-isolation --outdir dist .

sandbox: $(STAMP) ## Serve every vendor fake on local ports and print AIRFLOW_CONN_* lines
	$(VENV)/bin/airflow-audience-sandbox

lock: | $(UV) ## Re-resolve requirements/*.lock from requirements/*.in
	$(UV) pip compile -q --python-version 3.11 requirements/ci.in -o requirements/ci.lock
	$(UV) pip compile -q --python-version 3.11 requirements/oldest.in -o requirements/oldest.lock

clean: ## Remove the environment and build outputs
	rm -rf $(VENV) $(OLD_VENV) $(TOOLS) build dist docs/_build .demo
