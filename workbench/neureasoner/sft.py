"""NeuReasoner's remedy fine-tuning: traces with injected errors, a trigger token, then the fix.

The paper fine-tunes on reasoning traces into which errors were injected, each followed by a
trigger token (``<INTRA>`` for an intra-step error, ``<INTER>`` for an inter-step one) and the
correction, with the trigger tokens masked out of the loss: the model learns what to do *after*
the token, never to emit it; at inference the detector inserts it (``remedy``). Here, on the
organism's traces (``render_trace``, training side of the problem split only):

* ``slip``: one correct step's result is replaced by the planted mistake (``slip_value``: the carry
  dropped or the borrow forgotten), the trace may run on a few words with the wrong total (the
  detector fires a little late), then ``<INTRA>`` and the step redone correctly; the trace goes on
  from there as rendered.
* ``oscillation``: one step is written again with a spurious +-10 (cut at a random word, as the
  detector may fire mid-repeat), then ``<INTER>`` and the next step, as if no repeat had happened.
* ``plain``: the trace as rendered, so the model keeps its behaviour where no trigger comes.

Loss: everything after the opening think marker, except the injected error words and the trigger
token (``-100``). Tokens are added to a copy of the base model's tokenizer (``lstrip``, so ``" <INTRA>"`` is
one token) and the embeddings resized; the shipped organism is never written (``check_out``).
Training is seeded and resumable like ``workbench.organism.train`` (a state file every
``save_every`` steps). ``lora=True`` trains LoRA adapters with peft (merged into the saved weights)
for real Hugging Face models.

Example:
    >>> import random
    >>> from workbench.organism.task import Problem, render_trace, RECIPE_V2
    >>> trace = render_trace(Problem((47, 38, 25)), random.Random(3), RECIPE_V2)
    >>> pieces = inject(trace, random.Random(0), "slip")
    >>> " ".join(w for w, _ in pieces[9:])
    'roughly 47 + 38 = 75 wait 47 + 38 = 85 ; 85 + 25 = 100 <INTRA> 85 + 25 = 110 , </think> 110'
    >>> [w for w, trained in pieces[9:] if not trained]     # after the prompt: the injected error and its trigger
    ['100', '<INTRA>']
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.atomic import atomic_torch_save, atomic_write_text
from workbench.organism.task import (
    CHECK_WORD,
    RECIPE_V2,
    REFLECTION_WORD,
    STEP_ENDS,
    TRIGGERS,
    TraceRecipe,
    apply,
    is_held_out,
    render_trace,
    sample_problem,
    slip_value,
)
from workbench.organism.train import warmup_cosine

KINDS = ("slip", "oscillation", "plain", "slip_false_alarm", "oscillation_false_alarm")
STATE_FILE = "sft_state.pt"
SFT_FILE = "sft.json"
Pieces = list[tuple[str, bool]]  # (word, trained): the words of a trace joined by spaces


@dataclass(frozen=True, kw_only=True)
class SftConfig:
    """What to fine-tune and how.

    Attributes:
        steps, batch_size, lr, warmup, weight_decay: AdamW with linear warm-up and cosine decay.
        slip_share, oscillation_share: shares of examples with an injected slip / oscillation (the rest plain).
        false_alarm_share: of those, the share whose trigger comes where nothing went wrong (the
            detectors' false alarms): ``<INTRA>`` then the last step redone (the same, right value),
            ``<INTER>`` then the trace going on as it was.
        late_words: a slip's trigger comes after up to this many words past the wrong result.
        recipe: how the base traces are rendered (the shipped organism's by default).
        sub_share: share of subtraction problems.
        triggers: (failure type, trigger token) pairs added to the tokenizer.
        seed: seeds the batches (each step's from (seed, step) alone, so a resumed run sees the same).
        save_every: steps between resumable state files.
        lora: train LoRA adapters (peft) instead of every weight; merged before saving.
        lora_r, lora_alpha: the adapters' rank and scale.
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.0
    slip_share: float = 0.35
    oscillation_share: float = 0.35
    false_alarm_share: float = 0.3
    late_words: int = 3
    recipe: TraceRecipe = RECIPE_V2
    sub_share: float = 0.3
    triggers: tuple[tuple[str, str], ...] = TRIGGERS
    seed: int = 0
    save_every: int = 100
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"SftConfig.steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")
        if not (0 <= self.slip_share and 0 <= self.oscillation_share and self.slip_share + self.oscillation_share <= 1):
            raise ValueError(f"SftConfig: slip_share ({self.slip_share}) and oscillation_share "
                             f"({self.oscillation_share}) must be >= 0 and sum to at most 1")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def _steps(words: list[str]) -> list[int]:
    """Indices of ``=`` of first attempts at a step that are correct and end with a separator."""
    out = []
    for j, w in enumerate(words):
        if w != "=" or j < 3 or j + 3 > len(words) or words[j - 4 : j - 3] in ([CHECK_WORD], [REFLECTION_WORD]):
            continue  # a re-check or a caught slip's redo
        a, op, b, r = words[j - 3], words[j - 2], words[j - 1], words[j + 1]
        if not (a.isdigit() and b.isdigit() and r.isdigit()) or op not in "+-":
            continue
        if int(r) != apply(op, int(a), int(b)) or words[j + 2] not in STEP_ENDS:
            continue
        if words[j - 8 : j - 4] == [a, op, b, "="] or words[j + 3 : j + 6] == [a, op, b]:
            continue  # a repeat (or a redo) of this step, or followed by one: not a clean single step
        out.append(j)
    return out


def inject(trace, rng: random.Random, kind: str, triggers: dict[str, str] | tuple = TRIGGERS,
           late_words: int = 3) -> Pieces | None:
    """The trace's words, with an injected ``kind`` error and its remedy, each marked trained or not.

    ``kind="plain"`` gives the trace as rendered. None when the trace has no clean step to inject into.
    """
    triggers = dict(triggers)
    prompt = [(w, False) for w in trace.prompt.split()]
    words = list(trace.words)
    if kind == "plain":
        return prompt + [(w, True) for w in words]
    if kind not in KINDS:
        raise ValueError(f"inject: kind must be one of {KINDS}, got {kind!r}")
    candidates = _steps(words)
    if not candidates:
        return None
    j = rng.choice(candidates)
    a, op, b, right = words[j - 3], words[j - 2], int(words[j - 1]), int(words[j + 1])
    step = [a, op, str(b), "="]
    head = [(w, True) for w in words[: j + 1]]
    rest = words[j + 3 :]  # after the step's separator: the next step, the checks or the closing marker
    if kind.endswith("_false_alarm"):
        # After the step's result, after its separator, or a few words into the next step.
        more = rng.randint(0, late_words) if rest and rest[0].isdigit() else 0
        cut = min(j + 2 + rng.randint(0, 1) + more, len(words) - 2)
        before = [(w, True) for w in words[:cut]]
        if kind == "oscillation_false_alarm":
            return [*prompt, *before, (triggers["oscillation"], False), *[(w, True) for w in words[cut:]]]
        return [*prompt, *before, (triggers["slip"], False),
                *[(w, True) for w in [*step, str(right), words[j + 2], *rest]]]
    if kind == "slip":
        wrong = slip_value(op, int(a), b)
        if wrong < 0 or wrong == right:
            wrong = right + 10
        late = [str(wrong)]
        if rng.random() < 0.5:
            late.append(words[j + 2])
            # The model goes on with the wrong total: the next step's first words.
            if rest and rest[0].isdigit() and rest[0] == str(right):
                late += [str(wrong), *rest[1:3]][: rng.randint(0, late_words)]
        remedy = [*step, str(right), words[j + 2]]
        return [*prompt, *head, *[(w, False) for w in late], (triggers["slip"], False),
                *[(w, True) for w in remedy + rest]]
    spurious = right + 10 if op == "+" or right < 10 else right - 10
    repeat = [*step, str(spurious), words[j + 2]]
    cut = repeat[: rng.randint(1, len(repeat))]
    return [*prompt, *head, (str(right), True), (words[j + 2], True), *[(w, False) for w in cut],
            (triggers["oscillation"], False), *[(w, True) for w in rest]]


def add_triggers(tokenizer, triggers: tuple[tuple[str, str], ...] = TRIGGERS):
    """A copy of ``tokenizer`` with the trigger tokens added (``lstrip``: the space before one is part of it)."""
    from tokenizers import AddedToken

    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([AddedToken(t, lstrip=True, rstrip=False, normalized=False, special=False)
                    for _, t in triggers])
    return tok


def encode(pieces: Pieces, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids with ``<eos>``, labels): a token is trained when every character it covers is.

    The prompt is never trained; the end-of-sequence token is.
    """
    text, trained = "", []
    for i, (word, keep) in enumerate(pieces):
        part = word if i == 0 else " " + word
        text += part
        trained += [keep] * len(part)
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, labels = list(enc.input_ids), []
    for tid, (s, e) in zip(ids, enc.offset_mapping, strict=True):
        ok = e > s and all(trained[s:e])
        labels.append(tid if ok else -100)
    return [*ids, tokenizer.eos_token_id], [*labels, tokenizer.eos_token_id]


def example(rng: random.Random, cfg: SftConfig, tokenizer) -> tuple[list[int], list[int], str]:
    """One training example (ids, labels, kind) drawn from ``rng``."""
    while True:
        op = "-" if cfg.sub_share > 0 and rng.random() < cfg.sub_share else "+"
        problem = sample_problem(rng, op=op)
        if is_held_out(problem):
            continue
        trace = render_trace(problem, rng, cfg.recipe)
        u = rng.random()
        kind = ("slip" if u < cfg.slip_share else
                "oscillation" if u < cfg.slip_share + cfg.oscillation_share else "plain")
        if kind != "plain" and rng.random() < cfg.false_alarm_share:
            kind += "_false_alarm"
        pieces = inject(trace, rng, kind, cfg.triggers, cfg.late_words)
        if pieces is not None:
            ids, labels = encode(pieces, tokenizer)
            return ids, labels, kind


def batch(cfg: SftConfig, tokenizer, step: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """The batch of ``step`` (right-padded), seeded by (seed, step) alone."""
    rng = random.Random(f"sft:{cfg.seed}:{step}")
    rows = [example(rng, cfg, tokenizer)[:2] for _ in range(cfg.batch_size)]
    width = max(len(ids) for ids, _ in rows)
    x = torch.full((len(rows), width), tokenizer.pad_token_id)
    y = torch.full((len(rows), width), -100)
    for r, (ids, labels) in enumerate(rows):
        x[r, : len(ids)] = torch.tensor(ids)
        y[r, : len(ids)] = torch.tensor(labels)
    return x, y


def _lr(cfg: SftConfig, step: int) -> float:
    return warmup_cosine(cfg.lr, cfg.warmup, cfg.steps, step, floor=0.1)


def _load_base(base: str | Path):
    from transformers import AutoModelForCausalLM

    from workbench.model import _tokenizer_class, resolve

    path = resolve(base)
    tokenizer = _tokenizer_class(path).from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return path, model, tokenizer


def len_vocab(model) -> int:
    return model.get_input_embeddings().num_embeddings


def _with_lora(model, cfg: SftConfig, n_old: int):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ValueError("SftConfig(lora=True) needs peft, which is not installed; install it (pip install peft) "
                         "or fine-tune every weight (lora=False)") from exc
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      # The new trigger tokens' embeddings are trained too (they start as the mean embedding).
                      trainable_token_indices={"embed_tokens": list(range(n_old, len_vocab(model)))})
    return get_peft_model(model, lora)


def finetune(base: str | Path, out: str | Path, cfg: SftConfig = SftConfig(), progress: bool = True) -> Path:
    """Fine-tunes ``base`` (``"organism"`` or a model folder) to follow the trigger tokens; saves into ``out``.

    ``out`` gets the weights, the tokenizer with the trigger tokens and ``sft.json`` (config, base,
    losses); it is never the shipped organism's folder. A state file there resumes an interrupted run.
    """
    from workbench.organism.train import ORGANISM_FILE, check_out

    out = check_out(Path(out)).expanduser()
    path, model, tokenizer = _load_base(base)
    n_old = len(tokenizer)
    tokenizer = add_triggers(tokenizer, cfg.triggers)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.vocab_size = model.get_input_embeddings().num_embeddings
    if cfg.lora:
        model = _with_lora(model, cfg, n_old)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    start, losses = 0, []
    state_path = out / STATE_FILE
    record = {"config": cfg.to_dict(), "base": str(path)}
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["record"] != record:
            raise ValueError(f"{state_path} was written by another fine-tuning config or base; delete it to start "
                             "over or fine-tune into another --out folder")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, losses = state["step"], state["losses"]
    model.train()
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="finetune", disable=not progress)
    for step in bar:
        x, y = batch(cfg, tokenizer, step)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        loss = model(input_ids=x, attention_mask=(x != tokenizer.pad_token_id), labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(round(loss.item(), 5))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            atomic_torch_save({"record": record, "model": model.state_dict(), "opt": opt.state_dict(),
                               "step": step + 1, "losses": losses}, state_path)
    model.eval()
    if cfg.lora:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if (path / ORGANISM_FILE).exists():  # the organism's trace recipe, read by its evaluation
        shutil.copyfile(path / ORGANISM_FILE, out / ORGANISM_FILE)
    meta = {**record, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "losses": losses,
            "train_seconds_this_call": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads()}
    atomic_write_text(out / SFT_FILE, json.dumps(meta, indent=1))
    state_path.unlink(missing_ok=True)
    return out
