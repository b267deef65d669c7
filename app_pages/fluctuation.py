"""Fluctuation patterns: NeuReasoner's key neurons over one trace with its failure episodes overlaid, the
spectral window features its detectors read, and how well those detectors do beside their controls."""

import numpy as np
import pandas as pd
import streamlit as st

from app_pages import shared
from workbench.app.layout import Missing, need_neurons, need_traces, neuron_sets
from workbench.app.marks import failure_events
from workbench.app.neuron_stats import thinking_span
from workbench.app.scores import neureasoner_config
from workbench.neureasoner.features import FEATURES, window_features, window_starts

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

run = shared.pick_run(task, prefer="analysis")
shared.require(need_traces(run))
rows = shared.traces(run)


def has(r: dict) -> bool:
    return bool(failure_events(r)[0].of(kind))


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
events, source = failure_events(row, shared.pieces(run, row["token_ids"]))
episodes = events.of(kind)

st.subheader("Activations over the thinking")
frame = pd.DataFrame(acts[lo:hi], columns=[labels[j] for j in chosen], index=pd.RangeIndex(lo, hi, name="position"))
st.line_chart(frame)
st.caption(f"{kind} episodes ({source}): " + (", ".join(f"tokens {a}..{b - 1}" for a, b in episodes) or "none")
           + f" · window {cfg.window}, stride {cfg.stride}")

st.subheader("Window features")
starts = window_starts(max(hi - lo, 0), cfg, offset=lo)
feats = window_features(acts[lo:hi], cfg)  # (window, neuron, feature)
if not len(starts):
    st.info(f"The thinking is shorter than one window ({cfg.window} tokens).")
else:
    feature = st.selectbox("Feature", FEATURES, index=FEATURES.index("high_ratio"))
    per = pd.DataFrame(feats[:, :, FEATURES.index(feature)], columns=[labels[j] for j in chosen],
                       index=pd.Index(starts, name="window start"))
    inside = np.array([any(s < b and s + cfg.window > a for a, b in episodes) for s in starts])
    per[f"in a {kind} episode"] = inside.astype(float)
    st.line_chart(per)
    long = pd.DataFrame([{"window start": int(s), "neuron": labels[chosen[n]],
                          **dict(zip(FEATURES, feats[w, n].tolist(), strict=True))}
                         for w, s in enumerate(starts) for n in range(len(chosen))])
    with st.expander("All features, every window"):
        st.dataframe(long, hide_index=True, width="stretch")

st.subheader("Detectors beside their controls")
report_path = analysis / "neureasoner" / "report.json"
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
