"""The analysis stage at real shapes: peak memory and time per token against the trace length.

    .venv/bin/python bench/analysis_scale.py [--shapes qwen3-1.7b] [--lengths 1024,2048,4096,8192]
        [--traces 4] [--stages cache,rcn,exit,mon,probe] [--threads 1] [--layers N] [--backend bridge|fast]
        [--json out.json]

For each shape (random weights from the real config, ``bench/shapes.py``: Qwen3-0.6B, Qwen3-1.7B and
R1-Distill-Qwen-1.5B, each with its 151,936-token vocabulary) and each length, a trace run of
``--traces`` traces of exactly that many tokens is written (random token ids; the think markers of
the bundled tokenizer placed at 64 and ``length - 32``, the answer after; half the traces correct, two
per problem), then each stage runs as its own CLI command in a fresh process: ``workbench cache``,
``workbench rank --method rcn|exit|mon`` and ``workbench probe``. Printed per stage and length: the
process's peak RSS, its wall time, seconds per 1k tokens read (the wall time less the start-up every
process pays: the imports and loading the model, measured once per shape), and the ratios of the longest to the
shortest length. A stage that cannot apply to such traces prints its own error instead of a number.

Targets (the readout issue; 2-core CPU): peak RSS at the longest length at most the weights + 3 GB
for the 1.7B shape; time per token at the longest length within 2x of the shortest. ``--layers N``
keeps the first N layers only (the vocabulary and widths stay real): a quicker check of the same
per-layer memory, named in every row so that it is never mistaken for the full model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES, random_checkpoint

CHILD = "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; " \
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
STAGES = {
    "cache": ["cache"],
    "rcn": ["rank", "--method", "rcn"],
    "exit": ["rank", "--method", "exit"],
    "mon": ["rank", "--method", "mon"],
    "probe": ["probe"],
}


def build_run(folder: Path, out: Path, length: int, n: int, seed: int) -> int:
    """A finished trace run of ``n`` random traces of ``length`` tokens read by the model in ``folder``."""
    from workbench.organism.tokenizer import build_tokenizer
    from workbench.store import TraceStore

    tok = build_tokenizer()  # the tokenizer random_checkpoint saves beside the weights
    open_id, close_id = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    rng = np.random.default_rng(seed)
    prompt, think_end = 64, length - 32
    rows = []
    for i in range(n):
        ids = rng.integers(0, len(tok), size=length).astype(int)
        ids[prompt], ids[think_end] = open_id, close_id
        correct = i % 2 == 0
        rows.append({
            "trace_id": f"p{i // 2}/{i % 2}", "problem_id": f"p{i // 2}", "sample_index": i % 2, "prompt": "random",
            "token_ids": ids.tolist(), "prompt_len": prompt, "text": "", "think_start": prompt,
            "think_end": think_end, "answer_start": think_end + 1, "answer_reached": (prompt + think_end) // 2,
            "extracted": "1" if correct else "2", "gold": "1", "correct": correct,
            "thinking_tokens": think_end - prompt - 1, "finish_reason": "length", "events": "[]", "labels": None,
        })
    identity = {"config": {"model": str(folder), "task": "bench", "length": length, "traces": n, "seed": seed}}
    with TraceStore.open(out, identity, {"note": "bench/analysis_scale.py: random token ids"}) as store:
        store.append(rows)
        store.finalize()
    return n * length


def startup_seconds(folder: Path, threads: int) -> float:
    """What every stage pays before it reads a token: the interpreter, the imports, loading the model."""
    code = f"from workbench import load_model, set_threads; set_threads({threads}); load_model({str(folder)!r})"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t


def run_stage(run: Path, stage: str, threads: int, backend: str) -> dict:
    cmd = [sys.executable, "-m", "workbench.cli", *STAGES[stage], str(run), "--json", "--threads", str(threads)]
    if stage == "cache":
        cmd += ["--backend", backend]
    t = time.perf_counter()
    got = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    rc, rss_kb = (int(x) for x in got.stdout.split()[-2:])
    row = {"stage": stage, "seconds": round(seconds, 1), "peak_rss_gb": round(rss_kb / 2**20, 2)}
    if rc != 0:
        lines = [x for x in got.stderr.strip().splitlines() if x.strip()]
        row["error"] = lines[-1][:300] if lines else f"exit code {rc}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="qwen3-1.7b")
    ap.add_argument("--lengths", default="1024,2048,4096,8192")
    ap.add_argument("--traces", type=int, default=4)
    ap.add_argument("--stages", default="cache,rcn,exit,mon,probe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=None, help="keep the first N layers only (a quicker check)")
    ap.add_argument("--backend", default="bridge", choices=["bridge", "fast"], help="the cache stage's readout")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        ap.error(f"unknown stages {sorted(unknown)}; choose from {sorted(STAGES)}")
    lengths = [int(x) for x in args.lengths.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else ""
    machine = (f"{cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{args.threads} thread(s), torch {__import__('torch').__version__}")
    rows = []
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            ap.error(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
        folder = random_checkpoint(shape, layers=args.layers)
        weights_gb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**30
        startup = startup_seconds(folder, args.threads)
        for length in lengths:
            run = tmp / f"{folder.name}-{length}"
            tokens = build_run(folder, run, length, args.traces, seed=length)
            for stage in stages:
                row = {"shape": shape, "layers": args.layers or "all", "weights_gb": round(weights_gb, 2),
                       "length": length, "tokens": tokens, "backend": args.backend,
                       **run_stage(run, stage, args.threads, args.backend)}
                row["startup_s"] = round(startup, 1)  # time per token counts the stage's work only
                row["s_per_1k_tokens"] = round(max(row["seconds"] - startup, 0.0) / tokens * 1000, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nmachine: {machine}")
    head = "".join(f"{n:>16}" for n in lengths)
    print(f"{'shape':<22}{'stage':<7}{head}{'rss ratio':>11}{'time/tok ratio':>16}")
    for shape in args.shapes.split(","):
        for stage in stages:
            got = [r for r in rows if r["shape"] == shape and r["stage"] == stage]
            cells = "".join(f"{'error':>16}" if "error" in r
                            else f"{r['peak_rss_gb']:>7} GB {r['s_per_1k_tokens']:>4} s" for r in got)
            ok = [r for r in got if "error" not in r]
            ratios = ""
            if len(ok) == len(got) and len(ok) > 1:
                ratios = (f"{ok[-1]['peak_rss_gb'] / ok[0]['peak_rss_gb']:>11.2f}"
                          f"{ok[-1]['s_per_1k_tokens'] / ok[0]['s_per_1k_tokens']:>16.2f}")
            print(f"{shape:<22}{stage:<7}{cells}{ratios}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
