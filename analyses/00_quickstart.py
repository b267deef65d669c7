# %% [markdown]
# # Quickstart: the model organism, a trace run, its activations, one study
#
# Everything here is a library call on a run directory, the same calls the command line makes
# (`workbench traces`, `workbench cache`, `workbench eval`). Open this percent script as a notebook
# (VS Code, or `jupytext --to notebook`); it writes under `runs/` of the working folder. Figures are the
# library's (`workbench.figures`), the same the app and `workbench figures` draw.
#
# The last cell runs the notebooks' study (`analyses/study.toml`, with methods added in Python) into
# `runs/notebooks`; the paper notebooks (AdaRAS, NEAT, NeuReasoner) run the same study with their own
# methods added, so they reuse its analysis run and every method it already ran. Every name comes from
# `workbench` itself and its figures; the two `workbench.organism` imports are the organism's own
# report and ground-truth labels, which this tour of the organism shows on purpose.

# %%
import json
from pathlib import Path

import numpy as np
import pandas as pd

import workbench
from workbench import (
    ActivationStore,
    CacheConfig,
    RunPaths,
    Study,
    StudyMethod,
    StudyPaths,
    TraceRunConfig,
    cache_activations,
    load_model,
    load_traces,
    markdown,
    run_study,
    run_traces,
    set_threads,
)
from workbench.figures import cost_figure, forest_figure, neuron_trajectory, trajectory_figure
from workbench.organism.evaluate import behaviour, load_samples  # the organism's behaviour report
from workbench.organism.task import TraceLabels  # the organism's ground truth: slips, repeats, overthinking

set_threads(1)  # one thread is fastest for the organism on a small CPU
RUNS = Path("runs")
OUT = RUNS / "notebooks"  # the notebooks' study, shared by every notebook in analyses/
BASE = Path(workbench.__file__).resolve().parents[1] / "analyses" / "study.toml"

model = load_model("organism")
print(f"organism: {model.cfg.n_layers} layers x {model.cfg.d_mlp} MLP neurons (blocks.L.mlp.hook_post)")

# %% [markdown]
# ## Sample labelled traces into a run directory
# `run_traces` writes `manifest.json` (the run's identity) and `traces.parquet`, one row per trace
# keyed by `trace_id`. The organism's traces carry their ground truth: regime, dropped carries
# ("slips", caught or not), repeated steps, overthinking, and where the answer was first reached.
# Running the cell again resumes the run instead of sampling anew.

# %%
run = RUNS / "quickstart"
summary = run_traces(run, config=TraceRunConfig(problems=16, samples=4, seed=7), progress=False, model=model)
traces = load_traces(run)
print(traces.num_rows, "traces;", {k: getattr(summary, k) for k in ("accuracy", "mean_thinking_tokens")})
quick_behaviour = behaviour(load_samples(run))
print(pd.Series(quick_behaviour).round(3).to_string())

# %% [markdown]
# ## Look at one trace
# A trace with a planted failure, its text, and its labels (token positions index the full sequence).

# %%
rows = traces.to_pylist()
labels = [TraceLabels.from_dict(json.loads(r["labels"])) for r in rows]
pick = next((i for i, lab in enumerate(labels) if lab.slips or lab.repeats or lab.overthinking), 0)
row, lab = rows[pick], labels[pick]
print(row["trace_id"], "correct" if row["correct"] else f"WRONG (gold {row['gold']})")
print(row["prompt"] + row["text"])
print({"regime": lab.regime, "slips": [(s.token, s.kind, s.caught) for s in lab.slips],
       "repeats": [(r.kind, r.start, r.end) for r in lab.repeats], "overthinking": lab.overthinking,
       "answer_reached": lab.answer_reached, "think": (lab.think_start, lab.think_end)})

# %% [markdown]
# ## Cache the activations
# One teacher-forced pass per batch writes `RUN/activations/`: the mean of every neuron over each span
# (question, thinking, the first k thinking tokens, ...) and, per token, the most variable neurons.

