"""The fast engine on grouped-query models: HF parity, finished rows dropped, monitors, the neuron site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

import workbench.engine.loop as loop
from workbench import load_model
from workbench.engine import Controller, Engine, EngineConfig, NeuronEdit, NeuronMonitor, Request, SamplingConfig
from workbench.engine.backends import fast_decoder
from workbench.engine.fast import FastDecoder
from workbench.neurons import NeuronSet
from workbench.organism.tokenizer import build_tokenizer

PROMPTS = [
    "Q: 47 + 38 = ? <think>",
    "Q: 12 + 99 + 50 + 31 = ? <think> carefully",
    "Q: 5 + 6 + 70 = ? <think>",
    "Q: 88 + 19 + 44 = ? <think> quickly 88",
    "Q: 1 + 2 = ?",
    "Q: 60 + 61 + 62 + 63 = ? <think>",
]
# Llama-135M's head layout (9 query heads over 3 KV heads), and Qwen3's with its q/k norms.
GQA = {
    "llama_9q_3kv": (LlamaConfig, LlamaForCausalLM, dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                                                          head_dim=8)),
    "qwen3_8q_2kv": (Qwen3Config, Qwen3ForCausalLM, dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                                                         head_dim=16)),
}
NEURONS = NeuronSet.from_pairs([(0, 3), (1, 5), (1, 17), (2, 40)])


def save_gqa(folder: Path, name: str) -> Path:
    tok = build_tokenizer()
    config_cls, model_cls, heads = GQA[name]
    config = config_cls(vocab_size=len(tok), intermediate_size=96, num_hidden_layers=3, max_position_embeddings=256,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        tie_word_embeddings=False, **heads)
    torch.manual_seed(0)
    model = model_cls(config)
    with torch.no_grad():  # norms away from 1, so a skipped norm shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=sorted(GQA))
def gqa_dir(request, tmp_path_factory) -> Path:
    return save_gqa(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def gqa(gqa_dir):
    return load_model(gqa_dir)


def hf_greedy(hf, tok, prompt: str, n: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt").input_ids
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return out[0].tolist()


class StopAt(Controller):
    """Stops sequence ``key`` after ``lengths[key]`` tokens, so rows finish at different steps."""

    def __init__(self, lengths: dict[str, int]):
        self.lengths = lengths

    def on_step(self, view):
        for row in view.rows():
            if view.n_generated[row] >= self.lengths[view.keys[row]]:
                view.stop(row, "stop_at")


STAGGER = [3, 11, 1, 7, 12, 2, 9, 5, 10, 4, 8, 6]


def requests(model, n: int) -> list[Request]:
    return [Request(str(i), model.tokenizer(PROMPTS[i % len(PROMPTS)]).input_ids) for i in range(n)]


def run(model, n: int, batch_size: int, max_new: int = 12, **kw) -> dict[str, list[int]]:
    cfg = EngineConfig(sampling=SamplingConfig(temperature=0.0, max_new_tokens=max_new), batch_size=batch_size,
                       backend="fast", **{k: v for k, v in kw.items() if k in ("packed_weights", "dtype")})
    controllers = kw.get("controllers", [StopAt({str(i): STAGGER[i] for i in range(n)})])
    engine = Engine(model, cfg, edits=kw.get("edits", ()), controllers=controllers, monitors=kw.get("monitors", ()))
    return {f.key: f for f in engine.run(requests(model, n))}


@pytest.mark.parity
class TestGroupedQueryParity:
    """9 query heads over 3 KV heads (and Qwen3's 8 over 2): the fast forward reads the cache unexpanded."""

    @pytest.mark.parametrize("attn", ["eager", "sdpa"])
    def test_logits_match_hf_in_prefill_and_decode(self, gqa_dir, attn):
        hf = AutoModelForCausalLM.from_pretrained(gqa_dir, attn_implementation=attn).eval()
        tok = build_tokenizer()
        dec = FastDecoder(hf)
        prompts = [tok(p).input_ids for p in PROMPTS]
        n, steps = len(prompts), 5
        lens = torch.tensor([len(p) for p in prompts])
        ids = torch.zeros(n, int(lens.max()), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
        follow = torch.randint(4, len(tok), (n, steps))
        cache, out = dec.new_cache(n, 8), torch.empty(n, dec.d_vocab)  # capacity 8: decoding must grow it
        got = [dec.prefill(ids, lens, 0, cache, out=out).clone()]
        for s in range(steps):
            pos = lens + s
            got.append(dec.decode(follow[:, s], pos, int(pos.max()) + 1, cache, out=out).clone())
        for i, p in enumerate(prompts):
            full = torch.cat([torch.tensor(p), follow[i]])[None]
            with torch.no_grad():
                want = hf(full).logits[0, len(p) - 1 :]
            torch.testing.assert_close(torch.stack([g[i] for g in got]), want, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("batch_size", [1, 3, 5, 12])
    def test_greedy_equals_hf_generate_with_staggered_finishes(self, gqa, gqa_dir, batch_size):
        hf = AutoModelForCausalLM.from_pretrained(gqa_dir, attn_implementation="eager").eval()
        ours = run(gqa, len(STAGGER), batch_size)
        for i, n in enumerate(STAGGER):
            assert ours[str(i)].tokens == hf_greedy(hf, gqa.tokenizer, PROMPTS[i % len(PROMPTS)], n)

    def test_unpacked_weights_give_the_same_tokens(self, gqa):
        packed, plain = run(gqa, 6, 3), run(gqa, 6, 3, packed_weights=False)
        assert fast_decoder(gqa.original_model).packed
        assert {k: f.tokens for k, f in packed.items()} == {k: f.tokens for k, f in plain.items()}


class TestFinishedRows:
    """A finished row is never decoded again: live rows stay a prefix and the decode batch shrinks."""

    def test_decode_batch_is_the_live_rows(self, gqa, monkeypatch):
        sizes, live_counts = [], []
        real = loop.make_backend

        def spy(*args, **kwargs):
            backend = real(*args, **kwargs)
            decode = backend.decode

            def recording(ids, positions, width, out):
                sizes.append(len(ids))
                decode(ids, positions, width, out)

            backend.decode = recording
            return backend

        class Count(StopAt):
            def on_step(self, view):
                live_counts.append(len(list(view.rows())))
                super().on_step(view)

        monkeypatch.setattr(loop, "make_backend", spy)
        n = 6  # one wave: nothing waits, so every finish shrinks the batch
        lengths = {str(i): STAGGER[i] for i in range(n)}
        out = run(gqa, n, n, max_new=20, controllers=[Count(lengths)])
        assert all(len(out[k].generated) == lengths[k] for k in lengths)
        # each decode covers exactly the rows alive after the previous step (the first step is the prefill)
        alive_after = [live - sum(1 for k in lengths if lengths[k] == step) for step, live in enumerate(live_counts)]
        assert sizes == alive_after[: len(sizes)]
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1

    def test_only_moved_rows_are_copied(self, gqa, monkeypatch):
        from workbench.engine.fast import KVCache

        moves = []
        real = KVCache.move_rows

        def spy(self, src, dst, width):
            moves.append((list(src), list(dst)))
            real(self, src, dst, width)

        monkeypatch.setattr(KVCache, "move_rows", spy)
        lengths = {"0": 2, "1": 9, "2": 9, "3": 4}  # row 0 then row 3 finish; nothing waits
        run(gqa, 4, 4, controllers=[StopAt(lengths)])
        # row 0 finishes first: the last live row (3) takes its place; row 3's sequence (now row 0) ends next
        # and the new last row (2) moves into row 0
        assert moves == [([3], [0]), ([2], [0])]


def push_from(start: int):
    """The edit ``push`` as a TransformerLens hook: +3 on neuron 5 from position ``start`` on."""

    def hook(act, hook):
        act[0, start:, 5] += 3.0
        return act

    return hook


class TestMonitors:
    """NeuronMonitor statistics equal hook_post read by TransformerLens over the same positions."""

    @pytest.mark.parametrize("backend", ["fast", "bridge"])
    def test_running_mean_and_max_match_teacher_forcing(self, gqa, backend):
        cfg = EngineConfig(sampling=SamplingConfig(temperature=0.0, max_new_tokens=12), batch_size=2,
                           backend=backend)
        edit = NeuronEdit(NeuronSet.from_pairs([(1, 5)]), (3.0,), name="push")  # read after the edit
        lengths = {str(i): STAGGER[i] for i in range(5)}
        engine = Engine(gqa, cfg, edits=[edit], controllers=[StopAt(lengths)],
                        monitors=[NeuronMonitor(NEURONS, "m")])
        for f in engine.run(requests(gqa, 5)):
            # A controller's stop comes after its last token was run; EOS and the length cap before.
            n_positions = len(f.generated) + (f.finish_reason == "stop_at")
            ids = torch.tensor([f.tokens[: f.prompt_len - 1 + n_positions]])
            with gqa.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", push_from(f.prompt_len - 1))]):
                _, cache = gqa.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_post"))
            acts = torch.stack([cache[f"blocks.{layer}.mlp.hook_post"][0, f.prompt_len - 1 :, idx]
                                for layer, idx in zip(NEURONS.layers, NEURONS.indices, strict=True)], -1)
            stats = f.stats["m"]
            assert stats.n_positions == n_positions == acts.shape[0]
            np.testing.assert_allclose(stats.mean, acts.mean(0).numpy(), atol=1e-5)
            np.testing.assert_allclose(stats.max, acts.amax(0).numpy(), atol=1e-5)

    def test_readers_see_their_own_neurons_in_their_own_order(self, gqa):
        """Controllers and monitors share one read buffer (grouped by layer); each still gets its
        neurons in the order of its NeuronSet, overlaps included."""
        sets = [NeuronSet.from_pairs([(2, 40), (0, 3), (1, 17)]), NeuronSet.from_pairs([(1, 17), (2, 1), (0, 3)])]
        seen: list[dict[str, list[torch.Tensor]]] = [{}, {}]

        class Record(Controller):
            def __init__(self, neurons, out):
                self.neurons, self.out = neurons, out

            def on_step(self, view):
                for row in view.rows():
                    self.out.setdefault(view.keys[row], []).append(view.acts[row].clone())

        cfg = EngineConfig(sampling=SamplingConfig(temperature=0.0, max_new_tokens=6), batch_size=2, backend="fast")
        engine = Engine(gqa, cfg, controllers=[Record(ns, out) for ns, out in zip(sets, seen, strict=True)],
                        monitors=[NeuronMonitor(sets[1], "m")])
        for f in engine.run(requests(gqa, 3)):
            _, cache = gqa.run_with_cache(torch.tensor([f.tokens[:-1]]), names_filter=lambda n: "hook_post" in n)
            for ns, out in zip(sets, seen, strict=True):
                want = torch.stack([cache[f"blocks.{layer}.mlp.hook_post"][0, f.prompt_len - 1 :, idx]
                                    for layer, idx in zip(ns.layers, ns.indices, strict=True)], -1)
                torch.testing.assert_close(torch.stack(out[f.key]), want, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(f.stats["m"].max, want.amax(0).numpy(), atol=1e-5)  # want: sets[1]

    def test_monitor_names_are_unique(self, gqa):
        with pytest.raises(ValueError, match="monitor names"):
            Engine(gqa, EngineConfig(), monitors=[NeuronMonitor(NEURONS), NeuronMonitor(NEURONS)])


class TestNeuronSite:
    """What the fast forward edits and reads is exactly TransformerLens's ``blocks.{L}.mlp.hook_post``."""

    def test_every_neuron_equals_hook_post_in_prefill_and_decode(self, gqa):
        dec = FastDecoder(gqa.original_model)
        tok = gqa.tokenizer
        seqs = [tok(p).input_ids for p in PROMPTS[:3]]
        seen: dict[int, list[torch.Tensor]] = {}

        def record(layer, act):
            seen.setdefault(layer, []).append(act.clone())

        n, steps = len(seqs), 4
        lens = torch.tensor([len(s) for s in seqs])
        ids = torch.zeros(n, int(lens.max()), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        follow = torch.randint(4, len(tok), (n, steps))
        cache = dec.new_cache(n, 64)
        dec.prefill(ids, lens, 0, cache, record)
        for s in range(steps):
            dec.decode(follow[:, s], lens + s, int(lens.max()) + s + 1, cache, record)
        for i, s in enumerate(seqs):
            full = torch.cat([torch.tensor(s), follow[i]])[None]
            _, tl = gqa.run_with_cache(full, names_filter=lambda name: name.endswith("mlp.hook_post"))
            for layer in range(gqa.cfg.n_layers):
                ours = torch.stack([step[i] for step in seen[layer]])  # (1 + steps, d_mlp)
                want = tl[f"blocks.{layer}.mlp.hook_post"][0, len(s) - 1 :]
                torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


def test_a_changed_weight_makes_a_new_decoder(gqa_dir):
    """The decoder (with its packed weights) is cached per model; editing a weight in place must not
    leave the engine decoding with the old one."""
    model = load_model(gqa_dir)
    before = run(model, 3, 3)
    first = fast_decoder(model.original_model)
    assert fast_decoder(model.original_model) is first
    with torch.no_grad():
        model.original_model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
    after = run(model, 3, 3)
    assert fast_decoder(model.original_model) is not first
    assert [f.tokens for f in before.values()] != [f.tokens for f in after.values()]
