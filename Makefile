# kneenode: two commands do everything on a fresh Debian machine.
#   make serve   install what is missing, then run the node on its embedded defaults
#   make test    install what is missing, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEB_PACKAGES := redis-server dcmtk dicom3tools orthanc orthanc-dicomweb ghostscript poppler-utils chromium iproute2 python3-jsonschema docker-compose postgresql
# The CPU wheel of torch; a GPU host sets TORCH_SPEC/TORCH_INDEX (see README, "GPU hosts").
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: setup debs venv viewer serve demo test bench lint lock clean

setup: debs venv viewer

debs:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

# The browser test's tools (tests/viewer): playwright-core and the prebuilt OHIF viewer from npm,
# pinned and integrity-checked; a no-op when both are in place (see tests/viewer/install.sh).
viewer:
	@tests/viewer/install.sh

$(VENV)/.installed: pyproject.toml requirements/lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps -r requirements/lock.txt
	$(PIP) install -q --no-deps -e .
	@touch $@

serve: setup
	$(VENV)/bin/kneenode serve

demo: setup
	$(VENV)/bin/kneenode demo

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: setup
	$(PY) tests/bench/ingest.py

lint: setup
	$(VENV)/bin/ruff check kneenode scp pipeline workers tests
	$(VENV)/bin/mypy kneenode scp pipeline workers

# Re-pin after changing pyproject dependencies: resolve in a scratch venv, drop what --no-deps avoids.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q "$(TORCH_SPEC)" && .lock-venv/bin/pip install -q -e ".[dev]"
	{ head -3 requirements/lock.txt; .lock-venv/bin/pip freeze | grep -viE '^(-e|kneenode|torch|torchvision|timm|triton|nvidia-|cuda-|huggingface|hf-xet|safetensors)'; } > requirements/lock.new
	mv requirements/lock.new requirements/lock.txt && rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache
