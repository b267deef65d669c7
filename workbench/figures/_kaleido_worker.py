"""Writes a batch of plotly figures through one kaleido session; run by ``export.py`` in its own process.

Standalone on purpose (standard library and kaleido only, run with ``python -I``): the parent can kill
it, and the browser it started, when the browser hangs. Reads a JSON spec (browser path, per-figure
timeout, items of figure dict, path and options) and reports on stdout, one line per event:
``ready <seconds>`` once the browser is up, ``wrote <i> <seconds>`` per figure, ``error <i> <message>``.
"""

import asyncio
import json
import sys
import time


async def main(spec_path: str) -> None:
    import kaleido

    with open(spec_path) as f:
        spec = json.load(f)
    t0 = time.perf_counter()
    # mathjax=False: no figure uses LaTeX, and its default is a CDN script an offline machine would wait on.
    async with kaleido.Kaleido(n=1, timeout=spec["timeout"], mathjax=False, path=spec["browser"]) as k:
        print("ready", round(time.perf_counter() - t0, 3), flush=True)
        for i, item in enumerate(spec["items"]):
            t = time.perf_counter()
            try:
                await k.write_fig_from_object([item], cancel_on_error=True)
            except Exception as exc:  # reported per figure; the batch goes on
                print("error", i, repr(exc).replace("\n", " ")[:500], flush=True)
                continue
            print("wrote", i, round(time.perf_counter() - t, 3), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
