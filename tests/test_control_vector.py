"""Control vectors: an additive neuron edit equals its residual vector (teacher-forced, engine bridge and fast
backends), the GGUF and safetensors files, the refusals, and ``workbench export-steering``."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from workbench.control_vector import ControlVector, from_edits, resid_post, unexportable_reason
from workbench.engine import Controller, Engine, EngineConfig, NeuronEdit, Request, SamplingConfig
from workbench.model import load_model
from workbench.neurons import NeuronSet, NeuronSetError, mlp_post
from workbench.organism.tokenizer import build_tokenizer
from workbench.readout import run_forced

PROMPTS = ("Q: 47 + 38 = ? <think> carefully 47 + 38 = 85 ;", "Q: 4 + 5 = ? <think>")


@pytest.fixture(scope="module")
def llama_bias(tmp_path_factory):
    """A tiny random Llama whose MLPs have biases (down_proj's is added once, whatever its input) and
    non-unit norms (a skipped norm would show)."""
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, mlp_bias=True,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    folder = tmp_path_factory.mktemp("llama-bias")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return load_model(folder)


@pytest.fixture(params=["organism", "llama_bias"])
def model(request):
    return request.getfixturevalue(request.param)


def steering(model, seed: int = 0) -> NeuronEdit:
    """Three neurons in each layer from 1 on, with values of a few activation units either way."""
    rng = np.random.default_rng(seed)
    pairs = [(layer, int(i)) for layer in range(1, model.cfg.n_layers)
             for i in rng.choice(model.cfg.d_mlp, 3, replace=False)]
    return NeuronEdit(NeuronSet.from_pairs(pairs), tuple(rng.normal(0, 2.0, len(pairs)).tolist()), name="steer")


def edit_everywhere(edit: NeuronEdit, d_mlp: int) -> list:
    """The edit as ``mlp.hook_post`` hooks at every position (what llama.cpp's vector does at every token)."""
    hooks = []
    for layer, (pos, idx) in edit.neurons.by_layer().items():
        delta = torch.zeros(d_mlp)
        delta[list(idx)] = torch.tensor([edit.values[p] for p in pos])
        hooks.append((mlp_post(layer), lambda act, hook, delta=delta: act + delta.to(act.dtype)))
    return hooks


def ids(model) -> list[list[int]]:
    return [model.tokenizer(p).input_ids for p in PROMPTS]


class TestEquation:
    """v_L = sum_i delta_i W_out[L][i], and adding it after layer L gives the edit's logits."""

    def test_vector_is_the_edit_through_down_proj(self, model):
        edit = steering(model)
        vector = from_edits(model, [edit])
        assert vector.layers == tuple(range(1, model.cfg.n_layers)) and vector.directions[0].sum() == 0
        for layer, (pos, idx) in edit.neurons.by_layer().items():
            down = model.original_model.model.layers[layer].mlp.down_proj.weight.detach().double()  # (d_model, d_mlp)
            expect = down[:, list(idx)] @ torch.tensor([edit.values[p] for p in pos], dtype=torch.float64)
            np.testing.assert_allclose(vector.directions[layer], expect.numpy(), rtol=1e-6, atol=1e-7)

    def test_logits_equal_the_edit_at_every_position(self, model):
        seqs = ids(model)
        edit = steering(model)
        vector = from_edits(model, [edit])
        base = run_forced(model, seqs)
        edited = run_forced(model, seqs, edit_everywhere(edit, model.cfg.d_mlp))
        added = run_forced(model, seqs, vector.resid_hooks("all"))
        for r, s in enumerate(seqs):
            n = len(s)
            assert (edited[r, :n] - base[r, :n]).abs().max() > 0.05  # the edit moves the logits
            torch.testing.assert_close(added[r, :n], edited[r, :n], atol=1e-4, rtol=1e-5)

    def test_edits_sum(self, organism):
        a, b = steering(organism, 0), steering(organism, 1)
        both = from_edits(organism, [a, dataclasses.replace(b, name="other")])
        np.testing.assert_allclose(both.directions, from_edits(organism, [a]).directions
                                   + from_edits(organism, [b]).directions, atol=1e-6)


class Record(Controller):
    """Keeps every step's logits of every sequence (cloned: the engine reuses its buffer)."""

    def __init__(self) -> None:
        self.logits: dict[str, list[torch.Tensor]] = defaultdict(list)

    def on_step(self, view) -> None:
        for row in view.rows():
            self.logits[view.keys[row]].append(view.logits[row].clone())


def generate(model, backend: str, edits=(), hooks=()) -> tuple[dict[str, list[int]], dict[str, torch.Tensor]]:
    rec = Record()
    cfg = EngineConfig(sampling=SamplingConfig(temperature=0.0, max_new_tokens=6), backend=backend, batch_size=2)
    requests = [Request(str(i), s) for i, s in enumerate(ids(model))]
    with model.hooks(fwd_hooks=list(hooks)):
        done = {f.key: f.tokens for f in Engine(model, cfg, edits, [rec]).run(requests)}
    return done, {k: torch.stack(v) for k, v in rec.logits.items()}


class TestEngine:
    """The engine's edit (last prompt token on) equals the vector added at the same positions."""

    @pytest.mark.parametrize("backend", ["bridge", "fast"])
    def test_generation_with_the_edit_equals_generation_with_the_vector(self, model, backend):
        edit = steering(model)
        vector = from_edits(model, [edit])
        tokens, logits = generate(model, backend, edits=[edit])
        # The fast forward has no residual hook: the vector is added on the bridge, at each row's current token.
        want_tokens, want = generate(model, "bridge", hooks=vector.resid_hooks("last"))
        _, plain = generate(model, "bridge")
        assert tokens == want_tokens
        for key in logits:
            torch.testing.assert_close(logits[key], want[key], atol=1e-4, rtol=1e-5)
        assert any((logits[k][:1] - plain[k][:1]).abs().max() > 0.05 for k in logits)  # the edit does something


class TestFiles:
    """GGUF as llama.cpp and repeng read it; safetensors keyed by hook names; both round-trip."""

    def test_gguf_reads_back_with_the_gguf_package(self, organism, tmp_path):
        vector = from_edits(organism, [steering(organism)], {"alpha": 0.3, "gated": False})
        path = vector.save(tmp_path / "v.gguf")
        reader = gguf.GGUFReader(str(path))
        field = {name: f.contents() for name, f in reader.fields.items()}
        assert field["general.architecture"] == "controlvector"
        assert field["controlvector.model_hint"] == "qwen3"
        assert field["controlvector.layer_count"] == organism.cfg.n_layers - 1
        assert field["workbench.model_hash"] == vector.model_hash and len(vector.model_hash) == 64
        assert json.loads(field["workbench.provenance"])["gated"] is False
        tensors = {t.name: t for t in reader.tensors}
        assert sorted(tensors) == [f"direction.{layer}" for layer in range(1, organism.cfg.n_layers)]
        for layer in range(1, organism.cfg.n_layers):
            t = tensors[f"direction.{layer}"]
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [organism.cfg.d_model]
            np.testing.assert_array_equal(t.data, vector.directions[layer])
        back = ControlVector.load(path)
        np.testing.assert_array_equal(back.directions, vector.directions)
        assert (back.model_hint, back.model_hash, back.about()) == (vector.model_hint, vector.model_hash,
                                                                     vector.about())

    def test_layer0_is_refused_by_gguf_unless_skipped(self, organism, tmp_path):
        edit = NeuronEdit(NeuronSet.from_pairs([(0, 5), (2, 9)]), (1.0, -1.0))
        vector = from_edits(organism, [edit])
        with pytest.raises(ValueError, match=r"layer 0 .*skip_layer0"):
            vector.save_gguf(tmp_path / "v.gguf")
        assert not (tmp_path / "v.gguf").exists()
        vector.save_gguf(tmp_path / "v.gguf", skip_layer0=True)
        reader = gguf.GGUFReader(str(tmp_path / "v.gguf"))
        assert "direction.0" not in {t.name for t in reader.tensors}
        assert reader.fields["workbench.skipped_layer0_norm"].contents() == pytest.approx(
            float(np.linalg.norm(vector.directions[0])), rel=1e-6)
        back = ControlVector.load(tmp_path / "v.gguf")
        assert back.layers == (2,)
        np.testing.assert_array_equal(back.directions[2], vector.directions[2])

    def test_a_repeng_style_file_loads_with_direction_n_as_row_n(self, tmp_path):
        path = tmp_path / "repeng.gguf"
        writer = gguf.GGUFWriter(str(path), "controlvector")  # as repeng's ControlVector.export_gguf writes
        writer.add_string("controlvector.model_hint", "llama")
        writer.add_uint32("controlvector.layer_count", 2)
        for layer in (1, 3):
            writer.add_tensor(f"direction.{layer}", np.full(4, float(layer), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        vector = ControlVector.load(path)
        assert vector.directions.shape == (4, 4) and vector.layers == (1, 3) and vector.model_hint == "llama"
        assert vector.directions[3].tolist() == [3.0] * 4

    def test_safetensors_round_trip(self, organism, tmp_path):
        from safetensors import safe_open

        vector = from_edits(organism, [steering(organism)], {"alpha": 0.3})
        path = vector.save(tmp_path / "v.safetensors")
        with safe_open(str(path), framework="numpy") as f:
            assert sorted(f.keys()) == [resid_post(layer) for layer in vector.layers]
            meta = f.metadata()
            np.testing.assert_array_equal(f.get_tensor(resid_post(1)), vector.directions[1])
        assert meta["model_hash"] == vector.model_hash and json.loads(meta["provenance"])["alpha"] == 0.3
        back = ControlVector.load(path)
        np.testing.assert_array_equal(back.directions, vector.directions)
        assert back.about() == vector.about() and back.model_name == vector.model_name

    def test_wrong_files_are_refused(self, organism, tmp_path):
        vector = from_edits(organism, [steering(organism)])
        with pytest.raises(ValueError, match=r"\.gguf or \.safetensors"):
            vector.save(tmp_path / "v.pt")
        writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with pytest.raises(ValueError, match="'llama', not 'controlvector'"):
            ControlVector.load(tmp_path / "m.gguf")


class TestRefusals:
    """What no fixed vector can reproduce is refused, saying why and what to do."""

    def test_set_edit(self, organism):
        with pytest.raises(ValueError, match=r"mode='set'.*only mode='add' exports"):
            from_edits(organism, [NeuronEdit(NeuronSet.from_pairs([(1, 2)]), (0.0,), mode="set")])

    def test_gated_edit(self, organism):
        gated = dataclasses.replace(steering(organism), default_on=False)
        with pytest.raises(ValueError, match=r"default_on=False.*gate=False"):
            from_edits(organism, [gated])

    def test_neurons_outside_the_model(self, organism):
        with pytest.raises(NeuronSetError):
            from_edits(organism, [NeuronEdit(NeuronSet.from_pairs([(9, 2)]), (1.0,))])
        with pytest.raises(ValueError, match="at least one"):
            from_edits(organism, [])

    def test_a_norm_after_the_mlp(self, organism):
        from transformers import Gemma2Config, Gemma2ForCausalLM

        gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, head_dim=8))
        assert "post_feedforward_layernorm" in unexportable_reason(gemma)
        assert unexportable_reason(organism.original_model) is None


def ranked_run(root: Path, pairs: list[tuple[int, int]]) -> Path:
    """A run directory holding just what export-steering reads: its manifest's model and neurons/rcn.json."""
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"identity": {"config": {"model": "organism"}}}))
    n = len(pairs)
    correct, incorrect = tuple(0.1 * (i + 1) for i in range(n)), tuple(-0.2 * (i + 1) for i in range(n))
    NeuronSet.from_pairs(pairs, scores=tuple(c - i for c, i in zip(correct, incorrect, strict=True)),
                         group_means=(("correct", correct), ("incorrect", incorrect)),
                         model_shape=(4, 512)).save(root / "neurons" / "rcn.json")
    return root


