"""The AdaRAS gate: from the question alone, will the model fail? Steering is switched on only if so.

The reference code reads ``mlp.hook_post`` at every question token, keeps the top-F neurons by ANOVA F
(``select_features``), pools the tokens with attention (Linear -> tanh -> Linear -> softmax over tokens)
and classifies the pooled vector with Linear(F, 256) -> ReLU -> Dropout(0.3) -> Linear; BCE with
``pos_weight``, Adam (lr 1e-4, weight decay 1e-5), at most 100 epochs with patience 10; the threshold is
Youden's J on validation data. The paper says F = 256, the code 4096 or 8192: ``GateConfig.n_features``.
Here the classifier's score is P(fail) (label 1 = incorrect trace), so ``predict_fail`` is
``score >= threshold``; the reference scores P(correct) and steers below its threshold, the same rule.

A gate is saved as ``gate.safetensors`` (the torch state dict) and ``gate.json`` (config, threshold, the
neurons in feature order and the standardisation), and ``Gate.load`` gives back identical predictions.

Example:
    >>> rng = np.random.default_rng(0)
    >>> fail = np.arange(80) % 2
    >>> acts = [rng.normal(f, 1.0, (5, 3)).astype(np.float32) for f in fail]
    >>> neurons = NeuronSet.from_flat([0, 1, 2], d_mlp=4, model_shape=(1, 4))
    >>> gate = fit_gate(acts, fail, np.arange(80) // 2, neurons, GateConfig(epochs=40, lr=1e-2))
    >>> bool(gate.predict_fail(np.full((5, 3), 2.0, dtype=np.float32)))
    True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float, Shaped
from safetensors.torch import load_file, save_file
from sklearn.feature_selection import f_classif
from sklearn.metrics import roc_curve
from sklearn.model_selection import GroupShuffleSplit
from torch import Tensor, nn
from transformer_lens.model_bridge import TransformerBridge

from workbench.atomic import atomic_write, atomic_write_text
from workbench.neurons import NeuronSet
from workbench.readout import Budget, neuron_activations
from workbench.store.paths import gate_files


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """The gate classifier and its training.

    Attributes:
        n_features: how many neurons (top ANOVA F on the question means) the gate reads (paper 256).
        attention_hidden: width of the attention-scoring layer.
        hidden: width of the classifier's hidden layer (reference 256).
        dropout: dropout after the hidden layer (reference 0.3).
        lr: Adam learning rate (reference 1e-4).
        weight_decay: Adam weight decay (reference 1e-5).
        epochs: most passes over the training data (reference 100).
        patience: epochs without a better validation loss before stopping (reference 10).
        batch_size: traces per step.
        val_fraction: share of the questions held out for early stopping and the Youden threshold.
        seed: seeds the split, the initialisation and the batch order.
    """

    n_features: int = 256
    attention_hidden: int = 64
    hidden: int = 256
    dropout: float = 0.3
    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 100
    patience: int = 10
    batch_size: int = 64
    val_fraction: float = 0.25
    seed: int = 0


class AttentionPoolMLP(nn.Module):
    """Attention pooling over question tokens, then an MLP: one logit of failure per question."""

    def __init__(self, n_features: int, attention_hidden: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(n_features, attention_hidden), nn.Tanh(),
                                       nn.Linear(attention_hidden, 1))
        self.head = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(
        self, x: Float[Tensor, "batch pos feature"], mask: Bool[Tensor, "batch pos"]
    ) -> Float[Tensor, " batch"]:
        weights = self.attention(x).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)  # (batch, pos)
        return self.head((weights[..., None] * x).sum(1)).squeeze(-1)


def youden_threshold(fail: Shaped[np.ndarray, " row"], score: Float[np.ndarray, " row"]) -> float:
    """The score threshold maximising Youden's J = TPR - FPR (predict failure where ``score >= threshold``);
    ties go to the higher threshold, which flags fewer questions.

    >>> youden_threshold(np.array([0, 0, 0, 1, 1, 1]), np.array([.1, .2, .6, .4, .7, .9]))
    0.7
    """
    fail, score = np.asarray(fail).astype(int), np.asarray(score, dtype=np.float64)
    fpr, tpr, thr = roc_curve(fail, score, drop_intermediate=False)  # every cut, so ties resolve as documented
    best = int(np.argmax(np.round(tpr - fpr, 12)))  # rounded, so that equal J in rationals tie exactly
    return float(thr[best]) if np.isfinite(thr[best]) else float(np.max(score)) + 1.0


def select_features(
    question_means: Float[np.ndarray, "trace n_layers d_mlp"], fail: Shaped[np.ndarray, " trace"], n: int
) -> NeuronSet:
    """The ``n`` neurons with the largest ANOVA F between failing and passing traces (scores = F)."""
    n_traces, n_layers, d_mlp = question_means.shape
    f, _ = f_classif(np.nan_to_num(question_means.reshape(n_traces, -1)), np.asarray(fail).astype(int))
    f = np.nan_to_num(f)  # constant neurons have no F
    top = np.argsort(-f, kind="stable")[:n]
    return NeuronSet.from_flat(top.tolist(), d_mlp, scores=tuple(float(v) for v in f[top]), method="adaras:gate",
                               model_shape=(n_layers, d_mlp), parameters={"selection": "ANOVA F", "n": n})


def question_activations(
    model: TransformerBridge, prompts: Sequence[Sequence[int]], neurons: NeuronSet, batch_size: int = 64
) -> list[Float[np.ndarray, "_pos feature"]]:
    """Teacher-forced ``mlp.hook_post`` of ``neurons`` at every prompt token, one array per prompt (the gate
    reads its selected neurons only)."""
    return neuron_activations(model, prompts, neurons, Budget(batch_size=batch_size))


def _batch(acts: Sequence[np.ndarray], mean: np.ndarray, std: np.ndarray) -> tuple[Tensor, Tensor]:
    width = max(len(a) for a in acts)
    x = np.zeros((len(acts), width, len(mean)), dtype=np.float32)
    mask = np.zeros((len(acts), width), dtype=bool)
    for r, a in enumerate(acts):
        x[r, : len(a)] = (a - mean) / std
        mask[r, : len(a)] = True
    return torch.from_numpy(x), torch.from_numpy(mask)


@dataclass
class Gate:
    """A trained gate: the classifier, the neurons it reads (in feature order), its standardisation and
    threshold."""

    model: AttentionPoolMLP
    neurons: NeuronSet
    threshold: float
    mean: np.ndarray  # (feature,) per-neuron mean over training tokens
    std: np.ndarray  # (feature,)
    config: GateConfig

    @torch.no_grad()
    def scores(self, acts: Sequence[Float[np.ndarray, "_pos feature"]]) -> Float[np.ndarray, " row"]:
        """P(fail) for each question's per-token activations of ``self.neurons``."""
        if any(a.ndim != 2 or a.shape[1] != len(self.neurons) or not len(a) for a in acts):
            raise ValueError(f"each question's activations must be (pos >= 1, {len(self.neurons)}), one column per "
                             "gate neuron in the gate's order")
        self.model.eval()
        out = [torch.sigmoid(self.model(*_batch(acts[b : b + 256], self.mean, self.std)))
               for b in range(0, len(acts), 256)]
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    def predict_fail(self, acts: Float[np.ndarray, "pos feature"]) -> bool:
        """Whether the gate expects the model to fail this question (so steering should switch on)."""
        return bool(self.scores([acts])[0] >= self.threshold)

    def save(self, folder: str | Path) -> Path:
        """Writes ``gate.safetensors`` and ``gate.json`` into ``folder`` (atomically) and returns it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state_file, config_file = gate_files(folder)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(state_file, lambda tmp: save_file(state, str(tmp)))
        meta = {"config": asdict(self.config), "threshold": self.threshold, "mean": self.mean.tolist(),
                "std": self.std.tolist(), "neurons": self.neurons.to_dict(),
                "score": "P(fail); predict failure where score >= threshold"}
        atomic_write_text(config_file, json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Gate:
        """Reads a gate written by ``save``."""
        folder = Path(folder)
        state_file, config_file = gate_files(folder)
        if not state_file.exists() or not config_file.exists():
            raise FileNotFoundError(f"{folder}: no saved gate ({state_file.name} and {config_file.name}); train one "
                                    "with probe_report or fit_gate(...).save(folder)")
        meta = json.loads(config_file.read_text())
        cfg = GateConfig(**meta["config"])
        neurons = NeuronSet.from_dict(meta["neurons"], source=str(config_file))
        model = AttentionPoolMLP(len(neurons), cfg.attention_hidden, cfg.hidden, cfg.dropout)
        model.load_state_dict(load_file(str(state_file)))
        model.eval()
        return cls(model, neurons, float(meta["threshold"]), np.array(meta["mean"], dtype=np.float32),
                   np.array(meta["std"], dtype=np.float32), cfg)


def fit_gate(
    acts: Sequence[Float[np.ndarray, "_pos feature"]],
    fail: Shaped[np.ndarray, " trace"],
    groups: Shaped[np.ndarray, " trace"],
    neurons: NeuronSet,
    cfg: GateConfig = GateConfig(),
) -> Gate:
    """Trains the gate on traces (``fail`` = 1 where the trace is incorrect), holding out
    ``cfg.val_fraction`` of the questions (``groups``) for early stopping and the Youden threshold."""
    fail, groups = np.asarray(fail).astype(int), np.asarray(groups)
    if not len(acts) == len(fail) == len(groups):
        raise ValueError(f"acts, fail and groups disagree in length: {len(acts)}, {len(fail)}, {len(groups)}")
    if len(np.unique(fail)) < 2:
        raise ValueError("the gate needs failing and passing traces; sample more")
    split = GroupShuffleSplit(n_splits=1, test_size=cfg.val_fraction, random_state=cfg.seed)
    train, val = next(split.split(np.zeros(len(fail)), fail, groups))
    tokens = np.concatenate([acts[i] for i in train])
    mean, std = tokens.mean(0), tokens.std(0) + 1e-6
    torch.manual_seed(cfg.seed)
    model = AttentionPoolMLP(len(neurons), cfg.attention_hidden, cfg.hidden, cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pos_weight = torch.tensor(max(1.0, (fail[train] == 0).sum()) / max(1.0, (fail[train] == 1).sum()))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    x_val, m_val = _batch([acts[i] for i in val], mean, std)
    y_val = torch.tensor(fail[val], dtype=torch.float32)
    rng = np.random.default_rng(cfg.seed)
    best, best_state, stale = float("inf"), None, 0
    for _ in range(cfg.epochs):
        model.train()
        order = rng.permutation(train)
        for b in range(0, len(order), cfg.batch_size):
            rows = order[b : b + cfg.batch_size]
            x, m = _batch([acts[i] for i in rows], mean, std)
            loss = loss_fn(model(x, m), torch.tensor(fail[rows], dtype=torch.float32))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(x_val, m_val), y_val))
        if val_loss < best - 1e-6:
            best, best_state, stale = val_loss, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    gate = Gate(model.eval(), neurons, 0.0, mean.astype(np.float32), std.astype(np.float32), cfg)
    gate.threshold = youden_threshold(fail[val], gate.scores([acts[i] for i in val])) \
        if len(np.unique(fail[val])) == 2 else 0.5
    return gate
