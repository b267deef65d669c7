"""A study's results: one row per task x method, read back from the method run directories.

Every figure is computed from the trace runs themselves (``traces.parquet``) and the timings the
harness recorded (``evaluation.json``), paired with the reference method by ``trace_id``; the
statistics are those of ``workbench.evaluation.statistics``. Written atomically as
``results.parquet`` (dicts as JSON strings), ``results.json`` and ``results.md``.

Columns (``results.json`` keys), per task x method:
    method, task, type, control_for, reference, problems, samples, traces;
    accuracy, accuracy_ci (pass@1 over k samples, bootstrap 95% CI over problems);
    delta_vs_vanilla, delta_ci (paired, against the study's reference, usually vanilla);
    fixed_samples, broken_samples, fixed_problems, broken_problems, p_value (exact McNemar on samples),
    p_value_problems (on problem majorities);
    thinking_tokens, generated_tokens, probe_tokens, total_tokens (means per trace; total = generated +
    probe tokens, the extra tokens controllers spent, read from events whose payload has ``probe_tokens``);
    token_reduction, token_reduction_ci (of total tokens, %), thinking_reduction (%);
    truncated (share of traces that hit max_new_tokens), finish_reasons;
    interventions_per_trace (events per trace), interventions (per kind, per trace), intervened_share;
    wall_seconds, build_seconds, tokens_per_second (over the recorded ``run_traces`` calls), resumed, run;
    note: why a method that acts only inside thinking never acted (no trace opened a thinking span), else "";
    failure_rates, failure_deltas (tasks whose labels say which failures a trace shows: ``Task.failure_flags``,
    e.g. the organism's planted ones): per type the share of traces showing it, and its paired difference from
    the reference with a bootstrap CI over problems, ``[delta, low, high]``.

Example:
    >>> order_methods([("a", None), ("rand", "b"), ("b", None), ("ctl", "a")])
    ['a', 'ctl', 'b', 'rand']
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.atomic import atomic_write, atomic_write_text
from workbench.evaluation.statistics import compare, paired_difference
from workbench.evaluation.study import Study, StudyError
from workbench.store import load_traces
from workbench.store.paths import RunPaths, StudyPaths
from workbench.tasks import Task
from workbench.traces import config_task

DICT_COLUMNS = ("finish_reasons", "interventions", "params", "failure_rates", "failure_deltas")


def order_methods(methods: list[tuple[str, str | None]]) -> list[str]:
    """Table order: the study's order, each control moved right after the method it controls for."""
    children: dict[str | None, list[str]] = {}
    names = {name for name, _ in methods}
    for name, parent in methods:
        children.setdefault(parent if parent in names else None, []).append(name)
    out: list[str] = []

    def visit(name: str) -> None:
        out.append(name)
        for child in children.get(name, []):
            visit(child)

    for root in children.get(None, []):
        visit(root)
    return out


def _grid(run_dir: Path, task: Task, order: list[str] | None = None) -> dict[str, Any]:
    """A method run's traces as ``(problem, sample)`` arrays, problems in ``order`` (sorted when None); failures
    as ``task`` flags them (``failures`` is None unless it flags every trace)."""
    rows = load_traces(run_dir).select(
        ["trace_id", "problem_id", "sample_index", "token_ids", "prompt_len", "correct", "thinking_tokens",
         "finish_reason", "events", "labels", "think_start"]).to_pylist()
    problems = order if order is not None else sorted({r["problem_id"] for r in rows})
    samples = 1 + max((r["sample_index"] for r in rows), default=-1)
    index = {p: i for i, p in enumerate(problems)}
    keys = {(r["problem_id"], r["sample_index"]) for r in rows}
    expected = {(p, s) for p in problems for s in range(samples)}
    if keys != expected:
        missing = sorted(expected - keys)[:3]
        extra = sorted(keys - expected)[:3]
        raise StudyError(f"{run_dir}: its traces do not pair with the reference's (missing {missing}, extra {extra}); "
                         "every method of a task must run the same problems and samples: re-run the study")
    shape = (len(problems), samples)
    correct = np.zeros(shape, bool)
    thinking, generated, probe, events = (np.zeros(shape) for _ in range(4))
    flags = [task.failure_flags(json.loads(r["labels"]) if r["labels"] else None) for r in rows]
    kinds_of_failure = list(flags[0]) if flags and flags[0] is not None else []
    labelled = bool(kinds_of_failure) and all(f is not None and list(f) == kinds_of_failure for f in flags)
    failures = np.zeros((len(kinds_of_failure), *shape), bool)
    kinds: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    intervened = 0
    for r, flag in zip(rows, flags, strict=True):
        at = index[r["problem_id"]], r["sample_index"]
        evs = json.loads(r["events"] or "[]")
        correct[at] = bool(r["correct"])
        thinking[at] = r["thinking_tokens"]
        generated[at] = len(r["token_ids"]) - r["prompt_len"]
        probe[at] = sum(float(e.get("payload", {}).get("probe_tokens", 0) or 0) for e in evs)
        events[at] = len(evs)
        if labelled:
            failures[(slice(None), *at)] = [flag[k] for k in kinds_of_failure]
        kinds.update(e["kind"] for e in evs)
        reasons[r["finish_reason"]] += 1
        intervened += bool(evs)
    return {"problems": problems, "correct": correct, "thinking": thinking, "generated": generated, "probe": probe,
            "events": events, "kinds": dict(kinds), "reasons": dict(reasons), "intervened": intervened,
            "failures": failures if labelled else None, "failure_kinds": kinds_of_failure,
            "thinking_traces": sum(r["think_start"] is not None for r in rows)}


