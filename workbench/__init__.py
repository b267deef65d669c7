"""reasoning-neuron-workbench: find, read and steer the MLP neurons behind reasoning successes and failures.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")          # or a local Hugging Face folder, offline
    >>> model.cfg.n_layers
    4
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.errors import ModelLoadError

if TYPE_CHECKING:
    from workbench.model import load_model, set_threads

__all__ = ["ModelLoadError", "load_model", "set_threads"]
__version__ = "0.1.0"

# Importing workbench.model pulls in torch and TransformerLens (seconds); the command line imports
# this package for every `--help`, so the model functions are loaded on first use instead.
_LAZY = {"load_model": "workbench.model", "set_threads": "workbench.model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
