"""GPU throughput of the engine as a fraction of the HBM-bandwidth bound; for a lent GPU, one run.

    .venv/bin/python bench/engine_gpu.py [--shape qwen3-1.7b] [--batches 1,32,128] [--prompt-len 256]
        [--new-tokens 256] [--hbm-gbs auto] [--json bench-engine-gpu.json]
    .venv/bin/python bench/engine_gpu.py --device cpu --shape llama-135m --batches 2 --new-tokens 4   # smoke test

A random-weight bf16 model of the shape (``bench/shapes.py``, no download), random prompts of
``--prompt-len`` tokens, greedy, exactly ``--new-tokens`` each (no EOS). Rows per batch size:

  engine                 the fast forward, eager
  engine+graphs          decode steps replayed from CUDA graphs
  engine+graphs+monitor  with a NeuronMonitor on 50 neurons x every layer
  engine+graphs+steer    with an add edit on 50 neurons
  hf                     Hugging Face ``generate`` (sdpa), bf16
The bound: a decode step must read every weight once and each row's KV cache, so
``bound = batch * HBM bandwidth / (2 bytes * n_params + batch * kv_bytes_per_token * mean context)``,
mean context being ``prompt + new/2``. Prefill is in the measured time and not in the bound, so the
fraction understates decode efficiency a little. Targets (issue 11): >= 40% of the bound, engine >=
3x hf at batch 128, monitor and steer >= 0.9x unhooked. ``--hbm-gbs auto`` looks the GPU up in
``HBM_GBS`` (datasheet figures); pass the number for any other GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import neuron_sets
from shapes import SHAPES, config_for, n_params, random_checkpoint

from workbench import load_model
from workbench.engine import Engine, EngineConfig, NeuronEdit, NeuronMonitor, Request, SamplingConfig

# Datasheet HBM bandwidth, GB/s, by a substring of torch.cuda.get_device_name().
HBM_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
           "A100 80GB PCIe": 1935.0, "A100": 1555.0, "L40S": 864.0, "A10G": 600.0}


def hbm_gbs(arg: str, device: torch.device) -> float | None:
    if arg != "auto":
        return float(arg)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, gbs in HBM_GBS.items():
        if key in name:
            return gbs
    raise SystemExit(f"unknown GPU {name!r}: pass its HBM bandwidth with --hbm-gbs")


def bound_tokens_s(shape: str, batch: int, context: float, gbs: float, bytes_per: int = 2) -> float:
    cfg = config_for(shape)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * bytes_per
    step_bytes = bytes_per * n_params(shape) + batch * kv_per_token * context
    return batch * gbs * 1e9 / step_bytes


def bench_batch(model, hf, args, batch: int, monitor, edit, gbs: float | None) -> list[dict]:
    device = next(hf.parameters()).device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    g = torch.Generator().manual_seed(batch)
    prompts = torch.randint(3, 56, (batch, args.prompt_len), generator=g)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.new_tokens)
    outputs: dict[str, list] = {}

    def engine(name: str, graphs: bool, **kw) -> Callable[[], int]:
        cfg = EngineConfig(sampling=sampling, batch_size=batch, stop_token_ids=(), cuda_graphs=graphs)

        def run() -> int:
            done = {f.key: f.generated for f in Engine(model, cfg, **kw).run(
                [Request(str(i), p) for i, p in enumerate(prompts.tolist())])}
            outputs[name] = [done[str(i)] for i in range(batch)]
            return sum(len(t) for t in outputs[name])
        return run

    @torch.no_grad()
    def hf_run() -> int:
        ids = prompts.to(device)
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                          min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
        outputs["hf"] = out[:, ids.shape[1]:].tolist()
        return out[:, ids.shape[1]:].numel()

    rows = {"engine": engine("engine", False)}
    if cuda:
        rows["engine+graphs"] = engine("engine+graphs", True)
        rows["engine+graphs+monitor"] = engine("engine+graphs+monitor", True, monitors=[NeuronMonitor(monitor)])
        rows["engine+graphs+steer"] = engine("engine+graphs+steer", True, edits=[edit])
    else:
        rows["engine+monitor"] = engine("engine+monitor", False, monitors=[NeuronMonitor(monitor)])
        rows["engine+steer"] = engine("engine+steer", False, edits=[edit])
    rows["hf"] = hf_run
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            sync()
            start = time.perf_counter()
            tokens = fn()
            sync()
            best[name] = max(best.get(name, 0.0), tokens / (time.perf_counter() - start))
    bound = bound_tokens_s(args.shape, batch, args.prompt_len + args.new_tokens / 2, gbs) if gbs else None
    results = []
    for name, rate in best.items():
        frac = f"{rate / bound:8.1%}" if bound else "     n/a"
        print(f"{batch:5d} {name:24s} {rate:10.1f} {frac}", flush=True)
        results.append({"batch": batch, "row": name, "tok_s": rate, "bound_tok_s": bound,
                        "fraction_of_bound": rate / bound if bound else None})
    base = best.get("engine+graphs", best["engine"])
    print(f"      engine/hf {base / best['hf']:.2f}; " + "; ".join(
        f"{k}/unhooked {v / base:.2f}" for k, v in best.items() if "monitor" in k or "steer" in k), flush=True)
    print(f"      greedy tokens equal to hf: {outputs['engine'] == outputs['hf']} (bf16: a different summation "
          "order can flip near-ties)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-1.7b", choices=sorted(SHAPES))
    parser.add_argument("--batches", default="1,32,128")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hbm-gbs", default="auto")
    parser.add_argument("--json", default="bench-engine-gpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    gbs = hbm_gbs(args.hbm_gbs, device)
    folder = random_checkpoint(args.shape, dtype=torch.bfloat16)
    model = load_model(folder, device=device, dtype=torch.bfloat16)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa").to(device)
    hf.eval()
    monitor, steer = neuron_sets(model.cfg.n_layers, model.cfg.d_mlp)
    edit = NeuronEdit(steer, tuple([0.5] * len(steer)), name="steer")
    results = []
    print(f"{'batch':>5s} {'row':24s} {'tok/s':>10s} {'of bound':>8s}", flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        results += bench_batch(model, hf, args, batch, monitor, edit, gbs)
    info = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "hbm_gbs": gbs,
            "torch": torch.__version__, "args": vars(args)}
    Path(args.json).write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print(f"\n{info['device']}, HBM {gbs} GB/s, torch {torch.__version__}; wrote {args.json}")


if __name__ == "__main__":
    main()
