"""``NeuronSet``: the one currency for neurons between analyses, interventions, the app and files.

A neuron is addressed as TransformerLens addresses it: a layer (its ``blocks.{L}.mlp.hook_post``
hook) and an index into ``d_mlp``. A set carries a score and a sign per neuron, the mean activation
of each compared group, the method and parameters that chose it, and the shape of the model it was
found in, so that loading it for another model is a clear error rather than a silent misread.

Example:
    >>> s = NeuronSet.from_pairs([(1, 7), (0, 3), (1, 2)], provenance="example")
    >>> s.hook_names()
    ['blocks.0.mlp.hook_post', 'blocks.1.mlp.hook_post']
    >>> s.by_layer()[1]
    ((0, 2), (7, 2))
    >>> s.flat(d_mlp=8)
    (15, 3, 10)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workbench.atomic import atomic_write_text

FORMAT = "workbench.NeuronSet/1"


def mlp_post(layer: int) -> str:
    """The hook name of layer ``layer``'s MLP neurons (the input of HF's ``mlp.down_proj``)."""
    return f"blocks.{layer}.mlp.hook_post"


def layer_of(hook_name: str) -> int:
    """The layer of a ``blocks.{L}...`` hook name, as a hook sees it (aliases included).

    >>> layer_of("blocks.3.mlp.hook_post"), layer_of("blocks.12.mlp.out.hook_in")
    (3, 12)
    """
    parts = hook_name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"{hook_name!r} is not a per-layer hook name (blocks.<layer>.<...>)")
    return int(parts[1])


class NeuronSetError(ValueError):
    """A neuron set file that cannot be read, or does not fit the model it is used with."""


def _frozen(mapping: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A JSON-able mapping as sorted pairs, so the set stays hashable (lists become tuples)."""

    def freeze(v: Any) -> Any:
        if isinstance(v, list | tuple):
            return tuple(freeze(x) for x in v)
        if isinstance(v, Mapping):
            return _frozen(v)
        return v

    return tuple(sorted((str(k), freeze(v)) for k, v in (mapping or {}).items()))


def _thawed(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    def thaw(v: Any) -> Any:
        if isinstance(v, tuple) and v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)
                                             for x in v):
            return {k: thaw(x) for k, x in v}
        if isinstance(v, tuple):
            return [thaw(x) for x in v]
        return v

    return {k: thaw(v) for k, v in pairs}


def _json_num(x: float) -> float | None:  # JSON has no NaN
    return None if math.isnan(x) else x


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def unit_row(scores: Sequence[float] | None, signs: Sequence[int] | None,
             group_means: tuple[tuple[str, tuple[float, ...]], ...], i: int) -> dict[str, Any]:
    """Unit ``i``'s score, sign and group means as one file row (shared by neuron and head set files)."""
    return {"score": None if scores is None else _json_num(scores[i]), "sign": None if signs is None else signs[i],
            **{f"mean_{g}": _json_num(m[i]) for g, m in group_means}}


def unit_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``scores``, ``signs`` and ``group_means`` read back from the rows ``unit_row`` wrote."""
    groups = [k.removeprefix("mean_") for k in (rows[0] if rows else {}) if k.startswith("mean_")]
    return {"scores": tuple(_num(r["score"]) for r in rows) if rows and rows[0].get("score") is not None else None,
            "signs": tuple(int(r["sign"]) for r in rows) if rows and rows[0].get("sign") is not None else None,
            "group_means": tuple((g, tuple(_num(r[f"mean_{g}"]) for r in rows)) for g in groups)}


def write_set_file(data: Mapping[str, Any], path: str | Path) -> Path:
    """A set's file form written as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1))
    return path


