"""The batched sampler: greedy parity with HF generate, padding-independence, reproducibility."""

from __future__ import annotations

import pytest
import torch

from workbench.engine import SamplingConfig, generate

PROMPTS = [
    "Q: 47 + 38 = ? <think>",
    "Q: 12 + 99 + 50 + 31 = ? <think> carefully",
    "Q: 5 + 6 + 70 = ? <think>",
]


def hf_greedy(model, prompt: str, max_new_tokens: int) -> list[int]:
    tok = model.tokenizer
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.original_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return out[0].tolist()


class TestGreedyParity:
    """Greedy decoding equals HF ``generate`` token for token, whatever the batch's padding."""

    def test_tiny_random_model(self, tiny_model):
        cfg = SamplingConfig(temperature=0.0, max_new_tokens=12)
        ours = generate(tiny_model, PROMPTS, cfg)
        for prompt, gen in zip(PROMPTS, ours, strict=True):
            assert gen.tokens == hf_greedy(tiny_model, prompt, 12)[: len(gen.tokens)]
            assert len(gen.generated) == 12 or gen.finish_reason == "eos"

    def test_organism(self, organism):
        ours = generate(organism, PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=60))
        for prompt, gen in zip(PROMPTS, ours, strict=True):
            assert gen.finish_reason == "eos"
            assert gen.tokens == hf_greedy(organism, prompt, 60)


class TestSampling:
    """Each row's draws depend on its key and seed only."""

    def test_row_is_independent_of_its_batch(self, tiny_model):
        cfg = SamplingConfig(temperature=1.0, max_new_tokens=10, seed=3)
        alone = generate(tiny_model, [PROMPTS[1]], cfg, keys=["x"])[0]
        crowd = generate(tiny_model, PROMPTS, cfg, keys=["a", "x", "b"])[1]
        assert alone.tokens == crowd.tokens

    def test_seed_and_key_change_the_draws(self, tiny_model):
        base = SamplingConfig(temperature=1.0, max_new_tokens=10, seed=3)
        a = generate(tiny_model, PROMPTS[:1] * 4, base, keys=list("abcd"))
        assert len({tuple(g.tokens) for g in a}) > 1

    def test_tiny_top_p_is_greedy(self, tiny_model):
        greedy = generate(tiny_model, PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=8))
        nucleus = generate(tiny_model, PROMPTS, SamplingConfig(temperature=1.0, top_p=1e-6, max_new_tokens=8))
        assert [g.tokens for g in greedy] == [g.tokens for g in nucleus]

    @pytest.mark.parametrize("kw", [{"temperature": -1.0}, {"top_p": 0.0}, {"max_new_tokens": 0}])
    def test_bad_settings_are_refused(self, kw):
        with pytest.raises(ValueError, match=next(iter(kw))):
            SamplingConfig(**kw)

    def test_keys_must_match_prompts(self, tiny_model):
        with pytest.raises(ValueError, match="keys"):
            generate(tiny_model, PROMPTS, SamplingConfig(), keys=["a"])
