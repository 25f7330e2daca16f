# chainmail: everything a fresh machine needs goes through these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONF   ?= conf
VAR    ?= var

.PHONY: run test bench check-config clean

$(STAMP): pyproject.toml tests/plugins/chainmail-test-plugin/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	$(BIN)/python -m pip install --quiet -e tests/plugins/chainmail-test-plugin
	touch $(STAMP)

## run: start the servers of conf/ (SMTP on port 2525 by default)
run: $(STAMP)
	$(BIN)/chainmail keystore --conf $(CONF)
	$(BIN)/chainmail run --conf $(CONF) --var $(VAR)

## test: the whole suite (unit, property and integration tests against real sockets)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## bench: chainmail (spool only, and the whole pipeline) beside aiosmtpd, Haraka, Postfix as an MTA
##        and smtp-sink, driven by smtp-source; installs Haraka with npm first if it is missing
bench: $(STAMP)
	bench/peers/haraka.sh --check >/dev/null || bench/peers/haraka.sh --install \
		|| echo "Haraka could not be installed: the haraka peers will be skipped"
	$(BIN)/python bench/run.py

check-config: $(STAMP)
	$(BIN)/chainmail check-config --conf $(CONF) --var $(VAR)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
