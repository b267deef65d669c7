"""The methods, the harness and the figures import nothing from the organism: it is one task among others.

Each package is imported in a fresh interpreter where any import of ``workbench.organism`` raises, so a
module-level import anywhere in its import graph fails the test (a function that resolves the organism *task*
at run time, through ``workbench.tasks.get_task``, still may: that is the task protocol at work).
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import workbench

FREE = ("adaras", "neat", "neureasoner", "baselines", "probes", "evaluation", "figures")

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "workbench.organism" or name.startswith("workbench.organism."):
            raise ImportError(f"{name} imported while importing {sys.argv[1]}")
sys.meta_path.insert(0, Block())
import importlib
importlib.import_module(sys.argv[1])
"""


def _modules() -> list[str]:
    root = Path(workbench.__file__).parent
    out = []
    for name in FREE:
        if (root / f"{name}.py").exists():
            out.append(f"workbench.{name}")
            continue
        out.append(f"workbench.{name}")
        out += [f"workbench.{name}.{m.name}" for m in pkgutil.iter_modules([str(root / name)])
                if not m.name.startswith("_")]
    return out


def test_the_blocker_blocks():
    done = subprocess.run([sys.executable, "-c", BLOCKER, "workbench.tasks.organism"], capture_output=True, text=True)
    assert done.returncode != 0 and "workbench.organism" in done.stderr


@pytest.mark.parametrize("package", FREE)
def test_methods_import_nothing_from_the_organism(package):
    modules = [m for m in _modules() if m == f"workbench.{package}" or m.startswith(f"workbench.{package}.")]
    assert modules
    script = BLOCKER.replace("importlib.import_module(sys.argv[1])",
                             "[importlib.import_module(m) for m in sys.argv[1].split(',')]")
    done = subprocess.run([sys.executable, "-c", script, ",".join(modules)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
