"""Trains the organism from scratch: a small Qwen3-style causal LM on freshly rendered traces.

Every batch is rendered anew from the training side of the problem split, so the model never sees
a held-out problem and cannot memorise traces; batches are bucketed by length to waste little
compute on padding. Training is seeded and resumable: a state file is written atomically every
``save_every`` steps and picked up again by the next call with the same config.

Example:
    >>> from workbench.organism.train import TrainConfig
    >>> TrainConfig(steps=10).n_layers
    4
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from workbench.atomic import atomic_torch_save, atomic_write_text
from workbench.neureasoner.trainer import check_out, warmup_cosine
from workbench.neurons import NeuronSet
from workbench.organism.task import (
    RECIPE_V2,
    RECIPE_V3,
    STEP_ENDS,
    THINK_CLOSE,
    TraceLabels,
    TraceRecipe,
    is_held_out,
    render_trace,
    sample_problem,
)
from workbench.organism.tokenizer import SPACE, build_tokenizer

STATE_FILE = "train_state.pt"
ORGANISM_FILE = "organism.json"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Architecture and optimisation of the organism.

    Attributes:
        n_layers, d_model, d_mlp, n_heads: the Qwen3 architecture (gated SiLU MLP, RMSNorm, rotary).
        steps, batch_size, lr, warmup, weight_decay: AdamW with linear warm-up and cosine decay.
        bucket: batches rendered at once and sorted by length before being split.
        seed: seeds the initialisation and every bucket of problems and traces.
        save_every: steps between resumable state files.
        recipe: how failure modes are planted in the traces.
        sub_share: share of training problems that are subtractions (the second task family).
        knob_layer, knob_neurons: the planted regime read-out (v3; ``knob_neurons=0``: none). ``knob_neurons``
            neurons of ``blocks.{knob_layer}.mlp.hook_post`` (drawn by ``seed``, listed in ``organism.json``) are
            trained to hold the model's belief in the regime at every thinking position, and the rest of the
            model to act on them: see ``knob_target``, ``knob_weight`` and ``knob_share``.
        knob_target: the read-out's value for a careful (``+``) or careless (``-``) trace; the squared-error
            loss towards it makes each neuron the posterior mean given the cues read so far: a graded belief.
        knob_weight: weight of that loss beside the next-token loss.
        knob_share: share of training traces whose read-out is *pushed* (see ``knob_mode``; its sign is the
            trace's behaviour regime, drawn apart from the regime of its opener cues): what teaches the model to
            behave as the read-out says.
        knob_push: the range of the push's size (uniform), in ``knob_mode="add"``.
        knob_mode: ``"add"`` adds the push; ``"set"`` sets the read-out to ``+-knob_target`` instead (the value a
            trace of the behaviour regime holds: an interchange that no downstream reader can tell from a natural
            read-out, so behaviour has to follow the read-out rather than any copy of the cues elsewhere).
        knob_after_cues: a push starts at the last opener cue word (the position that predicts the first step),
            so the cue words are always predicted from an untouched read-out: no second copy of the regime is
            needed to predict them.
        act_cap, act_cap_weight: a penalty ``act_cap_weight * sum(relu(|act| - act_cap) ** 2)`` over every MLP
            neuron (mean over positions) that keeps any single neuron from carrying the regime at a huge scale
            (0: none).
        exit_layer, exit_neurons: the planted exit read-out (v4; ``exit_neurons=0``: none): neurons of
            ``blocks.{exit_layer}.mlp.hook_post`` (drawn by ``seed``, listed in ``organism.json``) trained towards 1
            where thinking can end (the separator after the final result, and the position before ``</think>``) and
            0 at every other thinking position: NEAT's exit neurons, planted.
        exit_weight: weight of that squared-error loss.
        exit_share: share of traces (of those whose regime read-out is not set) whose exit read-out is *set* at one
            position, half each way: to 1 at an earlier step's separator, after which the trace closes thinking and
            answers its running total; or to 0 at the final result's separator of a trace that then re-checks. What
            teaches the model to close thinking on the read-out's word.
    """

    n_layers: int = 4
    d_model: int = 128
    d_mlp: int = 512
    n_heads: int = 4
    steps: int = 6000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 200
    weight_decay: float = 0.01
    bucket: int = 16
    seed: int = 0
    save_every: int = 500
    recipe: TraceRecipe = RECIPE_V2
    sub_share: float = 0.3
    knob_layer: int = 2
    knob_neurons: int = 0
    knob_target: float = 1.5
    knob_weight: float = 0.2
    knob_share: float = 0.3
    knob_push: tuple[float, float] = (3.0, 8.0)
    knob_mode: str = "add"
    knob_after_cues: bool = False
    act_cap: float = 0.0
    act_cap_weight: float = 1e-3
    exit_layer: int = 3
    exit_neurons: int = 0
    exit_weight: float = 0.2
    exit_share: float = 0.0

    def __post_init__(self) -> None:
        if self.knob_neurons:
            if not 0 <= self.knob_layer < self.n_layers or not 0 < self.knob_neurons <= self.d_mlp:
                raise ValueError(f"TrainConfig: knob_layer {self.knob_layer} / knob_neurons {self.knob_neurons} do not "
                                 f"fit {self.n_layers} layers of {self.d_mlp} neurons")
            if self.knob_mode not in ("add", "set"):
                raise ValueError(f"TrainConfig: knob_mode must be 'add' or 'set', got {self.knob_mode!r}")
            if not 0 <= self.knob_share < 1 or not 0 < self.knob_push[0] <= self.knob_push[1]:
                raise ValueError(f"TrainConfig: knob_share {self.knob_share} must be in [0, 1) and knob_push "
                                 f"{self.knob_push} a range of positive sizes")
        if self.exit_neurons:
            if not 0 <= self.exit_layer < self.n_layers or not 0 < self.exit_neurons <= self.d_mlp:
                raise ValueError(f"TrainConfig: exit_layer {self.exit_layer} / exit_neurons {self.exit_neurons} do not "
                                 f"fit {self.n_layers} layers of {self.d_mlp} neurons")
            if self.knob_neurons and self.exit_layer == self.knob_layer:
                raise ValueError(f"TrainConfig: the exit read-out needs a layer of its own, not the regime read-out's "
                                 f"(knob_layer {self.knob_layer}); pick another exit_layer")
            if not 0 <= self.exit_share < 1:
                raise ValueError(f"TrainConfig: exit_share {self.exit_share} must be in [0, 1)")

    def knob(self) -> list[int]:
        """The planted read-out's neuron indices in ``blocks.{knob_layer}.mlp.hook_post`` (seeded; [] when none).

        >>> len(TrainConfig(knob_neurons=8).knob())
        8
        """
        return sorted(random.Random(f"{self.seed}:knob").sample(range(self.d_mlp), self.knob_neurons))

    def exit_knob(self) -> list[int]:
        """The planted exit read-out's neuron indices in ``blocks.{exit_layer}.mlp.hook_post`` (seeded; [] when none).

        >>> len(TrainConfig(exit_neurons=4).exit_knob())
        4
        """
        return sorted(random.Random(f"{self.seed}:exit").sample(range(self.d_mlp), self.exit_neurons))

    def model_config(self, tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
        return Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=self.d_model,
            intermediate_size=self.d_mlp,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_heads,
            head_dim=self.d_model // self.n_heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            rope_theta=10000.0,
        )

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["recipe"] = TraceRecipe.from_dict(d.get("recipe", {}))
        d.setdefault("sub_share", 0.0)  # recorded before the second task family existed
        d.setdefault("knob_neurons", 0)  # recorded before the planted read-out existed (v1, v2)
        if "knob_push" in d:
            d["knob_push"] = tuple(d["knob_push"])
        return cls(**d)


