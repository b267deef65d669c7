"""The GPU path, checked on a CPU: bf16, no host sync inside a forward pass, CUDA-graph bookkeeping.

No GPU is needed: graph capture is replaced by a stand-in that keeps its rules (the step is a
closure of no arguments whose Python values are frozen when it is made, reading and writing only
static buffers), so replays that went wrong would show as tokens, statistics or reads that differ
from the eager engine's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import workbench.engine.graphs as graphs
from workbench import load_model
from workbench.engine import Controller, Engine, EngineConfig, NeuronEdit, NeuronMonitor, SamplingConfig
from workbench.engine.fast import FastDecoder
from workbench.engine.graphs import GraphedDecode
from workbench.engine.hooks import RunHooks
from workbench.neurons import NeuronSet

from .test_engine_gqa import NEURONS, PROMPTS, STAGGER, StopAt, requests, save_gqa

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def gqa_dir(tmp_path_factory) -> Path:
    return save_gqa(tmp_path_factory.mktemp("llama"), "llama_9q_3kv")


@pytest.fixture(scope="module")
def gqa(gqa_dir):
    return load_model(gqa_dir)


def fake_capture(device):
    """Stands in for ``cuda_capture``: runs the step once, as capture does, and replays it by calling it."""

    def capture(step):
        step()
        return step

    return capture


def prompt_batch(tok, prompts):
    seqs = [tok(p).input_ids for p in prompts]
    lens = torch.tensor([len(s) for s in seqs])
    ids = torch.zeros(len(seqs), int(lens.max()), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, lens


class TestBf16:
    """bf16 runs the same forward with bf16 weights and cache; its error is HF's own bf16 error."""

    def test_logits_as_close_to_fp32_as_hfs_bf16(self, gqa_dir, gqa):
        hf32 = AutoModelForCausalLM.from_pretrained(gqa_dir, attn_implementation="eager").eval()
        hf16 = AutoModelForCausalLM.from_pretrained(gqa_dir, dtype=torch.bfloat16, attn_implementation="eager").eval()
        dec = FastDecoder(hf32, dtype=torch.bfloat16)
        assert dec.dtype == torch.bfloat16 and dec.new_cache(1, 4).k.dtype == torch.bfloat16
        ids, lens = prompt_batch(gqa.tokenizer, PROMPTS)
        follow = torch.randint(4, len(gqa.tokenizer), (len(PROMPTS), 3))
        cache = dec.new_cache(len(PROMPTS), 64)
        got = [dec.prefill(ids, lens, 0, cache)]
        for s in range(3):
            got.append(dec.decode(follow[:, s], lens + s, int(lens.max()) + s + 1, cache))
        ours_err, hf_err = [], []
        for i in range(len(PROMPTS)):
            full = torch.cat([ids[i, : lens[i]], follow[i]])[None]
            with torch.no_grad():
                ref = hf32(full).logits[0, lens[i] - 1 :]
                theirs = hf16(full).logits[0, lens[i] - 1 :].float()
            ours = torch.stack([g[i] for g in got])
            assert ours.dtype == torch.float32  # logits come back in fp32
            ours_err.append((ours - ref).abs().max().item())
            hf_err.append((theirs - ref).abs().max().item())
        assert max(ours_err) > 0  # really bf16
        assert max(ours_err) <= 2 * max(hf_err) + 1e-3

    def test_dtype_option_equals_a_model_loaded_in_bf16(self, gqa_dir, gqa):
        cfg = EngineConfig(sampling=GREEDY, batch_size=3, dtype="bfloat16")
        converted = {f.key: f.tokens for f in Engine(gqa, cfg).run(requests(gqa, 6))}
        loaded = load_model(gqa_dir, dtype=torch.bfloat16)
        native = {f.key: f.tokens for f in Engine(loaded, EngineConfig(sampling=GREEDY, batch_size=3))
                  .run(requests(loaded, 6))}
        assert converted == native

    def test_bad_dtype_is_refused(self):
        with pytest.raises(ValueError, match="dtype"):
            EngineConfig(dtype="fp8")

    def test_gpu_options_need_the_fast_backend(self, gqa):
        for kw in ({"dtype": "bfloat16"}, {"cuda_graphs": True}):
            with pytest.raises(ValueError, match="fast backend"):
                list(Engine(gqa, EngineConfig(backend="bridge", **kw)).run(requests(gqa, 1)))

    def test_cuda_graphs_need_a_cuda_device(self, gqa):
        with pytest.raises(ValueError, match="CUDA device"):
            list(Engine(gqa, EngineConfig(cuda_graphs=True)).run(requests(gqa, 1)))


