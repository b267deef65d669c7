"""Sample labelled traces from a model on held-out organism problems."""

import streamlit as st

from workbench import load_model
from workbench.engine import SamplingConfig
from workbench.organism.evaluate import DEFAULT_TEMPERATURE, behaviour, sample_and_label
from workbench.organism.task import sample_problems


@st.cache_resource
def model(spec: str):
    return load_model(spec)


st.title("Organism traces")
spec = st.text_input("Model", "organism", help="'organism' or a local Hugging Face folder")
cols = st.columns(3)
n = cols[0].number_input("Held-out problems", 1, 200, 8)
temperature = cols[1].number_input("Temperature", 0.0, 2.0, DEFAULT_TEMPERATURE, step=0.1)
seed = cols[2].number_input("Seed", 0, 10_000, 0)
bridge = model(spec)
samples = sample_and_label(bridge, sample_problems(int(n), int(seed), held_out=True), 1,
                           SamplingConfig(temperature=float(temperature), seed=int(seed)))
stats = behaviour(samples)
st.metric("Accuracy", f"{stats['accuracy']:.2f}")
for s in samples:
    lab = s.labels
    failures = [f"slip@{x.token}{' (caught)' if x.caught else ''}" for x in lab.slips]
    failures += [f"{r.kind}@{r.start}" for r in lab.repeats]
    failures += ["overthinking"] if lab.overthinking else []
    status = "correct" if lab.correct else f"wrong (gold {s.problem.answer})"
    st.markdown(f"**{s.problem.id}** — {status} — regime: {lab.regime} — {', '.join(failures) or 'no failures'}")
    st.code(bridge.tokenizer.decode(s.generation.tokens, skip_special_tokens=True), language=None)