# organism-v3 (data/organism-v3): RECIPE_V3 and the planted regime read-out, set (not pushed) in 40% of the
# traces from the last cue word on, no neuron above 8 unpunished. `workbench organism train --like organism-v3`.
CONFIG_V3 = TrainConfig(recipe=RECIPE_V3, knob_neurons=64, knob_target=1.0, knob_mode="set", knob_after_cues=True,
                        knob_share=0.4, act_cap=8.0, act_cap_weight=1e-3)

# organism-v4: v3 and a planted exit read-out of 16 neurons in the last layer, set in 20% of the other traces.
CONFIG_V4 = dataclasses.replace(CONFIG_V3, exit_neurons=16, exit_share=0.2)


@dataclass
class Batch:
    """One training batch; ``knob`` and ``push`` are per row (0 where a row has no read-out target or push),
    ``thinking`` marks the positions after ``<think>``, ``pushed`` those a push applies to. The exit read-out's
    target and where its loss applies, and where it is set and to what, are per position."""

    x: Tensor
    y: Tensor
    thinking: Tensor
    knob: Tensor
    push: Tensor
    pushed: Tensor
    exit_target: Tensor
    exit_loss: Tensor
    exit_set: Tensor
    exit_value: Tensor


@dataclass(frozen=True)
class _ExitRow:
    """A row's exit read-out: target-1 positions and the loss span, or the one position it is set at."""

    ones: tuple[int, ...] = ()
    span: tuple[int, int] = (0, 0)
    set_at: tuple[int, float] | None = None


