"""Engine throughput on the organism, batch 64, mixed-length prompts; all rows measured in one run.

    .venv/bin/python bench/engine.py [--prompts 512] [--threads 1] [--repeats 3]

Rows:
  (a) this engine, no hooks
  (b) this engine monitoring 50 neurons on every layer (a controller reads them each step)
  (c) this engine steering 50 neurons (an add edit at every position)
  (d) TransformerLens ``TransformerBridge.generate`` with the same steering hooks
  (e) Hugging Face ``generate``, no hooks, on a pristine HF copy of the model (not bridge-wrapped)
Throughput counts real generated tokens (up to and including EOS) per second; each row takes the
best of ``--repeats`` runs. Targets: (b)/(a) >= 0.9, (c)/(a) >= 0.9, (a)/(d) >= 2.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from transformers import AutoModelForCausalLM

from workbench import load_model, set_threads
from workbench.engine import Controller, NeuronEdit, SamplingConfig, generate
from workbench.model import resolve
from workbench.neurons import NeuronSet, mlp_post
from workbench.organism.task import sample_problems

MAX_NEW = 160


class ReadOnly(Controller):
    """Touches the monitored activations every step, as a real monitor would."""

    def __init__(self, neurons: NeuronSet) -> None:
        self.neurons = neurons
        self.total = 0.0

    def on_step(self, view) -> None:
        self.total += float(view.acts.sum())


def random_neurons(n: int, layers: list[int], d_mlp: int, seed: int) -> NeuronSet:
    g = torch.Generator().manual_seed(seed)
    pairs = set()
    while len(pairs) < n:
        pairs.add((layers[int(torch.randint(len(layers), (1,), generator=g))],
                   int(torch.randint(d_mlp, (1,), generator=g))))
    return NeuronSet.from_pairs(sorted(pairs))


def count_generated(rows: list[list[int]], eos: int, pad: int) -> int:
    total = 0
    for row in rows:
        real = [t for t in row if t != pad]
        total += real.index(eos) + 1 if eos in real else len(real)
    return total


def left_padded(tok, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(prompts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


def steering_hooks(edit: NeuronEdit):
    hooks = []
    for layer, (pos, idx) in edit.neurons.by_layer().items():
        values = torch.tensor([edit.values[p] for p in pos])
        index = torch.tensor(idx)

        def add(act, hook, values=values, index=index):
            act[:, -1, index] += values
            return act

        hooks.append((mlp_post(layer), add))
    return hooks


def main() -> None:
    parser = argparse.ArgumentParser(description="engine throughput benchmark")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="organism", help="organism, organism-v1 or an organism folder")
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model(args.model)
    tok = model.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(resolve(args.model), attn_implementation="sdpa").eval()
    cfg_m = model.cfg
    prompts = [p.prompt for p in sample_problems(args.prompts, seed=11, held_out=True)]
    keys = [str(i) for i in range(len(prompts))]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=MAX_NEW, seed=0)
    layers = list(range(cfg_m.n_layers))
    monitor = NeuronSet.from_pairs([(layer, i) for layer in layers for i in
                                    random_neurons(50, [layer], cfg_m.d_mlp, layer).indices])
    steer_set = random_neurons(50, layers, cfg_m.d_mlp, seed=99)
    edit = NeuronEdit(steer_set, tuple([0.05] * len(steer_set)))
    bs = args.batch_size

    def engine_run(**kw) -> int:
        out = generate(model, prompts, sampling, keys=keys, batch_size=bs, **kw)
        return sum(len(f.generated) for f in out)

    @torch.no_grad()
    def tl_run() -> int:
        total = 0
        with model.hooks(fwd_hooks=steering_hooks(edit)):
            for s in range(0, len(prompts), bs):
                ids, mask = left_padded(tok, prompts[s : s + bs])
                out = model.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=True,
                                     temperature=1.0, padding_side="left", verbose=False, use_past_kv_cache=True,
                                     eos_token_id=tok.eos_token_id)
                total += count_generated(out[:, ids.shape[1]:].tolist(), tok.eos_token_id, tok.pad_token_id)
        return total

    @torch.no_grad()
    def hf_run() -> int:
        total = 0
        for s in range(0, len(prompts), bs):
            ids, mask = left_padded(tok, prompts[s : s + bs])
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=True, temperature=1.0,
                              top_k=0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            total += count_generated(out[:, ids.shape[1]:].tolist(), tok.eos_token_id, tok.pad_token_id)
        return total

    rows = {
        "(a) engine, no hooks": lambda: engine_run(),
        "(b) engine, monitor 50 neurons x every layer": lambda: engine_run(controllers=[ReadOnly(monitor)]),
        "(c) engine, steer 50 neurons": lambda: engine_run(edits=[edit]),
        "(d) TransformerLens generate + steering hooks": tl_run,
        "(e) HF generate, no hooks": hf_run,
    }
    results = {}
    for name, fn in rows.items():
        best = 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            tokens = fn()
            best = max(best, tokens / (time.perf_counter() - start))
        results[name] = best
        print(f"{name:48s} {best:10,.0f} tokens/s", flush=True)
    a = results["(a) engine, no hooks"]
    b = results["(b) engine, monitor 50 neurons x every layer"]
    c = results["(c) engine, steer 50 neurons"]
    d = results["(d) TransformerLens generate + steering hooks"]
    e = results["(e) HF generate, no hooks"]
    print(f"\n(b)/(a) = {b / a:.2f}  (target >= 0.9)")
    print(f"(c)/(a) = {c / a:.2f}  (target >= 0.9)")
    print(f"(a)/(d) = {a / d:.2f}  (target >= 2)")
    print(f"(a)/(e) = {a / e:.2f}")
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {len(prompts)} prompts, batch {bs}, max_new_tokens {MAX_NEW}")


if __name__ == "__main__":
    main()
