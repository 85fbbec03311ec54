# couchgate: `make run` tries it out, `make test` runs everything CI runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node/node_modules/.installed

.PHONY: run test install lint typecheck unit bench clean

run: install ## embedded pouchdb-server + demo data + couchgate on 127.0.0.1:5988
	$(BIN)/couchgate dev $(ARGS)

test: install lint typecheck ## the whole suite: lint, types, unit, integration, contract, e2e
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# pouchdb-server and the PouchDB clients, pinned in node/package-lock.json, installed into
# the git-ignored node/node_modules. --ignore-scripts: sqlite3's native build is not needed.
$(NODE_STAMP): node/package.json node/package-lock.json
	cd node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

lint: $(PY_STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench

typecheck: $(PY_STAMP)
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) node/node_modules .mypy_cache .ruff_cache .pytest_cache .couchgate