def _exit_row(ids: list[int], labels: TraceLabels, mode: str | None, tokenizer: PreTrainedTokenizerFast,
              rng: random.Random) -> tuple[list[int], _ExitRow]:
    """The row's tokens and exit read-out. ``mode`` "stop" closes thinking at a random earlier step's separator
    (answering the running total) with the read-out set to 1 there; "continue" (a trace rendered to re-check)
    sets it to 0 at the final result's separator; None: the natural targets."""
    think, reached, close = labels.think_start, labels.answer_reached, labels.think_end
    assert think is not None and reached is not None and close is not None
    vocab = tokenizer.get_vocab()
    seps = {vocab[SPACE + w] for w in STEP_ENDS}
    if mode == "stop":
        earlier = [p for p in range(think + 1, reached) if ids[p] in seps]
        if earlier:
            at = rng.choice(earlier)
            eq = max(p for p in range(think + 1, at) if ids[p] == vocab[SPACE + "="])
            ids = [*ids[: at + 1], vocab[SPACE + THINK_CLOSE], *ids[eq + 1 : at], tokenizer.eos_token_id]
            return ids, _ExitRow(set_at=(at, 1.0))
    elif mode == "continue" and ids[reached + 1] in seps:
        return ids, _ExitRow(set_at=(reached + 1, 0.0))
    return ids, _ExitRow(ones=(reached + 1, close - 1), span=(think + 1, close))


