"""The engine: refilling rows, edits, controllers and events, and hooks that always come off."""

from __future__ import annotations

import pytest
import torch

from workbench.engine import Controller, Engine, EngineConfig, NeuronEdit, Request, SamplingConfig, generate
from workbench.neurons import NeuronSet

PROMPTS = [
    "Q: 47 + 38 = ? <think>",
    "Q: 12 + 99 + 50 + 31 = ? <think> carefully",
    "Q: 5 + 6 + 70 = ? <think>",
    "Q: 88 + 19 + 44 = ? <think> quickly 88",
    "Q: 1 + 2 = ?",
    "Q: 60 + 61 + 62 + 63 = ? <think>",
    "Q: 99 + 99 = ? <think> slowly",
]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=14)
NEURONS = NeuronSet.from_pairs([(0, 3), (1, 5), (1, 17)])


def hook_counts(model) -> int:
    return sum(len(hp._forward_hooks) for name, hp in model.hook_dict.items())


def hf_greedy(model, prompt: str, max_new_tokens: int, pre_hook=None) -> list[int]:
    tok, hf = model.tokenizer, model.original_model
    handles = [layer.mlp.down_proj.register_forward_pre_hook(pre_hook(i)) for i, layer in enumerate(hf.model.layers)] \
        if pre_hook else []
    try:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    finally:
        for h in handles:
            h.remove()
    return out[0].tolist()


BACKENDS = ["fast", "bridge"]


@pytest.mark.parity
class TestRefill:
    """Rows that finish are refilled; every row still decodes as if it ran alone, on both backends."""

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
    def test_greedy_equals_hf_generate_with_refill(self, tiny_model, batch_size, backend):
        ours = generate(tiny_model, PROMPTS, GREEDY, batch_size=batch_size, backend=backend)
        for prompt, gen in zip(PROMPTS, ours, strict=True):
            assert gen.tokens == hf_greedy(tiny_model, prompt, 14)[: len(gen.tokens)]

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_organism_greedy_with_refill(self, organism, backend):
        cfg = SamplingConfig(temperature=0.0, max_new_tokens=80)
        ours = generate(organism, PROMPTS * 2, cfg, keys=[str(i) for i in range(14)], batch_size=3, backend=backend)
        for prompt, gen in zip(PROMPTS * 2, ours, strict=True):
            assert gen.tokens == hf_greedy(organism, prompt, 80)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_sampling_is_independent_of_batch_size(self, tiny_model, backend):
        cfg = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=5)
        keys = [f"p{i}/0" for i in range(len(PROMPTS))]
        a = generate(tiny_model, PROMPTS, cfg, keys=keys, batch_size=2, backend=backend)
        b = generate(tiny_model, PROMPTS, cfg, keys=keys, batch_size=64, backend=backend)
        assert [g.tokens for g in a] == [g.tokens for g in b]

    def test_backends_sample_the_same_tokens(self, organism):
        cfg = SamplingConfig(temperature=1.0, max_new_tokens=60, seed=2)
        keys = [f"p{i}/0" for i in range(len(PROMPTS))]
        fast = generate(organism, PROMPTS, cfg, keys=keys, batch_size=3, backend="fast")
        bridge = generate(organism, PROMPTS, cfg, keys=keys, batch_size=3, backend="bridge")
        assert [g.tokens for g in fast] == [g.tokens for g in bridge]


class TestSampling:
    """Settings are validated; seeds and keys, not batch neighbours, decide the draws."""

    def test_seed_and_key_change_the_draws(self, tiny_model):
        cfg = SamplingConfig(temperature=1.0, max_new_tokens=10, seed=3)
        out = generate(tiny_model, PROMPTS[:1] * 4, cfg, keys=list("abcd"))
        assert len({tuple(g.tokens) for g in out}) > 1

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


@pytest.mark.parity
class TestFastForward:
    """The fast forward matches HF on every architecture it claims, and refuses the rest clearly."""

    def test_greedy_parity_per_architecture(self, tiny_dir):
        from workbench import load_model

        model = load_model(tiny_dir)
        ours = generate(model, PROMPTS, GREEDY, batch_size=2, backend="fast")
        for prompt, gen in zip(PROMPTS, ours, strict=True):
            assert gen.tokens == hf_greedy(model, prompt, 14)[: len(gen.tokens)]

    def test_unsupported_config_is_refused_or_falls_back(self, tiny_model, monkeypatch):
        monkeypatch.setattr(tiny_model.original_model.config, "sliding_window", 4, raising=False)
        monkeypatch.setattr(tiny_model.original_model.config, "use_sliding_window", True, raising=False)
        with pytest.raises(ValueError, match="sliding-window"):
            generate(tiny_model, PROMPTS[:1], GREEDY, backend="fast")
        engine = Engine(tiny_model, EngineConfig(sampling=GREEDY))
        list(engine.run([Request("a", tiny_model.tokenizer(PROMPTS[0]).input_ids)]))
        assert engine.backend_name == "BridgeBackend"

    def test_requests_are_validated(self, tiny_model):
        with pytest.raises(ValueError, match="empty prompt"):
            list(Engine(tiny_model, EngineConfig()).run([Request("a", [])]))
        with pytest.raises(ValueError, match="unique"):
            generate(tiny_model, PROMPTS[:2], GREEDY, keys=["a", "a"])


