"""One trainer for NeuReasoner's remedy fine-tuning: any base model, any data recipe (``sft.SftData``).

``finetune(base, out, data, cfg)`` adds the trigger tokens to a copy of the base's tokenizer (as the data
recipe writes them: ``SftData.trigger_lstrip``), makes room for them in the embeddings (new rows start as the mean
embedding; a checkpoint whose embedding is already wider than its tokenizer, as real ones often are,
takes them into its spare rows), then trains on batches drawn from ``data``: every weight for small
models, or LoRA adapters through peft for real ones (``lora=True``: every linear layer but the output
head, and the trigger tokens' embedding rows, merged into the weights before saving). Labels are the
recipe's, with ``-100`` where nothing is trained (the prompt, the injected error and the trigger).

Training is seeded and resumable: each step's batch comes from (seed, step) alone, and a state file
is written every ``save_every`` steps and picked up by the next call with the same config, data and
base. The shipped organism's folder is never written (``check_out``).

Example:
    >>> [round(warmup_cosine(1.0, 2, 10, s, floor=0.1), 2) for s in (0, 1, 2, 9)]
    [0.5, 1.0, 1.0, 0.13]
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from workbench.atomic import atomic_torch_save, atomic_write_text
from workbench.neureasoner.sft import SftData
from workbench.neureasoner.triggers import TRIGGERS, add_triggers

STATE_FILE = "sft_state.pt"
SFT_FILE = "sft.json"


@dataclass(frozen=True, kw_only=True)
class SftConfig:
    """How to fine-tune (what on is the data recipe's).

    Attributes:
        steps, batch_size, lr, warmup, weight_decay: AdamW with linear warm-up and cosine decay.
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
    triggers: tuple[tuple[str, str], ...] = TRIGGERS
    seed: int = 0
    save_every: int = 100
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"SftConfig.steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")
        if self.save_every < 1 or self.lora_r < 1:
            raise ValueError(f"SftConfig.save_every and lora_r must be >= 1 (got {self.save_every}, {self.lora_r})")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def warmup_cosine(lr: float, warmup: int, steps: int, step: int, floor: float) -> float:
    """The learning rate at ``step``: linear warm-up to ``lr``, then cosine decay to ``floor * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def check_out(out: Path) -> Path:
    """Returns ``out``, or raises ``ValueError`` if it is the shipped organism's folder.

    A training run writes its weights over whatever ``out`` holds, and the shipped organism is what
    every analysis and measured number of the project refers to; paths are compared resolved, so
    ``./data/organism/`` or a symlink to it is caught too.

    Example:
        >>> check_out(Path("runs/organism-seed1"))
        PosixPath('runs/organism-seed1')
    """
    from workbench.model import DATA_DIR, organism_dir

    out = Path(out)
    shipped = {(DATA_DIR / "organism").resolve(), organism_dir().resolve()}
    if out.expanduser().resolve() in shipped:
        raise ValueError(
            f"refusing to train into {out}: it is the shipped organism's folder and training would "
            "overwrite its weights; pass another --out folder (e.g. runs/organism-retrain) and copy the "
            "files over by hand if you mean to replace the shipped model"
        )
    return out


def batch(
    data: SftData, cfg: SftConfig, tokenizer: Any, step: int,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """(input ids, labels, attention mask) of ``step``'s batch, right-padded, seeded by (seed, step) alone."""
    rng = random.Random(f"sft:{cfg.seed}:{step}")
    triggers = dict(cfg.triggers)
    rows = [data.example(rng, tokenizer, triggers)[:2] for _ in range(cfg.batch_size)]
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    x = torch.full((len(rows), width), pad)
    y = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, labels) in enumerate(rows):
        x[r, : len(ids)] = torch.tensor(ids)
        y[r, : len(ids)] = torch.tensor(labels)
        mask[r, : len(ids)] = 1  # by length: a pad id may also be a real token (the EOS of models without a pad)
    return x, y, mask


def _load_base(base: str | Path):
    from transformers import AutoModelForCausalLM

    from workbench.model import _tokenizer_class, resolve

    path = resolve(base)
    tokenizer = _tokenizer_class(path).from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    return path, model, tokenizer


def _vocab(model) -> int:
    return model.get_input_embeddings().num_embeddings


def make_room(model, tokenizer, n_old: int, trigger_ids: Sequence[int]) -> None:
    """Gives the trigger tokens embedding rows: the embeddings grow to the tokenizer (new rows the mean
    embedding), and a token added into a row the checkpoint already had (real checkpoints pad their
    vocabulary) starts as the mean embedding too."""
    rows = _vocab(model)
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.vocab_size = _vocab(model)
    spare = [i for i in trigger_ids if n_old <= i < rows]
    if spare:
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[spare] = emb[:n_old].mean(0)


def _with_lora(model, cfg: SftConfig, trigger_ids: Sequence[int]):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ValueError("SftConfig(lora=True) needs peft, which is not installed; install it (pip install peft) "
                         "or fine-tune every weight (lora=False)") from exc
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules="all-linear",  # every linear layer but the output head, in any architecture
                      # The trigger tokens' input embeddings are trained too (the output rows never are: the
                      # triggers are never predicted).
                      trainable_token_indices=sorted(set(trigger_ids)))
    return get_peft_model(model, lora)


def finetune(
    base: str | Path, out: str | Path, data: SftData, cfg: SftConfig = SftConfig(), progress: bool = True,
    keep_files: tuple[str, ...] = (),
) -> Path:
    """Fine-tunes ``base`` (a model name ``load_model`` knows or a model folder) on ``data``; saves into ``out``.

    ``out`` gets the weights, the tokenizer with the trigger tokens, ``sft.json`` (config, data, base,
    losses) and the base's ``keep_files`` that it has (e.g. the organism's ``organism.json``, which its
    evaluation reads). It is never the shipped organism's folder. A state file there resumes an
    interrupted run.
    """
    out = check_out(Path(out)).expanduser()
    data.check()
    path, model, tokenizer = _load_base(base)
    n_old = len(tokenizer)
    tokenizer = add_triggers(tokenizer, cfg.triggers, lstrip=data.trigger_lstrip)
    trigger_ids = [tokenizer.convert_tokens_to_ids(t) for _, t in cfg.triggers]
    make_room(model, tokenizer, n_old, trigger_ids)
    if cfg.lora:
        model = _with_lora(model, cfg, trigger_ids)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    start, losses = 0, []
    state_path = out / STATE_FILE
    record = {"config": cfg.to_dict(), "data": data.record(), "base": str(path)}
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["record"] != record:
            raise ValueError(f"{state_path} was written by another fine-tuning config, data or base; delete it to "
                             "start over or fine-tune into another --out folder")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, losses = state["step"], state["losses"]
    model.train()
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="finetune", disable=not progress)
    for step in bar:
        x, y, mask = batch(data, cfg, tokenizer, step)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(cfg.lr, cfg.warmup, cfg.steps, step, floor=0.1)
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
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
    for name in keep_files:
        if (path / name).exists():
            shutil.copyfile(path / name, out / name)
    meta = {**record, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "losses": losses,
            "train_seconds_this_call": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads()}
    atomic_write_text(out / SFT_FILE, json.dumps(meta, indent=1))
    state_path.unlink(missing_ok=True)
    return out