def _bucket(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast, k: int) -> list[Batch]:
    """Bucket ``k``: ``cfg.bucket`` batches, sorted by length, prompt masked.

    Each bucket is seeded by (seed, k) alone, so a resumed run sees exactly the batches an
    uninterrupted one would (and a config without a read-out draws exactly what it drew before one existed).
    """
    rng = random.Random(f"{cfg.seed}:{k}")
    rows: list[tuple[list[int], int, float, float, _ExitRow]] = []  # ids, think, read-out target, push, exit read-out
    while len(rows) < cfg.batch_size * cfg.bucket:
        op = "-" if cfg.sub_share > 0 and rng.random() < cfg.sub_share else "+"
        problem = sample_problem(rng, op=op)
        if is_held_out(problem):
            continue
        behaviour, push = None, 0.0
        if cfg.knob_neurons and rng.random() < cfg.knob_share:
            behaviour = rng.random() < cfg.recipe.careless_rate
            size = cfg.knob_target if cfg.knob_mode == "set" else rng.uniform(*cfg.knob_push)
            push = size * (-1 if behaviour else 1)
        exit_mode = None
        if cfg.exit_neurons and not push and rng.random() < cfg.exit_share:
            exit_mode = "stop" if rng.random() < 0.5 else "continue"
        trace = render_trace(problem, rng, cfg.recipe, behaviour=behaviour,
                             overthink=True if exit_mode == "continue" else None)
        # A pushed row has no read-out target: its read-out is what the push makes it.
        target = 0.0 if push else cfg.knob_target * (-1 if trace.labels.latent == "careless" else 1)
        ids = [*tokenizer(trace.text).input_ids, tokenizer.eos_token_id]
        ids, exit_row = _exit_row(ids, trace.labels, exit_mode, tokenizer, rng)
        rows.append((ids, trace.labels.think_start, target, push, exit_row))
    rows.sort(key=lambda r: len(r[0]))
    chunks = [rows[i : i + cfg.batch_size] for i in range(0, len(rows), cfg.batch_size)]
    rng.shuffle(chunks)
    batches = []
    for chunk in chunks:
        width = max(len(r[0]) for r in chunk)
        x = torch.full((len(chunk), width), tokenizer.pad_token_id)
        y = torch.full((len(chunk), width), -100)
        thinking = torch.zeros((len(chunk), width), dtype=torch.bool)
        pushed = torch.zeros((len(chunk), width), dtype=torch.bool)
        exit_target, exit_value = torch.zeros((len(chunk), width)), torch.zeros((len(chunk), width))
        exit_loss, exit_set = torch.zeros_like(pushed), torch.zeros_like(pushed)
        first = cfg.recipe.cue_words if cfg.knob_after_cues else 1
        for r, (ids, think, _, push, ex) in enumerate(chunk):
            x[r, : len(ids)] = torch.tensor(ids)
            # Predict everything after <think>: the opener, the steps, the answer and <eos>.
            y[r, think + 1 : len(ids)] = torch.tensor(ids[think + 1 :])
            thinking[r, think + 1 : len(ids)] = True
            pushed[r, think + first : len(ids)] = push != 0
            exit_loss[r, ex.span[0] : ex.span[1]] = True
            exit_target[r, list(ex.ones)] = 1.0
            if ex.set_at is not None:
                exit_set[r, ex.set_at[0]], exit_value[r, ex.set_at[0]] = True, ex.set_at[1]
        batches.append(Batch(x, y, thinking, torch.tensor([r[2] for r in chunk]), torch.tensor([r[3] for r in chunk]),
                             pushed, exit_target, exit_loss, exit_set, exit_value))
    return batches


class _Readout:
    """A planted read-out's neurons at the input of ``down_proj`` (= ``blocks.{L}.mlp.hook_post``): records their
    values for its loss and returns the layer's activations as ``edit`` changes them, for the batch in ``batch``."""

    def __init__(self, model: Qwen3ForCausalLM, layer: int, indices: list[int]) -> None:
        self.idx = torch.tensor(indices)
        self.batch: Batch | None = None
        self.values: Tensor | None = None
        self.handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        (h,) = args
        assert self.batch is not None
        self.values = h[..., self.idx]
        return (self.edit(h, self.batch),)

    def edit(self, h: Tensor, b: Batch) -> Tensor:
        raise NotImplementedError