class TestEdits:
    """Edits act at the current position of every forward pass, like a pre-hook on HF's down_proj."""

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_add_edit_matches_a_down_proj_pre_hook(self, tiny_model, backend):
        values = (4.0, -3.0, 5.0)
        edit = NeuronEdit(NEURONS, values)
        by_layer = NEURONS.by_layer()

        def pre_hook(layer):
            def fn(module, args):
                x = args[0].clone()
                if layer in by_layer:
                    pos, idx = by_layer[layer]
                    x[:, -1, list(idx)] += torch.tensor([values[p] for p in pos])
                return (x,)
            return fn

        ours = generate(tiny_model, PROMPTS, GREEDY, batch_size=3, edits=[edit], backend=backend)
        plain = generate(tiny_model, PROMPTS, GREEDY, batch_size=3, backend=backend)
        assert any(a.tokens != b.tokens for a, b in zip(ours, plain, strict=True))  # the edit matters
        for prompt, gen in zip(PROMPTS, ours, strict=True):
            assert gen.tokens == hf_greedy(tiny_model, prompt, 14, pre_hook)[: len(gen.tokens)]

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_set_edit_is_what_monitors_read(self, tiny_model, backend):
        seen = []

        class Watch(Controller):
            neurons = NEURONS

            def on_step(self, view):
                seen.append(view.acts[list(view.rows())].clone())

        edit = NeuronEdit(NEURONS, (1.5, 2.5, 3.5), mode="set")
        generate(tiny_model, PROMPTS[:3], GREEDY, edits=[edit], controllers=[Watch()], backend=backend)
        for acts in seen:
            torch.testing.assert_close(acts, torch.tensor([[1.5, 2.5, 3.5]]).expand_as(acts))

    def test_edit_toggled_off_per_row(self, tiny_model):
        class OffForFirst(Controller):
            def on_step(self, view):
                for row in view.rows():
                    if view.keys[row] == "0" and view.n_generated[row] == 0:
                        view.set_edit(row, "push", False)

        edit = NeuronEdit(NEURONS, (9.0, 9.0, 9.0), name="push", default_on=False)
        on = NeuronEdit(NEURONS, (9.0, 9.0, 9.0), name="push")
        off_run = generate(tiny_model, PROMPTS[:2], GREEDY, edits=[edit])
        plain = generate(tiny_model, PROMPTS[:2], GREEDY)
        assert [g.tokens for g in off_run] == [g.tokens for g in plain]
        toggled = generate(tiny_model, PROMPTS[:2], GREEDY, edits=[on], controllers=[OffForFirst()])
        assert [e.kind for e in toggled[0].events] == ["edit_off"]

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_initial_edits_cover_the_prefill(self, tiny_model, backend):
        """An edit switched on before a sequence's prompt runs equals an edit that is on from the start,
        token for token (its first generated token included); other sequences stay unedited."""

        class OnForFirst(Controller):
            def initial_edits(self, key):
                return {"push": True} if key == "0" else {}

        off = NeuronEdit(NEURONS, (9.0, 9.0, 9.0), name="push", default_on=False)
        on = NeuronEdit(NEURONS, (9.0, 9.0, 9.0), name="push")
        switched = generate(tiny_model, PROMPTS[:2], GREEDY, edits=[off], controllers=[OnForFirst()],
                            batch_size=1, backend=backend)
        always = generate(tiny_model, PROMPTS[:2], GREEDY, edits=[on], backend=backend)
        plain = generate(tiny_model, PROMPTS[:2], GREEDY, backend=backend)
        assert switched[0].tokens == always[0].tokens != plain[0].tokens
        assert switched[1].tokens == plain[1].tokens
        assert [(e.kind, e.payload) for e in switched[0].events] == [("edit_on", {"edit": "push",
                                                                                 "before_prefill": True})]

    def test_bad_edits_are_refused(self, tiny_model):
        with pytest.raises(ValueError, match="values"):
            NeuronEdit(NEURONS, (1.0,))
        outside = NeuronEdit(NeuronSet.from_pairs([(7, 0)]), (1.0,))
        with pytest.raises(ValueError, match="outside the model"):
            generate(tiny_model, PROMPTS[:1], GREEDY, edits=[outside])


