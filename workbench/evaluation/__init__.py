"""The evaluation harness: methods x tasks on the same problems and seeds, with paired statistics.

Example:
    >>> from workbench.evaluation import METHODS
    >>> "vanilla" in METHODS
    True
"""

from workbench.evaluation.methods import METHODS, Method, MethodContext, Vanilla, register
from workbench.evaluation.results import collect, markdown, write_results
from workbench.evaluation.runner import run_analysis, run_method, run_study
from workbench.evaluation.statistics import bootstrap_ci, compare, flips, mcnemar_exact
from workbench.evaluation.study import Study, StudyError, load_study

__all__ = [
    "METHODS", "Method", "MethodContext", "Study", "StudyError", "Vanilla", "bootstrap_ci", "collect", "compare",
    "flips", "load_study", "markdown", "mcnemar_exact", "register", "run_analysis", "run_method", "run_study",
    "write_results",
]
