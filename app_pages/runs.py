"""Runs: every trace run of the chosen folder with its settings and results; compare runs; start a new one."""

from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import shared
from workbench.app.layout import need_traces
from workbench.app.summary import SETTINGS, run_summary
from workbench.store.paths import RunPaths

st.title("Runs")
layout, task = shared.current()
st.caption(f"`{layout.root}` — a {layout.kind}" + (f", task **{task.name}**" if layout.kind == "study" else ""))


@st.cache_data(show_spinner="summarising runs")
def summaries(paths: tuple[str, ...], stamps: tuple[float, ...]) -> pd.DataFrame:
    return pd.DataFrame([run_summary(p) for p in paths])


runs = task.runs()
table = summaries(tuple(str(p) for p in runs.values()),
                  tuple(shared.stamp(RunPaths(p).traces) for p in runs.values()))
table.insert(0, "name", list(runs))
unfinished = [name for name, p in runs.items() if need_traces(p) is not None]
for name in unfinished:
    shared.show_missing(need_traces(runs[name]))
metrics = ["name", "traces", "accuracy", "thinking_tokens", "generated_tokens", "interventions", "finish_reasons"]
st.subheader("Trace runs")
st.dataframe(table[metrics], hide_index=True, width="stretch",
             column_config={"accuracy": st.column_config.NumberColumn(format="%.3f"),
                            "thinking_tokens": st.column_config.NumberColumn(format="%.1f"),
                            "generated_tokens": st.column_config.NumberColumn(format="%.1f")})

st.subheader("Compare runs")
default = list(dict.fromkeys([n for n in ("vanilla", *task.methods, *runs) if n in runs]))[:2]
chosen = st.multiselect("Runs to compare", list(runs), default=default)
if chosen:
    sub = table.set_index("name").loc[chosen]
    base = sub.iloc[0]
    st.dataframe(sub[["accuracy", "thinking_tokens", "generated_tokens", "interventions"]].assign(
        accuracy_delta=sub["accuracy"] - base["accuracy"],
        thinking_delta=sub["thinking_tokens"] - base["thinking_tokens"]), width="stretch")
    settings = sub[list(SETTINGS)].astype(str)
    differ = [c for c in settings.columns if settings[c].nunique() > 1]
    st.markdown("**Settings** (columns that differ: " + (", ".join(differ) or "none") + ")")
    st.dataframe(settings.T, width="stretch")

with st.expander("Generate a new trace run"):
    st.caption("Samples traces into a new run directory (what `workbench traces --out DIR` does).")
    cols = st.columns(4)
    spec = cols[0].text_input("Model", "organism", help="'organism' or a local Hugging Face folder")
    n = cols[1].number_input("Problems", 1, 500, 8)
    temperature = cols[2].number_input("Temperature", 0.0, 2.0, 1.0, step=0.1)
    seed = cols[3].number_input("Seed", 0, 10_000, 0)
    out = st.text_input("Into", f"runs/app-{int(n)}-T{temperature:g}-seed{int(seed)}")
    if st.button("Generate"):
        from workbench.traces import TraceRunConfig, run_traces

        cfg = TraceRunConfig(model=spec, problems=int(n), temperature=float(temperature), seed=int(seed))
        try:
            with st.spinner("sampling traces"):
                summary = run_traces(out, config=cfg, progress=False, model=shared.model(spec))
        except ValueError as exc:  # RunDirError, a bad model folder, ...: the library's message says what to do
            st.error(str(exc))
        else:
            st.success(f"{summary.traces} traces in {out} (accuracy {summary.accuracy:.3f}); open it in the "
                       "sidebar")
            st.session_state["generated_run"] = str(Path(out))
