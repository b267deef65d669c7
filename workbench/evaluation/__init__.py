"""The evaluation harness: methods x tasks on the same problems and seeds, with paired statistics.

A study is a file (``Study.from_toml``) or Python (``Study.build`` with ``StudyTask`` and ``StudyMethod``, the
tables of ``workbench.study``); both are validated by ``Study.from_dict``.

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
from workbench.study import StudyAnalysis, StudyMethod, StudyTask

__all__ = [
    "METHODS", "Method", "MethodContext", "Study", "StudyAnalysis", "StudyError", "StudyMethod", "StudyTask",
    "Vanilla", "bootstrap_ci", "collect", "compare", "flips", "load_study", "markdown", "mcnemar_exact", "register",
    "run_analysis", "run_method", "run_study", "write_results",
]
