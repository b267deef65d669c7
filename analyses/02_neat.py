# %% [markdown]
# # NEAT on the organism: exit neurons, their signals, and the graded exit against a token budget
#
# NEAT (arXiv 2602.02010) finds the neurons whose activation pattern says "done thinking" and exits
# when the pattern appears:
#
# 1. **Identification**: the importance of each neuron for the end-of-thinking token at the exit
#    position (`Imp`: the log-prob change when the neuron is removed), the top candidates ordered by
#    how late in the thinking span they fire (centre of mass), and a vote across calibration traces:
#    kept when it votes in at least `tau_cons` of them with mean centre of mass at least `tau_com`.
# 2. **Signals**: `rho_t = cos(a_t, mu_ref)` and `phi_t = ||a_t|| / ||mu_ref||` over the exit neurons,
#    `mu_ref` their mean at exit points (Eq. 9).
# 3. **Does the signal peak at the answer point?** `exit_within3`: the share of held-out traces whose
#    `rho` peaks within 3 tokens of the point where the answer was reached, beside random neurons,
#    top-activated neurons, all neurons and the model's own p(end of thinking).
# 4. **Graded exit** (Eq. 10): exit when `rho > tau_sim` and `phi > tau_mag`, suppress reflection at
#    step boundaries when `tau_sup < rho <= tau_sim`; against a plain thinking-token budget at the same
#    token cost, paired with vanilla.
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
from workbench import (
    NeuronSet,
    RunPaths,
    Study,
    StudyMethod,
    exit_report,
    load_model,
    load_traces,
    run_study,
    set_threads,
)
from workbench.figures import cost_figure, exit_timeline, exit_timeline_figure

set_threads(1)
OUT = Path("runs") / "notebooks"
BASE = Path(workbench.__file__).resolve().parents[1] / "analyses" / "study.toml"
EXITS = ("neat", "neat-tau0.9")  # the paper's thresholds, and a stricter exit similarity
model = load_model("organism")

NEAT_METHODS = (
    StudyMethod("neat", name="neat", tau_sim=0.6, tau_mag=0.2, tau_sup=0.4),
    StudyMethod("neat", name="neat-tau0.9", tau_sim=0.9),
)


def study_with(*extra: StudyMethod) -> Study:
    """The notebooks' study with NEAT's methods and ``extra`` ones, saved as `runs/notebooks/neat.toml`."""
    return Study.from_toml(BASE).with_methods(*NEAT_METHODS, *extra).save(OUT / "neat.toml")


# `run_study` runs the analysis run and its stages (the exit neurons and their reference are found there),
# then the methods; the sections below read the analysis run first, then the methods' runs.
study = study_with()
rows = {r["method"]: r for r in run_study(OUT, study=study, progress=False, model=model)}
task = study.tasks[0]
analysis = task.analysis_dir(OUT)
paths = RunPaths(analysis)  # where each file of the analysis run is
exit_cfg = task.analysis.configs["exit"]
print("analysis run:", analysis, "| NEAT config:", {k: getattr(exit_cfg, k) for k in
                                                      ("estimator", "calibration_traces", "tau_cons", "tau_com")})

# %% [markdown]
# ## 1. The exit neurons: attribution, then the vote
# `RUN/neurons/exit.json` (scores: mean `Imp` over the neuron's votes) and `RUN/neat/reference.json`
# (`mu_ref`, and each neuron's consistency and mean centre of mass in the vote), as the graded exit reads
# them.

# %%
neurons = NeuronSet.load(paths.exit_set, model_shape=(model.cfg.n_layers, model.cfg.d_mlp))
saved = json.loads(paths.exit_reference.read_text())
flat = neurons.flat(model.cfg.d_mlp)  # layer * d_mlp + index: how reference.json names its neurons
vote = dict(zip(saved["flat"], zip(saved["consistency"], saved["com"], strict=True), strict=True))
mu_ref = dict(zip(saved["flat"], saved["mu_ref"], strict=True))
means = dict(neurons.group_means)
exit_table = pd.DataFrame({
    "layer": neurons.layers, "neuron": neurons.indices, "sign": neurons.signs, "Imp": neurons.scores,
    "consistency": [vote[f][0] for f in flat], "centre of mass": [vote[f][1] for f in flat],
    "mu_ref (exit)": [mu_ref[f] for f in flat], "mean over thinking": means["thinking"],
})
print(f"{len(neurons)} exit neurons from {saved['calibration_traces']} calibration traces ({saved['estimator']} Imp)")
print(exit_table.round(3).to_string(index=False))

# %% [markdown]
# ## 2. rho and phi along one trace, where the graded exit acted
# `exit_timeline` replays a trace of the `neat-tau0.9` run teacher-forced (the controller only forces
# and bans tokens, so the replay sees the activations it saw), reads the exit neurons and thresholds
# from the run's manifest, and marks where the controller suppressed reflection and where it exited
# (by default the trace where NEAT exited after the most thinking). Positions count thinking tokens.

# %%
timeline = exit_timeline(rows["neat-tau0.9"]["run"], model=model)
marks = {timeline.exited_at: "exit"} | {p: "suppress" for p in timeline.suppressed_at}
if timeline.answer_reached is not None:
    marks[timeline.answer_reached] = (marks.get(timeline.answer_reached, "") + " answer reached").strip()
