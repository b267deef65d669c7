"""The fast forward against HF on every config field that changes the forward pass.

Configs it implements (attention and MLP biases, static RoPE scalings, head_dim, tied embeddings,
other activations) must give HF's logits and HF's greedy tokens; configs it does not (dynamic
RoPE, sliding windows, ...) must be refused with the reason, and the engine's ``auto`` backend must
then fall back to the bridge and still decode exactly as HF does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.activations import ACT2FN

from workbench import load_model
from workbench.engine import Engine, EngineConfig, Request, SamplingConfig, generate
from workbench.engine.fast import ACTIVATIONS, FastDecoder, unsupported_reason
from workbench.organism.tokenizer import build_tokenizer

PROMPTS = [
    "Q: 47 + 38 = ? <think>",
    "Q: 12 + 99 + 50 + 31 = ? <think> carefully",
    "Q: 5 + 6 = ?",
    "Q: 88 + 19 + 44 = ? <think> quickly 88",
    "Q: 60 + 61 + 62 + 63 = ? <think>",
]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)
CLASSES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def make_config(arch: str, **overrides):
    tok = build_tokenizer()
    base = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False, architectures=[CLASSES[arch][1].__name__],
    )
    if arch == "mistral":
        base["sliding_window"] = None  # Mistral's default (4096) is a window; most cases want none
    return CLASSES[arch][0](**{**base, **overrides})


def save_model(folder: Path, arch: str, **overrides) -> Path:
    """A random-weight checkpoint whose norms and biases are far from their init (1 and 0)."""
    torch.manual_seed(0)
    model = CLASSES[arch][1](make_config(arch, **overrides))
    # HF initialises biases to 0 and norms to 1: a forward that skipped either would still agree.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def load_hf(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def hf_greedy(hf, tok, prompt: str, max_new_tokens: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt").input_ids
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return out[0].tolist()


# name -> (arch, config overrides); each must run on the fast forward and match HF
SUPPORTED = {
    "llama_attention_and_mlp_bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama_attention_bias": ("llama", dict(attention_bias=True)),
    "qwen3_attention_bias": ("qwen3", dict(attention_bias=True)),
    "qwen2_qkv_bias_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "llama_rope_linear": ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4})),
    "llama_rope_llama3": ("llama", dict(rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16, "rope_theta": 1e4})),
    "qwen2_rope_yarn": ("qwen2", dict(rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 1e4})),
    "mistral_wide_head_dim": ("mistral", dict(head_dim=32)),
    "llama_gelu_tanh": ("llama", dict(hidden_act="gelu_pytorch_tanh", mlp_bias=True)),
}


@pytest.fixture(scope="module", params=sorted(SUPPORTED))
def supported_dir(request, tmp_path_factory) -> Path:
    arch, overrides = SUPPORTED[request.param]
    return save_model(tmp_path_factory.mktemp(request.param), arch, **overrides)


@pytest.mark.parity
class TestSupportedConfigs:
    """Every field the fast forward claims is computed as HF computes it."""

    def test_logits_match_hf_in_prefill_and_decode(self, supported_dir):
        hf, tok = load_hf(supported_dir), build_tokenizer()
        assert unsupported_reason(hf.config) is None
        dec = FastDecoder(hf)
        prompts = [tok(p).input_ids for p in PROMPTS]
        n, steps = len(prompts), 4
        lens = torch.tensor([len(p) for p in prompts])
        width = int(lens.max())
        ids = torch.full((n, width), tok.pad_token_id)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
        positions = torch.minimum(torch.arange(width)[None].expand(n, width), (lens - 1)[:, None])
        follow = torch.randint(4, len(tok), (n, steps))
        cache, slots = dec.new_cache(n, 8), torch.arange(n)  # small capacity: decoding must grow it
        got = [dec.forward(ids, positions, lens, slots, cache)]
        for s in range(steps):
            got.append(dec.forward(follow[:, s : s + 1], (lens + s)[:, None], torch.ones(n, dtype=torch.long),
                                   slots, cache))
        for i, p in enumerate(prompts):
            full = torch.cat([torch.tensor(p), follow[i]])[None]
            with torch.no_grad():
                want = hf(full).logits[0, len(p) - 1 :].float()
            torch.testing.assert_close(torch.stack([g[i] for g in got]), want, atol=1e-4, rtol=1e-4)

    def test_engine_fast_greedy_matches_hf_generate(self, supported_dir):
        model, hf, tok = load_model(supported_dir), load_hf(supported_dir), build_tokenizer()
        ours = generate(model, PROMPTS, GREEDY, batch_size=2, backend="fast")
        for prompt, gen in zip(PROMPTS, ours, strict=True):
            assert gen.tokens == hf_greedy(hf, tok, prompt, GREEDY.max_new_tokens)[: len(gen.tokens)]


def test_bias_is_visible(tmp_path):
    """Guards the tests above: dropping the o_proj bias changes the logits by far more than 1e-4."""
    hf = load_hf(save_model(tmp_path, "qwen3", attention_bias=True))
    ids = build_tokenizer()(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        before = hf(ids).logits
        for layer in hf.model.layers:
            layer.self_attn.o_proj.bias.zero_()
        assert (hf(ids).logits - before).abs().max() > 1e-2


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_are_hfs(name):
    x = torch.randn(1000) * 4
    torch.testing.assert_close(ACTIVATIONS[name](x), ACT2FN[name](x), atol=0, rtol=0)


LONGROPE = {"rope_type": "longrope", "rope_theta": 1e4, "original_max_position_embeddings": 64,
            "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}

# name -> (arch, config overrides, words the reason must contain)
REFUSED = {
    "rope_dynamic": ("llama", dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
                     "dynamic"),
    "rope_longrope": ("llama", dict(rope_parameters=LONGROPE), "longrope"),
    "rope_unknown": ("llama", dict(rope_parameters={"rope_type": "proportional", "rope_theta": 1e4}),
                     "proportional"),
    "partial_rotary": ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                      "partial_rotary_factor": 0.5}), "partial rotary"),
    "mistral_window": ("mistral", dict(sliding_window=8), "sliding-window"),
    "qwen2_window_layers": ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
                            "sliding-window"),
    "qwen3_layer_types": ("qwen3", dict(layer_types=["full_attention", "sliding_attention"]), "sliding-window"),
    "activation": ("llama", dict(hidden_act="gelu_new"), "activation 'gelu_new'"),
    "architecture": ("llama", dict(architectures=["GemmaForCausalLM"]), "architecture"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_reason_names_the_field(name):
    arch, overrides, words = REFUSED[name]
    reason = unsupported_reason(make_config(arch, **overrides))
    assert reason is not None and words in reason


def test_unknown_model_type_is_refused():
    # AutoModel picks the class from model_type, not architectures: a Gemma with a Llama name is a Gemma.
    config = make_config("llama")
    config.model_type = "gemma"
    assert "model type 'gemma'" in unsupported_reason(config)


def test_quantized_weights_are_refused():
    config = make_config("llama")
    config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    assert "quantized" in unsupported_reason(config)


# name -> (arch, config overrides, reason words, batch size); each is checked end to end through the engine
FALLBACKS = {
    # max_position_embeddings below the sequence lengths, so the dynamic rescaling really happens. One
    # row at a time: its frequencies follow the longest row in a call, so batched rows need not match
    # HF running each prompt alone.
    "llama_rope_dynamic": ("llama", dict(max_position_embeddings=16, rope_parameters={
        "rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}), "dynamic", 1),
    # windows shorter than the prompts, so they really cut attention
    "mistral_sliding_window": ("mistral", dict(sliding_window=4), "sliding-window", 3),
    "qwen2_sliding_window": ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
                             "sliding-window", 3),
}


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_refused_config_falls_back_to_hf_exact_bridge(name, tmp_path):
    arch, overrides, words, batch_size = FALLBACKS[name]
    folder = save_model(tmp_path, arch, **overrides)
    model, hf, tok = load_model(folder), load_hf(folder), build_tokenizer()
    assert words in unsupported_reason(model.original_model.config)
    with pytest.raises(ValueError, match=words):
        generate(model, PROMPTS[:1], GREEDY, backend="fast")
    engine = Engine(model, EngineConfig(sampling=GREEDY))
    list(engine.run([Request("a", tok(PROMPTS[0]).input_ids)]))
    assert engine.backend_name == "BridgeBackend"
    ours = generate(model, PROMPTS, GREEDY, batch_size=batch_size, backend="auto")
    for prompt, gen in zip(PROMPTS, ours, strict=True):
        assert gen.tokens == hf_greedy(hf, tok, prompt, GREEDY.max_new_tokens)[: len(gen.tokens)]