def _failures(g: dict[str, Any], ref: dict[str, Any], n_resamples: int, seed: int) -> dict[str, Any]:
    """Failure rates per type and their paired deltas against the reference (empty without labels)."""
    if g["failures"] is None or ref["failures"] is None or g["failure_kinds"] != ref["failure_kinds"]:
        return {}
    rates, deltas = {}, {}
    for kind, mine, theirs in zip(g["failure_kinds"], g["failures"], ref["failures"], strict=True):
        per, ref_per = mine.mean(1), theirs.mean(1)
        rates[kind] = float(per.mean())
        deltas[kind] = list(paired_difference(per.astype(float), ref_per.astype(float), n_resamples, seed))
    return {"failure_rates": rates, "failure_deltas": deltas}


def _record(run_dir: Path) -> dict[str, Any]:
    path = RunPaths(run_dir).record
    return json.loads(path.read_text()) if path.exists() else {}


def _thinking_note(spec, g: dict[str, Any], run_dir: Path) -> str:
    """Why a method that acts only while the model thinks did nothing here (empty when it could act)."""
    if not getattr(spec.method, "needs_thinking", False) or g["thinking_traces"]:
        return ""
    from workbench.traces import run_config

    marker = run_config(run_dir).prompt.think_open
    return (f"{marker} in 0 of {g['correct'].size} traces: {spec.type} acts only inside a thinking span, so it "
            "never acted (it needs a reasoning model, or the prompt format's think markers)")


def _timing(run_dir: Path) -> dict[str, Any]:
    record = _record(run_dir)
    calls = record.get("calls", [])
    seconds = sum(c["seconds"] for c in calls)
    tokens = sum(c["tokens"] for c in calls)
    return {"wall_seconds": round(seconds, 2), "build_seconds": round(sum(c["build_seconds"] for c in calls), 3),
            "tokens_per_second": tokens / seconds if seconds > 0 else float("nan"),
            "resumed": len(calls) > 1 or any(c["resumed_from"] for c in calls)}


def _reduction(value: float, reference: float) -> float:
    return 100.0 * (1.0 - value / reference) if reference > 0 else float("nan")


