"""What one engine run does at ``mlp.hook_post``: edits applied and neurons read, all on the device.

Built once per run from the edits, the controllers' neurons and the monitors, as fixed-size
buffers so that no forward pass talks to the host and a CUDA graph can keep them (``graphs.py``):

* **edits**: each (edit, layer) is a dense ``d_mlp`` vector, zero outside the edit's neurons (for
  ``"set"`` also a neuron mask), applied with the rows' on/off flags ``on[rows, edit]``; an edit
  that is off for a row is a multiplication by zero, not a branch;
* **reads**: every neuron that a controller or monitor reads, grouped by layer in one
  ``(rows, n_read)`` buffer, so each layer writes one contiguous block;
* **monitor statistics**: per row running sums and maxima, updated after each forward pass
  and copied to the host once, when the row's sequence finishes.

``rows`` is the slice of the engine's rows the current forward pass covers (decode: the live rows
``0 .. n-1``; prefill: the new rows).

Example:
    >>> from workbench.neurons import NeuronSet
    >>> hooks = RunHooks(2, 4, (), (), (), rows=3, device=torch.device("cpu"), dtype=torch.float32)
    >>> hooks.active
    False
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from workbench.engine.interventions import Controller, NeuronEdit, NeuronMonitor, NeuronStats
from workbench.neurons import NeuronSet, layer_of, mlp_post


class RunHooks:
    """The per-run hook state; see the module docstring."""

    def __init__(
        self,
        n_layers: int,
        d_mlp: int,
        edits: Sequence[NeuronEdit],
        controllers: Sequence[Controller],
        monitors: Sequence[NeuronMonitor],
        rows: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.rows = slice(0, 0)
        self.monitors = tuple(monitors)
        self.on = torch.zeros(rows, max(len(edits), 1), dtype=dtype, device=device)
        self.add: dict[int, list[tuple[int, Tensor]]] = {}
        self.set: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
        for e, edit in enumerate(edits):
            edit.neurons.check_fits(n_layers, d_mlp)
            values = torch.tensor(edit.values, dtype=dtype)
            for layer, (pos, idx) in edit.neurons.by_layer().items():
                dense = torch.zeros(d_mlp, dtype=dtype)
                dense[list(idx)] = values[list(pos)]
                if edit.mode == "add":
                    self.add.setdefault(layer, []).append((e, dense.to(device)))
                else:
                    mask = torch.zeros(d_mlp, dtype=torch.bool)
                    mask[list(idx)] = True
                    self.set.setdefault(layer, []).append((e, mask.to(device), dense.to(device)))
        readers: list[NeuronSet | None] = [c.neurons for c in controllers] + [m.neurons for m in monitors]
        # One column per (reader, neuron), ordered by layer: layer L's reads are columns a..b.
        entries = sorted(
            ((layer, r, j, idx) for r, ns in enumerate(readers) if ns is not None
             for j, (layer, idx) in enumerate(zip(ns.layers, ns.indices, strict=True))),
            key=lambda x: x[0],
        )
        for ns in readers:
            if ns is not None:
                ns.check_fits(n_layers, d_mlp)
        cols: list[list[int]] = [[0] * len(ns) if ns is not None else [] for ns in readers]
        by_layer: dict[int, list[int]] = {}
        for col, (layer, r, j, idx) in enumerate(entries):
            by_layer.setdefault(layer, []).append(idx)
            cols[r][j] = col
        self.read_plan: dict[int, tuple[int, int, Tensor]] = {}
        start = 0
        for layer, idx in by_layer.items():  # in layer order, as the entries
            self.read_plan[layer] = (start, start + len(idx), torch.tensor(idx, device=device))
            start += len(idx)
        self.reads = torch.zeros(rows, len(entries), dtype=torch.float32, device=device)
        n_ctrl = len(controllers)
        self.controller_cols = [torch.tensor(c, device=device) if readers[i] is not None else None
                                for i, c in enumerate(cols[:n_ctrl])]
        self.monitor_cols = [torch.tensor(c, device=device) for c in cols[n_ctrl:]]
        self.stat_sum = [torch.zeros(rows, len(m.neurons), device=device) for m in monitors]
        self.stat_max = [torch.full((rows, len(m.neurons)), -torch.inf, device=device) for m in monitors]

    @property
    def active(self) -> bool:
        """Whether any layer is edited or read (else the forward needs no hook at all)."""
        return bool(self.add or self.set or self.read_plan)

    def apply(self, layer: int, act: Float[Tensor, "rows d_mlp"]) -> None:
        """Edits ``act`` (the current position's neurons of ``self.rows``) in place, then reads it."""
        r = self.rows
        for e, delta in self.add.get(layer, ()):
            act += self.on[r, e, None] * delta
        for e, mask, values in self.set.get(layer, ()):
            act.copy_(torch.where(mask & (self.on[r, e, None] > 0), values, act))
        plan = self.read_plan.get(layer)
        if plan is not None:
            a, b, idx = plan
            self.reads[r, a:b] = act[:, idx]

    def fwd_hooks(self) -> list[tuple[str, object]]:
        """TransformerLens hooks doing ``apply`` (the bridge backend's rows are left-padded: the
        current position is the last)."""
        layers = sorted(set(self.add) | set(self.set) | set(self.read_plan))
        return [(mlp_post(layer), self._hook) for layer in layers]

    def _hook(self, act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint) -> Tensor:
        self.apply(layer_of(hook.name), act[:, -1])
        return act

    def begin(self, rows: slice, edit_on: Bool[Tensor, "n n_edits"], fresh: bool = False) -> None:
        """Before a forward pass over ``rows``: their edit flags to the device; ``fresh`` rows
        (new sequences) start their statistics anew."""
        self.rows = rows
        if edit_on.shape[1]:
            self.on[rows, : edit_on.shape[1]].copy_(edit_on)
        if fresh:
            for s, m in zip(self.stat_sum, self.stat_max, strict=True):
                s[rows] = 0
                m[rows] = -torch.inf

    def end(self) -> None:
        """After a forward pass: the monitors' running statistics take in this position."""
        r = self.rows
        for cols, s, m in zip(self.monitor_cols, self.stat_sum, self.stat_max, strict=True):
            vals = self.reads[r][:, cols]
            s[r] += vals
            torch.maximum(m[r], vals, out=m[r])

    def acts(self, c: int, n: int) -> Float[Tensor, "n n_neurons"] | None:
        """Controller ``c``'s neurons at the current positions of rows ``0 .. n-1``, in its order."""
        cols = self.controller_cols[c]
        return None if cols is None else self.reads[:n][:, cols]

    def keep(self, src: list[int], dst: list[int]) -> None:
        """Moves the statistics of rows ``src`` onto rows ``dst`` (as the engine compacts its rows)."""
        if not src or not self.monitors:
            return
        s, d = torch.tensor(src, device=self.reads.device), torch.tensor(dst, device=self.reads.device)
        for buf in (*self.stat_sum, *self.stat_max):
            buf[d] = buf[s]

    def stats(self, row: int, n_positions: int) -> dict[str, NeuronStats]:
        """The monitors' statistics of ``row`` (one copy to the host per monitor)."""
        out = {}
        for mon, s, m in zip(self.monitors, self.stat_sum, self.stat_max, strict=True):
            out[mon.name] = NeuronStats(mean=(s[row] / n_positions).cpu().numpy().astype(np.float32),
                                        max=m[row].cpu().numpy().astype(np.float32), n_positions=n_positions)
        return out
