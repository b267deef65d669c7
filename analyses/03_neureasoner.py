# %% [markdown]
# # NeuReasoner on the organism: failure episodes, fluctuation features, detectors, the remedy
#
# NeuReasoner (arXiv 2604.02972) reads reasoning failures from how a mixture of neurons *fluctuates*
# over a sliding window rather than from their level:
#
# 1. **Labels**: three failure types, as token spans: intra-step `slip` (a dropped carry), inter-step
#    `oscillation` (a repeated step), instance-level `overthinking` (thinking on after the answer). On
#    the organism they are ground truth (`TraceLabels`); on a real model `labeller = "auto"` reads them
#    from the text.
# 2. **Fluctuation features** per neuron and window (`FEATURES`): mean, std, total variation, and from
#    the window's spectrum the high-frequency share, the dominant-frequency share, the spectral entropy.
# 3. **Key neurons** per failure type: the neurons whose features best separate failing windows from
#    clean ones (max |Cohen's d| over features), on half the problems.
# 4. **Detectors**: a small MLP per type on the key neurons' features, beside the same MLP on random
#    neurons and on the window's token ids alone, scored on the other half of the problems.
# 5. **Remedy** for overthinking (no fine-tuning needed): when the detector fires while thinking, force
#    "Okay, I have finished thinking." and the end-of-thinking marker; the token saving against vanilla,
#    paired, with its CI and the accuracy it costs.
#
# Everything runs through the study harness on the notebooks' study (`analyses/study.toml` plus the
# method below, added in Python), into `runs/notebooks` (shared with the other notebooks: whatever is
# done is reused).

# %%
import json
from pathlib import Path

import numpy as np
import pandas as pd

import workbench
from workbench import (
    ActivationStore,
    NeuronSet,
    RunPaths,
    Study,
    StudyMethod,
    get_task,
    load_model,
    load_traces,
    run_study,
    set_threads,
)
from workbench.figures import fluctuation_figure, fluctuation_series, forest_figure, spectral_features_figure
from workbench.neureasoner import FAILURE_TYPES, FEATURES, trace_inputs
from workbench.splits import fit_half

set_threads(1)
OUT = Path("runs") / "notebooks"
BASE = Path(workbench.__file__).resolve().parents[1] / "analyses" / "study.toml"
model = load_model("organism")

# `run_study` runs the analysis run and its stages (key neurons and detectors are found there), then the
# remedy; the sections below read the analysis run first, then the remedy's run.
study = Study.from_toml(BASE).with_methods(
    StudyMethod("neureasoner", name="neureasoner-overthinking", types=["overthinking"]),
).save(OUT / "neureasoner.toml")
rows = {r["method"]: r for r in run_study(OUT, study=study, progress=False, model=model)}
task = study.tasks[0]
analysis = task.analysis_dir(OUT)
paths = RunPaths(analysis)  # where each file of the analysis run is
cfg = task.analysis.configs["mon"]
store = ActivationStore(analysis)
print("analysis run:", analysis, f"| {len(store)} traces, {len(store.token_neurons)} neurons per token",
      f"| window {cfg.window}, stride {cfg.stride}")

# %% [markdown]
# ## 1. Failure episodes
# `trace_inputs` gives each trace of the store its thinking span and episodes, as the analysis reads them.

# %%
inputs = trace_inputs(store, cfg)
episodes = pd.DataFrame([{
    "type": t, "traces with one": sum(bool(x.events.of(t)) for x in inputs),
    "episodes": sum(len(x.events.of(t)) for x in inputs),
    "mean length (tokens)": np.mean([e - s for x in inputs for s, e in x.events.of(t)] or [np.nan]),
} for t in FAILURE_TYPES])
print(episodes.round(2).to_string(index=False))

# %% [markdown]
# ## 2. Fluctuation features along one held-out trace, and the detectors reading them
# A trace from the half of the problems the detectors never saw, with an overthinking episode (and a
# slip or repeat when one exists). `fluctuation_series` reads it from the store with each type's key
# neurons and saved detector (`RUN/neureasoner/detector-<type>.joblib`). Per window (positions count
# thinking tokens): which episodes it overlaps, and each detector's score.

# %%
fit_ids = fit_half([x.problem for x in inputs], cfg.seed)
held_out = [i for i, x in enumerate(inputs) if x.problem not in fit_ids]
row = max(held_out, key=lambda i: (bool(inputs[i].events.overthinking), bool(inputs[i].events.slip),
                                   bool(inputs[i].events.oscillation)))
trace_id = store.traces()["trace_id"][row].as_py()
series = {t: fluctuation_series(analysis, t, trace_id=trace_id) for t in FAILURE_TYPES}
first = series["overthinking"]
pieces = model.tokenizer.convert_ids_to_tokens(inputs[row].token_ids.tolist())[inputs[row].think[0]:]
windows = pd.DataFrame({"start": first.window_starts,
                        "tokens": ["".join(pieces[s : s + cfg.window]).replace("▁", " ") for s in first.window_starts]})


def overlaps(starts: np.ndarray, window: int, spans) -> np.ndarray:
    """Which windows ``[start, start + window)`` overlap an episode ``[s, e)``."""
    return np.array([any(start < e and start + window > s for s, e in spans) for start in starts], dtype=bool)


