# %% [markdown]
# # AdaRAS on the organism: reasoning-critical neurons, the failure gate, steering
#
# AdaRAS (arXiv 2601.19847) in three steps, each beside its controls:
#
# 1. **Reasoning-critical neurons (RCNs)**: for each question with both correct and incorrect traces,
#    the mean activation of each MLP neuron over its correct traces minus over its incorrect ones,
#    averaged over questions: `S = E_k[mu+ - mu-]` (Eq. 1). The polarity filter keeps neurons that are on
#    in one class and off in the other (`E[mu+] * E[mu-] < 0`), ranked by `|S|` (Eq. 2). Controls: the
#    same ranking without the filter, the paper's "probing-steer" neurons (top |coef| of a probe), random.
# 2. **Can a probe tell early whether a trace will fail?** A logistic probe on neuron means over the
#    first thinking tokens, beside hand-made features and token ids over the same tokens. The **gate**
#    reads the question only (attention pooling + MLP, Youden threshold) and decides whether to steer,
#    beside a logistic gate.
# 3. **Steering** (Eq. 3): `act += alpha * S` on the top K = 50 RCNs from the last prompt token on,
#    swept over alpha, each alpha beside random neurons pushed as hard (paired with vanilla, CIs over
#    problems); then the gated version, and the unfiltered and probing-steer neurons.
#
# Everything runs through the study harness on the notebooks' study (`analyses/study.toml` plus the
# methods below, added in Python), into `runs/notebooks` (shared with the other notebooks: whatever is
# done is reused).

# %%
import json
from pathlib import Path

import numpy as np
import pandas as pd

import workbench
from workbench import NeuronSet, RunPaths, Study, StudyMethod, load_model, load_traces, run_study, set_threads
from workbench.figures import (
    auroc_figure,
    early_curve_figure,
    forest_figure,
    layer_distribution_figure,
    ranking_figure,
    roc_figure,
)
from workbench.probes import auroc, auroc_ci

set_threads(1)
OUT = Path("runs") / "notebooks"
BASE = Path(workbench.__file__).resolve().parents[1] / "analyses" / "study.toml"
ALPHAS = (0.3, 1.0, 2.0, 5.0)  # the paper's 0.3, then up to where the organism moves (2) and past it (5)
model = load_model("organism")

# %% [markdown]
# ## The study: the analysis run and its stages, then the methods
# The alpha sweep (AdaRAS and random steering at each alpha, ungated), then at alpha 2: the gated
# method, the unfiltered RCNs and the probing-steer neurons. `run_study` runs the analysis stages
# first (the RCNs, the probes and the gate are found there), then every method; the sections below
# read the analysis run (`task.analysis_dir(OUT)`), then the methods' rows.

# %%
sweep_methods = [m for a in ALPHAS for m in (
    StudyMethod("adaras", name=f"adaras-a{a!r}", alpha=a, gate=False),
    StudyMethod("random-steering", name=f"random-steering-a{a!r}", control_for=f"adaras-a{a!r}", alpha=a),
)]
study = Study.from_toml(BASE).with_methods(
    *sweep_methods,
    StudyMethod("adaras", name="adaras-gated-a2.0", control_for="adaras-a2.0", alpha=2.0, gate=True),
    StudyMethod("adaras", name="adaras-unfiltered-a2.0", control_for="adaras-a2.0", neurons="rcn-unfiltered",
                alpha=2.0, gate=False),
    StudyMethod("adaras", name="adaras-probe-a2.0", control_for="adaras-a2.0", neurons="rcn-probe", alpha=2.0,
                gate=False),
).save(OUT / "adaras.toml")  # `workbench eval --config runs/notebooks/adaras.toml` runs the same from the shell
rows = {r["method"]: r for r in run_study(OUT, study=study, progress=False, model=model)}
task = study.tasks[0]
analysis = task.analysis_dir(OUT)
paths = RunPaths(analysis)  # where each file of the analysis run is
print("analysis run:", analysis, f"({task.analysis.run.problems} problems x {task.analysis.run.samples} samples)")

