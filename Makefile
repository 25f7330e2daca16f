# chainmail: everything a fresh machine needs goes through these targets.
#   .venv       the operator's environment: chainmail and its shipped plugins, nothing else
#   .venv-test  the test environment: chainmail with the test extra and every package of
#               tests/plugins/ (they never reach the operator's "expected one of" hints)
PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
BENCH     := $(VENV)/.bench
TEST_VENV := .venv-test
TEST_BIN  := $(TEST_VENV)/bin
TEST_STAMP:= $(TEST_VENV)/.installed
TEST_PLUGINS := $(wildcard tests/plugins/*/pyproject.toml)
CONF      ?= conf
VAR       ?= var
PYTEST    ?= -q --durations=15 -n 2

.PHONY: run test typecheck system-tools bench check-config clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(BENCH): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $(BENCH)

$(TEST_STAMP): pyproject.toml $(TEST_PLUGINS)
	test -x $(TEST_BIN)/python || $(PYTHON) -m venv $(TEST_VENV)
	$(TEST_BIN)/python -m pip install --quiet --upgrade pip
	$(TEST_BIN)/python -m pip install --quiet -e ".[test]"
	$(TEST_BIN)/python -m pip install --quiet $(foreach p,$(dir $(TEST_PLUGINS)),-e $(p))
	touch $(TEST_STAMP)

## run: start the servers of conf/ (SMTP on port 2525 by default)
run: $(STAMP)
	$(BIN)/chainmail keystore --conf $(CONF)
	$(BIN)/chainmail run --conf $(CONF) --var $(VAR)

## system-tools: the clients and peers the tests drive (swaks, Postfix's tools, HAProxy...);
##               installed with apt-get as root, else one line says how
system-tools:
	tests/setup-system.sh

## typecheck: mypy on chainmail/ and plugins/ (configured in pyproject.toml)
typecheck: $(TEST_STAMP)
	$(TEST_BIN)/python -m mypy

## test: the type check, then the whole suite (unit, property and integration tests against
##       real sockets); PYTEST="-x -k relay" passes options to pytest
test: system-tools $(TEST_STAMP) typecheck
	$(TEST_BIN)/python -m pytest $(PYTEST)

## bench: chainmail (spool only, and the whole pipeline) beside aiosmtpd, Haraka, Postfix as an MTA
##        and smtp-sink, driven by smtp-source; installs Haraka with npm first if it is missing
bench: $(BENCH)
	bench/peers/haraka.sh --check >/dev/null || bench/peers/haraka.sh --install \
		|| echo "Haraka could not be installed: the haraka peers will be skipped"
	$(BIN)/python bench/run.py

check-config: $(STAMP)
	$(BIN)/chainmail check-config --conf $(CONF) --var $(VAR)

clean:
	rm -rf $(VENV) $(TEST_VENV) var .pytest_cache .hypothesis .mypy_cache
