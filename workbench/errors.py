"""The workbench's own exceptions, kept free of torch so that the command line starts fast.

Example:
    >>> from workbench.errors import ModelLoadError
    >>> issubclass(ModelLoadError, ValueError)
    True
"""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model folder that cannot be loaded; the message says what is wrong and how to fix it."""
