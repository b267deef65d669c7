"""reasoning-neuron-workbench: find, read and steer the MLP neurons behind reasoning successes and failures.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")          # or a local Hugging Face folder, offline
    >>> model.cfg.n_layers
    2
"""

from workbench.model import ModelLoadError, load_model, set_threads

__all__ = ["ModelLoadError", "load_model", "set_threads"]
__version__ = "0.1.0"