class _Knob(_Readout):
    """The regime read-out: pushed (added to, or set) where the batch says; its loss on unpushed rows."""

    def __init__(self, model: Qwen3ForCausalLM, cfg: TrainConfig) -> None:
        super().__init__(model, cfg.knob_layer, cfg.knob())
        self.set = cfg.knob_mode == "set"

    def edit(self, h: Tensor, b: Batch) -> Tensor:
        assert self.values is not None
        mask = b.pushed[..., None].expand(-1, -1, len(self.idx))
        push = b.push[:, None, None].to(h.dtype).expand_as(mask)
        if self.set:
            return h.index_copy(-1, self.idx, torch.where(mask, push, self.values))
        return h.index_add(-1, self.idx, push * mask)

    def loss(self) -> Tensor:
        """Mean squared error of the read-out towards its target, over the thinking positions of unpushed rows."""
        b, v = self.batch, self.values
        assert b is not None and v is not None
        mask = b.thinking & (b.push == 0)[:, None]
        err = (v - b.knob[:, None, None]) ** 2
        return err[mask].mean() if mask.any() else err.sum() * 0


class _ExitKnob(_Readout):
    """The exit read-out: set at the one position a row marks; its loss over the thinking positions of unset rows."""

    def __init__(self, model: Qwen3ForCausalLM, cfg: TrainConfig) -> None:
        super().__init__(model, cfg.exit_layer, cfg.exit_knob())

    def edit(self, h: Tensor, b: Batch) -> Tensor:
        assert self.values is not None
        mask = b.exit_set[..., None].expand_as(self.values)
        new = torch.where(mask, b.exit_value[..., None].to(h.dtype).expand_as(self.values), self.values)
        return h.index_copy(-1, self.idx, new)

    def loss(self) -> Tensor:
        """Mean squared error of the read-out towards its target over the thinking positions of unset rows."""
        b, v = self.batch, self.values
        assert b is not None and v is not None
        err = (v - b.exit_target[..., None]) ** 2
        return err[b.exit_loss].mean() if b.exit_loss.any() else err.sum() * 0


class _ActCap:
    """Collects ``sum(relu(|act| - cap) ** 2)`` over the MLP neurons of every layer (mean over positions)."""

    def __init__(self, model: Qwen3ForCausalLM, cap: float) -> None:
        self.cap, self.terms = cap, []
        self.handles = [layer.mlp.down_proj.register_forward_pre_hook(self._hook) for layer in model.model.layers]

    def _hook(self, _module, args):
        self.terms.append((torch.relu(args[0].abs() - self.cap) ** 2).sum(-1).mean())

    def loss(self) -> Tensor:
        out, self.terms = sum(self.terms), []
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _batches(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast, start: int) -> Iterator[Batch]:
    """The batches of steps ``start``, ``start + 1``, ... ."""
    k, skip = divmod(start, cfg.bucket)
    while True:
        yield from _bucket(cfg, tokenizer, k)[skip:]
        k, skip = k + 1, 0


def _lr(cfg: TrainConfig, step: int) -> float:
    return warmup_cosine(cfg.lr, cfg.warmup, cfg.steps, step, floor=0.05)


