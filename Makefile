# Commands that work on a fresh machine; all create and reuse .venv.
#   make test    ruff + pytest (installs the dev extra; Chromium from Debian for the web-page test)
#   make serve   the service on 127.0.0.1:8000 with its embedded defaults (make serve ARGS='--weights DIR')
#   make demo    offline: synthetic data, the tiny model trained here, a gallery, the web page on :8000
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test serve demo lint install system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium drives the web-page test. Installed from Debian when missing and we may do so
# (root with apt-get); otherwise that one test skips and says why.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium (Debian) for the web-page test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint system-deps
	$(BIN)/python -m pytest -q

serve: $(STAMP)
	$(BIN)/clipmc serve $(ARGS)

# Steps already done under data/demo are skipped; `rm -rf data/demo` starts over.
demo: $(STAMP)
	$(BIN)/clipmc demo --dir data/demo --config configs/tiny-synth.json $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
