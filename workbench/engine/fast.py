"""A lean decoder forward for Llama-family models (Llama, Mistral, Qwen2, Qwen3) over the HF weights.

The bridge's forward runs every module through TransformerLens wrappers, which costs more than the
arithmetic on small batches. For generation the engine can instead run this forward: the same
weight tensors (shared, not copied, unless a ``dtype`` asks for a converted copy), RoPE angles from
the HF rotary module tabulated once, a preallocated per-row KV cache with no concatenation, and the
MLP neurons edited and read at exactly TransformerLens's ``blocks.{L}.mlp.hook_post`` site (the
input of ``down_proj``). Parity with HF and the bridge is tested; configurations it does not cover
make ``unsupported_reason`` say why, and the engine falls back to the bridge. It is an allow-list:
what has not been checked against HF falls back.

On a CPU every projection runs through oneDNN on a prepacked copy of its weight (``Linear``) when
torch has oneDNN: ``F.linear`` goes to MKL's sgemm, which on the project's AMD machine ran these
shapes 2.4-3.7x slower (batch 16-64), and oneDNN's result for a row does not depend on the other
rows in the batch (MKL's does, in the last bits). The packed copies double the weights' memory;
``pack=False`` keeps plain ``F.linear``.

Four entry points share one layer body:

* ``prefill``: fresh prompts, right-padded, into cache rows ``start ..``; attention is plain causal
  attention over the prompts' own keys (padding comes after a row's tokens, so causality hides it).
* ``decode``: one token for each of cache rows ``0 .. n-1`` (the engine keeps live rows a prefix).
  Grouped-query attention reads the cache as it is stored: the query heads that share a KV head are
  folded into that head's query positions (``(rows, n_kv, group, head_dim)``), so no key or value
  is ever copied or repeated. No host sync: the caller passes the attention width as an int.
* ``forward``: any rows, any positions (the general form, used by the tests).
* ``read``: teacher forcing for the analyses (``workbench.readout``): every position's neurons, up to
  a given layer, no cache and no logits.

Config fields that change the forward pass (transformers 5 Llama, Mistral, Qwen2, Qwen3 classes):

    architectures, model_type      allow-listed; model_type too, since it picks the class HF loads
    attention_bias (Llama, Qwen3)  q/k/v/o biases added; Qwen2's always-on q/k/v (no o) likewise.
                                   Biases are read from the weights, so the config cannot disagree
    mlp_bias (Llama)               gate/up/down biases added
    q_norm/k_norm (Qwen3)          applied per head, before RoPE
    head_dim, num_key_value_heads  as HF reads them; attention scale head_dim**-0.5 (SDPA's default)
    rms_norm_eps                   used, fp32 normalisation as HF
    hidden_act                     silu/swish, relu, gelu, gelu_pytorch_tanh; others fall back
    rope_parameters (rope_scaling) HF's own rotary module, for types whose angles depend on the
                                   position alone: default, linear, llama3, yarn (its attention
                                   factor scales cos/sin inside that module). dynamic and longrope
                                   rescale by the longest position in the call (module state), so
                                   they fall back, as does any other type
    partial_rotary_factor != 1     falls back
    sliding_window, Qwen's         fall back whenever a window is configured (Mistral's
    use_sliding_window,            sliding_window, or Qwen's use_sliding_window) or any layer type
    max_window_layers, layer_types is not full_attention
    tie_word_embeddings            the tied weight is the embedding, used as the unembedding
    quantization_config            falls back: the weights are not plain tensors
    pretraining_tp (Llama)         no effect: transformers 5 ignores it
    logit/attention soft-capping   not a field of these classes (HF ignores a stray one, so do we)
    attention_dropout              no effect at inference
    max_position_embeddings        only through the RoPE parameters

Each row stores its tokens left-aligned: column ``j`` of a row's cache holds its position ``j``, so
causality is ``key column <= query position`` and refilling a row just overwrites its columns.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")
    >>> unsupported_reason(model.original_model.config) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

SUPPORTED = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
# Types whose cos/sin at a position depend on that position only, so HF's rotary module is right for
# any position ids we hand it. "dynamic" and "longrope" pick frequencies from the longest position in
# the call and keep them as module state: a row's angles would depend on its batch neighbours.
STATIC_ROPE = {"default", "linear", "llama3", "yarn"}
# As HF's ACT2FN computes them (its "silu" and "swish" are F.silu, "gelu_pytorch_tanh" the tanh F.gelu).
ACTIVATIONS = {
    "silu": F.silu, "swish": F.silu, "relu": F.relu, "gelu": F.gelu,
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
}

# (layer, the current positions' neurons (rows, d_mlp)), to read and edit in place
MlpHook = Callable[[int, Float[Tensor, "rows d_mlp"]], None]


def unsupported_reason(config) -> str | None:
    """Why the fast forward cannot run this config, or None when it can. See the module docstring."""
    archs = set(config.architectures or [])
    if not archs & SUPPORTED:
        return f"architecture {sorted(archs)} is not one of {sorted(SUPPORTED)}"
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {sorted(MODEL_TYPES)}"
    if getattr(config, "quantization_config", None):
        return "quantized weights"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in STATIC_ROPE:
        return f"RoPE type {rope_type!r} (supported: {sorted(STATIC_ROPE)})"
    if rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) not in (None, 1.0):
        return "partial rotary embeddings"
    # Conservative: Qwen's HF classes attend fully when use_sliding_window is set but max_window_layers
    # leaves no sliding layer; we fall back anyway rather than second-guess which field wins.
    window = getattr(config, "sliding_window", None)
    other_layers = set(getattr(config, "layer_types", None) or []) - {"full_attention"}
    if (window and getattr(config, "use_sliding_window", True)) or other_layers:
        return f"sliding-window attention (sliding_window={window}, layer types {sorted(other_layers)})"
    if getattr(config, "hidden_act", "silu") not in ACTIVATIONS:
        return f"activation {config.hidden_act!r} (supported: {sorted(ACTIVATIONS)})"
    return None


def _strip(name: str) -> str:
    return name.replace("._original_component", "")


def can_pack(w: Tensor) -> bool:
    """Whether oneDNN can prepack ``w`` here (a CPU tensor, fp32, or bf16 where the CPU has it)."""
    if w.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return w.dtype == torch.float32 or (w.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Linear:
    """``F.linear(x, w, b)``, or on a CPU the same product over oneDNN's prepacked copy of ``w``.

    Example:
        >>> w, x = torch.randn(6, 4), torch.randn(3, 4)
        >>> torch.allclose(Linear(w, None, pack=True)(x), x @ w.T, atol=1e-5)
        True
    """

    __slots__ = ("b", "packed", "w")

    def __init__(self, w: Tensor, b: Tensor | None, pack: bool) -> None:
        self.w, self.b = w, b
        # The op inductor uses for frozen CPU linears; the packed layout suits any number of rows.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None) if pack else None

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return F.linear(x, self.w, self.b)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.b, "none", [], "")


@dataclass
class _Layer:
    ln1: Tensor
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    q_norm: Tensor | None
    k_norm: Tensor | None
    ln2: Tensor
    gate: Linear
    up: Linear
    down: Linear


# (layer index, query, key, value) -> attention output (rows, n_heads, pos, head_dim)
Attend = Callable[[int, Tensor, Tensor, Tensor], Tensor]


class FastDecoder:
    """The forward pass over a (possibly bridge-wrapped) HF model's own parameters.

    ``dtype`` (e.g. ``torch.bfloat16``) runs on a converted copy of the weights; by default the
    weights are used as they are. Norms are computed in fp32 and logits returned in fp32, as HF does.
    ``pack``: prepack the projections for oneDNN (None: wherever ``can_pack`` says it can).
    """

    def __init__(self, hf_model, dtype: torch.dtype | None = None, pack: bool | None = None) -> None:
        cfg = hf_model.config
        reason = unsupported_reason(cfg)
        if reason is not None:
            raise ValueError(f"the fast forward does not support this model: {reason}")
        p = {_strip(n): t.detach() for n, t in hf_model.named_parameters()}
        if dtype is not None:
            p = {n: t if t.dtype == dtype else t.to(dtype) for n, t in p.items()}
        self.embed = p["model.embed_tokens.weight"]
        self.packed = can_pack(self.embed) if pack is None else pack
        if self.packed and not can_pack(self.embed):
            raise ValueError(f"pack=True needs oneDNN and a CPU model in fp32 or bf16; this one is "
                             f"{self.embed.dtype} on {self.embed.device}")

        def linear(name: str) -> Linear:
            return Linear(p[name + ".weight"], p.get(name + ".bias"), self.packed)

        self.lm_head = Linear(p.get("lm_head.weight", self.embed), None, self.packed)
        self.norm = p["model.norm.weight"]
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.group = self.n_heads // self.n_kv
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        rot = hf_model.model.rotary_emb
        self.rotary = getattr(rot, "_original_component", rot)
        self.act = ACTIVATIONS[getattr(cfg, "hidden_act", "silu")]
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            pre = f"model.layers.{i}."
            attn, mlp = pre + "self_attn.", pre + "mlp."
            # Biases exist only where the config asks for them (None costs nothing).
            self.layers.append(_Layer(
                ln1=p[pre + "input_layernorm.weight"], ln2=p[pre + "post_attention_layernorm.weight"],
                q=linear(attn + "q_proj"), k=linear(attn + "k_proj"), v=linear(attn + "v_proj"),
                o=linear(attn + "o_proj"), q_norm=p.get(attn + "q_norm.weight"), k_norm=p.get(attn + "k_norm.weight"),
                gate=linear(mlp + "gate_proj"), up=linear(mlp + "up_proj"), down=linear(mlp + "down_proj"),
            ))
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self.d_vocab, self.d_mlp = self.lm_head.w.shape[0], self.layers[0].gate.w.shape[0]
        self._cos = self._sin = torch.zeros(0, self.head_dim, dtype=self.dtype, device=self.device)

    def _rms(self, x: Tensor, w: Tensor) -> Tensor:
        # As HF: normalise in fp32, cast back, then scale.
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        shape = (len(self.layers), batch, self.n_kv, capacity, self.head_dim)
        return KVCache(torch.zeros(shape, dtype=self.dtype, device=self.device),
                       torch.zeros(shape, dtype=self.dtype, device=self.device))

    def rope_table(self, width: int) -> tuple[Tensor, Tensor]:
        """cos and sin, (positions, head_dim), for positions ``0 .. width-1`` at least.

        For the allow-listed RoPE types a position's angles depend on that position alone, so one
        table from HF's rotary module serves every row (it grows by doubling, like the cache).
        """
        if self._cos.shape[0] < width:
            n = max(width, 2 * self._cos.shape[0], 256)
            pos = torch.arange(n, device=self.device)[None]
            cos, sin = self.rotary(torch.zeros(1, dtype=self.dtype, device=self.device), pos)
            self._cos, self._sin = cos[0], sin[0]
        return self._cos, self._sin

    def _layer(self, li: int, layer: _Layer, x: Tensor, cos: Tensor, sin: Tensor, attend: Attend,
               mlp_hook: MlpHook | None, last: Tensor | slice | None) -> Tensor:
        rows, t, _ = x.shape
        h = self._rms(x, layer.ln1)
        q = layer.q(h).view(rows, t, self.n_heads, self.head_dim)
        k = layer.k(h).view(rows, t, self.n_kv, self.head_dim)
        v = layer.v(h).view(rows, t, self.n_kv, self.head_dim)
        if layer.q_norm is not None:
            q, k = self._rms(q, layer.q_norm), self._rms(k, layer.k_norm)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (rows, heads, pos, head_dim)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        att = attend(li, q, k, v)
        x = x + layer.o(att.transpose(1, 2).reshape(rows, t, -1))
        h = self._rms(x, layer.ln2)
        act = self.act(layer.gate(h)) * layer.up(h)
        if mlp_hook is not None:  # the current position's neurons, edited in place
            if isinstance(last, slice):  # every position (teacher-forced reads)
                mlp_hook(li, act)
            elif last is None:
                mlp_hook(li, act[:, -1])
            else:
                ar = torch.arange(rows, device=x.device)
                cur = act[ar, last]
                mlp_hook(li, cur)
                act[ar, last] = cur
        return x + layer.down(act)

    def _logits(self, h: Float[Tensor, "rows d_model"], out: Tensor | None) -> Float[Tensor, "rows d_vocab"]:
        h = self._rms(h, self.norm)
        if out is not None and out.dtype == h.dtype and self.lm_head.packed is None:
            return torch.mm(h, self.lm_head.w.t(), out=out)  # straight into the caller's buffer
        logits = self.lm_head(h).float()
        return logits if out is None else out.copy_(logits)

    @torch.no_grad()
    def prefill(
        self,
        ids: Int[Tensor, "rows pos"],
        lengths: Int[Tensor, " rows"],
        start: int,
        cache: KVCache,
        mlp_hook: MlpHook | None = None,
        out: Float[Tensor, "rows d_vocab"] | None = None,
    ) -> Float[Tensor, "rows d_vocab"]:
        """Runs fresh prompts ``ids`` (right-padded to ``lengths``) into cache rows ``start ..``.

        Returns the logits at each row's last token; the MLP hook sees the neurons there.
        """
        rows, t = ids.shape
        cache.ensure(t)
        cos, sin = self.rope_table(t)
        cos, sin = cos[:t], sin[:t]  # every row starts at position 0
        x = F.embedding(ids, self.embed)
        end = start + rows

        def attend(li: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            cache.k[li, start:end, :, :t] = k  # padding columns too: decode masks them, then overwrites
            cache.v[li, start:end, :, :t] = v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.group > 1)

        last = lengths - 1
        for li, layer in enumerate(self.layers):
            x = self._layer(li, layer, x, cos, sin, attend, mlp_hook, last)
        return self._logits(x[torch.arange(rows, device=x.device), last], out)

    @torch.no_grad()
    def decode(
        self,
        ids: Int[Tensor, " rows"],
        positions: Int[Tensor, " rows"],
        width: int,
        cache: KVCache,
        mlp_hook: MlpHook | None = None,
        out: Float[Tensor, "rows d_vocab"] | None = None,
    ) -> Float[Tensor, "rows d_vocab"]:
        """One token for each of cache rows ``0 .. rows-1`` at ``positions``; ``width`` > every position.

        ``width`` may exceed the positions (the mask hides the extra columns), so a captured CUDA
        graph can serve a range of lengths.
        """
        rows = ids.shape[0]
        cache.ensure(width)
        cos, sin = self.rope_table(width)
        cos, sin = cos[positions][:, None, None], sin[positions][:, None, None]  # (rows, 1, 1, head_dim)
        x = F.embedding(ids, self.embed)[:, None]  # (rows, 1, d_model)
        ar = torch.arange(rows, device=ids.device)
        # (rows, 1, 1, width): a row sees its own columns up to its position, broadcast over heads
        mask = (torch.arange(width, device=ids.device)[None] <= positions[:, None])[:, None, None]

        def attend(li: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            kc, vc = cache.k[li], cache.v[li]
            kc[ar, :, positions] = k[:, :, 0]
            vc[ar, :, positions] = v[:, :, 0]
            # A group's query heads become query positions of their shared KV head: no K/V copy.
            qg = q.reshape(rows, self.n_kv, self.group, self.head_dim)
            att = F.scaled_dot_product_attention(qg, kc[:rows, :, :width], vc[:rows, :, :width], attn_mask=mask)
            return att.reshape(rows, self.n_heads, 1, self.head_dim)

        for li, layer in enumerate(self.layers):
            x = self._layer(li, layer, x, cos, sin, attend, mlp_hook, None)
        return self._logits(x[:, -1], out)

    def final_norm(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The final RMSNorm, as the unembedding sees the residual stream."""
        return self._rms(x, self.norm)

    @torch.no_grad()
    def read(self, ids: Int[Tensor, "rows pos"], upto: int,
             mlp_hook: Callable[[int, Float[Tensor, "rows pos d_mlp"]], None]) -> Float[Tensor, "rows pos d_model"]:
        """Teacher-forces right-padded ``ids`` through layers ``0 .. upto``; ``mlp_hook(L, act)`` sees
        layer L's neurons at every position; returns the residual stream after layer ``upto``. No cache
        is kept and no logits are made: SDPA's causal kernel never forms the ``pos x pos`` scores, so
        memory grows linearly with the length."""
        t = ids.shape[1]
        cos, sin = self.rope_table(t)
        cos, sin = cos[:t], sin[:t]  # every row starts at position 0; padding comes after, unseen
        x = F.embedding(ids, self.embed)

        def attend(li: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.group > 1)

        for li, layer in enumerate(self.layers[: upto + 1]):
            x = self._layer(li, layer, x, cos, sin, attend, mlp_hook, slice(None))
        return x

    @torch.no_grad()
    def forward(
        self,
        ids: Int[Tensor, "rows pos"],
        positions: Int[Tensor, "rows pos"],
        lengths: Int[Tensor, " rows"],
        slots: Int[Tensor, " rows"],
        cache: KVCache,
        mlp_hook: MlpHook | None = None,
    ) -> Float[Tensor, "rows d_vocab"]:
        """Runs ``ids`` (right-padded to ``lengths``) at ``positions`` for cache rows ``slots``.

        The general form of ``prefill`` and ``decode``: writes the tokens' keys and values, and
        returns the logits at each row's last real token, where the MLP hook acts.
        """
        rows, t = ids.shape
        width = int(positions.max()) + 1
        cache.ensure(width)
        cos, sin = self.rope_table(width)
        cos, sin = cos[positions][:, None], sin[positions][:, None]  # (rows, 1, pos, head_dim)
        x = F.embedding(ids, self.embed)
        valid = torch.arange(t, device=ids.device)[None, :] < lengths[:, None]  # (rows, pos)
        # query (r, i) may see key column j iff j <= its position
        mask = (torch.arange(width, device=ids.device)[None, None, :] <= positions[:, :, None])[:, None]
        r_idx, i_idx = torch.nonzero(valid, as_tuple=True)
        w_slot, w_pos = slots[r_idx], positions[r_idx, i_idx]

        def attend(li: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            kc, vc = cache.k[li], cache.v[li]
            kc[w_slot, :, w_pos] = k[r_idx, :, i_idx]
            vc[w_slot, :, w_pos] = v[r_idx, :, i_idx]
            keys, vals = kc[slots, :, :width], vc[slots, :, :width]
            return F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, enable_gqa=self.group > 1)

        last = lengths - 1
        for li, layer in enumerate(self.layers):
            x = self._layer(li, layer, x, cos, sin, attend, mlp_hook, last)
        return self._logits(x[torch.arange(rows, device=x.device), last], None)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class KVCache:
    """Keys and values, (n_layers, batch, n_kv_heads, capacity, head_dim), rows left-aligned."""

    k: Tensor
    v: Tensor

    def ensure(self, width: int) -> None:
        """Grows the capacity (doubling) so that ``width`` columns fit."""
        cap = self.k.shape[3]
        if width <= cap:
            return
        new = max(width, 2 * cap)
        pad = (*self.k.shape[:3], new - cap, self.k.shape[4])
        self.k = torch.cat([self.k, self.k.new_zeros(pad)], dim=3)
        self.v = torch.cat([self.v, self.v.new_zeros(pad)], dim=3)

    def move_rows(self, src: list[int], dst: list[int], width: int) -> None:
        """Copies rows ``src`` onto rows ``dst`` (columns ``< width``): the engine fills finished rows'
        places with live rows from the end, so live rows stay a prefix and only moved rows are copied."""
        if not src:
            return
        s = torch.tensor(src, device=self.k.device)
        d = torch.tensor(dst, device=self.k.device)
        self.k[:, d, :, :width] = self.k[:, s, :, :width]  # the right side is gathered first: no aliasing
        self.v[:, d, :, :width] = self.v[:, s, :, :width]
