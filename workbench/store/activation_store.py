"""The activation store: teacher-forced MLP neuron reads of a finished trace run, on disk.

``cache_activations(RUN)`` replays every trace of a trace run through the model that wrote it (no
interventions: a clean readout) and writes, per trace, joined on ``trace_id``:

* span summaries: each neuron's mean ``blocks.{L}.mlp.hook_post`` over named spans (``SPANS``):
  the question (prompt), the whole thinking span, the first k thinking tokens for each k in
  ``early_k``, the last token and the answer; NaN where a trace has no such span (or fewer than k
  thinking tokens);
* per-token activations of a subset of neurons (``token_neurons``; by default the ``top_variance``
  neurons whose activation varies most over the thinking tokens of a calibration sample);
* optionally, every neuron of chosen ``layers`` at every token;
* optionally (``heads``), every attention head's write into the residual stream at every token,
  ``||z_h @ W_O[h]||`` from ``blocks.{L}.attn.hook_z`` (``workbench.heads``), read in the same pass.

Layout (under ``RUN/activations/``)::

    manifest.json        identity: the trace run (sha256 of traces.parquet), the model hash, the config
    token_neurons.json   the per-token subset, a NeuronSet in column order
    shards/part-<n>.safetensors   float16 tensors of up to ``shard_traces`` traces
    shards/part-<n>.parquet       which traces (and token offsets) that shard holds; written second,
                                  so a shard counts only once both files are whole
    index.parquet        every trace in trace-store order with its shard: written when complete

Sums are taken in float32 and stored as float16. Memory is bounded by one batch and one shard,
never by the number of traces. A killed run resumes where it stopped; a run directory whose traces
or model changed since caching is refused rather than mixed.

Read it back with ``ActivationStore(RUN)``: ``store.summary("think_first_8")`` is a
``(trace, n_layers, d_mlp)`` array, ``store.token_acts(row)`` a ``(pos, neuron)`` one and, in a cache
with heads, ``store.token_heads(row)`` a ``(pos, n_layers * n_heads)`` one (columns ``store.heads``).

Example:
    >>> CacheConfig(early_k=(1, 8)).spans()
    ('question', 'think', 'think_first_1', 'think_first_8', 'last', 'answer')
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jaxtyping import Float

from workbench.atomic import atomic_write, atomic_write_text
from workbench.heads import HeadSet
from workbench.neurons import NeuronSet, NeuronSetError
from workbench.prompting import ThinkSpans
from workbench.store.paths import RunPaths, StorePaths
from workbench.store.rundir import (
    RunDirError,
    RunLock,
    identity_diff,
    normalise,
    package_versions,
    path_hash,
    read_manifest,
    run_model_spec,
)
from workbench.store.trace_store import load_traces

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("trace_id", "problem_id", "sample_index", "correct", "prompt_len", "think_start", "think_end",
                 "answer_start", "answer_reached")


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """What to cache.

    Attributes:
        early_k: the k of the ``think_first_k`` spans (the early-predictability curve reads them).
        token_neurons: a NeuronSet file naming the neurons to keep per token; None picks the
            ``top_variance`` neurons with the largest variance over thinking tokens.
        top_variance: how many neurons that default keeps (all neurons when the model has fewer).
        calibration_traces: traces read to estimate that variance (the first ones of the run).
        layers: layers whose every neuron is kept at every token (large: 2 bytes x d_mlp per token).
        batch_size: traces per teacher-forced forward pass at most.
        max_tokens_per_batch: padded tokens per pass at most (traces x the longest), so a batch of
            long traces is split by itself (``readout.Budget``).
        chunk_tokens: positions per forward on the bridge backend (longer traces continue over the KV
            cache, so attention memory grows with the length, not its square).
        backend: the readout's forward: ``"bridge"`` (the reference), ``"fast"`` (SDPA, Llama-family
            models) or ``"auto"`` (``readout.Budget``).
        shard_traces: traces per shard (the unit of resume and of memory).
        shard_tokens: padded tokens per shard at most (traces x the longest: a shard of long traces
            holds fewer of them).
        heads: also keep every attention head's residual write per token (2 bytes x n_layers x n_heads
            per token; ``ActivationStore.token_heads``). The fast forward does not expose heads, so a
            cache with heads reads on the bridge (``backend="auto"`` runs the bridge; ``"fast"`` is refused).
    """

    early_k: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    token_neurons: str | None = None
    top_variance: int = 512
    calibration_traces: int = 64
    layers: tuple[int, ...] = ()
    batch_size: int = 16
    max_tokens_per_batch: int = 16_384
    chunk_tokens: int = 512
    backend: str = "bridge"
    shard_traces: int = 256
    shard_tokens: int = 262_144
    heads: bool = False

    def __post_init__(self) -> None:
        for name in ("top_variance", "calibration_traces", "shard_traces", "shard_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"CacheConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.early_k or any(k < 1 for k in self.early_k):
            raise ValueError(f"CacheConfig.early_k must be positive token counts, got {self.early_k}")
        self.budget()  # validates the batch fields
        if self.heads and self.backend == "fast":
            raise ValueError("CacheConfig.heads needs the bridge: the fast forward exposes MLP neurons only (got "
                             "backend='fast'); use backend='bridge' or 'auto'")

    def budget(self):
        """The readout ``Budget`` of these settings."""
        from workbench.readout import Budget

        try:
            return Budget(batch_size=self.batch_size, max_tokens_per_batch=self.max_tokens_per_batch,
                          chunk_tokens=self.chunk_tokens, backend=self.backend)
        except ValueError as exc:
            raise ValueError(str(exc).replace("Budget.", "CacheConfig.")) from None

    def spans(self) -> tuple[str, ...]:
        return ("question", "think", *(f"think_first_{k}" for k in sorted(set(self.early_k))), "last", "answer")


def span_bounds(row: dict[str, Any], n_tokens: int, early_k: Sequence[int]) -> dict[str, tuple[int, int] | None]:
    """Each span's token positions ``[start, end)`` in a trace, or None where the trace lacks it.

    >>> row = {"prompt_len": 4, "think_start": 3, "think_end": 9, "answer_start": 10}
    >>> bounds = span_bounds(row, 12, [2, 8])
    >>> bounds["think"], bounds["think_first_2"], bounds["think_first_8"], bounds["answer"]
    ((4, 9), (4, 6), None, (10, 12))
    >>> span_bounds({"prompt_len": 4, "think_start": None, "think_end": None, "answer_start": None}, 12, [2])["think"]
    (4, 12)
    """
    # A trace that never opened a thinking span (a chat model that answers directly) reasons in its whole
    # generation, so "think" reads that, answer included.
    lo, think_end = ThinkSpans.of(row).bounds(row["prompt_len"], n_tokens)
    ans = row["answer_start"]
    out: dict[str, tuple[int, int] | None] = {"question": (0, row["prompt_len"])}
    out["think"] = (lo, think_end) if think_end > lo else None
    for k in sorted(set(early_k)):
        out[f"think_first_{k}"] = (lo, lo + k) if lo + k <= think_end else None
    out["last"] = (n_tokens - 1, n_tokens)
    out["answer"] = (ans, n_tokens) if ans is not None and ans < n_tokens else None
    return out


def _cache_dir(run_dir: str | Path) -> Path:
    return RunPaths(run_dir).activations.root


def _trace_identity(run_dir: Path) -> dict[str, Any]:
    traces = RunPaths(run_dir).traces
    if not traces.exists():
        raise RunDirError(f"{run_dir} has no {traces.name}: the trace run is not complete; finish it with the same "
                          "`workbench traces` command, then cache it")
    return {"path": str(run_dir.resolve()), "traces_sha256": path_hash(traces)}


# -- writing ---------------------------------------------------------------------------------------


def _variance_neurons(model, rows: list[dict], cfg: CacheConfig) -> NeuronSet:
    """The ``top_variance`` neurons with the largest variance over thinking tokens of the first traces.

    Sums stream per layer inside the pass (float64 on the CPU, as MPS has no float64): no batch ever holds
    every layer at once, which at 28 layers x 6,144 neurons x 8k tokens would be tens of GB.
    """
    import torch

    from workbench.readout import read_mlp

    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    thinking = [r for r in rows if r["think_start"] is not None]
    calib = sorted((thinking or rows)[: cfg.calibration_traces], key=lambda r: len(r["token_ids"]))  # less padding
    s1 = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    s2, n = torch.zeros_like(s1), 0
    budget = cfg.budget()
    for rows_b in budget.batches([len(r["token_ids"]) for r in calib]):
        batch = [calib[i] for i in rows_b]
        bounds = [ThinkSpans.of(r).bounds(r["prompt_len"], len(r["token_ids"])) for r in batch]

        def grab(layer: int, act: Float[torch.Tensor, "batch chunk d_mlp"], start: int, bounds=bounds) -> None:
            for r, (lo, hi) in enumerate(bounds):
                body = act[r, max(lo - start, 0) : max(hi - start, 0)].detach().float().cpu().double()
                s1[layer] += body.sum(0)
                s2[layer] += (body**2).sum(0)

        read_mlp(model, [r["token_ids"] for r in batch], range(n_layers), grab, budget)
        n += sum(max(hi - lo, 0) for lo, hi in bounds)
    s1, s2 = s1.flatten(), s2.flatten()
    var = s2 / max(n, 1) - (s1 / max(n, 1)) ** 2
    top = var.topk(min(cfg.top_variance, len(var))).indices.sort().values
    return NeuronSet.from_flat(top.tolist(), d_mlp, scores=tuple(float(var[i]) for i in top), method="variance",
                               parameters={"top": cfg.top_variance, "calibration_traces": len(calib)},
                               model_shape=(n_layers, d_mlp))


def _readout(model, rows: list[dict], spans: tuple[str, ...], cfg: CacheConfig, token_flat):
    """One teacher-forced pass over ``rows``: span means (float32), subset and layer tokens per trace."""
    import torch

    from workbench.readout import read_mlp

    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    lengths = [len(r["token_ids"]) for r in rows]
    width = max(lengths)
    weights = torch.zeros(len(rows), len(spans), width)  # row-normalised span masks
    present = torch.zeros(len(rows), len(spans), dtype=torch.bool)
    for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
        every = span_bounds(row, n, cfg.early_k)
        for s, name in enumerate(spans):
            bounds = every[name]
            if bounds is not None:
                weights[b, s, bounds[0] : bounds[1]] = 1.0 / (bounds[1] - bounds[0])
                present[b, s] = True
    summaries = torch.zeros(len(rows), len(spans), n_layers, d_mlp)
    by_layer = {layer: torch.tensor([i % d_mlp for i in token_flat if i // d_mlp == layer], dtype=torch.long)
                for layer in range(n_layers)}
    kept = [layer for layer in range(n_layers) if len(by_layer[layer])]
    columns = dict(zip(kept, np.cumsum([0] + [len(by_layer[layer]) for layer in kept]).tolist(), strict=False))
    tokens = torch.zeros(len(rows), width, len(token_flat), dtype=torch.float16)
    full = {layer: torch.zeros(len(rows), width, d_mlp, dtype=torch.float16) for layer in cfg.layers}
    n_heads = model.cfg.n_heads
    heads = torch.zeros(len(rows), width, n_layers * n_heads, dtype=torch.float16) if cfg.heads else None

    def grab(layer: int, act: Float[torch.Tensor, "batch chunk d_mlp"], start: int) -> None:
        act, stop = act.float(), start + act.shape[1]
        summaries[:, :, layer] += torch.bmm(weights[:, :, start:stop].to(act.device), act).cpu()
        if layer in columns:
            lo, index = columns[layer], by_layer[layer]
            tokens[:, start:stop, lo : lo + len(index)] = act[:, :, index.to(act.device)].half().cpu()
        if layer in full:
            full[layer][:, start:stop] = act.half().cpu()

    def grab_heads(layer: int, norms: Float[torch.Tensor, "batch chunk head_index"], start: int) -> None:
        heads[:, start : start + norms.shape[1], layer * n_heads : (layer + 1) * n_heads] = norms.half().cpu()

    read_mlp(model, [r["token_ids"] for r in rows], range(n_layers), grab, cfg.budget(),
             heads=grab_heads if cfg.heads else None)
    summaries[~present] = float("nan")
    per_trace = []
    for b, n in enumerate(lengths):
        per_trace.append({
            "tokens": tokens[b, :n],
            **{f"layer.{layer}": full[layer][b, :n] for layer in sorted(full)},
            **({"heads": heads[b, :n]} if heads is not None else {}),
        })
    return summaries, per_trace


def _write_shard(root: Path, n: int, rows: list[dict], spans, summaries: list, per_trace: list) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {f"summary.{name}": torch.cat([s[:, i] for s in summaries]).half().contiguous()
               for i, name in enumerate(spans)}
    for key in per_trace[0]:
        tensors[key] = torch.cat([t[key] for t in per_trace]).contiguous()
    offsets = np.cumsum([0] + [len(t["tokens"]) for t in per_trace])
    stem = StorePaths(root).shard(f"{n:06d}", suffix="")
    atomic_write(stem.with_suffix(".safetensors"), lambda tmp: save_file(tensors, str(tmp)))
    index = pa.table({
        "trace_id": [r["trace_id"] for r in rows],
        "row": list(range(len(rows))),
        "token_offset": offsets[:-1].tolist(),
        "n_tokens": np.diff(offsets).tolist(),
    })
    atomic_write(stem.with_suffix(".parquet"), lambda tmp: pq.write_table(index, tmp))


def _recover(root: Path) -> dict[str, tuple[str, dict]]:
    """trace_id -> (shard name, its index row) of every whole shard; clears what a killed writer left."""
    from safetensors import SafetensorError, safe_open

    store = StorePaths(root)
    for tmp in store.shards.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    done: dict[str, tuple[str, dict]] = {}
    for meta in store.shard_files():
        data = meta.with_suffix(".safetensors")
        try:
            if not data.exists():
                raise OSError("its tensors file is missing")
            with safe_open(str(data), framework="numpy"):
                pass
            table = pq.read_table(meta)
        # Only a shard that fails to parse is set aside: a truncated or garbled tensors file raises SafetensorError,
        # a parquet index ArrowInvalid (an ArrowException), an unreadable file OSError. Anything else is a bug.
        except (SafetensorError, pa.ArrowException, OSError) as exc:
            store.corrupt.mkdir(exist_ok=True)
            for f in (meta, data):
                if f.exists():
                    f.replace(store.corrupt / f.name)
            log.warning("activation shard %s is unreadable (%s); set aside into %s, its traces are recomputed",
                        meta.name, exc, store.corrupt.name)
            continue
        for r in table.to_pylist():
            done[r["trace_id"]] = (meta.stem, r)
    for orphan in store.shard_files(".safetensors"):  # tensors whose index never landed
        if not orphan.with_suffix(".parquet").exists():
            orphan.unlink()
    return done


def _run_tokenizer_vocab(run_dir: Path) -> dict[str, int]:
    """The vocabulary of the tokenizer of the model that wrote a trace run."""
    from workbench.model import load_tokenizer

    return load_tokenizer(run_model_spec(run_dir)).get_vocab()


def cache_activations(
    run: str | Path, *, config: CacheConfig | None = None, model=None, progress: bool = False,
    off_policy: bool = False,
) -> ActivationStore:
    """Caches the activations of a complete trace run into ``RUN/activations``; returns the store.

    Resumes a cache killed midway; refuses a cache made from other traces, another model or another
    ``cfg``. ``model`` may be passed in (already loaded); it must be the model that wrote the traces,
    unless ``off_policy``: then any model with the same tokenizer reads them (AdaRAS's off-policy
    setting: neurons of one model on another model's traces), and the manifest says so.
    """
    from tqdm.auto import tqdm

    from workbench.model import load_model, resolve
    from workbench.store.rundir import model_hash

    run_dir, cfg = Path(run), config if config is not None else CacheConfig()
    trace_manifest = read_manifest(run_dir)
    traces = _trace_identity(run_dir)
    root = _cache_dir(run_dir)
    run_identity = trace_manifest.get("identity", {})
    for layer in cfg.layers:
        if layer < 0:
            raise ValueError(f"--layers: {layer} is not a layer index")
    token_set = None
    if cfg.token_neurons is not None:
        try:
            token_set = NeuronSet.load(cfg.token_neurons)
        except NeuronSetError as exc:
            raise ValueError(f"--token-neurons: {exc}") from exc
    if model is None:
        model = load_model(resolve(run_model_spec(run_dir)))
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    bad = [layer for layer in cfg.layers if layer >= n_layers]
    if bad:
        raise ValueError(f"--layers: {bad} outside the model's {n_layers} layers")
    if token_set is not None:
        token_set.check_fits(n_layers, d_mlp)
    digest = model_hash(model)
    on_policy = run_identity.get("model_sha256") in (None, digest)
    if not on_policy and not off_policy:
        raise RunDirError(f"the model given is not the one that wrote the traces in {run_dir} (its weights hash "
                          "differs from the run manifest's model_sha256); cache with that run's model, or pass "
                          "--off-policy to read another model's traces on purpose")
    if off_policy and model.tokenizer.get_vocab() != _run_tokenizer_vocab(run_dir):
        raise RunDirError(f"the model given does not share the tokenizer of the model that wrote {run_dir}; its "
                          "token ids would mean other tokens, so it cannot read these traces")
    config = asdict(cfg)
    if not cfg.heads:  # a cache without heads keeps the identity it had before heads could be cached
        del config["heads"]
    identity = normalise({"traces": traces, "model_sha256": digest, "config": config,
                          "model_shape": [n_layers, d_mlp], "on_policy": on_policy,
                          **({"head_shape": [n_layers, model.cfg.n_heads]} if cfg.heads else {})})
    store = StorePaths(root)
    existing = read_manifest(root) if store.manifest.exists() else None
    if existing is not None:
        diff = identity_diff(existing.get("identity"), identity)
        if diff:
            raise RunDirError(f"{root} holds a cache of other traces, another model or other settings (it differs "
                              f"in: {', '.join(diff)}); delete {root} to cache again")
    rows = load_traces(run_dir).to_pylist()
    if not rows:
        raise RunDirError(f"{run_dir} holds no traces; nothing to cache")
    with RunLock.acquire(root):
        store.shards.mkdir(exist_ok=True)
        if existing is None:
            manifest = {"identity": identity, "provenance": normalise({
                "created": datetime.now(UTC).isoformat(timespec="seconds"), "versions": package_versions(),
                "note": "clean teacher-forced readout: the trace run's interventions are not applied"})}
            atomic_write_text(store.manifest, json.dumps(manifest, indent=2))
        if not store.token_neurons.exists():
            chosen = token_set if token_set is not None else _variance_neurons(model, rows, cfg)
            chosen.layer_ordered().save(store.token_neurons)
        token_flat = NeuronSet.load(store.token_neurons).flat(d_mlp)
        # Columns of the per-token tensor follow layer order, then index order within a layer.
        done = _recover(root)
        todo = [r for r in rows if r["trace_id"] not in done]
        spans = cfg.spans()
        next_shard = 1 + max((int(p.stem.split("-")[1]) for p in store.shard_files()), default=-1)
        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="cache", unit="trace", disable=not progress)
        from workbench.readout import Budget

        shards = Budget(batch_size=cfg.shard_traces, max_tokens_per_batch=cfg.shard_tokens)
        for shard in shards.batches([len(r["token_ids"]) for r in todo]):
            # Shortest first within a shard, so each pass pads to traces of about its own length (a run of
            # 60- to 1,650-token traces padded to 3.9x its tokens in run order, 1.2x sorted); readers find a
            # trace through the index, and a row's activations do not depend on its batch neighbours.
            shard_rows = sorted((todo[i] for i in shard), key=lambda r: len(r["token_ids"]))
            summaries, per_trace = [], []
            for rows_b in cfg.budget().batches([len(r["token_ids"]) for r in shard_rows]):
                s, t = _readout(model, [shard_rows[i] for i in rows_b], spans, cfg, token_flat)
                summaries.append(s.half())  # as written: a shard holds 2 bytes per summary, not 4
                per_trace += t
                bar.update(len(t))
            _write_shard(root, next_shard, shard_rows, spans, summaries, per_trace)
            next_shard += 1
        bar.close()
        _write_index(root, rows)
    return ActivationStore(run_dir)


def _write_index(root: Path, rows: list[dict]) -> None:
    where = _recover(root)
    missing = [r["trace_id"] for r in rows if r["trace_id"] not in where]
    if missing:
        raise RunDirError(f"{root}: {len(missing)} traces were not cached (e.g. {missing[0]}); run the cache again")
    table = {c: [r[c] for r in rows] for c in INDEX_COLUMNS}
    table["n_tokens"] = [len(r["token_ids"]) for r in rows]
    table["shard"] = [where[r["trace_id"]][0] for r in rows]
    table["shard_row"] = [where[r["trace_id"]][1]["row"] for r in rows]
    table["token_offset"] = [where[r["trace_id"]][1]["token_offset"] for r in rows]
    atomic_write(StorePaths(root).index, lambda tmp: pq.write_table(pa.table(table), tmp))


# -- reading ---------------------------------------------------------------------------------------


class ActivationStore:
    """A complete activation cache of a trace run, read lazily; see the module docstring.

    Rows of every array follow ``index`` (trace-store order: by problem, then sample).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._handles: dict[str, Any] = {}
        root = _cache_dir(self.run_dir)
        self.paths = StorePaths(root)
        if not self.paths.index.exists():
            state = "is incomplete" if self.paths.manifest.exists() else "does not exist"
            raise RunDirError(f"the activation cache of {self.run_dir} {state}; run `workbench cache {self.run_dir}`")
        self.root = root
        self.manifest = read_manifest(root)
        ident = self.manifest["identity"]
        traces = RunPaths(self.run_dir).traces
        if path_hash(traces) != ident["traces"]["traces_sha256"]:
            raise RunDirError(f"{traces} changed since it was cached; delete {root} and cache again")
        self.config = CacheConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ident["config"].items()})
        self.n_layers, self.d_mlp = ident["model_shape"]
        self.n_neurons = self.n_layers * self.d_mlp
        self.spans = self.config.spans()
        self.early_k = tuple(sorted(set(self.config.early_k)))
        self.model_sha256 = ident["model_sha256"]
        self.n_heads: int | None = ident["head_shape"][1] if "head_shape" in ident else None

    @cached_property
    def index(self) -> pa.Table:
        return pq.read_table(self.paths.index)

    def __len__(self) -> int:
        return self.index.num_rows

    @cached_property
    def token_neurons(self) -> NeuronSet:
        """The neurons of ``token_acts``' columns, in order."""
        return NeuronSet.load(self.paths.token_neurons, model_shape=(self.n_layers, self.d_mlp))

    def traces(self) -> pa.Table:
        """The trace store's rows (token ids, labels, ...), aligned with ``index``."""
        table = load_traces(self.run_dir)
        if table["trace_id"].to_pylist() != self.index["trace_id"].to_pylist():
            raise RunDirError(f"{self.run_dir}: the traces no longer match the activation cache; cache again")
        return table

    def _open(self, shard: str):
        from safetensors import safe_open

        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.paths.shards / f"{shard}.safetensors"), framework="numpy")
        return self._handles[shard]

    def _shard_rows(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(shard, rows of index it holds, their rows within the shard)."""
        shards = np.array(self.index["shard"].to_pylist())
        within = np.array(self.index["shard_row"].to_pylist())
        for shard in sorted(set(shards.tolist())):
            rows = np.flatnonzero(shards == shard)
            yield shard, rows, within[rows]

    def summary(self, span: str) -> Float[np.ndarray, "trace n_layers d_mlp"]:
        """Each trace's mean activation of every neuron over ``span``; NaN where the trace lacks it."""
        if span not in self.spans:
            raise ValueError(f"unknown span {span!r}; this cache has {', '.join(self.spans)}")
        out = np.empty((len(self), self.n_layers, self.d_mlp), dtype=np.float32)
        for shard, rows, within in self._shard_rows():
            out[rows] = self._open(shard).get_tensor(f"summary.{span}")[within].astype(np.float32)
        return out

    def token_acts(self, row: int) -> Float[np.ndarray, "pos neuron"]:
        """Trace ``row``'s per-token activations of ``token_neurons`` (whole sequence, prompt included)."""
        return self._tokens(row, "tokens")

    @property
    def has_heads(self) -> bool:
        """Whether this cache holds per-token attention heads (``CacheConfig(heads=True)``)."""
        return self.n_heads is not None

    @cached_property
    def heads(self) -> HeadSet:
        """The heads of ``token_heads``' columns, in order: every head, layer by layer."""
        self._need_heads()
        return HeadSet.every(self.n_layers, self.n_heads)

    def token_heads(self, row: int) -> Float[np.ndarray, "pos head"]:
        """Trace ``row``'s per-token residual writes ``||z_h W_O[h]||`` of every head (columns ``heads``)."""
        self._need_heads()
        return self._tokens(row, "heads")

    def _need_heads(self) -> None:
        if not self.has_heads:
            raise ValueError(f"the activation cache of {self.run_dir} holds no attention heads; delete {self.root} "
                             f"and cache again with CacheConfig(heads=True) (`workbench cache --heads`)")

    def layer_acts(self, row: int, layer: int) -> Float[np.ndarray, "pos d_mlp"]:
        """Every neuron of ``layer`` at every token of trace ``row`` (only for layers cached in full)."""
        if layer not in self.config.layers:
            raise ValueError(f"layer {layer} was not cached in full (layers: {list(self.config.layers)}); "
                             f"cache again with --layers {layer}")
        return self._tokens(row, f"layer.{layer}")

    @cached_property
    def _where(self) -> list[tuple[str, int, int]]:
        """Per row: its shard, token offset and token count (read once: every token read needs them)."""
        cols = (self.index[c].to_pylist() for c in ("shard", "token_offset", "n_tokens"))
        return list(zip(*cols, strict=True))

    def _tokens(self, row: int, key: str) -> np.ndarray:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} outside the {len(self)} cached traces")
        shard, off, n = self._where[row]
        return self._open(shard).get_slice(key)[off : off + n].astype(np.float32)