# %% [markdown]
# ## 1. RCNs beside their controls
# Every set is read from `RUN/neurons/` as the steering methods read it. "opposite polarity" is the
# share of a set's neurons with `mu+ * mu- < 0` (all of the RCNs by construction).

# %%
shape = (model.cfg.n_layers, model.cfg.d_mlp)
sets = {name: NeuronSet.load(paths.neuron_set(name), model_shape=shape)
        for name in ("rcn", "rcn-unfiltered", "rcn-probe", "rcn-random")}
rcn_flat = set(sets["rcn"].flat(model.cfg.d_mlp))


def polarity(neurons: NeuronSet) -> np.ndarray:
    means = dict(neurons.group_means)
    return np.array(means["correct"]) * np.array(means["incorrect"]) < 0


def mean_difference(neurons: NeuronSet) -> np.ndarray:
    """`S` (Eq. 1): each neuron's mean activation over correct traces minus over incorrect ones."""
    means = dict(neurons.group_means)
    return np.nan_to_num(np.array(means["correct"], dtype=np.float64) - np.array(means["incorrect"], dtype=np.float64))


ranking = pd.DataFrame([{
    "set": name, "neurons": len(s),
    "per layer": [s.layer_counts().get(layer, 0) for layer in range(model.cfg.n_layers)],
    "overlap with rcn": len(rcn_flat & set(s.flat(model.cfg.d_mlp))),
    "opposite polarity": float(polarity(s).mean()),
    "mean |S|": float(np.abs(mean_difference(s)).mean()),
} for name, s in sets.items()])
print(ranking.to_string(index=False))
rcn = sets["rcn"]
means = dict(rcn.group_means)
top = pd.DataFrame({"layer": rcn.layers, "neuron": rcn.indices, "S": rcn.scores, "mu+ (correct)": means["correct"],
                    "mu- (incorrect)": means["incorrect"]}).head(10)
print(top.round(3).to_string(index=False))
ranking_figure(sets).show()
layer_distribution_figure(sets, model.cfg.n_layers).show()

# %% [markdown]
# ## 2. Does the model know early whether it will fail? And the gate
# `RUN/probes/report.json` (what `workbench probe RUN` prints): out-of-fold AUROC grouped by problem,
# with bootstrap CIs over problems.

# %%
probes = json.loads(paths.probe_report.read_text())
span = probes["probe_auroc_early_span"]
probe_table = pd.DataFrame([
    {"probe": name, "AUROC": probes[key], "95% CI": "[{:.3f}, {:.3f}]".format(*probes[f"{key}_ci"])}
    for name, key in ((f"neurons ({span})", "probe_auroc_early"),
                      ("hand features (operands, carries, regime)", "probe_auroc_baseline"),
                      (f"token ids only ({span})", "probe_auroc_tokens"))])
print(probe_table.round(3).to_string(index=False))
roc_figure(probes).show()
print(pd.DataFrame(probes["probe_curve"])[["k", "auroc", "auroc_tokens", "n"]].round(3).to_string(index=False))
early_curve_figure(probes).show()

# %% [markdown]
# The gate, measured on analysis questions it never saw while fitting, beside a logistic gate on the
# same question means:

# %%
print(pd.Series({k: probes[k] for k in ("gate_auroc", "gate_auroc_ci", "gate_auroc_logistic", "gate_threshold",
                                        "gate_neurons", "gate_test_traces", "gate_test_fail_rate")}).to_string())
auroc_figure(probes).show()

# %% [markdown]
# ## 3. Steering, swept over alpha, beside random steering
# Each row is paired with vanilla by `trace_id` (same problems, same sampler seeds): the accuracy
# difference with its bootstrap CI over problems, the exact McNemar p on discordant samples.

