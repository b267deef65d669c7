"""Loading: parity with Hugging Face, hook placement, and clear errors on bad folders."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertModel

from tests.conftest import save_tiny_model
from workbench.model import ModelLoadError, load_model


class TestParity:
    """The bridge computes what HF computes, and names HF's tensors as TransformerLens does."""

    def test_logits_match_hf(self, tiny_dir):
        bridge = load_model(tiny_dir)
        hf = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
        ids = bridge.tokenizer(["Q: 47 + 38 + 25 = ? <think> carefully 47 + 38 = 85 ;"], return_tensors="pt").input_ids
        with torch.no_grad():
            ours, theirs = bridge(ids), hf(ids).logits
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    def test_hook_post_is_down_proj_input(self, tiny_dir):
        bridge = load_model(tiny_dir)
        hf = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
        ids = bridge.tokenizer(["Q: 12 + 34 = ? <think>"], return_tensors="pt").input_ids
        seen = {}
        handles = [
            layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0]))
            for i, layer in enumerate(hf.model.layers)
        ]
        with torch.no_grad():
            hf(ids)
            _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("mlp.hook_post"))
        for h in handles:
            h.remove()
        assert len(seen) == bridge.cfg.n_layers
        for layer, expected in seen.items():
            torch.testing.assert_close(cache[f"blocks.{layer}.mlp.hook_post"], expected, atol=1e-5, rtol=0)

    def test_keeps_the_folder_tokenizer(self, tiny_dir):
        bridge = load_model(tiny_dir)
        text = "Q: 47 + 38 = ? <think>"
        assert bridge.tokenizer.decode(bridge.tokenizer(text).input_ids, skip_special_tokens=True) == text
        assert bridge.tokenizer.padding_side == "left"

    def test_string_inputs_are_tokenized_as_hf_does(self, tiny_dir):
        bridge = load_model(tiny_dir)
        text = "Q: 47 + 38 = ? <think>"
        assert bridge.to_tokens(text)[0].tolist() == bridge.tokenizer(text).input_ids


class TestErrors:
    """Bad folders fail at the boundary with the file and the fix in the message."""

    def test_missing_folder(self, tmp_path):
        with pytest.raises(ModelLoadError, match="does not exist"):
            load_model(tmp_path / "nope")

    def test_folder_without_config(self, tmp_path):
        with pytest.raises(ModelLoadError, match=r"config\.json"):
            load_model(tmp_path)

    def test_corrupt_config(self, tmp_path):
        (tmp_path / "config.json").write_text("{not json")
        with pytest.raises(ModelLoadError, match=r"config\.json"):
            load_model(tmp_path)

    def test_not_a_causal_lm(self, tmp_path):
        BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(tmp_path)
        with pytest.raises(ModelLoadError, match="not a causal language model"):
            load_model(tmp_path)

    def test_unsupported_architecture(self, tmp_path):
        folder = save_tiny_model(tmp_path, "llama")
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"], cfg["architectures"] = "diffllama", ["DiffLlamaForCausalLM"]
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelLoadError, match="not supported"):
            load_model(folder)

    def test_broken_tokenizer(self, tmp_path):
        folder = save_tiny_model(tmp_path, "qwen3")
        (folder / "tokenizer.json").write_text("{broken")
        with pytest.raises(ModelLoadError, match="tokenizer"):
            load_model(folder)

    def test_tokenizer_of_another_model(self, tmp_path):
        folder = save_tiny_model(tmp_path, "qwen3")
        cfg = json.loads((folder / "config.json").read_text())
        cfg["vocab_size"] = 8
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelLoadError, match="tokenizer"):
            load_model(folder)
