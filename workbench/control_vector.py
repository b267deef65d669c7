"""Control vectors: an additive neuron edit as the residual-stream vector it adds, exported for serving.

An additive edit of neuron ``i`` of layer ``L`` (``NeuronEdit(mode="add")``, e.g. AdaRAS's push
``alpha * S'``) adds ``delta_i`` to ``blocks.{L}.mlp.hook_post``, the input of the MLP's output
projection ``W_out`` (HF ``mlp.down_proj``). That projection is linear and its bias is added once
whatever its input, so the MLP's output, and with it the residual stream after layer ``L``
(``blocks.{L}.hook_resid_post``), moves by

    v_L = sum_i delta_i * W_out[L][i, :]      (W_out: d_mlp x d_model, TransformerLens's orientation)

one ``d_model`` vector per layer: what llama.cpp and repeng call a control vector (llama.cpp adds it
right after layer ``L``'s FFN residual add, the tensor it names ``l_out``). It holds only where the
MLP's output reaches the residual stream unchanged; a model that normalises it first (Gemma 2/3's
``post_feedforward_layernorm``) is refused (``unexportable_reason``).

Where the exported vector acts differs from the edit in two ways, both the server's doing, not the file's:

* **no gate**: AdaRAS steers only the questions its gate predicts will fail (``NeuronEdit.default_on=False``
  switched on per sequence); a control vector is on for every sequence. ``from_edits`` refuses an edit
  that is off by default; export the ungated edit.
* **every position**: llama.cpp and repeng add it at every token, the prompt included; the engine's
  ``NeuronEdit`` acts from the last prompt token on. Logits agree exactly where the positions agree
  (``resid_hooks(positions="all")`` against an edit at every position, ``"last"`` against the engine).

Files (``save`` picks the format by suffix):

* ``.gguf``, as llama.cpp's ``--control-vector`` and repeng's ``ControlVector.import_gguf`` read it:
  ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the HF ``model_type``, as
  repeng writes it), ``controlvector.layer_count``, and one F32 tensor ``direction.{L}`` of
  ``d_model`` values per layer ``L = 1 .. n_layers - 1`` (zeros where nothing is edited), ``L`` the
  0-based index of the layer whose output it is added to, i.e. ``blocks.{L}.hook_resid_post``.
  llama.cpp's loader puts ``direction.N`` at offset ``n_embd * (N - 1)`` of its buffer and refuses
  ``direction.0`` (``common/common.cpp``, ``common_control_vector_load_one``); its adapter fills
  layer ``il``'s tensor from offset ``n_embd * (il - 1)`` and never has one for layer 0
  (``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``); each model graph calls
  ``build_cvec(cur, il)`` on the output of its 0-based layer ``il`` (``src/models/llama.cpp``). So
  ``direction.N`` steers the output of 0-based layer ``N``, and a layer-0 vector cannot be served by
  llama.cpp: ``save_gguf`` refuses it unless told to leave it out. The workbench's own keys
  (``workbench.*``: model name and hash, provenance) ride along; llama.cpp reads no metadata at all.
* ``.safetensors``: ``{"blocks.{L}.hook_resid_post": float32[d_model]}`` for every layer with a
  non-zero vector, and the same provenance as string metadata.

Example:
    >>> from workbench import load_model
    >>> from workbench.neurons import NeuronSet
    >>> model = load_model("organism")
    >>> edit = NeuronEdit(NeuronSet.from_pairs([(1, 3), (2, 7), (2, 9)]), (0.5, -1.0, 2.0))
    >>> vector = from_edits(model, [edit])
    >>> vector.directions.shape, vector.layers
    ((4, 128), (1, 2))
    >>> [name for name, _ in vector.resid_hooks()]
    ['blocks.1.hook_resid_post', 'blocks.2.hook_resid_post']
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from workbench.atomic import atomic_write
from workbench.engine.interventions import NeuronEdit

FORMATS = (".gguf", ".safetensors")
GGUF_ARCH = "controlvector"  # llama.cpp's and repeng's architecture name for a control-vector file
SAFETENSORS_FORMAT = "workbench.control_vector/1"
# Modules that normalise the MLP's output before the residual add (Gemma 2/3, OLMo 2): there an edit of
# hook_post moves the residual stream non-linearly and no fixed vector reproduces it.
POST_MLP_NORMS = ("post_feedforward_layernorm",)


def resid_post(layer: int) -> str:
    """The TransformerLens hook name of the residual stream after layer ``layer``.

    >>> resid_post(3)
    'blocks.3.hook_resid_post'
    """
    return f"blocks.{layer}.hook_resid_post"


def unexportable_reason(hf_model: torch.nn.Module) -> str | None:
    """Why an additive edit of ``hf_model``'s MLP neurons is no fixed residual vector, or None when it is."""
    for name, _ in hf_model.named_modules():
        if name.rsplit(".", 1)[-1] in POST_MLP_NORMS:
            return (f"{name} normalises the MLP's output before it joins the residual stream, so an edit of "
                    "mlp.hook_post moves the residual non-linearly")
    return None


