# The two commands the README promises: `make run` and `make test`. Both build .venv/ first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000

SHELL  := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip on this kind of machine lists its local mirrors noisily; keep real errors visible.
QUIET_PIP := { grep -v '^WARNING: Location' || true; }

.PHONY: setup run test docker-test fonts clean

setup: $(STAMP)

# Re-installs when pyproject.toml changes. torch/torchvision are pinned in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, torchvision, fastapi; print('torch', torch.__version__, '| torchvision', torchvision.__version__)"
	touch $(STAMP)

# app/serve.py: uvicorn, WEB_CONCURRENCY worker processes (1 unless set); the app writes its own
# JSON access line per request (app/observability.py).
run: setup
	$(PY) -m app.serve --host $(HOST) --port $(PORT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The image and compose as deployed, against a real Docker engine (deploy/docker_test.py): build,
# checks, a mixed load inside the memory limit, 3 replicas behind nginx scaled down under load.
# Skips where no engine is reachable. RNNLAB_DOCKER_BUILD_ARGS: extra `docker build` arguments;
# DOCKER_TEST_ARGS: the script's own (--no-build, --load-seconds 30, --scale-seconds 60, ...).
docker-test: setup
	$(PY) deploy/docker_test.py $(DOCKER_TEST_ARGS)

# The Debian font packages training/captcha_mix.py draws the general captcha reader's mix from
# (training only: the tests and the service need none of them).
FONTS := fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf fonts-urw-base35 \
         fonts-crosextra-carlito fonts-crosextra-caladea fonts-open-sans fonts-roboto-unhinted \
         fonts-comic-neue fonts-lato fonts-noto-mono fonts-texgyre
fonts:
	apt-get install -y --no-install-recommends $(FONTS)

clean:
	rm -rf $(VENV) .pytest_cache