class TestControllers:
    """Controllers watch live activations and ban, force or stop per sequence; every action is an event."""

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_monitor_reads_the_live_activations(self, tiny_model, backend):
        reads: dict[str, list[torch.Tensor]] = {}

        class Record(Controller):
            neurons = NEURONS

            def on_step(self, view):
                for row in view.rows():
                    reads.setdefault(view.keys[row], []).append(view.acts[row].clone())

        gen = generate(tiny_model, PROMPTS[:3], GREEDY, batch_size=2, controllers=[Record()], backend=backend)
        # Teacher-force the finished sequence: the reads are hook_post at the positions that chose each token.
        for g in gen:
            ids = torch.tensor([g.tokens[:-1]])
            _, cache = tiny_model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_post"))
            expected = torch.stack([cache[f"blocks.{layer}.mlp.hook_post"][0, :, idx] for layer, idx in
                                    zip(NEURONS.layers, NEURONS.indices, strict=True)], dim=-1)
            got = torch.stack(reads[g.key])
            torch.testing.assert_close(got, expected[g.prompt_len - 1:], atol=1e-5, rtol=0)

    def test_ban_force_and_stop(self, tiny_model):
        tok = tiny_model.tokenizer
        banned = tok.convert_tokens_to_ids("▁wait")
        forced = tok.convert_tokens_to_ids(["▁</think>", "▁7"])

        class Act(Controller):
            def on_step(self, view):
                for row in view.rows():
                    view.ban(row, [banned])
                    if view.n_generated[row] == 2:
                        view.force(row, forced)
                    if view.n_generated[row] == 6:
                        view.stop(row, "enough")

        cfg = SamplingConfig(temperature=1.0, max_new_tokens=30, seed=1)
        for g in generate(tiny_model, PROMPTS, cfg, batch_size=3, controllers=[Act()]):
            assert banned not in g.generated
            assert g.generated[2:4] == forced or g.finish_reason == "eos"
            if g.finish_reason != "eos":
                assert g.finish_reason == "enough" and len(g.generated) == 6
                kinds = [e.kind for e in g.events]
                assert kinds.count("force") == 1 and kinds[-1] == "stop"
                assert [e.step for e in g.events if e.kind == "force"] == [2]


def test_greedy_equals_transformer_lens_generate(organism):
    tok = organism.tokenizer
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=60)
    for prompt, gen in zip(PROMPTS, generate(organism, PROMPTS, cfg, batch_size=4), strict=True):
        ids = torch.tensor([tok(prompt).input_ids])
        out = organism.generate(ids, max_new_tokens=60, do_sample=False, verbose=False, eos_token_id=tok.eos_token_id)
        theirs = out[0].tolist()
        assert gen.tokens == theirs[: len(gen.tokens)]


class _StopAt(Controller):
    """Stops each sequence after a number of tokens that depends on its key, so rows finish out of step."""

    def __init__(self, lengths: dict[str, int]):
        self.lengths = lengths

    def on_step(self, view):
        for row in view.rows():
            if view.n_generated[row] >= self.lengths[view.keys[row]]:
                view.stop(row, "length")


STAGGER = [3, 9, 1, 6, 12, 2, 7, 4, 10, 5, 8, 11, 3, 6, 1, 9, 2, 12, 4, 7]


@pytest.mark.parity
class TestStaggeredRefill:
    """Rows finish at different steps, so refills merge into a cache that other rows are mid-way through."""

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_greedy_equals_hf_per_architecture(self, tiny_dir, backend):
        from workbench import load_model

        model = load_model(tiny_dir)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(STAGGER))]
        keys = [str(i) for i in range(len(STAGGER))]
        ours = generate(model, prompts, SamplingConfig(temperature=0.0, max_new_tokens=12), keys=keys, batch_size=4,
                        backend=backend, controllers=[_StopAt(dict(zip(keys, STAGGER, strict=True)))])
        for prompt, n, gen in zip(prompts, STAGGER, ours, strict=True):
            assert gen.tokens == hf_greedy(model, prompt, n)[: len(gen.tokens)]

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("default_on", [False, True])
    def test_refilled_row_prefills_with_the_edit_default(self, tiny_model, backend, default_on):
        """A controller flips the edit at step 0; the next occupant of that slot must not inherit the flip."""
        first: dict[str, torch.Tensor] = {}

        class FlipAtStart(_StopAt):
            def on_step(self, view):
                for row in view.rows():
                    if view.n_generated[row] == 0:
                        first[view.keys[row]] = view.logits[row].clone()
                        view.set_edit(row, "push", not default_on)
                super().on_step(view)

        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(STAGGER))]
        keys = [str(i) for i in range(len(STAGGER))]
        lengths = dict(zip(keys, STAGGER, strict=True))
        edit = NeuronEdit(NEURONS, (6.0, -6.0, 6.0), name="push", default_on=default_on)
        generate(tiny_model, prompts, GREEDY, keys=keys, batch_size=4, edits=[edit], backend=backend,
                 controllers=[FlipAtStart(lengths)])
        # Each prompt alone, with the edit as its default says, gives the prefill logits expected.
        ref: dict[str, torch.Tensor] = {}
        generate(tiny_model, prompts, SamplingConfig(temperature=0.0, max_new_tokens=1), keys=keys, batch_size=1,
                 edits=[edit] if default_on else [], backend=backend, controllers=[_FirstLogits(ref)])
        for key in keys:
            torch.testing.assert_close(first[key], ref[key], atol=1e-4, rtol=0)


