"""Where things happened in a trace, as token spans: failure labels and intervention events.

Failure labels come from the task's ground truth when it has one (``Task.failure_spans``; the organism's:
slips, repeats, overthinking) and otherwise from NeuReasoner's automatic labeller over the decoded
thinking (``neureasoner.labels.trace_events``). Intervention events are what a method's controllers
recorded while generating (``traces.parquet``'s ``events``); an event at ``step`` acted on the token
at ``prompt_len + step``.

Example:
    >>> row = {"prompt_len": 4, "events": '[{"step": 2, "kind": "force", "payload": {"tokens": [17]}}]'}
    >>> event_marks(row)
    [Mark(start=6, end=7, kind='force', note='tokens=[17]', source='event')]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from workbench.neureasoner.labels import FailureEvents, trace_events
from workbench.tasks import Task

FAILURE_KINDS = ("slip", "oscillation", "overthinking")
QUIET_EVENTS = ("ban",)  # recorded at every step by some baselines (NoWait): counted, not drawn one by one


@dataclass(frozen=True)
class Mark:
    """A span ``[start, end)`` of a trace's tokens: a failure label or an intervention event."""

    start: int
    end: int
    kind: str
    note: str = ""
    source: str = "label"  # "label" (planted / ground truth), "detected" (auto labeller) or "event"


def _short(payload: dict) -> str:
    parts = []
    for k, v in payload.items():
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def failure_events(row: dict, task: Task | None, pieces: Sequence[str] | None = None) -> tuple[FailureEvents, str]:
    """A trace's failure episodes and where they come from: ``"label"`` (the task's truth) or ``"detected"``.

    Without the task's truth, the automatic labeller reads ``pieces`` (one decoded string per token); with
    neither, there are no episodes.
    """
    return trace_events(row, task, pieces)


def label_marks(row: dict, task: Task | None, pieces: Sequence[str] | None = None) -> list[Mark]:
    """The trace's failure episodes as marks (slips, oscillations/stagnations, overthinking)."""
    events, source = failure_events(row, task, pieces)
    return [Mark(s, e, kind, source=source) for kind in FAILURE_KINDS for s, e in events.of(kind)]


def event_marks(row: dict, quiet: Sequence[str] = QUIET_EVENTS) -> list[Mark]:
    """The interventions recorded on the trace (kinds in ``quiet`` left out), each on the token it acted on."""
    out = []
    for ev in json.loads(row.get("events") or "[]"):
        if ev["kind"] in quiet:
            continue
        pos = row["prompt_len"] + int(ev["step"])
        out.append(Mark(pos, pos + 1, ev["kind"], _short(ev.get("payload", {})), "event"))
    return out


def event_counts(row: dict) -> dict[str, int]:
    """How many events of each kind the trace recorded.

    >>> event_counts({"events": '[{"step": 0, "kind": "ban"}, {"step": 1, "kind": "ban"}]'})
    {'ban': 2}
    """
    counts: dict[str, int] = {}
    for ev in json.loads(row.get("events") or "[]"):
        counts[ev["kind"]] = counts.get(ev["kind"], 0) + 1
    return counts
