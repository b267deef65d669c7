"""``NeuronSet``: the one currency for neurons between analyses, interventions, the app and files.

A neuron is addressed as TransformerLens addresses it: a layer (its ``blocks.{L}.mlp.hook_post``
hook) and an index into ``d_mlp``. A set may carry a score, a sign and where it came from.

Example:
    >>> s = NeuronSet.from_pairs([(1, 7), (0, 3), (1, 2)], provenance="example")
    >>> s.hook_names()
    ['blocks.0.mlp.hook_post', 'blocks.1.mlp.hook_post']
    >>> s.by_layer()[1]
    ((0, 2), (7, 2))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def mlp_post(layer: int) -> str:
    """The hook name of layer ``layer``'s MLP neurons (the input of HF's ``mlp.down_proj``)."""
    return f"blocks.{layer}.mlp.hook_post"


@dataclass(frozen=True)
class NeuronSet:
    """Neurons as parallel tuples: neuron ``i`` is ``indices[i]`` of ``blocks.{layers[i]}.mlp.hook_post``.

    Attributes:
        layers: layer of each neuron.
        indices: index of each neuron within ``d_mlp``.
        scores: optional score per neuron (e.g. a mean difference).
        signs: optional sign per neuron (+1 or -1).
        provenance: free text saying which method and data produced the set.
    """

    layers: tuple[int, ...]
    indices: tuple[int, ...]
    scores: tuple[float, ...] | None = None
    signs: tuple[int, ...] | None = None
    provenance: str = ""

    def __post_init__(self) -> None:
        n = len(self.layers)
        if len(self.indices) != n:
            raise ValueError(f"NeuronSet: {n} layers but {len(self.indices)} indices")
        for name in ("scores", "signs"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"NeuronSet: {n} neurons but {len(value)} {name}")
        if any(x < 0 for x in (*self.layers, *self.indices)):
            raise ValueError("NeuronSet: layers and indices must be >= 0")
        if len(set(zip(self.layers, self.indices, strict=True))) != n:
            raise ValueError("NeuronSet: a neuron appears twice")

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], provenance: str = "") -> NeuronSet:
        pairs = list(pairs)
        return cls(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), provenance=provenance)

    def __len__(self) -> int:
        return len(self.layers)

    def by_layer(self) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
        """layer -> (positions of its neurons in this set, their ``d_mlp`` indices), layers ascending."""
        out: dict[int, tuple[list[int], list[int]]] = {}
        for i, (layer, index) in enumerate(zip(self.layers, self.indices, strict=True)):
            pos, idx = out.setdefault(layer, ([], []))
            pos.append(i)
            idx.append(index)
        return {layer: (tuple(p), tuple(x)) for layer, (p, x) in sorted(out.items())}

    def hook_names(self) -> list[str]:
        return [mlp_post(layer) for layer in self.by_layer()]

    def check_fits(self, n_layers: int, d_mlp: int) -> None:
        """Raises a clear error if a neuron lies outside a model with this shape."""
        for layer, index in zip(self.layers, self.indices, strict=True):
            if layer >= n_layers or index >= d_mlp:
                raise ValueError(
                    f"neuron (layer {layer}, index {index}) is outside the model "
                    f"({n_layers} layers, d_mlp {d_mlp})"
                )
