# The few commands everyone runs. `make run` runs the demo (a simulated fleet); `make serve` serves the panel
# alone; `make test` runs the suite, `make test-fast` its quick part; `make lint` checks style, types and layers.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
WHEELHOUSE ?= $(or $(AGENT_WHEELHOUSE),var/wheelhouse)

.PHONY: run serve test test-fast lint format migrate admin static bench bench-ingest bench-replicas bench-charts bench-wake bench-gateway bench-sim bench-sim-speed sim-compiled sim-pure bench-tiers bench-litellm-venv gateway agent-wheels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

migrate: $(VENV)/.runtime
	$(BIN)/python manage.py migrate --noinput

admin: migrate
	$(BIN)/python manage.py fleet_admin

# The admin's and the dashboard's static files into STATIC_ROOT, which the app's WhiteNoise serves.
static: $(VENV)/.runtime
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0

# The demo: the panel with simulated GPU hosts and a real Azure trace replayed through its gateway.
# DEMO_ARGS passes options, e.g. DEMO_ARGS="--trace code --speedup 4 --hosts 3".
DEMO_ARGS ?=
run: $(VENV)/.runtime $(WHEELHOUSE)/.complete
	$(BIN)/python manage.py demo --host $(HOST) --port $(PORT) $(DEMO_ARGS)

serve: admin static $(WHEELHOUSE)/.complete
	@echo "GPU fleet control panel: http://$(HOST):$(PORT)/  (admin: http://$(HOST):$(PORT)/admin/)"
	$(BIN)/python -m uvicorn fleet.project.asgi:application --host $(HOST) --port $(PORT) --http fleet.project.http:ReadDeadlineProtocol

test: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: the embedded default (SQLite, no Redis), no heavyweight components, first failure stops.
test-fast: $(VENV)/.dev
	env -u DATABASE_URL -u REDIS_URL $(BIN)/python -m pytest -m "not services" -x -q $(PYTEST_ARGS)

# Wheels of the agent's dependencies, which the panel serves to GPU hosts (set PANEL's AGENT_WHEELHOUSE).
agent-wheels: | $(BIN)/python
	$(BIN)/pip download --quiet --only-binary=:all: -r agents/requirements.txt -d $(WHEELHOUSE)
	touch $(WHEELHOUSE)/.complete

# What run and serve fill the wheelhouse with: once, again when the agent's requirements change.
# Never fatal: offline, the panel starts anyway and its Add-a-host page says what is missing.
$(WHEELHOUSE)/.complete: agents/requirements.txt | $(BIN)/python
	@PIP_RETRIES=0 PIP_TIMEOUT=10 $(MAKE) --no-print-directory agent-wheels \
	  || echo "agent wheels not downloaded (no PyPI?); the panel starts, its Add-a-host page says what is missing" >&2

bench: $(VENV)/.dev
	$(BIN)/python bench/agent_overhead.py

# The simulated policy benchmark on both Azure traces; reports under var/.
bench-sim: $(VENV)/.dev
	$(BIN)/python bench/simulator.py

# How fast the simulator runs a whole comparison (trace requests a second): SIM_HOURS hours of the
# ServeGen rate series at a SIM_RATE req/s mean (defaults 2 and 10).
bench-sim-speed: $(VENV)/.dev
	$(BIN)/python bench/sim_speed.py --hours $(or $(SIM_HOURS),2) --rate $(or $(SIM_RATE),10)

# Optional: the simulator's engine and event loop compiled with mypyc (fleet/sim/compiled.py), about twice
# as fast with the same results; rerun after editing them (a stale build refuses to load). sim-pure undoes it.
sim-compiled: $(VENV)/.dev
	$(BIN)/python -m fleet.sim.compiled

sim-pure: | $(BIN)/python
	$(BIN)/python -c 'from fleet.sim.compiled import compiled_remove; compiled_remove()'

# The whole method: requests split by RCF tier, each tier its own pool and GPU type, in money
# (bench/sim/tiers.json); SIM_TRACES=azure-code,... runs some of the traces, SIM_JOBS the processes.
bench-tiers: $(VENV)/.dev
	$(BIN)/python bench/tiers.py

# Both need a PostgreSQL they may create and drop the database bench_tele on (BENCH_DATABASE_URL;
# BENCH_DB_NAME names another scratch database for bench-ingest).
bench-ingest: $(VENV)/.dev
	$(BIN)/python bench/ingest.py

# Two report replicas as deploy/ runs them, behind nginx from deploy/nginx, against one, under the
# same load (needs nginx and Redis too; BENCH_HOSTS hosts of 8 GPUs every 5 s, default 500).
bench-replicas: $(VENV)/.dev
	$(BIN)/python bench/ingest.py --nginx --replicas 2 --hosts $(or $(BENCH_HOSTS),500) --seconds 30

bench-charts: $(VENV)/.dev
	$(BIN)/python bench/chart_queries.py

# What taking back batch memory adds to a wake (a scratch database bench_wake on BENCH_DATABASE_URL's server).
bench-wake: $(VENV)/.dev
	$(BIN)/python bench/wake_cost.py

# The gateway alone, for dedicated gateway processes (the panel also serves it under /v1/).
gateway: migrate
	$(BIN)/python -m fleet.gateway --host $(HOST) --port $(or $(GATEWAY_PORT),8001)

# LiteLLM for the gateway benchmark's comparison, in its own virtualenv (needs PyPI).
bench-litellm-venv:
	test -x .venv-litellm/bin/python || $(PYTHON) -m venv .venv-litellm
	.venv-litellm/bin/pip install --quiet -r bench/litellm-requirements.txt

# Direct vs gateway vs LiteLLM, all inside a network namespace that has only loopback
# (LiteLLM reaches for the internet at start); needs root for `ip netns`.
BENCH_NETNS ?= gpufleet-bench
bench-gateway: $(VENV)/.dev
	ip netns add $(BENCH_NETNS) 2>/dev/null || true
	ip netns exec $(BENCH_NETNS) ip link set lo up
	ip netns exec $(BENCH_NETNS) $(BIN)/python bench/gateway_latency.py

# ruff, then mypy (pyproject.toml: strict on the pure packages), then the layer contracts (import-linter).
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