# %%
cache_activations(run, config=CacheConfig(top_variance=64), model=model)
store = ActivationStore(run)
print(len(store), "traces; spans:", ", ".join(store.spans))
print("thinking means:", store.summary("think").shape, "(trace, n_layers, d_mlp);",
      len(store.token_neurons), "neurons kept per token")

# %% [markdown]
# The most variable neuron along that trace, token by token (`store.traces()` is in the store's row order).

# %%
r = [t["trace_id"] for t in store.traces().to_pylist()].index(row["trace_id"])
neuron = (store.token_neurons.layers[0], store.token_neurons.indices[0])
acts = store.token_acts(r)[:, 0]
pieces = model.tokenizer.convert_ids_to_tokens(row["token_ids"])
marks = {p: "slip" for p in (s.token for s in lab.slips)} | {lab.answer_reached: "answer reached",
                                                            lab.think_end: "end of thinking"}
trajectory = pd.DataFrame({"token": pieces, f"L{neuron[0]}.{neuron[1]}": acts.astype(float).round(2),
                           "label": [marks.get(p, "") for p in range(len(pieces))]})
print(trajectory.iloc[row["prompt_len"] - 1 :].to_string())

# %% [markdown]
# The same neuron over every trace of the run: its mean per bin of normalised thinking position, correct
# against incorrect traces, with 95% CIs.

# %%
trajectory_figure(neuron_trajectory(store, *neuron, bins=10)).show()

# %% [markdown]
# ## A tiny study: one method of each paper, paired with vanilla
# `analyses/study.toml` holds the model, the analysis run (its own problems: the RCNs, the gate, the
# exit neurons and the detectors are found there) and the evaluation task; the methods below are
# added in Python (AdaRAS beside random neurons pushed as hard), each a `[[methods]]` table of the file
# form, checked by the same code. `save` writes the whole study beside its results, so
# `workbench eval --config runs/notebooks/quickstart.toml --out runs/notebooks` runs it from the shell;
# `run_study` is what that command runs: every method on the same problems and sampler seeds, paired
# by `trace_id`, with bootstrap CIs over problems.

# %%
study = Study.from_toml(BASE).with_methods(
    StudyMethod("adaras", name="adaras-a2.0", alpha=2.0, gate=False),
    StudyMethod("random-steering", name="random-steering-a2.0", control_for="adaras-a2.0", alpha=2.0),
    StudyMethod("neat", name="neat-tau0.9", tau_sim=0.9),
    StudyMethod("neureasoner", name="neureasoner-overthinking", types=["overthinking"]),
).save(OUT / "quickstart.toml")
results = run_study(OUT, study=study, progress=False, model=model)
print(markdown(results))
forest_figure(results).show()
cost_figure(results).show()

# %% [markdown]
# Where everything landed: the analysis run (`runs/notebooks/organism/analysis`: traces, activations,
# `neurons/*.json`, the gate, the exit reference, the detectors) and one trace run per method. The
# paper notebooks read them from here. `workbench app` opens the same folders in the browser.

# %%
print(sorted(p.name for p in StudyPaths(OUT).task("organism").iterdir()))
print(sorted(p.name for p in RunPaths(StudyPaths(OUT).analysis("organism")).neurons.iterdir()))
key_numbers = {
    "run": str(run), "traces": traces.num_rows, "accuracy": float(np.mean(traces["correct"].to_pylist())),
    "behaviour": quick_behaviour, "store_traces": len(store), "token_neurons": len(store.token_neurons),
    "study": str(study.path),
    "rows": [{k: r[k] for k in ("method", "accuracy", "accuracy_ci", "delta_vs_vanilla", "delta_ci",
                                "thinking_tokens", "token_reduction")} for r in results],
}
(OUT / "quickstart.json").write_text(json.dumps(key_numbers, indent=1))
