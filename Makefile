# edgefleet entry points. `make test` runs the suite; `make setup` prepares a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: setup test lint bench demo clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: $(PY) shared/pyproject.toml agent/pyproject.toml controller/pyproject.toml harness/pyproject.toml requirements-dev.txt
	@# Debian packages the tests run for real: the broker, Prometheus (the dashboard's
	@# queries), Chromium (the fleet page) and systemd-analyze (the unit files)
	@missing=""; \
	  { command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto; } || missing="$$missing mosquitto"; \
	  command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    else echo "missing:$$missing and I cannot install them: apt-get install$$missing"; exit 1; fi; \
	  fi
	$(PIP) install --quiet -e shared -e agent -e "controller[compress]" -e harness -r requirements-dev.txt
	touch $@

demo: setup
	$(PY) bench/demo.py

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check shared agent controller harness tests bench
	$(VENV)/bin/ruff format --check shared agent controller harness tests bench
	$(VENV)/bin/mypy shared/src agent/src controller/src harness/src

bench: setup
	$(PY) bench/agent_footprint.py
	$(PY) bench/agent_swap.py
	$(PY) bench/controller_rollout.py
	$(PY) bench/compress_profiles.py
	$(PY) bench/int8_breakdown.py
	$(PY) bench/observability.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
