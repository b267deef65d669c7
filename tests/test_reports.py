"""Typed reports: every analysis's flat JSON reads back into its dataclass and writes out unchanged."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workbench.report import Report

DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass(frozen=True)
class _Scores(Report):
    auroc: float = field(metadata={"key": "auroc_{}"})


@dataclass(frozen=True)
class _Outer(Report):
    n: int
    scores: dict[str, _Scores] = field(metadata={"report": _Scores, "each": True})
    within: dict[str, float] = field(metadata={"key": "within_{}", "each": True})
    control: _Scores = field(metadata={"report": _Scores, "fill": "control"})
    note: str | None = field(default=None, metadata={"optional": True})


def test_flat_keys_round_trip_with_templates_and_optionals() -> None:
    report = _Outer(3, {"slip": _Scores(0.9), "oscillation": _Scores(0.7)}, {"careful": 0.8}, _Scores(0.5))
    flat = report.to_json()
    assert flat == {"n": 3, "auroc_slip": 0.9, "auroc_oscillation": 0.7, "within_careful": 0.8, "auroc_control": 0.5}
    # "auroc_control" also matches the per-type template: the fixed field claims it first, so no type "control".
    back = _Outer.from_json(flat)
    assert back.control == _Scores(0.5) and back.within == {"careful": 0.8} and back.note is None
    assert set(back.scores) == {"slip", "oscillation"}
    assert _Outer.from_json({**flat, "note": "x"}).note == "x"


def test_unknown_and_missing_keys_are_refused_by_name() -> None:
    flat = _Outer(1, {}, {}, _Scores(0.5)).to_json()
    with pytest.raises(ValueError, match=r"unknown key.*'stray'"):
        _Outer.from_json({**flat, "stray": 1})
    assert _Outer.from_json({**flat, "stray": 1}, strict=False).n == 1
    with pytest.raises(ValueError, match="without its 'n' key"):
        _Outer.from_json({k: v for k, v in flat.items() if k != "n"})


def test_save_and_load_name_the_file(tmp_path: Path) -> None:
    path = _Outer(1, {}, {}, _Scores(float("nan"))).save(tmp_path / "r" / "report.json")
    assert math.isnan(_Outer.load(path).control.auroc)
    path.write_text("{")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        _Outer.load(path)
    with pytest.raises(FileNotFoundError, match="no _Outer here"):
        _Outer.load(tmp_path / "missing.json")


def _part(data: dict, *prefixes: str, keys: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in data.items() if k.startswith(prefixes) or k in keys}


def test_the_committed_validation_report_reads_back_unchanged() -> None:
    from workbench.adaras.results import ProbeReport
    from workbench.neureasoner.results import MonReport

    data = json.loads((DOCS / "organism_validate.json").read_text())
    mon = _part(data, "mon_")
    assert MonReport.from_json(mon).to_json() == mon
    assert MonReport.from_json(mon).types["slip"].key.event_recall == data["mon_event_recall_slip"]
    probe = _part(data, "probe_", "gate_", "rcn_regime_", keys=("config", "traces", "accuracy",
                                                              "traces_without_thinking_span"))
    report = ProbeReport.from_json(probe)
    assert report.to_json() == probe
    assert report.early.within["careless"] == data["probe_auroc_early_within_careless"]
    assert report.planted["regime"].auroc == data["rcn_regime_auroc"]
