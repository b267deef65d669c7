"""Fluctuation patterns: NeuReasoner's key neurons over one trace with its failure episodes overlaid, the
spectral window features its detectors read, and how well those detectors do beside their controls."""

import pandas as pd
import streamlit as st

from app_pages import shared
from workbench.app.layout import Missing, need_neurons, need_traces, neuron_sets
from workbench.app.marks import failure_events
from workbench.app.neuron_stats import thinking_span
from workbench.app.scores import fluctuation, neureasoner_config
from workbench.figures import fluctuation_figure, spectral_features_figure
from workbench.neureasoner.features import FEATURES
from workbench.store.paths import ANALYSIS_RUN, RunPaths

st.title("Fluctuation patterns")
layout, task = shared.current()
analysis = task.analysis
if analysis is None:
    shared.require(Missing(f"no analysis run in task {task.name!r}", f"workbench run --out {layout.root}"))
types = [s.removeprefix("mon-") for s in neuron_sets(analysis) if s.startswith("mon-")]
if not types:
    shared.require(need_neurons(analysis, "mon-slip"))

c1, c2 = st.columns([1, 3])
kind = c1.selectbox("Failure type", types)
ns = shared.neuron_set(analysis, f"mon-{kind}")
cfg = neureasoner_config(ns.params)
labels = [f"L{layer}.{index}" for layer, index in zip(ns.layers, ns.indices, strict=True)]
chosen = c2.multiselect("Key neurons", range(len(ns)), default=list(range(min(3, len(ns)))),
                        format_func=lambda j: labels[j] + (f" ({ns.params.get('best_feature', [''] * len(ns))[j]})"
                                                           if "best_feature" in ns.params else ""))
if not chosen:
    st.info("Choose at least one neuron.")
    st.stop()

run = shared.pick_run(task, prefer=ANALYSIS_RUN)
shared.require(need_traces(run))
rows = shared.traces(run)


def has(r: dict) -> bool:
    return bool(failure_events(r, shared.run_task(run))[0].of(kind))


with_kind = [i for i, r in enumerate(rows) if has(r)]
only = st.toggle(f"Only traces with a {kind} episode", value=bool(with_kind))
choices = with_kind if only else list(range(len(rows)))
if not choices:
    st.info(f"No trace of {run.name} has a labelled {kind} episode.")
    st.stop()
i = st.selectbox("Trace", choices, format_func=lambda j: f"{rows[j]['trace_id']} ({rows[j]['thinking_tokens']} "
                                                          "thinking tokens)")
row = rows[i]
lo, hi = thinking_span(row)
picked = ns.take(chosen)
acts = shared.acts(run, [i], picked)[0]
events, source = failure_events(row, shared.run_task(run), shared.pieces(run, row["token_ids"]))
episodes = events.of(kind)

detector, det_acts = None, None
det_path = RunPaths(analysis).detector(kind)
if det_path.is_file():
    from workbench.neureasoner.detectors import Detector

    detector = Detector.load(det_path)
    det_acts = shared.acts(run, [i], detector.neurons)[0] if detector.neurons is not None else None
view = fluctuation(row["trace_id"], kind, [labels[j] for j in chosen], acts, (lo, hi), events,
                   detector if det_acts is not None else None, det_acts, cfg)

st.subheader("Activations over the thinking")
shared.figure(fluctuation_figure(view, style=shared.style()))
st.caption(f"{kind} episodes ({source}): " + (", ".join(f"tokens {a}..{b - 1}" for a, b in episodes) or "none")
           + f" · positions count thinking tokens from {lo} · window {cfg.window}, stride {cfg.stride}"
           + ("" if detector is not None else f" · no detector at {det_path}"))

st.subheader("Window features")
if not len(view.window_starts):
    st.info(f"The thinking is shorter than one window ({cfg.window} tokens).")
else:
    shared.figure(spectral_features_figure(view, style=shared.style()))
    long = pd.DataFrame([{"window start": int(s), "neuron": name, **dict(zip(FEATURES, view.features[w, n].tolist(),
                                                                           strict=True))}
                         for w, s in enumerate(view.window_starts) for n, name in enumerate(view.neurons)])
    with st.expander("All features, every window"):
        st.dataframe(long, hide_index=True, width="stretch")

st.subheader("Detectors beside their controls")
report_path = RunPaths(analysis).mon_report
if not report_path.is_file():
    shared.show_missing(need_neurons(analysis, "mon-slip") or Missing(f"no NeuReasoner report in {analysis}",
                                                                      f"workbench rank --method mon {analysis}"))
else:
    report = shared.read_json(report_path)
    metrics = ("auroc", "precision", "recall", "event_recall", "event_precision", "anticipation_auroc")
    table = pd.DataFrame([{"inputs": name, **{m: report.get(f"mon_{m}_{t}{suffix}") for m in metrics}}
                          for t in types for name, suffix in ((f"{t}: key neurons", ""), (f"{t}: random neurons",
                                                                                          "_random"),
                                                              (f"{t}: tokens only", "_tokens"))])
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption("Held-out problems; windows of the test half (window AUROC, precision and recall at the fitted "
               "threshold), episodes caught (event recall), and whether the next window's onset is predicted.")