class _FirstLogits(Controller):
    def __init__(self, out: dict):
        self.out = out

    def on_step(self, view):
        for row in view.rows():
            if view.n_generated[row] == 0:
                self.out[view.keys[row]] = view.logits[row].clone()


class TestHookLifetime:
    """Hooks exist only inside forward passes: a paused or abandoned run leaves the model untouched."""

    def test_paused_and_abandoned_bridge_run_leave_no_hooks(self, tiny_model):
        ids = torch.tensor([tiny_model.tokenizer(PROMPTS[0]).input_ids])
        clean = tiny_model(ids).detach().clone()
        before = hook_counts(tiny_model)
        engine = Engine(tiny_model, EngineConfig(sampling=GREEDY, batch_size=2, backend="bridge"),
                        edits=[NeuronEdit(NEURONS, (5.0, 5.0, 5.0))], controllers=[_FirstLogits({})])
        run = engine.run([Request(str(i), tiny_model.tokenizer(p).input_ids) for i, p in enumerate(PROMPTS)])
        next(run)  # paused mid-generation, rows still live
        assert hook_counts(tiny_model) == before
        torch.testing.assert_close(tiny_model(ids), clean, atol=0, rtol=0)
        del run  # abandoned without being closed
        torch.testing.assert_close(tiny_model(ids), clean, atol=0, rtol=0)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_hooks_come_off_after_an_error(self, tiny_model, backend):
        class Boom(Controller):
            neurons = NEURONS

            def on_step(self, view):
                raise RuntimeError("controller failed")

        before = hook_counts(tiny_model)
        with pytest.raises(RuntimeError, match="controller failed"):
            generate(tiny_model, PROMPTS[:2], GREEDY, controllers=[Boom()], backend=backend,
                     edits=[NeuronEdit(NEURONS, (1.0, 1.0, 1.0))])
        assert hook_counts(tiny_model) == before


class TestBadValues:
    """Edits refuse values that are not finite numbers; a sequence whose logits blow up ends on its own."""

    @pytest.mark.parametrize("values", [(float("nan"), 0.0, 0.0), (0.0, float("inf"), 0.0)])
    def test_nonfinite_edit_values_are_refused(self, values):
        with pytest.raises(ValueError, match="must be finite"):
            NeuronEdit(NEURONS, values)

    def test_non_numeric_edit_values_are_refused(self):
        # Under pytest the jaxtyping/beartype checker refuses the call first (a TypeError); without it,
        # NeuronEdit's own check says "values must be numbers".
        with pytest.raises((ValueError, TypeError), match=r"numbers|values"):
            NeuronEdit(NEURONS, (1.0, "x", 2.0))

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_nonfinite_logits_end_the_sequence(self, tiny_model, backend, monkeypatch):
        """fp16 overflow and the like: row 0's logits turn NaN at its third decode step."""
        import workbench.engine.loop as loop

        real = loop.make_backend

        def poisoned(*args, **kwargs):
            b = real(*args, **kwargs)
            decode, calls = b.decode, [0]

            def bad_decode(ids, positions, width, out):
                decode(ids, positions, width, out)
                calls[0] += 1
                if calls[0] == 2:
                    out[0] = float("nan")

            b.decode = bad_decode
            return b

        monkeypatch.setattr(loop, "make_backend", poisoned)
        out = generate(tiny_model, PROMPTS[:3], GREEDY, batch_size=3, backend=backend)
        assert out[0].finish_reason == "nonfinite_logits" and len(out[0].generated) == 2
        assert [e.kind for e in out[0].events] == ["nonfinite_logits"]
        assert all(g.finish_reason != "nonfinite_logits" for g in out[1:])
