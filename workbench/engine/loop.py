"""The generation engine: batched, KV-cached, refilling finished rows, with per-sequence control.

Each iteration (1) runs one decode step for every live row, (2) prefills waiting prompts into free
rows and merges their keys and values into the cache, (3) shows controllers the live rows' logits
and neuron activations, and (4) picks, appends and checks each row's next token. Rows are
left-padded and positions count real tokens only. Edits and reads act at ``mlp.hook_post``: the fast
forward calls them in place, the bridge forward through TransformerLens hooks attached for each
forward pass alone, so a paused, abandoned or failed run leaves none on the model.

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
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from workbench.engine.backends import make_backend
from workbench.engine.interventions import Controller, Event, NeuronEdit, StepView
from workbench.engine.sampling import SamplingConfig, pick_tokens, row_generator
from workbench.neurons import mlp_post
from workbench.prompting import model_stop_ids

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
        compact_every: cut unused cache columns once this many have piled up on the left.
        backend: ``"auto"`` (the fast forward when the model supports it), ``"fast"`` or ``"bridge"``.
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch_size: int = 64
    stop_token_ids: tuple[int, ...] | None = None
    compact_every: int = 32
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class _Hooks:
    """The per-run hook state: edits applied and neurons read at the current position."""

    def __init__(self, model: TransformerBridge, edits: Sequence[NeuronEdit], controllers: Sequence[Controller]):
        self.edits, self.controllers = edits, controllers
        device = next(model.original_model.parameters()).device
        n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
        self.rows: Tensor = torch.zeros(0, dtype=torch.long)
        self.edit_on: Tensor = torch.zeros(0, len(edits), dtype=torch.bool)
        self.reads: dict[tuple[int, int], Tensor] = {}
        # layer -> [(edit index, idx, values)] and [(controller index, positions, idx)]
        self.edit_plan: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
        self.read_plan: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
        for e, edit in enumerate(edits):
            edit.neurons.check_fits(n_layers, d_mlp)
            values = torch.tensor(edit.values, dtype=torch.float32)
            for layer, (pos, idx) in edit.neurons.by_layer().items():
                self.edit_plan.setdefault(layer, []).append(
                    (e, torch.tensor(idx, device=device), values[list(pos)].to(device))
                )
        for c, ctrl in enumerate(controllers):
            if ctrl.neurons is None:
                continue
            ctrl.neurons.check_fits(n_layers, d_mlp)
            for layer, (pos, idx) in ctrl.neurons.by_layer().items():
                self.read_plan.setdefault(layer, []).append(
                    (c, torch.tensor(pos, device=device), torch.tensor(idx, device=device))
                )

    def fwd_hooks(self) -> list[tuple[str, object]]:
        layers = sorted(set(self.edit_plan) | set(self.read_plan))
        return [(mlp_post(layer), self._hook) for layer in layers]

    def _hook(self, act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint) -> Tensor:
        # The current position of every row is the last one (the bridge backend left-pads).
        self.apply(int(hook.name.split(".")[1]), act[:, -1])
        return act

    def apply(self, layer: int, last: Float[Tensor, "rows d_mlp"]) -> Tensor:
        """Edits ``last`` (the current position's neurons of ``self.rows``) in place, then reads it."""
        for e, idx, values in self.edit_plan.get(layer, ()):
            on = self.edit_on[self.rows.cpu(), e].to(last.device)[:, None]
            cur, values = last[:, idx], values.to(last.dtype)
            if self.edits[e].mode == "add":
                last[:, idx] = cur + values * on
            else:
                last[:, idx] = torch.where(on, values.expand_as(cur), cur)
        for c, _, idx in self.read_plan.get(layer, ()):
            self.reads[(c, layer)] = last[:, idx].detach().clone()
        return last

    def write_reads(self, c: int, out: Float[Tensor, "batch n_neurons"], rows: Tensor) -> None:
        """Copies controller ``c``'s reads of the last forward into ``out[rows]``."""
        rows = rows.to(out.device)
        for layer, plans in self.read_plan.items():
            for cc, pos, _ in plans:
                if cc == c:
                    out[rows[:, None], pos[None, :]] = self.reads[(c, layer)].float()


class Engine:
    """Runs requests through ``model`` with ``edits`` and ``controllers``; see the module docstring."""

    def __init__(
        self,
        model: TransformerBridge,
        cfg: EngineConfig,
        edits: Sequence[NeuronEdit] = (),
        controllers: Sequence[Controller] = (),
    ) -> None:
        names = [e.name for e in edits]
        if len(set(names)) != len(names):
            raise ValueError(f"edit names must be unique, got {names}")
        self.model, self.cfg = model, cfg
        self.edits, self.controllers = tuple(edits), tuple(controllers)
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
        hooks = _Hooks(self.model, self.edits, self.controllers)
        backend = make_backend(self.model, self.cfg.backend, hooks)
        self.backend_name = type(backend).__name__
        yield from _Run(self, hooks, backend, deque(requests)).loop()


class _Run:
    """The mutable state of one ``Engine.run``: slot-indexed rows over one shared KV cache."""

    def __init__(self, engine: Engine, hooks: _Hooks, backend, waiting: deque[Request]) -> None:
        self.e, self.hooks, self.backend, self.waiting = engine, hooks, backend, waiting
        self.device = backend.device
        b = engine.cfg.batch_size
        self.keys: list[str | None] = [None] * b
        self.tokens: list[list[int]] = [[] for _ in range(b)]
        self.prompt_len = [0] * b
        self.events: list[list[Event]] = [[] for _ in range(b)]
        self.generators: list[random.Random | None] = [None] * b
        self.forced: list[list[int]] = [[] for _ in range(b)]
        self.n_cached = torch.zeros(b, dtype=torch.long, device=self.device)
        self.live = torch.zeros(b, dtype=torch.bool)
        self.next_input = torch.full((b,), engine.pad_id, dtype=torch.long, device=self.device)
        hooks.edit_on = torch.tensor([[ed.default_on for ed in engine.edits]] * b, dtype=torch.bool).reshape(
            b, len(engine.edits))

    @torch.no_grad()
    def loop(self) -> Iterator[Finished]:
        while self.waiting or bool(self.live.any()):
            logits = torch.zeros(len(self.keys), self.e.model.cfg.d_vocab, device=self.device)
            acts = [
                torch.zeros(len(self.keys), len(c.neurons), device=self.device) if c.neurons is not None else None
                for c in self.e.controllers
            ]
            if bool(self.live.any()):
                live = self.live.to(self.device)
                logits[live] = self.backend.decode(self.next_input, self.n_cached)[live]
                self.n_cached += 1
                self._collect(torch.arange(len(self.keys)), acts)
            if self.waiting and not bool(self.live.all()):
                self._prefill(logits, acts)
            yield from self._choose(logits, acts)
            self._tidy()

    def _collect(self, rows: Tensor, acts: list[Tensor | None]) -> None:
        for c, a in enumerate(acts):
            if a is not None:
                self.hooks.write_reads(c, a, rows)

    def _prefill(self, logits: Tensor, acts: list[Tensor | None]) -> None:
        free = torch.nonzero(~self.live).flatten()
        reqs = [self.waiting.popleft() for _ in range(min(len(free), len(self.waiting)))]
        for r in reqs:
            if len(r.prompt_ids) == 0:
                raise ValueError(f"request {r.key!r} has an empty prompt")
        slots = free[: len(reqs)]
        # A refilled slot starts from the edits' defaults before its prompt is run, not from
        # whatever a controller left switched for the slot's previous occupant.
        self.hooks.edit_on[slots] = torch.tensor([ed.default_on for ed in self.e.edits], dtype=torch.bool)
        names = [ed.name for ed in self.e.edits]
        switched: list[list[Event]] = []
        for slot, r in zip(slots.tolist(), reqs, strict=True):
            switched.append([])
            for ctrl in self.e.controllers:
                for name, on in ctrl.initial_edits(r.key).items():
                    if name not in names:
                        raise KeyError(f"{type(ctrl).__name__}.initial_edits names no edit {name!r} (edits: {names})")
                    self.hooks.edit_on[slot, names.index(name)] = on
                    switched[-1].append(Event(0, r.key, "edit_on" if on else "edit_off",
                                              {"edit": name, "before_prefill": True}))
        logits[slots] = self.backend.prefill(slots, [r.prompt_ids for r in reqs], len(self.keys), self.e.pad_id)
        self._collect(slots, acts)
        for slot, r, events in zip(slots.tolist(), reqs, switched, strict=True):
            self.keys[slot], self.tokens[slot] = r.key, list(r.prompt_ids)
            self.prompt_len[slot], self.events[slot], self.forced[slot] = len(r.prompt_ids), events, []
            self.generators[slot] = row_generator(self.e.cfg.sampling.seed, r.key)
            self.n_cached[slot] = len(r.prompt_ids)
            self.live[slot] = True
            for ctrl in self.e.controllers:
                ctrl.on_start(r.key)

    def _choose(self, logits: Tensor, acts: list[Tensor | None]) -> Iterator[Finished]:
        n_gen = [len(t) - p for t, p in zip(self.tokens, self.prompt_len, strict=True)]
        yield from self._drop_nonfinite(logits, n_gen)
        rows = torch.nonzero(self.live).flatten().tolist()
        views = []
        for ctrl, a in zip(self.e.controllers, acts, strict=True):
            view = StepView(self.keys, self.live.clone(), logits, a, n_gen, self.tokens, self.e.edits,
                            self.hooks.edit_on)
            ctrl.on_step(view)
            views.append(view)
            for row, toks in view.forced.items():
                self.forced[row] = list(toks)
        stopped: dict[int, str] = {}
        for view in views:
            for ev in view.events:
                self.events[self.keys.index(ev.key)].append(ev)
            stopped.update(view.stopped)
        gens = [self.generators[r] for r in rows]
        picked = pick_tokens(logits[rows], self.e.cfg.sampling, gens).tolist() if rows else []
        for row, tok in zip(rows, picked, strict=True):
            if row in stopped:
                yield self._finish(row, stopped[row])
                continue
            if self.forced[row]:
                tok = self.forced[row].pop(0)
            self.tokens[row].append(tok)
            self.next_input[row] = tok
            self.e.tokens_generated += 1
            if tok in self.e.stop_ids:
                yield self._finish(row, "eos")
            elif len(self.tokens[row]) - self.prompt_len[row] >= self.e.cfg.sampling.max_new_tokens:
                yield self._finish(row, "length")

    def _drop_nonfinite(self, logits: Tensor, n_gen: list[int]) -> Iterator[Finished]:
        """Ends rows whose logits hold NaN or +inf, or are all -inf: no token can be chosen from them."""
        bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1) | torch.isneginf(logits).all(-1)
        for row in torch.nonzero(bad.cpu() & self.live).flatten().tolist():
            key = self.keys[row]
            assert key is not None
            self.events[row].append(Event(n_gen[row], key, "nonfinite_logits"))
            yield self._finish(row, NONFINITE)

    def _finish(self, row: int, reason: str) -> Finished:
        key = self.keys[row]
        assert key is not None
        done = Finished(key, self.prompt_len[row], self.tokens[row], reason, self.events[row])
        for ctrl in self.e.controllers:
            ctrl.on_finish(key)
        self.keys[row], self.tokens[row], self.generators[row] = None, [], None
        self.live[row] = False
        self.next_input[row] = self.e.pad_id
        return done

    def _tidy(self) -> None:
        """Cuts cache columns no live row uses; halves the batch when it drains."""
        if not bool(self.live.any()):
            self.backend.reset()  # the next prefill starts afresh
            self.n_cached.zero_()
            return
        live = self.live.to(self.device)
        self.backend.compact(self.n_cached, live, self.e.cfg.compact_every)
        if not self.waiting and int(self.live.sum()) <= len(self.keys) // 2:
            keep = torch.nonzero(self.live).flatten()
            self.backend.select(keep.to(self.device))
            idx = keep.tolist()
            for name in ("keys", "tokens", "prompt_len", "events", "generators", "forced"):
                setattr(self, name, [getattr(self, name)[i] for i in idx])
            self.n_cached = self.n_cached[keep.to(self.device)]
            self.live = self.live[keep]
            self.next_input = self.next_input[keep.to(self.device)]
            self.hooks.edit_on = self.hooks.edit_on[keep]


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
) -> list[Finished]:
    """Convenience: tokenizes ``prompts``, runs the engine, returns results in prompt order."""
    keys = list(keys) if keys is not None else [str(i) for i in range(len(prompts))]
    if len(keys) != len(prompts):
        raise ValueError(f"got {len(keys)} keys for {len(prompts)} prompts")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    tok = model.tokenizer
    requests = [Request(k, tok(p).input_ids) for k, p in zip(keys, prompts, strict=True)]
    engine = Engine(model, EngineConfig(sampling=cfg, batch_size=batch_size, backend=backend), edits, controllers)
    done: dict[str, Finished] = {}
    with tqdm(total=len(requests), desc="generate", disable=not progress) as bar:
        for f in engine.run(requests):
            done[f.key] = f
            bar.update(1)
            bar.set_postfix(tok_s=f"{engine.tokens_generated / max(bar.format_dict['elapsed'], 1e-9):.0f}",
                            refresh=False)
    return [done[k] for k in keys]

