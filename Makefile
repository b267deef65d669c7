# The two commands of the README: `make run` (main job on the bundled organism) and `make test`.
# Both create .venv when it is missing and install exactly the versions in requirements.lock (what CI
# tested); torch comes first from a pin that TORCH_SPEC overrides (a plain `torch` would pull several
# GB of CUDA wheels on a CPU machine).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH_SPEC ?= torch==2.13.0
PIP_SPEC := pip==26.3
VENV := .venv
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# Where `make upgrade-check` resolves the newest releases pyproject.toml allows (never .venv).
UPGRADE_VENV ?= .venv-upgrade

.PHONY: run test test-all test-slow lint app browser lock upgrade-check clean-venv

define make_venv
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; set PYTHON=/path/to/python3.11")'
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q "$(PIP_SPEC)"
	$(1)/bin/python -m pip install -q "$(TORCH_SPEC)"
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call make_venv,$(VENV))
	$(VENV)/bin/python -m pip install -q -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

# Figure export (kaleido) and the browser test (Playwright) drive a system Chromium: Debian's package,
# installed when missing and this is root on apt; elsewhere both say why they cannot run, never fail setup.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for figure export and the browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	      echo "could not install chromium: figure export falls back to HTML and the browser test is skipped"; \
	  else \
	    echo "no chromium and no root apt-get: install Chromium for figure export and the browser test"; \
	  fi; }

run: $(STAMP) browser
	$(VENV)/bin/workbench run

# The unit tier: ruff, then every test not marked `slow` (under 10 minutes on 2 cores; README).
test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -m "not slow" --durations=25

# The second tier: the end-to-end checks that do not fit in the unit tier (notebooks, Ray, full CLI runs).
test-slow: $(STAMP) browser
	$(VENV)/bin/python -m pytest -m slow --durations=25

# Both tiers in one pytest session, as CI runs them: the session's shared study is built once.
test-all: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest --durations=25

app: $(STAMP)
	$(VENV)/bin/workbench app $(or $(RUN),runs/main)

# The newest releases pyproject.toml allows, in a scratch venv, against the parity tests (our forward passes
# and cache use against Hugging Face's own): the next dependency drift is found here, not by a user.
upgrade-check: browser
	$(call make_venv,$(UPGRADE_VENV))
	echo "$(TORCH_SPEC)" > $(UPGRADE_VENV)/torch.txt  # torch stays at its pin: eager upgrades would take a CUDA build
	$(UPGRADE_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(UPGRADE_VENV)/torch.txt -e ".[dev]"
	$(UPGRADE_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^torch==' > $(UPGRADE_VENV)/freeze.txt
	@grep -v '^#' $(LOCK) | diff - $(UPGRADE_VENV)/freeze.txt | grep '^[<>]' | \
	  sed 's/^</  locked:/; s/^>/  newest:/' || echo "  the lock holds the newest allowed releases"
	$(UPGRADE_VENV)/bin/python -m pytest -m parity -p no:cacheprovider -q
	@echo "parity holds on the newest allowed releases; \`make lock\` records them, then run \`make test-all\`"

# Rewrites requirements.lock from the upgrade-check venv (run `make upgrade-check` first).
lock:
	test -f $(UPGRADE_VENV)/freeze.txt || { echo "run \`make upgrade-check\` first"; exit 2; }
	{ echo "# Every package \`make run\` / \`make test\` install, at the version CI tested (torch: TORCH_SPEC)."; \
	  echo "# Regenerate: make upgrade-check && make lock, then make test-all."; \
	  cat $(UPGRADE_VENV)/freeze.txt; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

clean-venv:
	rm -rf $(VENV) $(UPGRADE_VENV)
