"""Peak memory of ``workbench cache`` against the number of traces: it must not grow with them.

    .venv/bin/python bench/activation_store.py [--sizes 500,4000] [--threads 1]

Builds trace runs of each size from one small organism run (its traces repeated under new trace
ids; same model, so the cache accepts them), caches each in a fresh subprocess with the default
``CacheConfig`` and prints the subprocess's peak RSS, wall time and cache size. The target: peak
RSS at the largest size within 10% of the smallest.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time, resource
from workbench.model import set_threads
set_threads(int(sys.argv[2]))
from workbench.store import cache_activations
t = time.time()
cache_activations(sys.argv[1])
print(time.time() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def build_run(seed_run: Path, out: Path, n: int) -> None:
    from workbench.store import TraceStore, load_traces
    from workbench.store.rundir import read_manifest

    rows = load_traces(seed_run).to_pylist()
    manifest = read_manifest(seed_run)
    with TraceStore.open(out, manifest["identity"], manifest["provenance"]) as store:
        batch = []
        for i in range(n):
            r = dict(rows[i % len(rows)])
            r["sample_index"] = i
            r["trace_id"] = f"{r['problem_id']}/{i}"
            batch.append(r)
            if len(batch) == 500:
                store.append(batch)
                batch = []
        store.append(batch)
        store.finalize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="500,4000")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from workbench.model import set_threads
    from workbench.traces import TraceRunConfig, run_traces

    set_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    seed_run = tmp / "seed"
    run_traces(seed_run,
               config=TraceRunConfig(model="organism", task="organism", problems=100, samples=2, temperature=1.0),
               progress=False)
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        run = tmp / f"run{n}"
        build_run(seed_run, run, n)
        out = subprocess.run([sys.executable, "-c", CHILD, str(run), str(args.threads)], capture_output=True,
                             text=True, check=True).stdout.split()
        seconds, rss_kb = float(out[-2]), int(out[-1])
        size = sum(p.stat().st_size for p in (run / "activations").rglob("*") if p.is_file())
        rows.append({"traces": n, "peak_rss_mb": round(rss_kb / 1024, 1), "seconds": round(seconds, 2),
                     "cache_mb": round(size / 2**20, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"peak RSS ratio {rows[-1]['traces']} / {rows[0]['traces']} traces: "
          f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}   "
          f"(machine: {platform.processor() or platform.machine()}, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
