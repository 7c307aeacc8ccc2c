# Two commands that work on a fresh machine; both create and reuse .venv.
#   make test    ruff + pytest (installs the dev extra; Chromium from Debian for the web-page test)
#   make serve   the service on 127.0.0.1:8000 with its embedded defaults (make serve ARGS='--weights DIR')
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test serve lint install system-deps clean

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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
