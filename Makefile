# The two commands of the README: `make run` (main job on the bundled organism) and `make test`.
# Both create .venv when it is missing and install what they need; torch comes first from a pin
# that TORCH_SPEC overrides (a plain `torch` would pull several GB of CUDA wheels on a CPU machine).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint app browser clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; set PYTHON=/path/to/python3.11")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
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

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

app: $(STAMP)
	$(VENV)/bin/workbench app $(or $(RUN),runs/main)

clean-venv:
	rm -rf $(VENV)