# %%
def ci(r: dict, key: str = "delta_ci") -> str:
    return f"[{r[key][0]:+.3f}, {r[key][1]:+.3f}]"


sweep = pd.DataFrame([{
    "alpha": a,
    "AdaRAS delta": rows[f"adaras-a{a!r}"]["delta_vs_vanilla"], "AdaRAS 95% CI": ci(rows[f"adaras-a{a!r}"]),
    "AdaRAS p": rows[f"adaras-a{a!r}"]["p_value"],
    "random delta": rows[f"random-steering-a{a!r}"]["delta_vs_vanilla"],
    "random 95% CI": ci(rows[f"random-steering-a{a!r}"]), "random p": rows[f"random-steering-a{a!r}"]["p_value"],
} for a in ALPHAS])
print("vanilla accuracy", round(rows["vanilla"]["accuracy"], 3), rows["vanilla"]["accuracy_ci"])
print(sweep.round(3).to_string(index=False))
ablations = pd.DataFrame([{"method": m, "accuracy": rows[m]["accuracy"], "delta": rows[m]["delta_vs_vanilla"],
                           "95% CI": ci(rows[m]), "p": rows[m]["p_value"],
                           "thinking tokens": rows[m]["thinking_tokens"]}
                          for m in ("adaras-a2.0", "adaras-gated-a2.0", "adaras-unfiltered-a2.0",
                                    "adaras-probe-a2.0", "random-steering-a2.0")])
print(ablations.round(3).to_string(index=False))
forest_figure(list(rows.values())).show()

# %% [markdown]
# Whom did the gate steer? Its score of each evaluation question (recorded as a `gate` event in the
# gated run) against whether vanilla failed that trace: the gate's AUROC on questions from outside the
# analysis run.

# %%
gated = {r["trace_id"]: json.loads(r["events"]) for r in load_traces(rows["adaras-gated-a2.0"]["run"]).to_pylist()}
vanilla = load_traces(rows["vanilla"]["run"]).to_pylist()
gate_events = [next(e for e in gated[r["trace_id"]] if e["kind"] == "gate")["payload"] for r in vanilla]
fail = np.array([not r["correct"] for r in vanilla], dtype=int)
score = np.array([g["score"] for g in gate_events])
steered = np.array([g["steer"] for g in gate_events])
groups = np.array([r["problem_id"] for r in vanilla])
gate_eval = {"auroc": auroc(fail, score), "auroc_ci": list(auroc_ci(fail, score, groups, n_resamples=500)),
             "steered_share": float(steered.mean()),
             "vanilla_fail_rate_steered": float(fail[steered].mean()) if steered.any() else float("nan"),
             "vanilla_fail_rate_not_steered": float(fail[~steered].mean()) if (~steered).any() else float("nan")}
print(pd.Series(gate_eval).to_string())

# %%
key_numbers = {
    "analysis": str(analysis), "study": str(study.path),
    "sets": ranking.to_dict(orient="records"),
    "probe_auroc_early": probes["probe_auroc_early"], "probe_auroc_early_ci": probes["probe_auroc_early_ci"],
    "probe_auroc_baseline": probes["probe_auroc_baseline"], "probe_auroc_tokens": probes["probe_auroc_tokens"],
    "gate_auroc": probes["gate_auroc"], "gate_auroc_logistic": probes["gate_auroc_logistic"],
    "gate_eval": gate_eval,
    "sweep": [{"alpha": a, **{f"{kind}_{k}": rows[f"{kind}-a{a!r}"][k]
                              for kind in ("adaras", "random-steering")
                              for k in ("delta_vs_vanilla", "delta_ci", "p_value")}} for a in ALPHAS],
    "ablations": ablations.drop(columns="95% CI").to_dict(orient="records"),
}
(OUT / "adaras.json").write_text(json.dumps(key_numbers, indent=1))
