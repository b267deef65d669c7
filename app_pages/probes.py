"""Probes: can a trace's correctness be read from its neurons early in the thinking? ROC with its CI, AUROC
against thinking tokens seen, beside the controls (hand features, bag of tokens) and AdaRAS's gate."""

import pandas as pd
import streamlit as st

from app_pages import shared
from workbench.app.layout import Missing, need_probes
from workbench.figures import auroc_figure, early_curve_figure, roc_figure
from workbench.store.paths import RunPaths

st.title("Probes")
layout, task = shared.current()
analysis = task.analysis
if analysis is None:
    shared.require(Missing(f"no analysis run in task {task.name!r}", f"workbench run --out {layout.root}"))
shared.require(need_probes(analysis))
report = shared.read_json(RunPaths(analysis).probe_report)
style = shared.style()

span = report.get("probe_auroc_early_span", "early")
for col, (label, key) in zip(st.columns(4), ((f"Neuron probe ({span})", "probe_auroc_early"),
                                             ("Hand-feature control", "probe_auroc_baseline"),
                                             ("Token-bag control", "probe_auroc_tokens"),
                                             ("AdaRAS gate (held out)", "gate_auroc")), strict=True):
    value, bounds = report.get(key), report.get(f"{key}_ci")
    col.metric(label, "—" if value is None else f"{value:.3f}")
    if bounds:
        col.caption(f"95% CI [{bounds[0]:.3f}, {bounds[1]:.3f}]")
n_traces, accuracy = report.get("probe_traces", report.get("traces")), report.get("accuracy", float("nan"))
st.caption(f"AUROC of predicting a correct answer on {n_traces} traces (accuracy {accuracy:.3f}); folds and "
           "bootstrap CIs grouped by problem.")

left, right = st.columns(2)
with left:
    if report.get("probe_roc_early"):
        shared.figure(roc_figure(report, style=style))
    else:
        st.info("This report has no ROC points.")
with right:
    shared.figure(auroc_figure(report, style=style))

st.subheader("AUROC against thinking tokens seen")
if report.get("probe_curve"):
    shared.figure(early_curve_figure(report, style=style))
else:
    st.info("This report has no early curve (the cache has no think_first_k spans).")

with st.expander("Everything in the report"):
    flat = {k: v for k, v in report.items() if not isinstance(v, dict | list)}
    st.dataframe(pd.DataFrame({"value": [str(v) for v in flat.values()]}, index=list(flat)), width="stretch")