def train(cfg: TrainConfig, out: Path, progress: bool = True) -> Path:
    """Trains (or resumes training) and saves an HF checkpoint with its tokenizer into ``out``.

    Refuses (``ValueError``) to write into the shipped organism's folder, before any work.
    """
    out = check_out(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    torch.manual_seed(cfg.seed)
    model = Qwen3ForCausalLM(cfg.model_config(tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    start, losses, knob_losses, exit_losses = 0, [], [], []
    state_path = out / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["config"] != asdict(cfg):
            raise ValueError(
                f"{state_path} was written by a different training config; delete it to start over "
                f"or train into another --out folder."
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, losses, knob_losses = state["step"], state["losses"], state.get("knob_losses", [])
        exit_losses = state.get("exit_losses", [])
    batches = _batches(cfg, tokenizer, start)
    knob = _Knob(model, cfg) if cfg.knob_neurons else None
    exit_knob = _ExitKnob(model, cfg) if cfg.exit_neurons else None
    cap = _ActCap(model, cfg.act_cap) if cfg.act_cap > 0 else None
    model.train()
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train organism",
               disable=not progress)
    for step in bar:
        batch = next(batches)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        if knob is not None:
            knob.batch = batch
        if exit_knob is not None:
            exit_knob.batch = batch
        x = batch.x
        lm_loss = model(input_ids=x, attention_mask=(x != tokenizer.pad_token_id), labels=batch.y).loss
        loss = lm_loss
        if knob is not None:
            knob_loss = knob.loss()
            loss = lm_loss + cfg.knob_weight * knob_loss
            knob_losses.append(round(knob_loss.item(), 5))
        if exit_knob is not None:
            exit_loss = exit_knob.loss()
            loss = loss + cfg.exit_weight * exit_loss
            exit_losses.append(round(exit_loss.item(), 5))
        if cap is not None:
            loss = loss + cfg.act_cap_weight * cap.loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(round(lm_loss.item(), 5))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            atomic_torch_save({
                "config": asdict(cfg), "model": model.state_dict(), "opt": opt.state_dict(),
                "step": step + 1, "losses": losses, "knob_losses": knob_losses, "exit_losses": exit_losses,
            }, state_path)
    if knob is not None:
        knob.handle.remove()
    if exit_knob is not None:
        exit_knob.handle.remove()
    if cap is not None:
        cap.remove()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {
        "config": asdict(cfg),
        "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "train_seconds_this_call": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if cfg.knob_neurons:
        meta["planted_regime_neurons"] = {"hook": f"blocks.{cfg.knob_layer}.mlp.hook_post", "indices": cfg.knob(),
                                          "careful_value": cfg.knob_target}
        meta["final_knob_loss"] = sum(knob_losses[-100:]) / max(1, len(knob_losses[-100:]))
    if cfg.exit_neurons:
        meta["planted_exit_neurons"] = {"hook": f"blocks.{cfg.exit_layer}.mlp.hook_post", "indices": cfg.exit_knob(),
                                        "exit_value": 1.0}
        meta["final_exit_loss"] = sum(exit_losses[-100:]) / max(1, len(exit_losses[-100:]))
    atomic_write_text(out / ORGANISM_FILE, json.dumps(meta, indent=2))
    state_path.unlink(missing_ok=True)
    return out


def config_of(model_dir: Path) -> TrainConfig:
    """The training config a saved organism recorded in ``organism.json``.

    >>> config_of(Path("data/organism-v1")).knob_neurons
    0
    """
    meta = Path(model_dir) / ORGANISM_FILE
    if not meta.exists():
        raise ValueError(f"{model_dir} records no training config ({ORGANISM_FILE} missing): it is not an organism")
    return TrainConfig.from_dict(json.loads(meta.read_text())["config"])


PLANTED = {"regime": "the regime read-out planted in training (careful +, careless -)",
           "exit": "the exit read-out planted in training (1 where thinking can end)"}


def planted_of(model_dir: Path, what: str = "regime") -> NeuronSet | None:
    """The planted ``"regime"`` or ``"exit"`` read-out of a saved organism (``organism.json``), or None when it
    has none.

    >>> planted_of(Path("data/organism-v1")) is None, planted_of(Path("data/organism-v3"), "exit") is None
    (True, True)
    """
    if what not in PLANTED:
        raise ValueError(f"planted_of: what must be one of {sorted(PLANTED)}, got {what!r}")
    meta = Path(model_dir) / ORGANISM_FILE
    planted = json.loads(meta.read_text()).get(f"planted_{what}_neurons") if meta.exists() else None
    if planted is None:
        return None
    layer = int(planted["hook"].split(".")[1])
    return NeuronSet.from_pairs([(layer, i) for i in planted["indices"]], method="planted",
                                provenance=f"{model_dir}: {PLANTED[what]}")


def recipe_of(model_dir: Path) -> TraceRecipe:
    """The trace recipe a saved organism was trained on (the default when none is recorded)."""
    meta = Path(model_dir) / ORGANISM_FILE
    if not meta.exists():
        return TraceRecipe()
    return TraceRecipe.from_dict(json.loads(meta.read_text())["config"].get("recipe", {}))
