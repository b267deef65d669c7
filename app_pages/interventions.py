"""Interventions: the study's results with their CIs; one problem vanilla vs a method side by side with the
tokens saved and where each intervention fired; and a live panel that runs a method on the loaded model."""

import json

import pandas as pd
import streamlit as st

from app_pages import shared
from workbench.app.layout import Missing, need_results, need_traces
from workbench.app.live import KNOBS, case_keys, knob_default, run_case
from workbench.app.marks import event_counts, event_marks, label_marks
from workbench.app.tokens import legend_html, token_html
from workbench.evaluation.methods import METHODS
from workbench.figures import cost_figure, forest_figure
from workbench.traces import run_config

st.title("Interventions")
layout, task = shared.current()
methods = task.methods
if not methods:
    shared.require(Missing(f"no method runs in {layout.root} (only an analysis run)",
                           "workbench eval --config STUDY.toml --out DIR   # e.g. studies/organism.toml"))
reference = "vanilla" if "vanilla" in methods else next(iter(methods))

# -- the study's results -----------------------------------------------------------------------------------------
st.subheader("Results")
results = [r for r in shared.read_json(layout.results) if r.get("task") == task.name] if layout.results else []


def with_ci(value, bounds, fmt: str = "{:.3f}") -> str:
    if value is None:
        return "—"
    return fmt.format(value) + (f" [{fmt.format(bounds[0])}, {fmt.format(bounds[1])}]" if bounds else "")


if not results:
    shared.show_missing(need_results(layout) or need_traces(layout.root))
else:
    st.dataframe(pd.DataFrame([{
        "method": r["method"], "controls for": r.get("control_for") or "",
        "accuracy [95% CI]": with_ci(r["accuracy"], r.get("accuracy_ci")),
        "Δ vs reference [95% CI]": with_ci(r.get("delta_vs_vanilla"), r.get("delta_ci"), "{:+.3f}"),
        "p (McNemar)": r.get("p_value"), "thinking tokens": r.get("thinking_tokens"),
        "token reduction % [95% CI]": with_ci(r.get("token_reduction"), r.get("token_reduction_ci"), "{:.1f}"),
        "interventions / trace": r.get("interventions_per_trace"), "tokens/s": r.get("tokens_per_second"),
    } for r in results]), hide_index=True, width="stretch",
        column_config={"p (McNemar)": st.column_config.NumberColumn(format="%.4f"),
                       "thinking tokens": st.column_config.NumberColumn(format="%.1f"),
                       "interventions / trace": st.column_config.NumberColumn(format="%.2f"),
                       "tokens/s": st.column_config.NumberColumn(format="%.0f")})
    left, right = st.columns(2)
    with left:
        shared.figure(forest_figure(results, task=task.name, style=shared.style()))
    with right:
        shared.figure(cost_figure(results, task=task.name, style=shared.style()))


def side_by_side(left: dict, right: dict, left_name: str, right_name: str, run_for_pieces) -> None:
    saved = left["thinking_tokens"] - right["thinking_tokens"]
    cols = st.columns(3)
    cols[0].metric(f"{left_name} thinking tokens", left["thinking_tokens"])
    cols[1].metric(f"{right_name} thinking tokens", right["thinking_tokens"], delta=-saved, delta_color="inverse")
    cols[2].metric("Tokens saved", saved)
    for col, row, name in zip(st.columns(2), (left, right), (left_name, right_name), strict=True):
        pieces = shared.pieces(run_for_pieces, row["token_ids"])
        marks = label_marks(row, shared.run_task(run_for_pieces), pieces) + event_marks(row)
        col.markdown(f"**{name}** — {'correct' if row['correct'] else 'wrong'} (answer {row['extracted']}, gold "
                     f"{row['gold']}), finish: {row['finish_reason']}")
        col.markdown(legend_html([m.kind for m in marks]), unsafe_allow_html=True)
        col.markdown(token_html(pieces, None, marks, start=0), unsafe_allow_html=True)
        counts = event_counts(row)
        if counts:
            col.caption("Events: " + ", ".join(f"{k} × {v}" for k, v in counts.items()))


