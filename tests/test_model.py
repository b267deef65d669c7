"""Loading: parity with Hugging Face, hook placement, and clear errors on bad folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, BertConfig, BertModel, PreTrainedTokenizerFast

from tests.conftest import save_tiny_model
from workbench.model import ModelLoadError, load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


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


class TestLoadTokenizer:
    """``load_tokenizer(spec)`` is ``load_model(spec).tokenizer`` without the weights, with the same errors."""

    @staticmethod
    def assert_same(ours, bridges) -> None:
        text = "Q: 47 + 38 = ? <think> carefully ;"
        assert type(ours) is type(bridges)
        assert ours.get_vocab() == bridges.get_vocab() and len(ours) == len(bridges)
        assert ours.special_tokens_map == bridges.special_tokens_map
        assert (ours.padding_side, ours.pad_token, ours.pad_token_id) == \
            (bridges.padding_side, bridges.pad_token, bridges.pad_token_id) and ours.padding_side == "left"
        assert ours(text).input_ids == bridges(text).input_ids

    def test_organism(self, organism):
        self.assert_same(load_tokenizer("organism"), organism.tokenizer)

    def test_tiny_folder_without_a_pad_token(self, tmp_path):
        """A folder that names no pad token gets its EOS as pad, as the bridge's tokenizer does."""
        folder = save_tiny_model(tmp_path, "qwen3")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).exists():
                cfg = json.loads((folder / name).read_text())
                cfg.pop("pad_token", None)
                (folder / name).write_text(json.dumps(cfg))
        tok = load_tokenizer(folder)
        assert tok.pad_token == tok.eos_token is not None
        self.assert_same(tok, load_model(folder).tokenizer)

    def test_text_model(self, tmp_path):
        from tests.text_model import save_text_model

        folder = save_text_model(tmp_path / "text")
        self.assert_same(load_tokenizer(folder), load_model(folder).tokenizer)

    def test_errors_are_load_models(self, tmp_path):
        with pytest.raises(ModelLoadError) as ours:
            load_tokenizer(tmp_path / "nope")
        with pytest.raises(ModelLoadError) as theirs:
            load_model(tmp_path / "nope")
        assert str(ours.value) == str(theirs.value) and "does not exist" in str(ours.value)
        folder = save_tiny_model(tmp_path / "bad", "qwen3")
        (folder / "tokenizer_config.json").write_text("[]")  # valid JSON, not a config: named, not an AttributeError
        with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json holds a JSON list"):
            load_tokenizer(folder)


def _set_config_field(folder, **fields):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(fields)
    (folder / "config.json").write_text(json.dumps(cfg))


def _wordpiece_tokenizer(words):
    """A BERT-style tokenizer built offline: lower-cases, splits punctuation, cleans up spaces on decode."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                 ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", clean_up_tokenization_spaces=True)


class TestConfigErrors:
    """config.json problems name the file, the field and the value, and give a fix that applies."""

    def test_unknown_model_type_is_not_an_upgrade_hint(self, tmp_path):
        folder = save_tiny_model(tmp_path, "llama")
        _set_config_field(folder, model_type="lama")
        with pytest.raises(ModelLoadError) as err:
            load_model(folder)
        msg = str(err.value)
        assert str(folder / "config.json") in msg and "`model_type`" in msg and "'lama'" in msg
        assert "transformers does not know" in msg and "typo" in msg and "convert" in msg
        assert "upgrade" not in msg.lower() and "pip install" not in msg

    def test_missing_model_type(self, tmp_path):
        folder = save_tiny_model(tmp_path, "llama")
        cfg = json.loads((folder / "config.json").read_text())
        del cfg["model_type"]
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelLoadError, match="has no `model_type` field"):
            load_model(folder)

    def test_garbage_config_names_the_file_and_the_position(self, tmp_path):
        (tmp_path / "config.json").write_text("{not json")
        with pytest.raises(ModelLoadError) as err:
            load_model(tmp_path)
        msg = str(err.value)
        assert msg.startswith(f"{tmp_path / 'config.json'} is not valid JSON") and "line 1 column 2" in msg
        assert "save_pretrained" in msg


class TestTokenizerRoundTrip:
    """The tokenizer check asks what matters: ids survive encode -> decode -> encode."""

    def test_clean_up_tokenization_spaces_is_accepted(self, tmp_path):
        folder = save_tiny_model(tmp_path, "qwen3")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
        tok = _wordpiece_tokenizer(["q", ":", "+", "=", "?", *"0123456789", *(f"##{d}" for d in "0123456789")])
        tok.save_pretrained(folder)
        ids = tok("Q: 12 + 34 = ?", add_special_tokens=False).input_ids
        assert tok.decode(ids) == "q : 12 + 34 =?"  # not the probe text, yet the same ids
        bridge = load_model(folder)
        assert bridge.tokenizer.clean_up_tokenization_spaces
        assert bridge.tokenizer("Q: 12 + 34 = ?", add_special_tokens=False).input_ids == ids

    def test_clean_up_that_changes_ids_is_rejected(self, tmp_path):
        # The organism's word-level vocabulary has no "=?": cleaning up spaces turns two tokens into <unk>.
        folder = save_tiny_model(tmp_path, "qwen3")
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "clean_up_tokenization_spaces": True}))
        with pytest.raises(ModelLoadError, match="does not give back its own tokens"):
            load_model(folder)

    def test_unknown_tokens_are_rejected(self, tmp_path):
        folder = save_tiny_model(tmp_path, "qwen3")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
        _wordpiece_tokenizer(["?", "="]).save_pretrained(folder)
        with pytest.raises(ModelLoadError, match="does not give back its own tokens"):
            load_model(folder)


def test_package_loads_the_model_code_on_first_use():
    code = ("import sys, workbench\n"
            "assert 'torch' not in sys.modules, 'import workbench imported torch'\n"
            "from workbench import ModelLoadError, load_model, set_threads\n"
            "import workbench.model as m\n"
            "assert (load_model, set_threads, ModelLoadError) == (m.load_model, m.set_threads, m.ModelLoadError)\n"
            "assert set(workbench.__all__) <= set(dir(workbench))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
