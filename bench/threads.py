"""Generation throughput of the organism with 1 and 2 torch threads, measured in one run.

    .venv/bin/python bench/threads.py [--problems 128]

Prints tokens/s for each thread count and the ratio; record results with the machine in docs/.
"""

from __future__ import annotations

import argparse
import time

import torch

from workbench import load_model
from workbench.engine import SamplingConfig, generate
from workbench.organism.task import sample_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    model = load_model("organism")
    prompts = [p.prompt for p in sample_problems(args.problems, seed=7, held_out=True)]
    cfg = SamplingConfig(temperature=1.0, seed=0)
    rates = {}
    for threads in (1, 2, 1):  # 1 twice: the second run guards against warm-up bias
        torch.set_num_threads(threads)
        start = time.perf_counter()
        out = generate(model, prompts, cfg, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        tokens = sum(len(g.generated) for g in out)
        rates[threads] = tokens / seconds
        print(f"threads={threads}  {tokens} tokens in {seconds:.2f}s  -> {tokens / seconds:,.0f} tokens/s")
    print(f"ratio 1-thread / 2-thread: {rates[1] / rates[2]:.2f}x")


if __name__ == "__main__":
    main()
