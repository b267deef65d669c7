"""A trace's tokens as HTML, each coloured by a value (a neuron's activation, a detector's score), with
marks drawn under the tokens they cover (CircuitsVis-style per-token colouring, as plain HTML).

Colours run from blue (negative) through white to red (positive) on a symmetric scale, or white to
red for a score in [0, 1]; NaN (no value there, e.g. outside the thinking span) stays uncoloured.
Hovering a token shows its position, its value and the marks on it.

Example:
    >>> html = token_html(["Q:", " 4", " +"], [0.0, 1.0, float("nan")], [Mark(1, 2, "slip")])
    >>> "rgb(255, 0, 0)" in html, "slip" in html, html.count("<span") >= 3
    (True, True, True)
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from workbench.app.marks import Mark

# Colour-blind-safe (Okabe-Ito) underline colours per mark kind; anything else is grey.
MARK_COLOURS = {
    "slip": "#D55E00", "oscillation": "#E69F00", "overthinking": "#CC79A7",
    "force": "#009E73", "stop": "#009E73", "edit_on": "#0072B2", "edit_off": "#56B4E9", "gate": "#0072B2",
}
EVENT_COLOUR = "#009E73"


def colour(value: float, vmax: float, signed: bool = True) -> str:
    """Background colour of one value on a scale saturating at ``vmax``.

    >>> colour(1.0, 1.0), colour(-1.0, 1.0), colour(0.0, 1.0)
    ('rgb(255, 0, 0)', 'rgb(0, 0, 255)', 'rgb(255, 255, 255)')
    """
    if value is None or not math.isfinite(value) or vmax <= 0:
        return "transparent"
    t = max(-1.0, min(1.0, value / vmax))
    if not signed:
        t = max(t, 0.0)
    fade = round(255 * (1 - abs(t)))
    return f"rgb(255, {fade}, {fade})" if t >= 0 else f"rgb({fade}, {fade}, 255)"


def scale_max(values: Float[np.ndarray, " pos"] | Sequence[float]) -> float:
    """The largest finite ``|value|`` (1.0 when there is none), the saturation point of the colours."""
    v = np.abs(np.asarray(values, np.float64))
    v = v[np.isfinite(v)]
    return float(v.max()) if len(v) and v.max() > 0 else 1.0


def _piece(p: str) -> str:
    # SentencePiece's word marker and byte-level BPE's space show as a space; newlines stay visible.
    return p.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\u21b5\n")


def pieces(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """One display string per token (word markers shown as spaces), so a trace reads as text.

    >>> from workbench.organism.tokenizer import build_tokenizer
    >>> tok = build_tokenizer()
    >>> "".join(pieces(tok, tok("Q: 4 + 5 = ?").input_ids))
    '<bos>Q: 4 + 5 = ?'
    """
    return [_piece(p if p is not None else f"<{i}>")
            for i, p in zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids)), strict=True)]


def token_html(
    pieces: Sequence[str],
    values: Float[np.ndarray, " pos"] | Sequence[float] | None = None,
    marks: Sequence[Mark] = (),
    vmax: float | None = None,
    signed: bool = True,
    start: int = 0,
) -> str:
    """HTML of ``pieces`` (one decoded string per token), coloured by ``values`` and underlined by ``marks``.

    ``start`` is the position of ``pieces[0]`` in the trace (marks use trace positions).
    """
    if values is not None and len(values) != len(pieces):
        raise ValueError(f"{len(values)} values for {len(pieces)} tokens")
    vmax = vmax if vmax is not None else (scale_max(values) if values is not None else 1.0)
    by_pos: dict[int, list[Mark]] = {}
    for m in marks:
        for pos in range(m.start, max(m.end, m.start + 1)):
            by_pos.setdefault(pos, []).append(m)
    out = ['<div style="font-family: monospace; line-height: 2.1; white-space: pre-wrap; word-break: break-word">']
    for i, piece in enumerate(pieces):
        pos = start + i
        value = float(values[i]) if values is not None else float("nan")
        here = by_pos.get(pos, [])
        style = [f"background: {colour(value, vmax, signed)}", "padding: 1px 0", "border-radius: 2px"]
        if here:
            first = here[0]
            style.append(f"border-bottom: 3px solid {MARK_COLOURS.get(first.kind, '#777777')}")
        title = f"pos {pos}" + (f" | {value:.3f}" if math.isfinite(value) else "")
        title += "".join(f" | {m.kind}{' ' + m.note if m.note else ''}" for m in here)
        badge = "".join(f'<sup style="color: {EVENT_COLOUR}; font-weight: bold">\u25b2{_html.escape(m.kind)}</sup>'
                        for m in here if m.source == "event" and m.start == pos)
        out.append(f'{badge}<span title="{_html.escape(title)}" style="{"; ".join(style)}">'
                   f"{_html.escape(_piece(piece))}</span>")
    out.append("</div>")
    return "".join(out)


def legend_html(kinds: Sequence[str]) -> str:
    """A one-line key of the mark colours in use.

    >>> "slip" in legend_html(["slip"])
    True
    """
    items = [f'<span style="border-bottom: 3px solid {MARK_COLOURS.get(k, "#777777")}; margin-right: 1em">'
             f"{_html.escape(k)}</span>" for k in dict.fromkeys(kinds)]
    return '<div style="font-size: 0.85em">' + "".join(items) + "</div>"
