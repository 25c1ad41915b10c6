# edgefleet entry points. `make test` runs the suite; `make setup` prepares a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch for the compression passes must be the CPU build. Where pip would resolve the pin in
# controller/pyproject.toml to a CUDA build (PyPI's Linux x86_64 wheel pulls ~3 GB of nvidia-*
# wheels), setup adds PyTorch's CPU index, whose `+cpu` build of the same version pip then
# prefers (a local version sorts above the plain one); afterwards it checks torch.version.cuda.
TORCH_PIN       := $(shell grep -o '"torch==[^"]*"' controller/pyproject.toml | tr -d '"')
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

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
	@extra=""; \
	  if $(PIP) install --quiet --dry-run --ignore-installed --report $(VENV)/torch-plan.json "$(TORCH_PIN)" >/dev/null 2>&1 \
	    && grep -q '"name": "nvidia-' $(VENV)/torch-plan.json; then \
	    echo "pip would install a CUDA build of $(TORCH_PIN) here: taking the CPU build from $(TORCH_CPU_INDEX)"; \
	    extra="--extra-index-url $(TORCH_CPU_INDEX)"; \
	  fi; \
	  rm -f $(VENV)/torch-plan.json; \
	  echo "$(PIP) install --quiet $$extra -e shared -e agent -e controller[compress] -e harness -r requirements-dev.txt"; \
	  $(PIP) install --quiet $$extra -e shared -e agent -e "controller[compress]" -e harness -r requirements-dev.txt
	$(PY) -c "import sys, torch; sys.exit(torch.version.cuda and f'torch {torch.__version__} is a CUDA build (CUDA {torch.version.cuda}): see README, CPU-only torch')"
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
	$(PY) bench/registry_retention.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