class TestNoHostSync:
    """A forward pass with edits, reads and monitors never brings a value to the host."""

    def test_decode_and_prefill_with_hooks(self, gqa, monkeypatch):
        dec = FastDecoder(gqa.original_model)
        edits = [NeuronEdit(NEURONS, (1.0, 2.0, 3.0, 4.0)),
                 NeuronEdit(NeuronSet.from_pairs([(2, 7)]), (0.5,), mode="set", name="set")]

        class Reader(Controller):
            neurons = NEURONS

        hooks = RunHooks(gqa.cfg.n_layers, gqa.cfg.d_mlp, edits, [Reader()], [NeuronMonitor(NEURONS)], rows=4,
                         device=torch.device("cpu"), dtype=torch.float32)
        ids, lens = prompt_batch(gqa.tokenizer, PROMPTS[:4])
        cache = dec.new_cache(4, 64)
        edit_on = torch.ones(4, 2, dtype=torch.bool)
        widths = [int(lens.max()) + s + 1 for s in range(3)]

        def boom(*args, **kwargs):
            raise AssertionError("host sync inside a forward pass")

        with monkeypatch.context() as m:
            for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
                m.setattr(torch.Tensor, name, boom)
            hooks.begin(slice(0, 4), edit_on, fresh=True)
            dec.prefill(ids, lens, 0, cache, hooks.apply)
            hooks.end()
            for s in range(3):
                hooks.begin(slice(0, 4), edit_on)
                dec.decode(ids[:, 0], lens + s, widths[s], cache, hooks.apply)
                hooks.end()
        assert hooks.acts(0, 4).abs().sum() > 0  # the hooks did run


class Toggle(StopAt):
    """Switches the edit off for some sequences mid-run and records what it reads each step."""

    neurons = NEURONS

    def __init__(self, lengths, reads):
        super().__init__(lengths)
        self.reads = reads

    def on_step(self, view):
        for row in view.rows():
            self.reads.setdefault(view.keys[row], []).append(view.acts[row].clone())
            if int(view.keys[row]) % 2 and view.n_generated[row] == 3:
                view.set_edit(row, "push", False)
        super().on_step(view)


class TestCudaGraphBookkeeping:
    """Graphed decoding equals eager decoding, with edits switched per row, monitors and reads."""

    def run(self, model, cuda_graphs: bool, batch_size: int):
        reads: dict[str, list] = {}
        lengths = {str(i): STAGGER[i] for i in range(len(STAGGER))}
        edit = NeuronEdit(NEURONS, (2.0, -2.0, 2.0, 2.0), name="push")
        engine = Engine(model, EngineConfig(sampling=GREEDY, batch_size=batch_size, cuda_graphs=cuda_graphs),
                        edits=[edit], controllers=[Toggle(lengths, reads)], monitors=[NeuronMonitor(NEURONS, "m")])
        done = {f.key: f for f in engine.run(requests(model, len(STAGGER)))}
        return engine, done, reads

    @pytest.mark.parametrize("batch_size", [5, 12])
    def test_graphed_run_equals_eager_run(self, gqa, monkeypatch, batch_size):
        monkeypatch.setattr(graphs, "cuda_capture", fake_capture)
        _, eager, eager_reads = self.run(gqa, False, batch_size)
        engine, graphed, graphed_reads = self.run(gqa, True, batch_size)
        # one graph per rows bucket met (1, 2, 4, then 5 or 8 and 12; every width fits one bucket)
        assert 2 <= engine.backend.graphs.captured <= 5
        assert {k: f.tokens for k, f in graphed.items()} == {k: f.tokens for k, f in eager.items()}
        assert {k: [(e.step, e.kind) for e in f.events] for k, f in graphed.items()} == \
               {k: [(e.step, e.kind) for e in f.events] for k, f in eager.items()}
        for key, f in graphed.items():
            np.testing.assert_allclose(f.stats["m"].mean, eager[key].stats["m"].mean, atol=1e-6)
            np.testing.assert_allclose(f.stats["m"].max, eager[key].stats["m"].max, atol=1e-6)
            torch.testing.assert_close(torch.stack(graphed_reads[key]), torch.stack(eager_reads[key]), atol=1e-6,
                                       rtol=0)

    def test_graphs_are_recaptured_when_the_cache_grows(self, gqa, monkeypatch):
        monkeypatch.setattr(graphs, "WIDTH_STEP", 8)
        dec = FastDecoder(gqa.original_model)
        edit = NeuronEdit(NEURONS, (3.0, 3.0, 3.0, 3.0))
        results = []
        for graphed in (False, True):
            hooks = RunHooks(gqa.cfg.n_layers, gqa.cfg.d_mlp, [edit], [], [], rows=4, device=torch.device("cpu"),
                             dtype=torch.float32)
            ids, lens = prompt_batch(gqa.tokenizer, PROMPTS[:3])
            cache = dec.new_cache(4, 16)  # small: decoding crosses its capacity
            run = GraphedDecode(dec, hooks, rows=4, capture=fake_capture(None))
            on = torch.ones(3, 1, dtype=torch.bool)
            hooks.begin(slice(0, 3), on, fresh=True)
            out = dec.prefill(ids, lens, 0, cache, hooks.apply)
            steps = []
            for s in range(20):
                tok, pos, buf = out.argmax(-1), lens + s, torch.empty(3, dec.d_vocab)
                hooks.begin(slice(0, 3), on)
                if graphed:
                    run(tok, pos, int(pos.max()) + 1, cache, buf)
                else:
                    dec.decode(tok, pos, int(pos.max()) + 1, cache, hooks.apply, out=buf)
                out = buf
                steps.append(buf.clone())
            results.append(torch.stack(steps))
            if graphed:
                assert cache.k.shape[3] > 16 and run.captured >= 3  # grew, and several widths were captured
        torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=1e-5)
