# %% [markdown]
# # A tour of the reasoning model organism
# Every analysis in the workbench is a library call; this notebook (percent-cell format: open it in
# VS Code or Jupyter with jupytext, or run it as a script) drives the same functions as the CLI.

# %%
from workbench import load_model, set_threads
from workbench.engine import SamplingConfig
from workbench.organism.evaluate import (
    DEFAULT_TEMPERATURE,
    EvalConfig,
    behaviour,
    evaluate,
    probe_report,
    sample_and_label,
)
from workbench.organism.task import sample_problems

set_threads(1)  # one thread is fastest for the organism on a small CPU
model = load_model("organism")

# %% [markdown]
# ## Sample labelled traces on held-out problems
# Each trace is read back by the labeler: regime, dropped carries (caught or not), repeated steps,
# overthinking, and where the answer was first reached.

# %%
problems = sample_problems(50, seed=0, held_out=True)
samples = sample_and_label(model, problems, 4, SamplingConfig(temperature=DEFAULT_TEMPERATURE))
print(behaviour(samples))
for s in samples[:4]:
    print(s.labels.correct, model.tokenizer.decode(s.generation.tokens, skip_special_tokens=True))

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
    print(evaluate(model, EvalConfig(problems=100, samples=4)))