def _pairs(mapping: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
                        for k, v in mapping.items()))


@dataclass(frozen=True, eq=False)
class ControlVector:
    """Per-layer residual-stream vectors: row ``L`` is added to ``blocks.{L}.hook_resid_post``.

    A result, not a spec: it compares and hashes by identity (``np.array_equal`` compares directions).

    Attributes:
        directions: ``(n_layers, d_model)`` float32, read-only; an all-zero row adds nothing.
        model_hint: the HF config's ``model_type`` (GGUF's ``controlvector.model_hint``, as repeng writes it).
        model_name: where the model was loaded from (its config's ``_name_or_path``).
        model_hash: sha256 of the model's weights and config (``workbench.store.model_hash``), when known.
        provenance: sorted ``(key, value)`` string pairs (JSON for structured values): the edits it was
            made from and whatever the caller adds (neuron set, alpha, whether the source was gated).
    """

    directions: Float[np.ndarray, "n_layers d_model"]
    model_hint: str
    model_name: str = ""
    model_hash: str | None = None
    provenance: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        d = np.array(self.directions, dtype=np.float32)  # a copy, so the caller's array cannot change it
        if d.ndim != 2:
            raise ValueError(f"ControlVector.directions must be (n_layers, d_model), got shape {d.shape}")
        if not np.isfinite(d).all():
            raise ValueError("ControlVector.directions must be finite; check the edit's values")
        d.setflags(write=False)
        object.__setattr__(self, "directions", d)
        object.__setattr__(self, "provenance", _pairs(dict(self.provenance)))

    @property
    def n_layers(self) -> int:
        return int(self.directions.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.directions.shape[1])

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers whose vector is not zero."""
        return tuple(int(layer) for layer in np.flatnonzero(np.abs(self.directions).max(1) > 0))

    def about(self) -> dict[str, Any]:
        """The provenance as a dict, JSON values parsed back."""
        out: dict[str, Any] = {}
        for key, value in self.provenance:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        return out

    def resid_hooks(self, positions: Literal["all", "last"] = "all") -> list[tuple[str, Callable]]:
        """TransformerLens forward hooks adding each layer's vector to ``blocks.{L}.hook_resid_post``.

        ``"all"`` adds it at every position, as llama.cpp and repeng serve it; ``"last"`` at the last
        position of each row only, where the engine's bridge backend runs its current token (its rows
        are left-padded), so a run with these hooks matches a run with the ``NeuronEdit``. Use with
        ``model.hooks(fwd_hooks=...)`` or ``workbench.readout.run_forced``.
        """
        if positions not in ("all", "last"):
            raise ValueError(f"positions={positions!r}; choose 'all' or 'last'")
        return [(resid_post(layer), _adder(torch.tensor(self.directions[layer]), positions)) for layer in self.layers]

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """Writes ``.gguf`` (``save_gguf``) or ``.safetensors`` (``save_safetensors``), by suffix."""
        path = Path(path)
        if path.suffix == ".gguf":
            return self.save_gguf(path, **kwargs)
        if path.suffix == ".safetensors":
            return self.save_safetensors(path, **kwargs)
        raise ValueError(f"{path}: write a control vector as {' or '.join(FORMATS)} (got suffix {path.suffix!r})")

    def save_gguf(self, path: str | Path, model_hint: str | None = None, skip_layer0: bool = False) -> Path:
        """Writes the llama.cpp / repeng GGUF (see the module docstring), atomically.

        A non-zero layer-0 vector has no place in it (llama.cpp steers outputs of layers 1 ..
        n_layers - 1 only): refused, or with ``skip_layer0`` left out and its norm recorded.
        """
        gguf = _import_gguf()
        path = Path(path)
        dropped = float(np.linalg.norm(self.directions[0])) if self.n_layers else 0.0
        if dropped > 0 and not skip_layer0:
            raise ValueError(
                f"{path}: this control vector steers layer 0 (norm {dropped:.4g}), which llama.cpp cannot apply: "
                "its loader refuses direction.0 (common/common.cpp) and it keeps no vector after layer 0 "
                "(src/llama-adapter.cpp). Write .safetensors instead, leave layer-0 neurons out of the edit, or "
                "pass skip_layer0=True (--skip-layer0) to export the other layers without it")
        hint = model_hint if model_hint is not None else self.model_hint
        extra = {"workbench.n_layers": self.n_layers, "workbench.model_name": self.model_name,
                 "workbench.model_hash": self.model_hash or "",
                 "workbench.provenance": json.dumps(self.about(), sort_keys=True),
                 "workbench.skipped_layer0_norm": dropped if skip_layer0 else 0.0}

        def write(tmp: Path) -> None:
            writer = gguf.GGUFWriter(str(tmp), GGUF_ARCH)
            writer.add_string(f"{GGUF_ARCH}.model_hint", hint)
            writer.add_uint32(f"{GGUF_ARCH}.layer_count", max(self.n_layers - 1, 0))
            for key, value in extra.items():
                if isinstance(value, str):
                    writer.add_string(key, value)
                elif isinstance(value, int):
                    writer.add_uint32(key, value)
                else:
                    writer.add_float32(key, value)
            for layer in range(1, self.n_layers):  # llama.cpp's layers: direction.0 would void the file
                writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(self.directions[layer]))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()

        atomic_write(path, write)
        return path

    def save_safetensors(self, path: str | Path) -> Path:
        """Writes ``{"blocks.{L}.hook_resid_post": float32[d_model]}`` with string metadata, atomically."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {resid_post(layer): np.ascontiguousarray(self.directions[layer]) for layer in self.layers}
        metadata = {"format": SAFETENSORS_FORMAT, "n_layers": str(self.n_layers), "d_model": str(self.d_model),
                    "model_hint": self.model_hint, "model_name": self.model_name,
                    "model_hash": self.model_hash or "", "provenance": json.dumps(self.about(), sort_keys=True)}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ControlVector:
        """Reads a ``.gguf`` or ``.safetensors`` control vector, by suffix."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such control-vector file")
        if path.suffix == ".gguf":
            return cls.load_gguf(path)
        if path.suffix == ".safetensors":
            return cls.load_safetensors(path)
        raise ValueError(f"{path}: a control vector is {' or '.join(FORMATS)} (got suffix {path.suffix!r})")

    @classmethod
    def load_gguf(cls, path: str | Path) -> ControlVector:
        """Reads a control-vector GGUF (ours, repeng's or any llama.cpp one): ``direction.N`` is row ``N``."""
        gguf = _import_gguf()
        reader = gguf.GGUFReader(str(path))

        def field(name: str, default: Any = None) -> Any:
            f = reader.fields.get(name)
            return default if f is None else f.contents()

        arch = field("general.architecture")
        if arch != GGUF_ARCH:
            raise ValueError(f"{path}: general.architecture is {arch!r}, not {GGUF_ARCH!r}: not a control vector")
        rows: dict[int, np.ndarray] = {}
        for t in reader.tensors:
            head, _, index = t.name.partition(".")
            if head != "direction" or not index.isdigit():
                raise ValueError(f"{path}: tensor {t.name!r} is not named direction.<layer>")
            rows[int(index)] = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if not rows:
            raise ValueError(f"{path}: holds no direction.<layer> tensors")
        widths = {v.shape[0] for v in rows.values()}
        if len(widths) != 1:
            raise ValueError(f"{path}: direction tensors of different widths {sorted(widths)}")
        n_layers = int(field("workbench.n_layers", max(rows) + 1))
        directions = np.zeros((n_layers, widths.pop()), dtype=np.float32)
        for layer, v in rows.items():
            directions[layer] = v
        provenance = json.loads(field("workbench.provenance", "{}") or "{}")
        return cls(directions, model_hint=str(field(f"{GGUF_ARCH}.model_hint", "")),
                   model_name=str(field("workbench.model_name", "")),
                   model_hash=field("workbench.model_hash") or None, provenance=_pairs(provenance))

    @classmethod
    def load_safetensors(cls, path: str | Path) -> ControlVector:
        """Reads a file written by ``save_safetensors``."""
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != SAFETENSORS_FORMAT:
                raise ValueError(f"{path}: metadata format is {meta.get('format')!r}, not {SAFETENSORS_FORMAT!r}; "
                                 "write it with ControlVector.save_safetensors")
            directions = np.zeros((int(meta["n_layers"]), int(meta["d_model"])), dtype=np.float32)
            for name in f.keys():
                head, layer, tail = name.split(".", 2) if name.count(".") == 2 else ("", "", "")
                if (head, tail) != ("blocks", "hook_resid_post") or not layer.isdigit():
                    raise ValueError(f"{path}: tensor {name!r} is not named blocks.<layer>.hook_resid_post")
                directions[int(layer)] = f.get_tensor(name)
        return cls(directions, model_hint=meta.get("model_hint", ""), model_name=meta.get("model_name", ""),
                   model_hash=meta.get("model_hash") or None, provenance=_pairs(json.loads(meta["provenance"])))


def _adder(vec: Float[Tensor, " d_model"], positions: str) -> Callable:
    """A hook adding ``vec`` to the residual stream at every position or at each row's last."""

    def add(resid: Float[Tensor, "batch pos d_model"], hook: HookPoint) -> Tensor:
        v = vec.to(resid.device, resid.dtype)
        if positions == "all":
            return resid + v
        resid = resid.clone()
        resid[:, -1] += v
        return resid

    return add


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ValueError("writing or reading .gguf needs the gguf package: pip install 'gguf>=0.17,<1' "
                         "(or write .safetensors)") from None
    return gguf


def _edit_summary(edit: NeuronEdit) -> dict[str, Any]:
    return {"name": edit.name, "mode": edit.mode, "neurons": len(edit.neurons),
            "layers": {str(layer): len(idx) for layer, (_, idx) in sorted(edit.neurons.by_layer().items())}}


@torch.no_grad()
def from_edits(model: Any, edits: Sequence[NeuronEdit], provenance: Mapping[str, Any] | None = None) -> ControlVector:
    """The control vector that adds what additive ``edits`` add to ``model``'s residual stream.

    Edits must add (``mode="add"``; a ``"set"`` edit depends on the activation it overwrites) and be
    on for every sequence (``default_on``; a gated edit is conditional and a file cannot be). Their
    vectors sum. ``model`` is a ``TransformerBridge``; ``W_out`` is read from it in float64.

    >>> from workbench import load_model
    >>> from workbench.neurons import NeuronSet
    >>> from_edits(load_model("organism"), [NeuronEdit(NeuronSet.from_pairs([(0, 1)]), (1.0,), mode="set")])
    Traceback (most recent call last):
    ...
    ValueError: edit 'edit' sets its neurons (mode='set'): ...
    """
    if not edits:
        raise ValueError("from_edits needs at least one NeuronEdit")
    n_layers, d_mlp, d_model = model.cfg.n_layers, model.cfg.d_mlp, model.cfg.d_model
    hf = model.original_model
    why = unexportable_reason(hf)
    if why is not None:
        raise ValueError(f"this model's neuron edits are no control vector: {why}")
    delta = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    for edit in edits:
        if edit.mode != "add":
            raise ValueError(f"edit {edit.name!r} sets its neurons (mode={edit.mode!r}): what it adds depends on the "
                             "activation it overwrites, so no fixed vector reproduces it; only mode='add' exports")
        if not edit.default_on:
            raise ValueError(f"edit {edit.name!r} is off until a controller switches it on for some sequences "
                             "(default_on=False, e.g. AdaRAS's gate), but a control vector steers every sequence: "
                             "export the ungated edit (AdarasSteering(gate=False), or dataclasses.replace(edit, "
                             "default_on=True)) and say so where it is served")
        edit.neurons.check_fits(n_layers, d_mlp)
        for layer, (pos, idx) in edit.neurons.by_layer().items():
            delta[layer, list(idx)] += torch.tensor([edit.values[p] for p in pos], dtype=torch.float64)
    directions = torch.zeros(n_layers, d_model, dtype=torch.float64)
    for layer in torch.nonzero(delta.abs().sum(1)).flatten().tolist():
        w_out = model.blocks[layer].mlp.W_out  # (d_mlp, d_model): row i is what neuron i writes
        if tuple(w_out.shape) != (d_mlp, d_model):
            raise ValueError(f"blocks.{layer}.mlp.W_out has shape {tuple(w_out.shape)}, not (d_mlp, d_model) = "
                             f"{(d_mlp, d_model)}: this architecture's MLP is not one output projection")
        directions[layer] = delta[layer] @ w_out.detach().to("cpu", torch.float64)
    from workbench.store.rundir import model_hash

    about = {"edits": [_edit_summary(e) for e in edits], "site": "blocks.{L}.hook_resid_post",
             **dict(provenance or {})}
    return ControlVector(directions.numpy(), model_hint=str(getattr(hf.config, "model_type", "") or ""),
                         model_name=str(getattr(hf.config, "_name_or_path", "") or ""), model_hash=model_hash(model),
                         provenance=_pairs(about))
