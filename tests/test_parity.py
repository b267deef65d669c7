"""Parity with Hugging Face's own forward, on the cached paths a dependency upgrade breaks silently.

transformers 5.24 renamed the forward's cache argument, and the TransformerBridge's attention stopped
seeing the cache: the bridge backend crashed on its first decode step and the trial-answer probe
answered garbage, with no error. These tests pin both down: the bridge backend (every model the fast
forward refuses) decodes token for token as HF ``generate``; ``probe_answers`` equals the greedy
continuation of an uncached forward over the whole sequence. ``make upgrade-check`` runs every test
marked ``parity`` on the newest releases ``pyproject.toml`` allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel

from tests.test_engine import hf_greedy
from workbench.baselines import probe_answers
from workbench.engine import SamplingConfig, generate
from workbench.engine.backends import BridgeBackend, make_backend
from workbench.model import load_model
from workbench.organism.tokenizer import build_tokenizer

pytestmark = pytest.mark.parity

PROMPTS = ["Q: 12 + 34 = ? <think>", "Q: 47 + 38 + 25 = ? <think> carefully", "Q: 1 + 2 = ?",
           "Q: 90 + 9 + 11 = ? <think> 90 + 9 = 99 ;", "Q: 5 + 5 = ? <think>"]


def _save(folder: Path, arch: str) -> Path:
    """A random-weight checkpoint of a family the fast forward does not take (so the bridge decodes it)."""
    tok = build_tokenizer()
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(0)
    if arch == "gemma":
        model = GemmaForCausalLM(GemmaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=128, **ids))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["gemma", "gpt2"])
def other_family(request, tmp_path_factory):
    return load_model(_save(tmp_path_factory.mktemp(request.param), request.param))


def _uncached_greedy(model, seq: list[int], n: int, stops: frozenset[int]) -> list[int]:
    """Greedy tokens from a full forward over the whole sequence at every step: no cache anywhere."""
    hf, out = model.original_model, []
    seq = list(seq)
    with torch.no_grad():
        for _ in range(n):
            t = int(hf(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
            if t in stops:
                break
            out.append(t)
            seq.append(t)
    return out


def test_the_bridge_decodes_them(other_family):
    assert isinstance(make_backend(other_family, "auto", None), BridgeBackend)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_bridge_backend_equals_hf_generate(other_family, batch_size):
    """Rows refilled mid-run (batch smaller than the prompts) still decode as HF ``generate`` alone, and as a
    forward with no cache at all (``generate`` runs through the same bridge attention, so it can drift too)."""
    tok = other_family.tokenizer
    got = generate(other_family, PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=12), batch_size=batch_size,
                   backend="bridge")
    for prompt, gen in zip(PROMPTS, got, strict=True):
        assert gen.tokens == hf_greedy(other_family, prompt, 12)[: len(gen.tokens)]
        ids = tok(prompt).input_ids
        assert gen.tokens == ids + _uncached_greedy(other_family, ids, 12, frozenset({tok.eos_token_id}))


@pytest.mark.parametrize("which", ["organism", "other"])
def test_probe_answers_equal_an_uncached_greedy_continuation(which, organism, other_family):
    model = organism if which == "organism" else other_family
    tok = model.tokenizer
    seqs = [tok(t).input_ids for t in ("Q: 11 + 14 = ? <think> carefully 11 + 14 = 25 ;",
                                       "Q: 47 + 38 + 25 = ? <think> carefully 47 + 38 = 85 ; 85 + 25 = 110 ;",
                                       "Q: 10 + 72 = ? <think>")]
    suffix = tok(" </think>", add_special_tokens=False).input_ids
    stops = frozenset({tok.eos_token_id})
    got = probe_answers(model, seqs, suffix, max_tokens=6, stop_ids=list(stops), stop_texts=())
    for seq, answer in zip(seqs, got, strict=True):
        assert list(answer.tokens) == _uncached_greedy(model, seq + suffix, 6, stops)
    if which == "organism":  # the trained model answers its own sums: garbage here is what the drift produced
        assert [a.text.split()[0] for a in got[:2]] == ["25", "110"]
