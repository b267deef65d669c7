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
# methods below), into `runs/notebooks` (shared with the other notebooks: whatever is done is reused).

# %%
import json
from pathlib import Path

import numpy as np
import pandas as pd

import workbench
from workbench import load_model, set_threads
from workbench.activations import token_activations
from workbench.atomic import atomic_write_text
from workbench.evaluation import load_study, run_analysis, run_study
from workbench.neat import exit_report
from workbench.neat.exit_control import load_exit
from workbench.organism.task import TraceLabels
from workbench.store import load_traces, model_hash

set_threads(1)
OUT = Path("runs") / "notebooks"
BASE = Path(workbench.__file__).resolve().parents[1] / "analyses" / "study.toml"
EXITS = ("neat", "neat-tau0.9")  # the paper's thresholds, and a stricter exit similarity
model = load_model("organism")

NEAT_METHODS = """
[[methods]]
type = "neat"
name = "neat"
tau_sim = 0.6
tau_mag = 0.2
tau_sup = 0.4

[[methods]]
type = "neat"
name = "neat-tau0.9"
tau_sim = 0.9
"""


def study_with(extra: str = ""):
    """The notebooks' study with NEAT's methods and ``extra`` [[methods]] tables, written and loaded."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "neat.toml").write_text(BASE.read_text() + NEAT_METHODS + extra)
    return load_study(OUT / "neat.toml")


study = study_with()
task = study.tasks[0]
analysis = run_analysis(task, OUT / task.name, model, model_hash(model), progress=False)
exit_cfg = task.analysis.configs["exit"]
print("analysis run:", analysis, "| NEAT config:", {k: getattr(exit_cfg, k) for k in
                                                      ("estimator", "calibration_traces", "tau_cons", "tau_com")})

# %% [markdown]
# ## 1. The exit neurons: attribution, then the vote
# `RUN/neurons/exit.json` (scores: mean `Imp` over the neuron's votes) and `RUN/neat/reference.json`
# (`mu_ref`, and each neuron's consistency and mean centre of mass in the vote), as the graded exit reads
# them.

# %%
shape = (model.cfg.n_layers, model.cfg.d_mlp)
neurons, reference = load_exit(analysis, shape)
saved = json.loads((analysis / "neat" / "reference.json").read_text())
vote = dict(zip(saved["flat"], zip(saved["consistency"], saved["com"], strict=True), strict=True))
means = dict(neurons.group_means)
exit_table = pd.DataFrame({
    "layer": neurons.layers, "neuron": neurons.indices, "sign": neurons.signs, "Imp": neurons.scores,
    "consistency": [vote[f][0] for f in reference.flat], "centre of mass": [vote[f][1] for f in reference.flat],
    "mu_ref (exit)": reference.mu_ref, "mean over thinking": means["thinking"],
})
print(f"{len(neurons)} exit neurons from {saved['calibration_traces']} calibration traces ({saved['estimator']} Imp)")
print(exit_table.round(3).to_string(index=False))

# %% [markdown]
# ## 2. rho and phi along one trace
# A vanilla evaluation trace that reached its answer before it stopped thinking. The exit neurons are
# read in one teacher-forced pass (`workbench.activations.token_activations`) and scored against
# `mu_ref` by the same `ExitReference.signals` the controller calls while generating.

# %%
rows = {r["method"]: r for r in run_study(study, OUT, progress=False, model=model)}
vanilla = load_traces(rows["vanilla"]["run"]).to_pylist()
labels = [TraceLabels.from_dict(json.loads(r["labels"])) for r in vanilla]
pick = next((i for i, (r, lab) in enumerate(zip(vanilla, labels, strict=True))
             if r["correct"] and lab.overthinking is not None), 0)
trace, lab = vanilla[pick], labels[pick]
_, acts = next(token_activations(model, [trace["token_ids"]]))
signals = reference.signals(acts[0][:, list(reference.flat)].numpy())
lo, hi = trace["think_start"] + 1, trace["think_end"]
spec = study.method("neat-tau0.9").method
would_exit = (signals["rho"] > spec.tau_sim) & (signals["phi"] > spec.tau_mag)
pieces = model.tokenizer.convert_ids_to_tokens(trace["token_ids"])
marks = {lab.answer_reached: "answer reached"} | {p: "overthinking" for p in range(*lab.overthinking)}
along = pd.DataFrame({"pos": range(lo, hi), "token": pieces[lo:hi], "rho": signals["rho"][lo:hi],
                      "phi": signals["phi"][lo:hi], f"rho>{spec.tau_sim} & phi>{spec.tau_mag}": would_exit[lo:hi],
                      "label": [marks.get(p, "") for p in range(lo, hi)]})
print(trace["trace_id"], "| thinking", lo, "..", hi - 1, "| answer reached at", lab.answer_reached)
print(along.round(3).to_string(index=False))
first_exit = int(lo + np.argmax(would_exit[lo:hi])) if would_exit[lo:hi].any() else None
neat_run = {r["trace_id"]: r for r in load_traces(rows["neat-tau0.9"]["run"]).to_pylist()}[trace["trace_id"]]
neat_events = [e for e in json.loads(neat_run["events"]) if e["kind"] in ("neat_exit", "neat_suppress")]
print("first position past both thresholds:", first_exit, "| the neat-tau0.9 run of the same trace id:",
      [(e["kind"], trace["prompt_len"] + e["step"], round(e["payload"]["rho"], 3)) for e in neat_events],
      "| thinking tokens", neat_run["thinking_tokens"], "vs", trace["thinking_tokens"])

# %% [markdown]
# ## 3. Does rho peak where the answer is reached? (`exit_within3` beside its controls)
# `exit_report` fits NEAT on half the analysis problems and measures on the other half
# (`RUN/neat/report.json`, what `workbench validate` reads).

# %%
report = exit_report(analysis, model, exit_cfg)
controls = pd.DataFrame([{"signal": name, "peaks within 3 tokens": report[key]} for name, key in (
    ("rho over the exit neurons", "exit_within3"), ("sign-aligned sim (reference code)", "exit_within3_aligned"),
    ("random neurons (mean of draws)", "exit_within3_random"), ("top-activated neurons", "exit_within3_top_activated"),
    ("all neurons", "exit_within3_all"), ("the model's p(end of thinking)", "exit_within3_p_end"))])
print(f"{report['exit_traces']} held-out traces, {report['exit_neurons']} exit neurons fitted on "
      f"{report['exit_fit_traces']} traces")
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
generated = np.array([len(r["token_ids"]) - r["prompt_len"] for r in vanilla])
thinking = np.array([r["thinking_tokens"] for r in vanilla])
budgets: dict[int, str] = {}
matched: dict[str, int] = {}


def cost(cap: int, control_for: str) -> float:
    """Mean tokens per trace of the budget ``cap`` (run through the study when not yet run)."""
    if cap not in budgets:
        budgets[cap] = (f'\n[[methods]]\ntype = "budget"\nname = "budget-{cap}"\ncontrol_for = "{control_for}"\n'
                        f"max_thinking = {cap}\n")
        study = study_with("".join(budgets[c] for c in sorted(budgets)))
        rows.update({r["method"]: r for r in run_study(study, OUT, progress=False, model=model)})
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

# %%
key_numbers = {
    "analysis": str(analysis), "study": str(OUT / "neat.toml"),
    "exit_neurons": exit_table.to_dict(orient="records"),
    "trace": {"trace_id": trace["trace_id"], "rho": signals["rho"][lo:hi].tolist(),
              "phi": signals["phi"][lo:hi].tolist(), "first_exit": first_exit},
    "exit_report": {k: v for k, v in report.items() if k.startswith("exit_within3") or k in ("exit_traces",
                                                                                             "exit_neurons")},
    "matched_budget": matched, "budget_costs": {c: rows[f"budget-{c}"]["total_tokens"] for c in sorted(budgets)},
    "versus": versus.drop(columns="95% CI").to_dict(orient="records"),
}
atomic_write_text(OUT / "neat.json", json.dumps(key_numbers, indent=1))
