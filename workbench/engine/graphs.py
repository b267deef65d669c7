"""CUDA graphs for the fast decode step, with edits, reads and monitors still live.

A captured graph replays fixed kernels on fixed memory with no Python in between, which removes
the per-kernel launch cost that dominates small-batch decoding on a GPU. Everything a decode step
reads must therefore sit at an address that never changes, its contents updated in place between
replays, and every Python value the step depends on is frozen at capture:

* the input tokens and positions: static buffers here; rows beyond the live ones are padded with
  token 0 at position 0 (they compute into free cache rows, which the next prefill overwrites);
* the edits: dense per-layer vectors (zero outside the edited neurons) and per-row on/off flags in
  ``_Hooks.on``, a zero flag by default, so switching an edit for a row is a write into a buffer;
* the reads of controllers and monitors: one ``(rows, n_read)`` buffer written inside the graph;
* the KV cache and the RoPE table: fixed between captures; when either grows, every graph is
  dropped and recaptured on next use.

A graph is captured per (rows bucket, width bucket): live rows are rounded up to 1, 2, 4 or a
multiple of 8, the attention width up to a multiple of ``WIDTH_STEP`` (the mask hides the extra
columns). The first step of each bucket runs eagerly on a side stream (it is that step's real work,
and warms up the kernels as capture requires), then is captured; later steps replay it. All graphs
share one memory pool: only temporaries live there, since every output is written into a buffer
allocated outside it.

Only the capture itself needs CUDA. ``capture`` is a function that runs the step (a callable of no
arguments) once and returns its replay; the tests pass one that runs it and returns the step
itself, which keeps every rule above (frozen Python values, static buffers) and so checks the
bookkeeping on a CPU.

Example:
    >>> [bucket_rows(n, 64) for n in (1, 3, 5, 9, 63)]
    [1, 4, 8, 16, 64]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

WIDTH_STEP = 256

Replay = Callable[[], None]
Capture = Callable[[Callable[[], None]], Replay]


def bucket_rows(n: int, capacity: int) -> int:
    """Rows a graph is captured for: 1, 2, 4, then multiples of 8, never above ``capacity``."""
    b = 1 << (n - 1).bit_length() if n <= 4 else -(-n // 8) * 8
    return min(b, capacity)


def cuda_capture(device: torch.device) -> Capture:
    """Captures with ``torch.cuda.graph`` into one pool shared by all graphs of a run."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graphs needs the model on a CUDA device, but it is on {device}; "
                         "leave cuda_graphs off on this device")
    pool = torch.cuda.graph_pool_handle()

    def capture(step: Callable[[], None]) -> Replay:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step()  # this step's real work, and the warm-up capture needs
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            step()  # recorded, not run
        return graph.replay

    return capture


class GraphedDecode:
    """``FastDecoder.decode`` through captured graphs; see the module docstring."""

    def __init__(self, dec, hooks, rows: int, capture: Capture | None = None) -> None:
        self.dec, self.hooks, self.rows = dec, hooks, rows
        self.capture = capture or cuda_capture(dec.device)
        self.ids = torch.zeros(rows, dtype=torch.long, device=dec.device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=dec.device)
        self.logits = torch.zeros(rows, dec.d_vocab, dtype=torch.float32, device=dec.device)
        self.graphs: dict[tuple[int, int], Replay] = {}
        self.captured = 0  # how many graphs were captured (a run should need few)
        self._memory: tuple[int, ...] = ()

    def __call__(self, ids: Int[Tensor, " n"], positions: Int[Tensor, " n"], width: int, cache,
                 out: Float[Tensor, "n d_vocab"]) -> None:
        n = ids.shape[0]
        rows = bucket_rows(n, self.rows)
        width = -(-width // WIDTH_STEP) * WIDTH_STEP
        cache.ensure(width)  # grow outside any capture
        self.dec.rope_table(max(width, cache.k.shape[3]))
        memory = (cache.k.data_ptr(), cache.v.data_ptr(), self.dec._cos.data_ptr(), self.dec._sin.data_ptr())
        if memory != self._memory:  # graphs point at the old cache or table
            self.graphs.clear()
            self._memory = memory
        self.ids[:n].copy_(ids)
        self.ids[n:rows].zero_()
        self.positions[:n].copy_(positions)
        self.positions[n:rows].zero_()
        replay = self.graphs.get((rows, width))
        if replay is None:
            self.graphs[(rows, width)] = self.capture(self._step(rows, width, cache))
            self.captured += 1
        else:
            replay()
        out.copy_(self.logits[:n])

    def _step(self, rows: int, width: int, cache) -> Callable[[], None]:
        ids, positions, logits = self.ids[:rows], self.positions[:rows], self.logits[:rows]
        hook = self.hooks.apply if self.hooks.active else None

        def step() -> None:
            saved, self.hooks.rows = self.hooks.rows, slice(0, rows)  # frozen into the graph
            try:
                self.dec.decode(ids, positions, width, cache, hook, out=logits)
            finally:
                self.hooks.rows = saved

        return step
