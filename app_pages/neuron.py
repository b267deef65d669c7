"""Neuron page: the rankings (AdaRAS RCNs, NEAT exit neurons, NeuReasoner MoN neurons and their controls),
then one neuron during reasoning: correct vs incorrect, its trajectory over the thinking, where it fires,
what it writes to the logits, and what it does on text you type."""

import numpy as np
import pandas as pd
import streamlit as st

from app_pages import shared
from workbench.app.layout import Missing, need_activations, need_neurons, need_traces, neuron_sets
from workbench.app.neuron_stats import logit_effects, thinking_span, top_contexts, trajectory
from workbench.app.readout import store_columns
from workbench.app.tokens import token_html
from workbench.figures import (
    FAMILIES,
    activation_histogram_figure,
    layer_distribution_figure,
    ranking_figure,
    trajectory_figure,
)
from workbench.neurons import NeuronSet
from workbench.probes import auroc
from workbench.readout import neuron_activations

st.title("Neuron page")
layout, task = shared.current()
analysis = task.analysis
if analysis is None:
    shared.require(Missing(f"no analysis run in task {task.name!r} (neurons are ranked on one)",
                           f"workbench run --out {layout.root}   # or: workbench cache RUN && workbench rank "
                           "--method rcn RUN"))
shared.require(need_traces(analysis))
sets = neuron_sets(analysis)
if not sets:
    shared.require(need_neurons(analysis, "rcn"))

# -- rankings --------------------------------------------------------------------------------------------------
st.subheader("Rankings")
c1, c2, c3, c4 = st.columns([2, 2, 1, 2])
name = c1.selectbox("Neuron set", sets, index=sets.index("rcn") if "rcn" in sets else 0,
                    help="rcn*: AdaRAS (with controls), exit: NEAT, mon-<type>: NeuReasoner")
ns = shared.neuron_set(analysis, name)
table = pd.DataFrame({"rank": range(1, len(ns) + 1), "layer": ns.layers, "neuron": ns.indices,
                      "score": ns.scores or [np.nan] * len(ns), "sign": ns.signs or [0] * len(ns)})
for group, means in ns.group_means:
    table[f"mean {group}"] = means
layers = c2.multiselect("Layers", sorted(set(ns.layers)), default=sorted(set(ns.layers)))
sign = c3.selectbox("Sign", ["any", "+", "-"])
top_score = float(np.nanmax(np.abs(table["score"]))) if len(table) and table["score"].notna().any() else 0.0
floor = c4.slider("Min |score|", 0.0, max(top_score, 1e-6), 0.0, format="%.3g")
shown = table[table["layer"].isin(layers) & (table["score"].abs().fillna(0) >= floor)]
if sign != "any":
    shown = shown[shown["sign"] == (1 if sign == "+" else -1)]
st.dataframe(shown, hide_index=True, width="stretch", height=240)
family = {n: shared.neuron_set(analysis, n) for n in FAMILIES.get(name, (name,)) if n in sets}
left, right = st.columns(2)
with left:
    shared.figure(ranking_figure(family, k=min(20, len(ns)), style=shared.style()))
if ns.model_shape is not None:
    with right:
        shared.figure(layer_distribution_figure(family, ns.model_shape[0], style=shared.style()))
with st.expander(f"How {name} was ranked"):
    st.json(ns.params, expanded=False)
if shown.empty:
    st.info("No neuron passes these filters.")
    st.stop()

pick = st.selectbox("Neuron", shown.index, format_func=lambda r: f"#{r + 1}: L{ns.layers[r]}.{ns.indices[r]}")
layer, index = ns.layers[pick], ns.indices[pick]
neuron = NeuronSet.from_pairs([(layer, index)])
member = []
for other_name in sets:
    other = shared.neuron_set(analysis, other_name)
    pairs = list(zip(other.layers, other.indices, strict=True))
    if (layer, index) in pairs:
        member.append(f"{other_name} #{pairs.index((layer, index)) + 1}")
st.header(f"L{layer}.{index}")
st.caption(f"`blocks.{layer}.mlp.hook_post`, neuron {index} · in sets: {', '.join(member)}")

rows = shared.traces(analysis)
correct = np.array([bool(r["correct"]) for r in rows])

