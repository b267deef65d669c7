"""Attention heads as units beside MLP neurons: their address, their per-token feature, ``HeadSet``.

A head is addressed as TransformerLens addresses it: a layer (its ``blocks.{L}.attn.hook_z`` hook,
shape ``batch pos head_index d_head``) and a ``head_index``. Its per-token feature is the norm of
what it writes into the residual stream, ``||z_h @ W_O[h]||``: the head's whole contribution
to the block output (a bias of ``W_O``, where a model has one, belongs to no head and is left out).
The norm is used rather than z summed over ``d_head`` because the ``d_head`` basis is arbitrary
(rotating ``W_V`` and ``W_O`` by the same orthogonal matrix leaves the model unchanged but mixes
z's coordinates, and with them any sum over them), whereas the written vector's norm is the same in
every basis and in residual-stream units, so heads of every layer compare on one scale. It is
computed from a ``d_head x d_head`` Gram matrix per head, ``z_h G_h z_h``, so a read never holds
``batch x pos x head_index x d_model`` floats.

A ``HeadSet`` (layer, head, score, sign, provenance) is to heads what ``NeuronSet`` is to MLP neurons,
with its own file format so that a head can never be read as an MLP neuron.

Example:
    >>> s = HeadSet.from_flat([6, 1], n_heads=4, scores=(2.0, 1.5), model_shape=(2, 4))
    >>> s.names()
    ['blocks.1.attn.hook_z[2]', 'blocks.0.attn.hook_z[1]']
    >>> s.flat(n_heads=4)
    (6, 1)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.neurons import read_set_file, unit_columns, unit_row, write_set_file

FORMAT = "workbench.HeadSet/1"


def attn_z(layer: int) -> str:
    """The hook name of layer ``layer``'s per-head attention outputs (the input of HF's ``o_proj``, per head)."""
    return f"blocks.{layer}.attn.hook_z"


def o_gram(W_O: Float[Tensor, "head_index d_head d_model"]) -> Float[Tensor, "head_index d_head d_head"]:
    """``W_O[h] @ W_O[h].T`` per head, in float32: ``||z_h W_O[h]||^2 = z_h G_h z_h``."""
    w = W_O.float()
    return torch.einsum("hde,hfe->hdf", w, w)


def head_norms(
    z: Float[Tensor, "batch pos head_index d_head"], gram: Float[Tensor, "head_index d_head d_head"],
) -> Float[Tensor, "batch pos head_index"]:
    """Each head's write into the residual stream, ``||z_h @ W_O[h]||`` (float32), from ``o_gram(W_O)``.

    >>> W_O = torch.zeros(2, 2, 3); W_O[0, 0, 0] = 3.0; W_O[1, 1, 2] = 2.0
    >>> head_norms(torch.ones(1, 1, 2, 2), o_gram(W_O)).tolist()
    [[[3.0, 2.0]]]
    """
    zf = z.float()
    square = (torch.einsum("bphd,hdf->bphf", zf, gram.to(zf.device)) * zf).sum(-1)
    return square.clamp_min(0.0).sqrt()  # rounding can take a zero write a hair below 0


def _frozen(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    # JSON-able parameters as sorted (key, JSON text) pairs: hashable, and read back exactly
    return tuple(sorted((str(k), json.dumps(v, sort_keys=True)) for k, v in (mapping or {}).items()))


@dataclass(frozen=True)
class HeadSet:
    """Heads as parallel tuples: head ``i`` is ``heads[i]`` of ``blocks.{layers[i]}.attn.hook_z``, best first.

    Attributes:
        layers, heads: the addresses.
        scores, signs: per head, the ranking's score and the sign of its effect (or None).
        provenance, method: where and how the set was found.
        parameters: the method's settings, as sorted ``(key, JSON text)`` pairs (``params`` is the dict).
        group_means: per compared group, each head's mean of the ranked quantity.
        model_shape: ``(n_layers, n_heads)`` of the model it was found in.
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    scores: tuple[float, ...] | None = None
    signs: tuple[int, ...] | None = None
    provenance: str = ""
    method: str = ""
    parameters: tuple[tuple[str, str], ...] = ()
    group_means: tuple[tuple[str, tuple[float, ...]], ...] = ()
    model_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        n = len(self.layers)
        lengths = {"heads": self.heads, "scores": self.scores, "signs": self.signs, **dict(self.group_means)}
        for name, values in lengths.items():
            if values is not None and len(values) != n:
                raise ValueError(f"HeadSet: {n} layers but {len(values)} {name}")
        if self.signs is not None and any(s not in (-1, 1) for s in self.signs):
            raise ValueError("HeadSet: signs must be +1 or -1")
        if any(x < 0 for x in (*self.layers, *self.heads)):
            raise ValueError("HeadSet: layers and heads must be >= 0")
        if len(set(zip(self.layers, self.heads, strict=True))) != n:
            raise ValueError("HeadSet: a head appears twice")
        if self.model_shape is not None:
            self.check_fits(*self.model_shape)

    @classmethod
    def from_flat(
        cls, flat: Iterable[int], n_heads: int, *, parameters: Mapping[str, Any] | None = None,
        group_means: Mapping[str, Sequence[float]] | None = None, **kwargs: Any,
    ) -> HeadSet:
        """Heads from indices into all layers' heads laid end to end (``layer * n_heads + head``)."""
        flat = [int(i) for i in flat]
        means = tuple((str(g), tuple(float(x) for x in m)) for g, m in (group_means or {}).items())
        return cls(tuple(i // n_heads for i in flat), tuple(i % n_heads for i in flat), parameters=_frozen(parameters),
                   group_means=means, **kwargs)

    @classmethod
    def every(cls, n_layers: int, n_heads: int) -> HeadSet:
        """Every head of a model, layer by layer: the column order of the activation store's head reads."""
        return cls.from_flat(range(n_layers * n_heads), n_heads, model_shape=(n_layers, n_heads))

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def params(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.parameters}

    def flat(self, n_heads: int) -> tuple[int, ...]:
        return tuple(layer * n_heads + h for layer, h in zip(self.layers, self.heads, strict=True))

    def names(self) -> list[str]:
        """``blocks.{L}.attn.hook_z[h]`` of each head, in set order."""
        return [f"{attn_z(layer)}[{h}]" for layer, h in zip(self.layers, self.heads, strict=True)]

    def hook_names(self) -> list[str]:
        return [attn_z(layer) for layer in sorted(set(self.layers))]

    def check_fits(self, n_layers: int, n_heads: int) -> None:
        if self.model_shape is not None and tuple(self.model_shape) != (n_layers, n_heads):
            raise ValueError(f"this head set was found in a model with {self.model_shape[0]} layers of "
                             f"{self.model_shape[1]} heads, not {n_layers} of {n_heads}; rank heads on this model")
        for layer, h in zip(self.layers, self.heads, strict=True):
            if layer >= n_layers or h >= n_heads:
                raise ValueError(f"head (layer {layer}, head {h}) is outside the model ({n_layers} layers, "
                                 f"{n_heads} heads)")

    # -- file form -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "method": self.method, "parameters": self.params, "provenance": self.provenance,
            "model_shape": list(self.model_shape) if self.model_shape else None,
            "heads": [{"hook": attn_z(layer), "layer": layer, "head": h,
                       **unit_row(self.scores, self.signs, self.group_means, i)}
                      for i, (layer, h) in enumerate(zip(self.layers, self.heads, strict=True))],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "head set") -> HeadSet:
        if d.get("format") != FORMAT:
            raise ValueError(f"{source}: not a head set file (format {d.get('format')!r}, expected {FORMAT!r})")
        rows = d.get("heads")
        if not isinstance(rows, list):
            raise ValueError(f"{source}: field 'heads' must be a list")

        try:
            return cls(
                layers=tuple(int(r["layer"]) for r in rows), heads=tuple(int(r["head"]) for r in rows),
                provenance=str(d.get("provenance", "")), method=str(d.get("method", "")),
                parameters=_frozen(d.get("parameters")),
                model_shape=tuple(d["model_shape"]) if d.get("model_shape") else None, **unit_columns(rows),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: malformed head entry ({exc})") from exc

    def save(self, path: str | Path) -> Path:
        """Writes the set as JSON, atomically."""
        return write_set_file(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> HeadSet:
        """Reads a set written by ``save``.

        >>> import tempfile
        >>> p = HeadSet.from_flat([5], n_heads=4, scores=(1.0,), signs=(-1,)).save(tempfile.mkdtemp() + "/h.json")
        >>> HeadSet.load(p).names(), HeadSet.load(p).signs
        (['blocks.1.attn.hook_z[1]'], (-1,))
        """
        return cls.from_dict(read_set_file(path, "head set", ValueError), source=str(path))
