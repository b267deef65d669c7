"""Running one problem of a run, vanilla and with a method, on a loaded model: the app's live panel.

The run's own settings (``TraceRunConfig`` read back from its manifest) pick the problem, the prompt
and the sampler seed, so a live case with the same method reproduces the stored trace; the method is
built by its study spec (``evaluation.methods``) exactly as the harness builds it, and the engine
attaches its hooks for each forward pass alone, so nothing stays on the shared model.

Example:
    >>> import tempfile
    >>> from workbench import load_model
    >>> from workbench.evaluation.methods import METHODS
    >>> from workbench.traces import TraceRunConfig, run_config, run_traces
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> model = load_model("organism")
    >>> _ = run_traces(run, config=TraceRunConfig(problems=2, samples=1, seed=3), progress=False, model=model)
    >>> cfg = run_config(run)
    >>> key = list(case_keys(cfg, model))[0]
    >>> record = run_case(model, cfg, key, METHODS["budget"]({"max_thinking": 3}), None)
    >>> record["trace_id"] == key, record["thinking_tokens"] <= 4
    (True, True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.engine import Engine, EngineConfig, Request
from workbench.evaluation.methods import MethodContext
from workbench.store import trace_id
from workbench.traces import TraceRunConfig, build_record, config_task, run_problems


def _problems(cfg: TraceRunConfig):
    task = config_task(cfg)
    return task, {p.id: p for p in run_problems(task, cfg)}


def case_keys(cfg: TraceRunConfig, model) -> dict[str, str]:
    """Every (problem, sample) of the run as trace id -> the problem's question."""
    task, problems = _problems(cfg)
    return {trace_id(pid, s): task.message(p, chat=False) for pid, p in problems.items() for s in range(cfg.samples)}


def run_case(model, cfg: TraceRunConfig, key: str, method: Any, analysis_run: Path | None) -> dict[str, Any]:
    """Generates trace ``key`` of the run described by ``cfg`` with ``method``; returns its trace-store row.

    The row has every ``traces.parquet`` column (tokens, spans, grade, labels, events as JSON) and
    ``seconds``, the wall time of the generation.
    """
    task, problems = _problems(cfg)
    pid, _, sample = key.rpartition("/")
    if pid not in problems:
        raise ValueError(f"trace {key!r} is not one of this run's problems (e.g. {next(iter(problems), None)!r}/0)")
    problem = problems[pid]
    tok = model.tokenizer
    fmt = cfg.prompt.resolve(tok, getattr(model.original_model, "generation_config", None))
    prompt = fmt.render(tok, task.message(problem, chat=fmt.style == "chat"))
    edits, controllers = method.build(MethodContext(model, analysis_run, cfg))
    engine = Engine(model, EngineConfig(sampling=cfg.sampling(), batch_size=1, stop_token_ids=fmt.stop_ids), edits,
                    controllers)
    t0 = time.perf_counter()
    (done,) = list(engine.run([Request(key, fmt.tokenize(tok, prompt))]))
    record = build_record(tok, fmt, task, problem, int(sample), prompt, done)
    return {**record, "seconds": time.perf_counter() - t0, "method": getattr(method, "name", type(method).__name__)}


@dataclass(frozen=True)
class Knob:
    """A method parameter the live panel offers as a slider: its range and step."""

    name: str
    low: int | float
    high: int | float
    step: int | float

    @property
    def whole(self) -> bool:
        """An integer parameter (``k``, ``max_thinking``): all three bounds are ints."""
        return all(isinstance(v, int) for v in (self.low, self.high, self.step))


# method type -> the parameters worth turning live (the rest keep the study's values).
KNOBS: dict[str, tuple[Knob, ...]] = {
    "adaras": (Knob("k", 1, 200, 1), Knob("alpha", 0.0, 50.0, 0.1)),
    "random-steering": (Knob("k", 1, 200, 1), Knob("alpha", 0.0, 50.0, 0.1)),
    "neat": (Knob("tau_sim", 0.0, 1.0, 0.01), Knob("tau_mag", 0.0, 3.0, 0.01), Knob("tau_sup", 0.0, 1.0, 0.01)),
    "neureasoner": (Knob("threshold", 0.0, 1.0, 0.01), Knob("max_triggers", 1, 10, 1)),
    "budget": (Knob("max_thinking", 0, 400, 1),),
}


def knob_default(knob: Knob, params: dict[str, Any], method_type: str) -> int | float | None:
    """The knob's starting value: the study's parameter, else the method's own default; None where that
    default is "unset" (e.g. NeuReasoner's ``threshold``: each detector's own), which the panel keeps unless
    the user overrides it.

    >>> knob_default(KNOBS["budget"][0], {"max_thinking": 20}, "budget")
    20
    >>> knob_default(KNOBS["neat"][0], {}, "neat"), knob_default(KNOBS["neureasoner"][0], {}, "neureasoner")
    (0.6, None)
    """
    if params.get(knob.name) is not None:
        return params[knob.name]
    from workbench.evaluation.methods import METHODS

    default = getattr(METHODS[method_type]({}), knob.name, None) if method_type in METHODS else None
    return default if isinstance(default, int | float) and not isinstance(default, bool) else None
