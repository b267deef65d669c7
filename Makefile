# The two commands of the README: `make run` (main job on the bundled organism) and `make test`.
# Both create .venv when it is missing and install what they need; torch comes first from a pin
# that TORCH_SPEC overrides (a plain `torch` would pull several GB of CUDA wheels on a CPU machine).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint app clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required; set PYTHON=/path/to/python3.11")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/workbench run

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

app: $(STAMP)
	$(VENV)/bin/streamlit run app.py

clean-venv:
	rm -rf $(VENV)