class TestCli:
    """``workbench export-steering`` builds AdaRAS's edit ungated and writes it."""

    def test_writes_the_adaras_edit_as_gguf(self, organism, tmp_path):
        from workbench.adaras.steering import AdarasSteering
        from workbench.cli import app
        from workbench.evaluation import MethodContext

        run = ranked_run(tmp_path / "run", [(1, 10), (3, 20), (2, 30), (1, 40)])
        out = tmp_path / "adaras.gguf"
        result = CliRunner().invoke(app, ["export-steering", str(run), "--out", str(out), "--k", "3", "--alpha", "0.5"])
        assert result.exit_code == 0, result.output
        assert "unconditional" in result.output and "every position" in result.output
        edit = AdarasSteering(k=3, alpha=0.5, gate=False).edit(MethodContext(organism, run, None))
        vector = ControlVector.load(out)
        np.testing.assert_allclose(vector.directions, from_edits(organism, [edit]).directions, atol=1e-7)
        about = vector.about()
        assert about["gated"] is False and about["alpha"] == 0.5 and about["neurons"]["k"] == 3
        assert about["neurons"]["sha256"] and about["edits"][0]["neurons"] == 3

    def test_layer0_and_bad_suffix(self, organism, tmp_path):
        from workbench.cli import app

        run = ranked_run(tmp_path / "run", [(0, 10), (2, 30)])
        runner = CliRunner()
        result = runner.invoke(app, ["export-steering", str(run), "--out", str(tmp_path / "v.gguf"), "--k", "2"])
        assert result.exit_code == 2 and "--skip-layer0" in result.output
        result = runner.invoke(app, ["export-steering", str(run), "--out", str(tmp_path / "v.gguf"), "--k", "2",
                                     "--skip-layer0", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["skipped_layer0"] is True
        result = runner.invoke(app, ["export-steering", str(run), "--out", str(tmp_path / "v.safetensors"), "--k", "2"])
        assert result.exit_code == 0 and ControlVector.load(tmp_path / "v.safetensors").layers == (0, 2)
        result = runner.invoke(app, ["export-steering", str(run), "--out", str(tmp_path / "v.npy")])
        assert result.exit_code == 2 and ".safetensors" in result.output
