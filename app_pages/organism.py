"""Organism traces read from a run directory; new traces are generated only when asked, into a run directory."""

from pathlib import Path

import streamlit as st

from workbench import load_model
from workbench.organism.evaluate import DEFAULT_TEMPERATURE, behaviour, load_samples
from workbench.store import RunDirError
from workbench.traces import TraceRunConfig, run_traces


@st.cache_resource
def model(spec: str):
    return load_model(spec)


st.title("Organism traces")
run_dir = st.text_input("Run directory", st.session_state.get("run_dir", "runs/main/organism/vanilla"),
                        help="A trace run of an organism (`workbench run` writes runs/main/<task>/<method>)")
with st.expander("Generate a new run"):
    cols = st.columns(4)
    spec = cols[0].text_input("Model", "organism", help="'organism' or a local Hugging Face folder")
    n = cols[1].number_input("Held-out problems", 1, 500, 8)
    temperature = cols[2].number_input("Temperature", 0.0, 2.0, DEFAULT_TEMPERATURE, step=0.1)
    seed = cols[3].number_input("Seed", 0, 10_000, 0)
    out = st.text_input("Into", f"runs/app-{int(n)}-T{temperature:g}-seed{int(seed)}")
    if st.button("Generate"):
        cfg = TraceRunConfig(model=spec, problems=int(n), temperature=float(temperature), seed=int(seed))
        with st.spinner("sampling traces"):
            run_traces(cfg, out, progress=False, model=model(spec))
        st.session_state["run_dir"] = run_dir = out

try:
    samples = load_samples(Path(run_dir))
except (RunDirError, ValueError) as exc:
    st.info(f"{exc}")
    st.markdown("Make one with `workbench run` (or `workbench traces --out DIR`), or generate one above.")
    st.stop()

stats = behaviour(samples)
st.metric("Accuracy", f"{stats['accuracy']:.2f}")
tok = model("organism").tokenizer
for s in samples:
    lab = s.labels
    failures = [f"slip@{x.token}{' (caught)' if x.caught else ''}" for x in lab.slips]
    failures += [f"{r.kind}@{r.start}" for r in lab.repeats]
    failures += ["overthinking"] if lab.overthinking else []
    status = "correct" if lab.correct else f"wrong (gold {s.problem.answer})"
    st.markdown(f"**{s.trace_id}** — {status} — regime: {lab.regime} — {', '.join(failures) or 'no failures'}")
    st.code(tok.decode(s.tokens, skip_special_tokens=True), language=None)