def read_set_file(path: str | Path, what: str, error: type[ValueError]) -> dict[str, Any]:
    """A set file's JSON; ``error`` naming the file when it is missing or unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable {what} ({exc})") from exc


@dataclass(frozen=True)
class NeuronSet:
    """Neurons as parallel tuples: neuron ``i`` is ``indices[i]`` of ``blocks.{layers[i]}.mlp.hook_post``.

    Attributes:
        layers: layer of each neuron.
        indices: index of each neuron within ``d_mlp``.
        scores: optional score per neuron (e.g. AdaRAS's S, NEAT's attribution).
        signs: optional sign per neuron (+1 or -1): the direction a method pushes or reads it.
        provenance: free text saying which data produced the set (e.g. the run directory).
        method: the method's name, e.g. ``"adaras"``, ``"neat"``, ``"neureasoner:slip"``, ``"random"``.
        parameters: the method's parameters as sorted ``(name, value)`` pairs (see ``params``).
        group_means: per compared group, the mean activation of each neuron, e.g.
            ``(("correct", (...)), ("incorrect", (...)))``.
        model_shape: ``(n_layers, d_mlp)`` of the model the set was found in, when known.
    """

    layers: tuple[int, ...]
    indices: tuple[int, ...]
    scores: tuple[float, ...] | None = None
    signs: tuple[int, ...] | None = None
    provenance: str = ""
    method: str = ""
    parameters: tuple[tuple[str, Any], ...] = ()
    group_means: tuple[tuple[str, tuple[float, ...]], ...] = ()
    model_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        n = len(self.layers)
        if len(self.indices) != n:
            raise ValueError(f"NeuronSet: {n} layers but {len(self.indices)} indices")
        for name in ("scores", "signs"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"NeuronSet: {n} neurons but {len(value)} {name}")
        for group, means in self.group_means:
            if len(means) != n:
                raise ValueError(f"NeuronSet: {n} neurons but {len(means)} means for group {group!r}")
        if self.signs is not None and any(s not in (-1, 1) for s in self.signs):
            raise ValueError("NeuronSet: signs must be +1 or -1")
        if any(x < 0 for x in (*self.layers, *self.indices)):
            raise ValueError("NeuronSet: layers and indices must be >= 0")
        if len(set(zip(self.layers, self.indices, strict=True))) != n:
            raise ValueError("NeuronSet: a neuron appears twice")
        if self.model_shape is not None:
            self.check_fits(*self.model_shape)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], provenance: str = "", **kwargs: Any) -> NeuronSet:
        pairs = list(pairs)
        return cls(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), provenance=provenance, **kwargs)

    @classmethod
    def from_flat(
        cls,
        flat: Iterable[int],
        d_mlp: int,
        *,
        parameters: Mapping[str, Any] | None = None,
        group_means: Mapping[str, Sequence[float]] | None = None,
        **kwargs: Any,
    ) -> NeuronSet:
        """Neurons from indices into all layers' neurons laid end to end (``layer * d_mlp + index``).

        >>> NeuronSet.from_flat([9, 2], d_mlp=8, scores=(0.5, -1.0)).layers
        (1, 0)
        """
        flat = [int(i) for i in flat]
        means = tuple((str(g), tuple(float(x) for x in m)) for g, m in (group_means or {}).items())
        return cls(tuple(i // d_mlp for i in flat), tuple(i % d_mlp for i in flat),
                   parameters=_frozen(parameters), group_means=means, **kwargs)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def params(self) -> dict[str, Any]:
        """``parameters`` as a dict."""
        return _thawed(self.parameters)

    def flat(self, d_mlp: int) -> tuple[int, ...]:
        """Each neuron's index into all layers' neurons laid end to end (``layer * d_mlp + index``)."""
        return tuple(layer * d_mlp + index for layer, index in zip(self.layers, self.indices, strict=True))

    def by_layer(self) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
        """layer -> (positions of its neurons in this set, their ``d_mlp`` indices), layers ascending."""
        out: dict[int, tuple[list[int], list[int]]] = {}
        for i, (layer, index) in enumerate(zip(self.layers, self.indices, strict=True)):
            pos, idx = out.setdefault(layer, ([], []))
            pos.append(i)
            idx.append(index)
        return {layer: (tuple(p), tuple(x)) for layer, (p, x) in sorted(out.items())}

    def layer_counts(self) -> dict[int, int]:
        """How many neurons each layer holds (layers ascending)."""
        return {layer: len(pos) for layer, (pos, _) in self.by_layer().items()}

    def hook_names(self) -> list[str]:
        return [mlp_post(layer) for layer in self.by_layer()]

    def top(self, k: int) -> NeuronSet:
        """The first ``k`` neurons (sets are stored best first)."""
        return self.take(range(min(k, len(self))))

    def take(self, positions: Iterable[int]) -> NeuronSet:
        """The neurons at ``positions`` of this set, in that order, with their scores, signs and means."""
        pos = list(positions)

        def pick(values: tuple | None) -> tuple | None:
            return None if values is None else tuple(values[i] for i in pos)

        return replace(self, layers=pick(self.layers), indices=pick(self.indices), scores=pick(self.scores),
                       signs=pick(self.signs), group_means=tuple((g, pick(m)) for g, m in self.group_means))

    def layer_ordered(self) -> NeuronSet:
        """The same neurons ordered by layer (stable within a layer): the column order of hook reads."""
        return self.take(sorted(range(len(self)), key=lambda i: self.layers[i]))

    def check_fits(self, n_layers: int, d_mlp: int) -> None:
        """Raises a clear error if a neuron lies outside a model with this shape."""
        if self.model_shape is not None and tuple(self.model_shape) != (n_layers, d_mlp):
            raise NeuronSetError(
                f"this neuron set was found in a model with {self.model_shape[0]} layers and d_mlp "
                f"{self.model_shape[1]}, not {n_layers} layers and d_mlp {d_mlp}; rank neurons on this model"
            )
        for layer, index in zip(self.layers, self.indices, strict=True):
            if layer >= n_layers or index >= d_mlp:
                raise NeuronSetError(
                    f"neuron (layer {layer}, index {index}) is outside the model "
                    f"({n_layers} layers, d_mlp {d_mlp})"
                )

    # -- file form -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "parameters": self.params,
            "provenance": self.provenance,
            "model_shape": list(self.model_shape) if self.model_shape else None,
            "neurons": [{"layer": layer, "index": index, **unit_row(self.scores, self.signs, self.group_means, i)}
                        for i, (layer, index) in enumerate(zip(self.layers, self.indices, strict=True))],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "neuron set") -> NeuronSet:
        if d.get("format") != FORMAT:
            raise NeuronSetError(f"{source}: not a neuron set file (format {d.get('format')!r}, expected {FORMAT!r})")
        rows = d.get("neurons")
        if not isinstance(rows, list):
            raise NeuronSetError(f"{source}: field 'neurons' must be a list")
        try:
            return cls(
                layers=tuple(int(r["layer"]) for r in rows),
                indices=tuple(int(r["index"]) for r in rows),
                provenance=str(d.get("provenance", "")),
                method=str(d.get("method", "")),
                parameters=_frozen(d.get("parameters")),
                model_shape=tuple(d["model_shape"]) if d.get("model_shape") else None,
                **unit_columns(rows),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NeuronSetError(f"{source}: malformed neuron entry ({exc})") from exc

    def save(self, path: str | Path) -> Path:
        """Writes the set as JSON, atomically."""
        return write_set_file(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path, model_shape: tuple[int, int] | None = None) -> NeuronSet:
        """Reads a set written by ``save``; with ``model_shape`` checks it fits that model.

        >>> import tempfile
        >>> p = NeuronSet.from_pairs([(0, 3)], model_shape=(2, 8)).save(tempfile.mkdtemp() + "/s.json")
        >>> NeuronSet.load(p, model_shape=(4, 8))
        Traceback (most recent call last):
        ...
        workbench.neurons.NeuronSetError: this neuron set was found in a model with 2 layers and d_mlp 8, ...
        """
        out = cls.from_dict(read_set_file(path, "neuron set", NeuronSetError), source=str(path))
        if model_shape is not None:
            out.check_fits(*model_shape)
        return out