# -- one problem, vanilla vs a method -----------------------------------------------------------------------------
st.subheader("One problem, side by side")
others = [m for m in methods if m != reference]
if not others:
    st.info(f"Task {task.name!r} has only the {reference!r} run; a study with methods has more "
            f"(`workbench run --out {layout.root}`).")
else:
    busy = {r["method"]: r.get("interventions_per_trace") or 0 for r in results}
    first = max(others, key=lambda m: busy.get(m, 0))  # open on a method that acted
    method = st.selectbox("Method", others, index=others.index(first))
    for name in (reference, method):
        shared.require(need_traces(methods[name]))
    base = {r["trace_id"]: r for r in shared.traces(methods[reference])}
    steered = {r["trace_id"]: r for r in shared.traces(methods[method])}
    common = [t for t in steered if t in base]
    order = st.radio("Order by", ["tokens saved", "correctness changed", "most interventions", "trace id"],
                     horizontal=True)
    if order == "tokens saved":
        common.sort(key=lambda t: base[t]["thinking_tokens"] - steered[t]["thinking_tokens"], reverse=True)
    elif order == "correctness changed":
        common.sort(key=lambda t: base[t]["correct"] == steered[t]["correct"])
    elif order == "most interventions":
        common.sort(key=lambda t: -sum(event_counts(steered[t]).values()))
    key = st.selectbox("Trace", common, format_func=lambda t: (
        f"{t} · saved {base[t]['thinking_tokens'] - steered[t]['thinking_tokens']} · "
        f"{'✓' if base[t]['correct'] else '✗'}→{'✓' if steered[t]['correct'] else '✗'}"))
    side_by_side(base[key], steered[key], reference, method, methods[reference])

# -- live ----------------------------------------------------------------------------------------------------------
st.subheader("Live: run a problem with a method")

study_methods = {r["method"]: (r["type"], {k: v for k, v in (r.get("params") or {}).items()}) for r in results}
choices = {name: spec for name, spec in study_methods.items() if spec[0] != "vanilla"}
choices |= {f"{t} (defaults)": (t, {}) for t in METHODS if t != "vanilla" and t not in {s[0] for s in choices.values()}}
shared.require(need_traces(methods[reference]))
cfg = run_config(methods[reference])
model = shared.run_model(methods[reference])
c1, c2 = st.columns(2)
label = c1.selectbox("Method to run", list(choices),
                     index=list(choices).index(method) if others and method in choices else 0)
method_type, params = choices[label]
case = c2.selectbox("Problem", list(case_keys(cfg, model)))
values = dict(params)
knobs = KNOBS.get(method_type, ())
if knobs:
    cols = st.columns(len(knobs))
    for col, knob in zip(cols, knobs, strict=True):
        start = knob_default(knob, params, method_type)
        if start is None and not col.checkbox(f"set {knob.name}", help="unset: the method's own (e.g. each "
                                              "detector's fitted threshold)"):
            values.pop(knob.name, None)
            continue
        start = start if start is not None else (knob.low + knob.high) / 2
        if knob.whole:
            values[knob.name] = int(col.slider(knob.name, int(knob.low), int(knob.high), int(start), int(knob.step)))
        else:
            values[knob.name] = col.slider(knob.name, float(knob.low), float(knob.high), float(start),
                                           float(knob.step))
if method_type in ("adaras", "random-steering"):
    gated = getattr(METHODS[method_type](params), "gate", False)  # random-steering defaults to ungated
    values["gate"] = st.checkbox("Gate (steer only predicted failures)", value=bool(gated))
values.pop("name", None)
if st.button("Run vanilla and this method", type="primary"):
    try:
        spec = METHODS[method_type]({**values, "name": method_type})
        with st.spinner("generating"):
            plain = run_case(model, cfg, case, METHODS["vanilla"]({}), task.analysis)
            done = run_case(model, cfg, case, spec, task.analysis)
    except ValueError as exc:  # a missing analysis piece or a bad parameter: the library says what to do
        st.error(str(exc))
    else:
        st.session_state["live"] = {"case": case, "label": label, "values": values, "plain": plain, "done": done}
live = st.session_state.get("live")
if live:
    st.caption(f"{live['case']} · {live['label']} with {json.dumps(live['values'], default=str)} · "
               f"{live['done']['seconds']:.2f} s")
    side_by_side(live["plain"], live["done"], "vanilla", live["label"], methods[reference])