along = pd.DataFrame({"pos": timeline.positions, "token": timeline.tokens, "rho": timeline.rho, "phi": timeline.phi,
                      "p(end)": timeline.p_end, "action": [marks.get(p, "") for p in timeline.positions]})
print(timeline.trace_id, f"| tau_sim {timeline.tau_sim}, tau_mag {timeline.tau_mag}, tau_sup {timeline.tau_sup}")
print(along.round(3).to_string(index=False))
replayed = None if timeline.exited_at is None else timeline.rho[timeline.exited_at]
print("rho at the exit: replayed", replayed, "| read by the controller while generating", timeline.recorded.get("rho"))
exit_timeline_figure(timeline).show()

# %% [markdown]
# ## 3. Does rho peak where the answer is reached? (`exit_within3` beside its controls)
# `exit_report` reads the fit the exit stage (`rank_exit`) wrote on the fitting half of the analysis
# problems and measures on the other half (`RUN/neat/report.json`, what `workbench validate` reads).

# %%
report = exit_report(analysis, model=model, config=exit_cfg)  # an ExitReport; .to_json() is RUN/neat/report.json
hits = report.within_window
controls = pd.DataFrame([{"signal": name, f"peaks within {report.window} tokens": value} for name, value in (
    ("rho over the exit neurons", hits.exit), ("sign-aligned sim (reference code)", hits.aligned),
    ("random neurons (mean of draws)", hits.random), ("top-activated neurons", hits.top_activated),
    ("all neurons", hits.all), ("the model's p(end of thinking)", hits.p_end))])
print(f"{report.traces} held-out traces, {report.neurons} exit neurons fitted on {report.fit_traces} traces")
print(controls.round(3).to_string(index=False))

# %% [markdown]
# ## 4. The graded exit against a budget at the same token cost
# The cost of a trace is every token it generated (the results table's `total_tokens`): after a
# forced exit the organism may go on reasoning in its answer, so thinking tokens alone would flatter an
# early exit. For each NEAT setting, the budget is the smallest thinking cap whose mean cost reaches
# NEAT's: a first guess from the vanilla traces cut at the cap (the same sampler seeds give the same
# tokens up to the cap), then run, and moved one cap at a time until that cap reaches NEAT's cost and
# the cap below it does not.

# %%
vanilla = load_traces(rows["vanilla"]["run"]).to_pylist()
generated = np.array([len(r["token_ids"]) - r["prompt_len"] for r in vanilla])
thinking = np.array([r["thinking_tokens"] for r in vanilla])
budgets: dict[int, StudyMethod] = {}
matched: dict[str, int] = {}


def cost(cap: int, control_for: str) -> float:
    """Mean tokens per trace of the budget ``cap`` (run through the study when not yet run)."""
    if cap not in budgets:
        budgets[cap] = StudyMethod("budget", name=f"budget-{cap}", control_for=control_for, max_thinking=cap)
        study = study_with(*(budgets[c] for c in sorted(budgets)))
        rows.update({r["method"]: r for r in run_study(OUT, study=study, progress=False, model=model)})
    return rows[f"budget-{cap}"]["total_tokens"]


for name in EXITS:
    target = rows[name]["total_tokens"]
    guess = [c for c in range(1, task.run.max_new_tokens + 1)
             if (generated - np.maximum(thinking - c, 0)).mean() >= target]
    cap = guess[0] if guess else task.run.max_new_tokens
    while cost(cap, name) < target and cap < task.run.max_new_tokens:
        cap += 1
    while cap > 1 and cost(cap - 1, name) >= target:
        cap -= 1
    matched[name] = cap
print("matched budgets:", matched, "| caps run:", sorted(budgets))

def row(method: str, control_for: str = "") -> dict:
    r = rows[method]
    return {"method": method, "controls for": control_for, "accuracy": r["accuracy"], "delta": r["delta_vs_vanilla"],
            "95% CI": f"[{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}]", "p": r["p_value"],
            "thinking tokens": r["thinking_tokens"], "tokens": r["total_tokens"],
            "token reduction %": r["token_reduction"]}


versus = pd.DataFrame([row("vanilla")] + [x for name in EXITS
                                          for x in (row(name), row(f"budget-{matched[name]}", name))])
print(versus.round(3).to_string(index=False))
shown = [rows["vanilla"]] + [x for name in EXITS for x in (rows[name], {**rows[f"budget-{matched[name]}"],
                                                                      "control_for": name})]
cost_figure(shown).show()

# %%
key_numbers = {
    "analysis": str(analysis), "study": str(study.path),
    "exit_neurons": exit_table.to_dict(orient="records"),
    "timeline": {"trace_id": timeline.trace_id, "rho": list(timeline.rho), "phi": list(timeline.phi),
                 "exited_at": timeline.exited_at, "replayed_rho": replayed,
                 "recorded_rho": timeline.recorded.get("rho"), "tau_sim": timeline.tau_sim,
                 "tau_mag": timeline.tau_mag},
    "exit_report": {k: v for k, v in report.to_json().items() if k.startswith("exit_within3") or k in ("exit_traces",
                                                                                                       "exit_neurons")},
    "matched_budget": matched, "budget_costs": {c: rows[f"budget-{c}"]["total_tokens"] for c in sorted(budgets)},
    "versus": versus.drop(columns="95% CI").to_dict(orient="records"),
}
(OUT / "neat.json").write_text(json.dumps(key_numbers, indent=1))
