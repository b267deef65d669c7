"""The evaluation harness: methods x tasks on the same problems and seeds, with paired statistics.

Example:
    >>> from workbench.evaluation import METHODS
    >>> "vanilla" in METHODS
    True
"""

from workbench.evaluation.methods import METHODS, Method, MethodContext, Vanilla, register

__all__ = ["METHODS", "Method", "MethodContext", "Vanilla", "register"]
