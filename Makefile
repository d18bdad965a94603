# forum — the two commands of the README, and a few for development.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run run-scaled test browser lint typecheck bench clean-state

run: $(STAMP) ## start the whole service on the embedded homeserver
	$(BIN)/forum run

# The scaled profile: Synapse's workers (PERSISTERS event persisters, a generic worker, a
# federation sender) on PostgreSQL and Redis, and the forum on PostgreSQL (README).
PERSISTERS ?= 4
run-scaled: $(STAMP) ## start the whole service on Synapse workers, PostgreSQL and Redis
	FORUM_PROFILE=scaled FORUM_EVENT_PERSISTERS=$(PERSISTERS) $(BIN)/forum run

# The tests wait on Synapse far more than they compute: TEST_WORKERS processes (pytest-xdist)
# run the files side by side, each with its own Synapse; a file stays in one process, so its
# module-scoped forums are built once.
TEST_WORKERS ?= 4

test: $(STAMP) browser ## run the whole test suite (real Synapse, SQLite and PostgreSQL)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Headless Chromium renders the public pages in the tests (Debian's package), and axe-core
# (npm, into .venv/axe) checks their accessibility there; the Nu HTML Checker (npm's vnu-jar,
# into .venv/vnu, run by Java) checks that they are valid HTML.
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) || \
	  echo "chromium could not be installed: the browser test will be skipped"
	@test -f $(VENV)/axe/node_modules/axe-core/axe.min.js || ! command -v npm >/dev/null 2>&1 || \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/axe axe-core@4 >/dev/null 2>&1 || \
	  echo "axe-core could not be installed: the accessibility test will be skipped"
	@command -v java >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  apt-get install -y -q default-jre-headless >/dev/null 2>&1 || \
	  echo "java could not be installed: the HTML validity test will be skipped"
	@test -f $(VENV)/vnu/node_modules/vnu-jar/build/dist/vnu.jar || ! command -v npm >/dev/null 2>&1 || \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/vnu vnu-jar >/dev/null 2>&1 || \
	  echo "the Nu HTML Checker could not be installed: the HTML validity test will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check forum moderation bridge tests benchmarks
	$(BIN)/ruff format --check forum moderation bridge tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean-state: ## forget the demo state (homeserver, database) in .forum
	rm -rf .forum

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)
