"""The generation engine: batched, KV-cached, refilling finished rows, with per-sequence control.

Each iteration (1) runs one decode step for every live row, (2) prefills waiting prompts into the
free rows after them, (3) shows controllers the rows' logits and neuron activations, (4) picks,
appends and checks each row's next token, and (5) drops finished rows: live rows stay the prefix
``0 .. n-1`` of the batch, a finished row's place taken by a live row from the end (only moved rows'
keys and values are copied), so no step computes a finished row. Positions count real tokens only.
Edits and reads act at ``mlp.hook_post`` through ``RunHooks`` (device buffers, no host sync inside
a forward pass): the fast forward calls them in place, the bridge forward through TransformerLens
hooks attached for each forward pass alone, so a paused, abandoned or failed run leaves none on the
model. The logits buffer is allocated once per run and reused; a controller that keeps a step's
logits must clone them.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")
    >>> engine = Engine(model, EngineConfig(sampling=SamplingConfig(temperature=0.0)))
    >>> request = Request("a", model.tokenizer("Q: 4 + 5 = ? <think>").input_ids)
    >>> [f.finish_reason for f in engine.run([request])]
    ['eos']
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from workbench.engine.backends import make_backend
from workbench.engine.hooks import RunHooks
from workbench.engine.interventions import Controller, Event, NeuronEdit, NeuronMonitor, NeuronStats, StepView
from workbench.engine.sampling import SamplingConfig, pick_tokens, row_generator
from workbench.prompting import model_stop_ids

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

NONFINITE = "nonfinite_logits"


@dataclass(frozen=True)
class Request:
    """A prompt to continue; ``key`` names it (and seeds its sampler), e.g. ``"47+38/3"``."""

    key: str
    prompt_ids: Sequence[int]


@dataclass
class Finished:
    """A finished sequence: ``tokens`` is the prompt then the generated ids (no padding)."""

    key: str
    prompt_len: int
    tokens: list[int]
    finish_reason: str  # "eos", "length", "nonfinite_logits", or a controller's stop reason
    events: list[Event] = field(default_factory=list)
    stats: dict[str, NeuronStats] = field(default_factory=dict)  # monitor name -> its statistics

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How to run.

    Attributes:
        sampling: decoding settings, including ``max_new_tokens``.
        batch_size: rows decoded together.
        stop_token_ids: tokens that end a sequence (default: the tokenizer's EOS and every EOS id of
            the model's generation config; a run's ``PromptFormat`` passes its recorded ``stop_ids``).
        compact_every: (bridge backend) cut unused cache columns once this many have piled up.
        backend: ``"auto"`` (the fast forward when the model supports it), ``"fast"`` or ``"bridge"``.
        dtype: run the fast forward on a copy of the weights in this dtype (``"bfloat16"``,
            ``"float16"``, ``"float32"``); None uses the model's weights as loaded.
        cuda_graphs: replay the fast decode step from CUDA graphs (model on a CUDA device only).
        packed_weights: run the fast forward's projections on oneDNN-prepacked copies of the weights
            (a CPU speed-up that doubles the weights' memory); None packs wherever it can (CPU).
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch_size: int = 64
    stop_token_ids: tuple[int, ...] | None = None
    compact_every: int = 32
    backend: str = "auto"
    dtype: str | None = None
    cuda_graphs: bool = False
    packed_weights: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, got {self.dtype!r}")


class Engine:
    """Runs requests through ``model`` with ``edits``, ``controllers`` and ``monitors``; see the module docstring."""

    def __init__(
        self,
        model: TransformerBridge,
        cfg: EngineConfig,
        edits: Sequence[NeuronEdit] = (),
        controllers: Sequence[Controller] = (),
        monitors: Sequence[NeuronMonitor] = (),
    ) -> None:
        for what, names in (("edit", [e.name for e in edits]), ("monitor", [m.name for m in monitors])):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique, got {names}")
        self.model, self.cfg = model, cfg
        self.edits, self.controllers, self.monitors = tuple(edits), tuple(controllers), tuple(monitors)
        tok = model.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        stops = cfg.stop_token_ids if cfg.stop_token_ids is not None else model_stop_ids(model)
        self.stop_ids = frozenset(s for s in stops if s is not None)
        self.tokens_generated = 0

    def run(self, requests: Iterable[Request]) -> Iterator[Finished]:
        """Yields each sequence as it finishes (not in request order).

        Hooks live only inside each forward pass, so a paused or abandoned run leaves none behind
        on the model (which an app may share between users).
        """
        cfg, model = self.cfg, self.model
        param = next(model.original_model.parameters())
        dtype = DTYPES[cfg.dtype] if cfg.dtype is not None else None
        hooks = RunHooks(model.cfg.n_layers, model.cfg.d_mlp, self.edits, self.controllers, self.monitors,
                         cfg.batch_size, param.device, dtype or param.dtype)
        backend = make_backend(model, cfg.backend, hooks, rows=cfg.batch_size, dtype=dtype,
                               cuda_graphs=cfg.cuda_graphs, compact_every=cfg.compact_every, pack=cfg.packed_weights)
        self.backend_name = type(backend).__name__
        self.backend = backend
        yield from _Run(self, hooks, backend, deque(requests)).loop()


class _Run:
    """The mutable state of one ``Engine.run``: rows ``0 .. n-1`` are the live sequences."""

    def __init__(self, engine: Engine, hooks: RunHooks, backend, waiting: deque[Request]) -> None:
        self.e, self.hooks, self.backend, self.waiting = engine, hooks, backend, waiting
        self.device = backend.device
        self.capacity = engine.cfg.batch_size
        # Per row, in row order; rows are reordered together (``_compact``).
        self.keys: list[str] = []
        self.tokens: list[list[int]] = []
        self.prompt_len: list[int] = []
        self.n_cached: list[int] = []
        self.events: list[list[Event]] = []
        self.generators: list[random.Random] = []
        self.forced: list[list[int]] = []
        self.live: list[bool] = []
        self.edit_on = torch.zeros(self.capacity, len(engine.edits), dtype=torch.bool)
        self.logits = torch.empty(self.capacity, backend.d_vocab, dtype=torch.float32, device=self.device)

    def loop(self) -> Iterator[Finished]:
        # no_grad per stretch, never across a yield: a decorator would not cover a generator's body
        # once wrapped (jaxtyping's checker wraps it in tests), and a `with` around the yields would
        # switch gradients off in the caller's code too.
        while self.waiting or self.keys:
            with torch.no_grad():
                self._forward()
            self.live = [True] * len(self.keys)
            yield from self._choose(self.logits[: len(self.keys)])
            with torch.no_grad():
                self._compact()

    def _forward(self) -> None:
        """One decode step for the live rows, then prefill of waiting prompts into the free rows."""
        n = len(self.keys)
        if n:
            ids = torch.tensor([t[-1] for t in self.tokens], device=self.device)
            positions = torch.tensor(self.n_cached, device=self.device)
            self.hooks.begin(slice(0, n), self.edit_on[:n])
            self.backend.decode(ids, positions, max(self.n_cached) + 1, self.logits[:n])
            self.hooks.end()
            self.n_cached = [c + 1 for c in self.n_cached]
        if self.waiting and n < self.capacity:
            self._prefill(n)

    def _prefill(self, start: int) -> None:
        reqs = [self.waiting.popleft() for _ in range(min(self.capacity - start, len(self.waiting)))]
        for r in reqs:
            if len(r.prompt_ids) == 0:
                raise ValueError(f"request {r.key!r} has an empty prompt")
        rows = slice(start, start + len(reqs))
        # A new sequence starts from the edits' defaults, whatever a controller left switched for
        # the row's previous occupant, then from its controllers' initial switches.
        self.edit_on[rows] = torch.tensor([ed.default_on for ed in self.e.edits], dtype=torch.bool)
        names = [ed.name for ed in self.e.edits]
        switched: list[list[Event]] = []
        for row, r in enumerate(reqs, start):
            switched.append([])
            for ctrl in self.e.controllers:
                for name, on in ctrl.initial_edits(r.key).items():
                    if name not in names:
                        raise KeyError(f"{type(ctrl).__name__}.initial_edits names no edit {name!r} (edits: {names})")
                    self.edit_on[row, names.index(name)] = on
                    switched[-1].append(Event(0, r.key, "edit_on" if on else "edit_off",
                                              {"edit": name, "before_prefill": True}))
        self.hooks.begin(rows, self.edit_on[rows], fresh=True)
        self.backend.prefill([r.prompt_ids for r in reqs], start, self.e.pad_id, self.logits[rows])
        self.hooks.end()
        for r, events in zip(reqs, switched, strict=True):
            self.keys.append(r.key)
            self.tokens.append(list(r.prompt_ids))
            self.prompt_len.append(len(r.prompt_ids))
            self.n_cached.append(len(r.prompt_ids))
            self.events.append(events)
            self.generators.append(row_generator(self.e.cfg.sampling.seed, r.key))
            self.forced.append([])
            for ctrl in self.e.controllers:
                ctrl.on_start(r.key)

    def _choose(self, logits: Tensor) -> Iterator[Finished]:
        n = len(self.keys)
        n_gen = [len(t) - p for t, p in zip(self.tokens, self.prompt_len, strict=True)]
        yield from self._drop_nonfinite(logits, n_gen)
        views = []
        for c, ctrl in enumerate(self.e.controllers):
            view = StepView(list(self.keys), torch.tensor(self.live), logits, self.hooks.acts(c, n), n_gen,
                            self.tokens, self.e.edits, self.edit_on[:n])
            ctrl.on_step(view)
            views.append(view)
            for row, toks in view.forced.items():
                self.forced[row] = list(toks)
        stopped: dict[int, str] = {}
        row_of = {key: row for row, key in enumerate(self.keys)}
        for view in views:
            for ev in view.events:
                self.events[row_of[ev.key]].append(ev)
            stopped.update(view.stopped)
        rows = [row for row in range(n) if self.live[row]]
        gens = [self.generators[r] for r in rows]
        chosen = logits if len(rows) == n else logits[rows]  # no gather when every row is live
        picked = pick_tokens(chosen, self.e.cfg.sampling, gens).tolist() if rows else []
        for row, tok in zip(rows, picked, strict=True):
            if row in stopped:
                yield self._finish(row, stopped[row])
                continue
            if self.forced[row]:
                tok = self.forced[row].pop(0)
            self.tokens[row].append(tok)
            self.e.tokens_generated += 1
            if tok in self.e.stop_ids:
                yield self._finish(row, "eos")
            elif len(self.tokens[row]) - self.prompt_len[row] >= self.e.cfg.sampling.max_new_tokens:
                yield self._finish(row, "length")

    def _drop_nonfinite(self, logits: Tensor, n_gen: list[int]) -> Iterator[Finished]:
        """Ends rows whose logits hold NaN or +inf, or are all -inf: no token can be chosen from them."""
        bad = ~torch.isfinite(logits.amax(-1))  # NaN propagates through the max; so do +inf and all -inf
        for row in torch.nonzero(bad).flatten().tolist():
            self.events[row].append(Event(n_gen[row], self.keys[row], "nonfinite_logits"))
            yield self._finish(row, NONFINITE)

    def _finish(self, row: int, reason: str) -> Finished:
        key = self.keys[row]
        stats = self.hooks.stats(row, self.n_cached[row] - self.prompt_len[row] + 1)
        done = Finished(key, self.prompt_len[row], self.tokens[row], reason, self.events[row], stats)
        for ctrl in self.e.controllers:
            ctrl.on_finish(key)
        self.live[row] = False
        return done

    def _compact(self) -> None:
        """Drops finished rows: live rows from the end move into their places, so live rows stay a prefix."""
        n = len(self.keys)
        n_live = sum(self.live)
        if n_live == n:
            return
        if n_live == 0:
            for name in ("keys", "tokens", "prompt_len", "n_cached", "events", "generators", "forced", "live"):
                setattr(self, name, [])
            self.backend.reset()
            return
        holes = [row for row in range(n_live) if not self.live[row]]
        movers = [row for row in range(n_live, n) if self.live[row]]
        order = list(range(n_live))
        for hole, row in zip(holes, movers, strict=True):
            order[hole] = row
        self.backend.keep(order, [self.n_cached[row] for row in order])
        self.hooks.keep(movers, holes)
        for name in ("keys", "tokens", "prompt_len", "n_cached", "events", "generators", "forced", "live"):
            old = getattr(self, name)
            setattr(self, name, [old[row] for row in order])
        self.edit_on[:n_live] = self.edit_on[order]


def generate(
    model: TransformerBridge,
    prompts: Sequence[str],
    cfg: SamplingConfig,
    keys: Sequence[str] | None = None,
    batch_size: int = 64,
    edits: Sequence[NeuronEdit] = (),
    controllers: Sequence[Controller] = (),
    progress: bool = False,
    backend: str = "auto",
    monitors: Sequence[NeuronMonitor] = (),
) -> list[Finished]:
    """Convenience: tokenizes ``prompts``, runs the engine, returns results in prompt order."""
    keys = list(keys) if keys is not None else [str(i) for i in range(len(prompts))]
    if len(keys) != len(prompts):
        raise ValueError(f"got {len(keys)} keys for {len(prompts)} prompts")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    tok = model.tokenizer
    requests = [Request(k, tok(p).input_ids) for k, p in zip(keys, prompts, strict=True)]
    engine = Engine(model, EngineConfig(sampling=cfg, batch_size=batch_size, backend=backend), edits, controllers,
                    monitors)
    done: dict[str, Finished] = {}
    with tqdm(total=len(requests), desc="generate", disable=not progress) as bar:
        for f in engine.run(requests):
            done[f.key] = f
            bar.update(1)
            bar.set_postfix(tok_s=f"{engine.tokens_generated / max(bar.format_dict['elapsed'], 1e-9):.0f}",
                            refresh=False)
    return [done[k] for k in keys]