for t, ser in series.items():
    windows[f"{t} episode"] = overlaps(ser.window_starts, ser.window, ser.planted[t])
    windows[f"{t} score"] = ser.scores
    windows[f"{t} fires"] = ser.scores >= ser.threshold
print(trace_id, "| held out:", first.held_out, "| episodes (thinking positions):", first.planted)
print(windows.round(3).to_string(index=False))
fluctuation_figure(first).show()

# %% [markdown]
# The six features of the overthinking detector's first key neuron in those windows:

# %%
print(f"neuron {first.neurons[0]}")
print(pd.DataFrame(first.features[:, 0], columns=FEATURES).assign(start=first.window_starts,
                                                                   overthinking=windows["overthinking episode"])
      .round(3).to_string(index=False))
spectral_features_figure(first).show()

# %% [markdown]
# ## 3. Key neurons per failure type
# `RUN/neurons/mon-<type>.json`: scores are the best |Cohen's d| (failing vs clean windows) over the
# features, signs its direction, and the feature that gave it.

# %%
shape = (model.cfg.n_layers, model.cfg.d_mlp)
key_sets = {t: NeuronSet.load(paths.mon_set(t), model_shape=shape) for t in FAILURE_TYPES}
for t, s in key_sets.items():
    best = s.params["best_feature"]
    print(f"{t}: {len(s)} neurons, per layer {dict(sorted(s.layer_counts().items()))}, "
          f"best features {pd.Series(best).value_counts().to_dict()}")
    print(pd.DataFrame({"layer": s.layers, "neuron": s.indices, "|d|": s.scores, "sign": s.signs,
                        "feature": best}).head(5).round(3).to_string(index=False))

# %% [markdown]
# ## 4. Detectors beside random neurons and token ids only (held-out problems)
# From `RUN/neureasoner/report.json` (what `workbench validate` reads): window AUROC, and per episode
# whether any window overlapping it fired (event recall) and the share of alarms that overlap an episode
# (event precision).

# %%
mon = json.loads(paths.mon_report.read_text())
detector_table = pd.DataFrame([{
    "type": t, "input": name, "window AUROC": mon[f"mon_auroc_{t}{suffix}"],
    "event recall": mon[f"mon_event_recall_{t}{suffix}"], "event precision": mon[f"mon_event_precision_{t}{suffix}"],
} for t in FAILURE_TYPES for name, suffix in (("key neurons", ""), ("random neurons", "_random"),
                                              ("token ids only", "_tokens"))])
print(f"{mon['mon_windows_test']} held-out windows of {mon['mon_traces_test']} traces")
print(detector_table.round(3).to_string(index=False))

# %% [markdown]
# ## 5. The overthinking remedy: tokens saved, accuracy kept?
# Paired with vanilla by `trace_id`; the token reduction's CI is a paired bootstrap over problems.

# %%
remedy = rows["neureasoner-overthinking"]
print({k: remedy[k] for k in ("accuracy", "accuracy_ci", "delta_vs_vanilla", "delta_ci", "p_value", "thinking_tokens",
                              "total_tokens", "token_reduction", "token_reduction_ci", "intervened_share")},
      "| vanilla tokens", round(rows["vanilla"]["total_tokens"], 2))
forest_figure(list(rows.values())).show()

# %% [markdown]
# Where it fired: each `neureasoner_overthinking` event against the overthinking span of the vanilla trace
# with the same `trace_id` (the two runs share their tokens up to the first intervention). The spans are
# the task's `failure_spans` of a trace's labels: the organism's ground truth here.

# %%
labelled = get_task(task.run.task)


def overthinking(row: dict) -> tuple[int, int] | None:
    """The trace's overthinking span (token positions in the full sequence), or None."""
    spans = labelled.failure_spans(json.loads(row["labels"]))["overthinking"]
    return spans[0] if spans else None


vanilla = {r["trace_id"]: r for r in load_traces(rows["vanilla"]["run"]).to_pylist()}
fired, inside = 0, 0
overthought = {k for k, r in vanilla.items() if overthinking(r)}
caught = set()
for r in load_traces(remedy["run"]).to_pylist():
    span = overthinking(vanilla[r["trace_id"]])
    for e in json.loads(r["events"]):
        if e["kind"] == "neureasoner_overthinking":
            fired += 1
            pos = r["prompt_len"] + e["step"]
            if span is not None and span[0] <= pos <= span[1]:
                inside += 1
                caught.add(r["trace_id"])
where = {"alarms": fired, "inside vanilla's overthinking span": inside,
         "vanilla traces that overthought": len(overthought), "of them caught": len(caught)}
print(where)

# %%
key_numbers = {
    "analysis": str(analysis), "study": str(study.path),
    "episodes": episodes.to_dict(orient="records"),
    "trace": {"trace_id": trace_id, "windows": len(windows), "held_out": first.held_out,
              "scores": {t: ser.scores.tolist() for t, ser in series.items()},
              "thresholds": {t: ser.threshold for t, ser in series.items()}},
    "key_neurons": {t: len(s) for t, s in key_sets.items()},
    "detectors": detector_table.to_dict(orient="records"),
    "remedy": {k: remedy[k] for k in ("accuracy", "delta_vs_vanilla", "delta_ci", "total_tokens", "token_reduction",
                                      "token_reduction_ci", "intervened_share")},
    "vanilla_total_tokens": rows["vanilla"]["total_tokens"],
    "where": where,
}
(OUT / "neureasoner.json").write_text(json.dumps(key_numbers, indent=1))