# -- correct vs incorrect ---------------------------------------------------------------------------------------
st.subheader("Correct vs incorrect traces")
missing = need_activations(analysis)
if missing is not None:
    shared.show_missing(missing)
else:
    store = shared.store(analysis)
    span = st.selectbox("Mean over", store.spans, index=list(store.spans).index("think"))
    values = shared.summary(analysis, span)[:, layer, index]
    ok = ~np.isnan(values)
    groups = {"correct": values[ok & correct], "incorrect": values[ok & ~correct]}
    st.metric("AUROC of this neuron alone (correct vs incorrect)", f"{auroc(correct[ok], values[ok]):.3f}")
    shared.figure(activation_histogram_figure(groups, f"L{layer}.{index}", span, style=shared.style()))

# -- trajectory and contexts (per-token) ------------------------------------------------------------------------
st.subheader("Mean trajectory over the thinking")
kept = missing is None and store_columns(shared.store(analysis), neuron) is not None
if kept:
    read = list(range(len(rows)))
    st.caption(f"Per-token activations of all {len(rows)} traces from the activation cache.")
else:  # a teacher-forced pass per trace: a big model on CPU wants a sample
    n = int(st.number_input("Traces to replay", 1, len(rows), min(len(rows), 400),
                            help="This neuron was not kept per token in the activation cache; its activations "
                                 "come from a teacher-forced pass of the model over an evenly spaced sample"))
    read = sorted({int(x) for x in np.linspace(0, len(rows) - 1, n)})
    st.caption(f"Per-token activations of {len(read)} of {len(rows)} traces from a teacher-forced pass.")
series = [a[:, 0] for a in shared.acts(analysis, read, neuron)]
spans = [thinking_span(rows[r]) for r in read]
bins = st.slider("Position bins", 5, 50, 20)
traj = trajectory(f"L{layer}.{index}", series, spans, correct[read].tolist(), bins=bins)
shared.figure(trajectory_figure(traj, style=shared.style()))
st.caption("0 = first thinking token, 1 = last; mean activation of each slice over the traces, 95% t-intervals.")

st.subheader("Top-activating contexts")
c1, c2 = st.columns(2)
largest = c1.radio("Contexts", ["highest", "lowest"], horizontal=True) == "highest"
k = c2.slider("How many", 1, 20, 8)
vmax = max((float(np.nanmax(np.abs(s[lo:hi]))) for s, (lo, hi) in zip(series, spans, strict=True) if hi > lo),
           default=1.0)
for ctx in top_contexts(series, k=k, spans=spans, largest=largest):
    r = rows[read[ctx.row]]
    a, b = max(ctx.pos - 12, 0), min(ctx.pos + 5, len(r["token_ids"]))
    pieces = shared.pieces(analysis, r["token_ids"][a:b])
    st.markdown(f"`{r['trace_id']}` {'✓' if r['correct'] else '✗'} pos {ctx.pos}: **{ctx.value:+.3f}**")
    st.markdown(token_html(pieces, series[ctx.row][a:b], vmax=vmax, start=a), unsafe_allow_html=True)

# -- logits and custom text (need the model) --------------------------------------------------------------------
st.subheader("Tokens it promotes and suppresses")
model = shared.run_model(analysis)
effects = logit_effects(model, layer, index, k=10)
c1, c2 = st.columns(2)
c1.dataframe(pd.DataFrame(effects.promoted, columns=["promoted", "W_out @ W_U"]), hide_index=True, width="stretch")
c2.dataframe(pd.DataFrame(effects.suppressed, columns=["suppressed", "W_out @ W_U"]), hide_index=True,
             width="stretch")
st.caption("Direct effect on the logits per unit of activation (the final norm's scale left out).")

st.subheader("Try your own text")
with st.form("custom"):
    text = st.text_area("Text", rows[0]["prompt"] + rows[0]["text"] if rows else "")
    go = st.form_submit_button("Read this neuron")
if go and text.strip():
    ids = model.tokenizer(text).input_ids
    (custom,) = neuron_activations(model, [ids], neuron)
    st.markdown(token_html(shared.pieces(analysis, ids), custom[:, 0]), unsafe_allow_html=True)
