# %% [markdown]
# # A tour of the reasoning model organism
# Every analysis in the workbench is a library call on a run directory; this notebook (percent-cell
# format: open it in VS Code or Jupyter with jupytext, or run it as a script) drives the same functions
# as the CLI, on the same files.

# %%
from workbench import load_model, set_threads
from workbench.organism.evaluate import EvalConfig, behaviour, evaluate, load_samples, probe_report
from workbench.traces import TraceRunConfig, run_traces

set_threads(1)  # one thread is fastest for the organism on a small CPU
model = load_model("organism")

# %% [markdown]
# ## Sample labelled traces on held-out problems into a run directory
# Each trace is stored with its labels, read back from the tokens: regime, dropped carries (caught or
# not), repeated steps, overthinking, and where the answer was first reached. Running the cell again
# resumes the run instead of sampling anew.

# %%
print(run_traces(TraceRunConfig(problems=50, samples=4), "runs/tour", progress=False, model=model))
samples = load_samples("runs/tour")
print(behaviour(samples))
for s in samples[:4]:
    print(s.labels.correct, model.tokenizer.decode(s.tokens, skip_special_tokens=True))

# %% [markdown]
# ## Does the model know, early, whether it will fail?
# A logistic probe on mean `blocks.{L}.mlp.hook_post` over the first 8 thinking tokens, split by
# problem, against the same probe on hand-made features.

# %%
print(probe_report(model, samples))

# %% [markdown]
# ## The full behaviour report (what `workbench organism eval --json` prints)

# %%
if __name__ == "__main__":
    print(evaluate(EvalConfig(problems=100, samples=4), "runs/tour-eval", model))