def collect(study: Study, out: str | Path) -> list[dict[str, Any]]:
    """The result rows of a finished study in ``out``, per task in table order (see the module docstring)."""
    paths = StudyPaths(out)
    order = order_methods([(m.name, m.control_for) for m in study.methods])
    rows = []
    for task in study.tasks:
        flagger = config_task(task.run)
        ref = _grid(paths.method(task.name, study.reference), flagger)
        n = ref["correct"].size
        for name in order:
            spec = study.method(name)
            run_dir = paths.method(task.name, name)
            if _record(run_dir).get("not_applied"):
                continue  # listed with its reason under the table (runner.not_applied)
            g = ref if name == study.reference else _grid(run_dir, flagger, ref["problems"])
            cost, ref_cost = g["generated"] + g["probe"], ref["generated"] + ref["probe"]
            stats = compare(g["correct"], cost, ref["correct"], ref_cost, study.n_resamples, study.seed)
            stats = {"accuracy": stats.pop("accuracy"), "accuracy_ci": stats.pop("accuracy_ci"),
                     "delta_vs_vanilla": stats.pop("delta_vs_reference"), **stats}
            rows.append({
                "method": name, "task": task.name, "type": spec.type, "control_for": spec.control_for,
                "reference": study.reference, "problems": len(g["problems"]), "samples": g["correct"].shape[1],
                "traces": n, **stats,
                "thinking_tokens": float(g["thinking"].mean()), "generated_tokens": float(g["generated"].mean()),
                "probe_tokens": float(g["probe"].mean()), "total_tokens": float(cost.mean()),
                "thinking_reduction": _reduction(float(g["thinking"].mean()), float(ref["thinking"].mean())),
                "truncated": g["reasons"].get("length", 0) / n, "finish_reasons": g["reasons"],
                "interventions_per_trace": float(g["events"].mean()),
                "interventions": {k: v / n for k, v in sorted(g["kinds"].items())},
                "intervened_share": g["intervened"] / n,
                **_timing(run_dir), "params": spec.params, "run": str(run_dir),
                "note": _thinking_note(spec, g, run_dir),
                **_failures(g, ref, study.n_resamples, study.seed),
            })
    return rows


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _ci(ci: list[float], digits: int = 3) -> str:
    return f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def markdown(rows: list[dict[str, Any]], not_applied: Sequence[dict[str, str]] = ()) -> str:
    """The results as Markdown: one table per task, controls beside the methods they control for; then what
    could not apply (``runner.not_applied``) with its reason."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        part = [r for r in rows if r["task"] == task]
        ref = part[0]["reference"]
        out += [f"### {task}", "",
                f"| method | controls for | accuracy [95% CI] | Δ vs {ref} [95% CI] | p (McNemar) | fixed / broken "
                "| thinking tokens | total tokens | token reduction % | interventions / trace | tokens/s |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in part:
            out.append(
                f"| {r['method']} | {r['control_for'] or ''} | {_fmt(r['accuracy'])} {_ci(r['accuracy_ci'])} | "
                f"{r['delta_vs_vanilla']:+.3f} {_ci(r['delta_ci'])} | {_fmt(r['p_value'], 4)} | "
                f"{r['fixed_samples']} / {r['broken_samples']} | {_fmt(r['thinking_tokens'], 1)} | "
                f"{_fmt(r['total_tokens'], 1)} | {_fmt(r['token_reduction'], 1)} | "
                f"{_fmt(r['interventions_per_trace'], 2)} | {_fmt(r['tokens_per_second'], 0)} |")
        out.append("")
        if all("failure_rates" in r for r in part):
            kinds = list(part[0]["failure_rates"])
            out += [f"Planted failures (share of traces; Δ vs {ref} [95% CI], paired over problems):", "",
                    "| method | " + " | ".join(k.replace("_", " ") for k in kinds) + " |",
                    "|---|" + "---|" * len(kinds)]
            for r in part:
                cells = [f"{_fmt(r['failure_rates'][k])} ({r['failure_deltas'][k][0]:+.3f} "
                         f"{_ci(r['failure_deltas'][k][1:])})" for k in kinds]
                out.append(f"| {r['method']} | " + " | ".join(cells) + " |")
            out.append("")
        notes = [r for r in part if r.get("note")]
        if notes:
            out += ["Notes:", "", *(f"- {r['method']}: {r['note']}" for r in notes), ""]
        skipped = [x for x in not_applied if x["task"] == task]
        if skipped:
            out += ["Could not apply (the study ran everything else):", "",
                    *(f"- {x['what']} `{x['name']}`: {x['reason']}" for x in skipped), ""]
    n = rows[0]
    out.append(f"{n['problems']} problems x {n['samples']} samples per method, paired by trace id with {n['reference']}"
               "; CIs: bootstrap over problems; p: exact McNemar on discordant (problem, sample) pairs; fixed / "
               "broken: samples the method turned right / wrong.")
    return "\n".join(out) + "\n"


def write_results(
    rows: list[dict[str, Any]], study: Study, out: str | Path, not_applied: Sequence[dict[str, str]] = (),
) -> dict[str, Path]:
    """Writes ``results.parquet``, ``results.json``, ``results.md`` and ``not_applied.json`` into ``out``
    atomically."""
    study_paths = StudyPaths(out)
    flat = [{k: json.dumps(v) if k in DICT_COLUMNS else v for k, v in r.items()} for r in rows]
    table = pa.Table.from_pylist(flat)
    paths = {"parquet": study_paths.results_parquet, "json": study_paths.results_json, "md": study_paths.results_md,
             "not_applied": study_paths.not_applied}
    atomic_write(paths["parquet"], lambda tmp: pq.write_table(table, tmp))
    atomic_write_text(paths["json"], json.dumps(rows, indent=1, default=str))
    atomic_write_text(paths["md"], f"# {study.path.stem}\n\n" + markdown(rows, not_applied))
    atomic_write_text(paths["not_applied"], json.dumps(list(not_applied), indent=1))
    return paths
