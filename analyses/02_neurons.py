# %% [markdown]
# # The three papers' neurons on the organism, each beside its controls
# One trace run, cached once; AdaRAS, NEAT and NeuReasoner read the cache (and the model where they
# must) and write into the run directory, exactly as `workbench cache|rank|probe|validate` do.

# %%
from workbench import load_model, set_threads
from workbench.adaras import probe_report, rank_rcn
from workbench.neat import exit_report
from workbench.neureasoner import mon_report
from workbench.store import ActivationStore, CacheConfig, cache_activations
from workbench.traces import TraceRunConfig, run_traces

set_threads(1)
model = load_model("organism")
RUN = "runs/neurons-tour"

# %% [markdown]
# ## Traces, then activations joined on `trace_id` (every neuron per token: the organism is small)

# %%
run_traces(TraceRunConfig(problems=60, samples=4), RUN, progress=False, model=model)
cache_activations(RUN, CacheConfig(top_variance=model.cfg.n_layers * model.cfg.d_mlp), model=model)
store = ActivationStore(RUN)
print(len(store), "traces;", store.summary("think_first_8").shape, "(trace, n_layers, d_mlp)")

# %% [markdown]
# ## AdaRAS: reasoning-critical neurons, and can we tell early whether a trace will fail?

# %%
rcn = rank_rcn(RUN)
print("RCNs per layer:", rcn.layer_counts())
probes = probe_report(RUN, model=model)
print({k: probes[k] for k in ("probe_auroc_early", "probe_auroc_early_ci", "probe_auroc_baseline",
                               "probe_auroc_tokens", "gate_auroc")})

# %% [markdown]
# ## NEAT: exit neurons, beside random, top-activated and all neurons and the model's own p(end)

# %%
exits = exit_report(RUN, model)
print({k: v for k, v in exits.items() if k.startswith("exit_within3")})

# %% [markdown]
# ## NeuReasoner: failure detectors from neuron fluctuations, beside token ids only

# %%
mon = mon_report(RUN)
for t in ("slip", "oscillation", "overthinking"):
    print(t, "event recall", mon[f"mon_event_recall_{t}"], "tokens only", mon[f"mon_event_recall_{t}_tokens"])
