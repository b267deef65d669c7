"""Probes: can a trace's correctness be read from its neurons early in the thinking? ROC with its CI, AUROC
against thinking tokens seen, beside the controls (hand features, bag of tokens) and AdaRAS's gate."""

import pandas as pd
import streamlit as st

from app_pages import shared
from workbench.app.layout import Missing, need_probes

st.title("Probes")
layout, task = shared.current()
analysis = task.analysis
if analysis is None:
    shared.require(Missing(f"no analysis run in task {task.name!r}", f"workbench run --out {layout.root}"))
shared.require(need_probes(analysis))
report = shared.read_json(analysis / "probes" / "report.json")


def ci(name: str) -> str:
    value, bounds = report.get(name), report.get(f"{name}_ci")
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


span = report.get("probe_auroc_early_span", "early")
cols = st.columns(4)
cols[0].metric(f"Neuron probe AUROC ({span})", ci("probe_auroc_early"))
cols[1].metric("Hand-feature control", ci("probe_auroc_baseline"))
cols[2].metric("Token-bag control", ci("probe_auroc_tokens"))
cols[3].metric("AdaRAS gate (held out)", ci("gate_auroc"))
n_traces, accuracy = report.get("probe_traces", report.get("traces")), report.get("accuracy", float("nan"))
st.caption(f"{n_traces} traces, accuracy {accuracy:.3f}; "
           "AUROC of predicting a correct answer, folds and bootstrap CIs grouped by problem.")

st.subheader("ROC of the early probe")
roc = report.get("probe_roc_early")
if roc:
    fpr = pd.Index(roc["fpr"], name="false positive rate")
    st.line_chart(pd.DataFrame({"true positive rate": roc["tpr"]}, index=fpr))
else:
    st.info("This report has no ROC points.")

st.subheader("AUROC against thinking tokens seen")
curve = report.get("probe_curve") or []
if curve:
    frame = pd.DataFrame([{"thinking tokens": c["k"], "auroc": c["auroc"], "ci low": c["ci"][0], "ci high": c["ci"][1],
                           "traces": c["n"]} for c in curve])
    st.line_chart(frame.set_index("thinking tokens")[["auroc", "ci low", "ci high"]])
    st.dataframe(frame, hide_index=True, width="stretch")
else:
    st.info("This report has no early curve (the cache has no think_first_k spans).")

st.subheader("Everything in the report")
flat = {k: v for k, v in report.items() if not isinstance(v, dict | list)}
st.dataframe(pd.DataFrame({"value": [str(v) for v in flat.values()]}, index=list(flat)), width="stretch")
