"""Trace viewer: one trace's tokens coloured by a neuron's activation or a detector's score, with its failure
labels (planted or detected) and the interventions that fired on it."""

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app_pages import shared
from workbench.app.layout import Missing, need_traces, neuron_sets
from workbench.app.marks import Mark, event_counts, event_marks, label_marks
from workbench.app.neuron_stats import thinking_span
from workbench.app.tokens import legend_html, scale_max, token_html
from workbench.neurons import NeuronSet
from workbench.store.paths import RunPaths


@st.cache_data(show_spinner="replaying the trace for NEAT's signals")
def exit_reading(run: str, mtime: float, trace_id: str, analysis: str):
    from workbench.figures import exit_timeline

    return exit_timeline(run, trace_id, model=shared.run_model(Path(run)), reference_run=analysis)


st.title("Trace viewer")
layout, task = shared.current()
run = shared.pick_run(task)
shared.require(need_traces(run))
rows = shared.traces(run)
analysis = task.analysis

only = st.radio("Show", ["all traces", "incorrect", "with failure labels", "with interventions"], horizontal=True)


def keep(r: dict) -> bool:
    if only == "incorrect":
        return not r["correct"]
    if only == "with failure labels":
        return bool(label_marks(r, shared.run_task(run)))
    if only == "with interventions":
        return bool(event_marks(r))
    return True


picked = [i for i, r in enumerate(rows) if keep(r)]
if not picked:
    st.info(f"No trace of {run.name} is {only}.")
    st.stop()
i = st.selectbox("Trace", picked, format_func=lambda j: (
    f"{rows[j]['trace_id']} · {'correct' if rows[j]['correct'] else 'wrong'} · {rows[j]['thinking_tokens']} thinking"))
row = rows[i]
pieces = shared.pieces(run, row["token_ids"])
lo, hi = thinking_span(row)

cols = st.columns(6)
cols[0].metric("Correct", "yes" if row["correct"] else "no")
cols[1].metric("Gold", str(row["gold"]))
cols[2].metric("Extracted", str(row["extracted"]))
cols[3].metric("Thinking tokens", row["thinking_tokens"])
cols[4].metric("Finish", row["finish_reason"])
cols[5].metric("Interventions", sum(event_counts(row).values()))

sources = ["neuron"]
if analysis is not None and RunPaths(analysis).neureasoner.is_dir():
    sources.append("NeuReasoner detector")
if analysis is not None and RunPaths(analysis).exit_reference.is_file():
    sources.append("NEAT exit signal")
sources.append("nothing")
colour_by = st.radio("Colour tokens by", sources, horizontal=True)

values, signed, vmax, extra, timeline = None, True, None, [], False
if colour_by == "neuron":
    sets = neuron_sets(analysis) if analysis is not None else []
    c1, c2, c3 = st.columns([2, 1, 1])
    options = [*sets, "enter a neuron"]
    chosen = c1.selectbox("From neuron set", options, index=options.index("rcn") if "rcn" in options else 0)
    if chosen == "enter a neuron":
        layer = int(c2.number_input("Layer", 0, 10_000, 0))
        index = int(c3.number_input("Neuron", 0, 1_000_000, 0))
    else:
        ns = shared.neuron_set(analysis, chosen)
        k = c2.selectbox("Neuron", range(len(ns)), format_func=lambda j, ns=ns: (
            f"L{ns.layers[j]}.{ns.indices[j]}" + (f" ({ns.scores[j]:+.3g})" if ns.scores else "")))
        layer, index = ns.layers[k], ns.indices[k]
    try:
        (values,) = shared.acts(run, [i], NeuronSet.from_pairs([(layer, index)]))
    except ValueError as exc:  # e.g. a neuron outside the model
        st.error(str(exc))
        st.stop()
    values = values[:, 0]
    vmax = scale_max(values[lo:hi]) if hi > lo else None  # the scale of the thinking, not of BOS's outlier
    st.caption(f"Activation of L{layer}.{index} (`blocks.{layer}.mlp.hook_post`), a clean teacher-forced readout "
               "of this trace's tokens.")
elif colour_by == "NeuReasoner detector":
    from workbench.app.scores import detector_scores
    from workbench.neureasoner.detectors import Detector

    found = sorted(RunPaths(analysis).detectors())
    kind = st.selectbox("Detector", found, help="<type> reads its key neurons; _random and _tokens are its controls")
    det = Detector.load(RunPaths(analysis).detector(kind))
    acts = shared.acts(run, [i], det.neurons)[0] if det.neurons is not None else None
    values = detector_scores(det, acts, np.asarray(row["token_ids"]), (lo, hi))
    signed, vmax = False, 1.0
    fired = np.flatnonzero(np.nan_to_num(values, nan=-1.0) >= det.threshold)
    extra = [Mark(int(p), int(p) + 1, f"{det.kind} alarm", f"score >= {det.threshold:.3g}", "detected")
             for p in fired]
    st.caption(f"P({det.kind}) of the window ending at each token; threshold {det.threshold:.3g}; "
               f"{len(fired)} alarm(s).")
elif colour_by == "NEAT exit signal":
    from workbench.app.scores import exit_signal
    from workbench.neat.reference import ExitReference

    ref = ExitReference.load(RunPaths(analysis).exit_reference)
    which = st.selectbox("Signal", ["sim", "rho", "phi", "mag"])
    cached = RunPaths(analysis).activations.root.is_dir()
    d_mlp = shared.store(analysis).d_mlp if cached else shared.run_model(run).cfg.d_mlp
    exit_neurons = NeuronSet.from_flat(list(ref.flat), d_mlp)
    values = exit_signal(ref, shared.acts(run, [i], exit_neurons)[0], which)
    signed, vmax = which in ("sim", "rho"), 1.0 if which in ("sim", "rho") else None
    st.caption(f"NEAT's {which} of the {len(ref)} exit neurons against their pattern at exit points.")
    timeline = True

marks = label_marks(row, shared.run_task(run), pieces) + event_marks(row) + extra
st.markdown(legend_html([m.kind for m in marks]), unsafe_allow_html=True)
st.markdown(token_html(pieces, values, marks, vmax=vmax, signed=signed), unsafe_allow_html=True)
scale = ""
if values is not None:
    top = vmax if vmax is not None else scale_max(values)
    scale = f"Colour: {'blue −' + format(top, '.3g') + ' · white 0 · ' if signed else 'white 0 · '}red +{top:.3g}. "
st.caption(f"{scale}Thinking: tokens {lo}..{hi - 1}. Underlines: failure labels (planted, or detected where the task "
           "has none) and interventions (▲); hover a token for its position, value and marks.")

if timeline:
    from workbench.figures import MissingInput, exit_timeline_figure

    try:
        shared.figure(exit_timeline_figure(exit_reading(str(run), shared.stamp(RunPaths(run).traces),
                                                        row["trace_id"], str(analysis)), style=shared.style()))
    except MissingInput as exc:
        shared.show_missing(Missing(exc.what, exc.command))

if marks:
    st.subheader("Marks")
    st.dataframe(pd.DataFrame([{"start": m.start, "end": m.end, "kind": m.kind, "source": m.source,
                                "tokens": "".join(pieces[m.start:m.end]), "note": m.note} for m in marks]),
                 hide_index=True, width="stretch")
counts = event_counts(row)
if counts:
    st.caption("Events recorded: " + ", ".join(f"{k} × {v}" for k, v in counts.items()))
