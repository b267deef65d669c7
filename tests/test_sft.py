"""NeuReasoner's remedy fine-tuning on the organism's recipe: injected errors, trigger tokens masked from the
loss, a model that loads, and the shipped fine-tune's following rates (the generic path: test_finetune_any)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from workbench.model import load_model, organism_dir
from workbench.neureasoner.trainer import SFT_FILE, SftConfig, batch, finetune
from workbench.neureasoner.triggers import add_triggers
from workbench.organism.sft_data import OrganismData, encode_words, inject
from workbench.organism.task import Problem, apply, render_trace, sample_problem
from workbench.organism.tokenizer import build_tokenizer

from .conftest import save_tiny_model

TOKENS = ("<INTRA>", "<INTER>")


def traces(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        yield render_trace(sample_problem(rng, min_operands=3), rng), rng


class TestInject:
    def test_a_slip_is_followed_by_its_trigger_and_the_step_redone_right(self):
        seen = 0
        for trace, rng in traces(60):
            pieces = inject(trace, rng, "slip")
            if pieces is None:
                continue
            seen += 1
            words = [w for w, _ in pieces]
            k = words.index("<INTRA>")
            a, op, b, eq, value = words[k + 1 : k + 6]
            assert eq == "=" and int(value) == apply(op, int(a), int(b))
            untrained = [w for w, keep in pieces[len(trace.prompt.split()):] if not keep]
            assert untrained[-1] == "<INTRA>" and len(untrained) >= 2  # the wrong result, then the trigger
            assert int(untrained[0]) != int(value)
            assert words[-1] == str(trace.labels.answer)  # the remedied trace still ends on its answer
        assert seen > 30

    def test_an_oscillation_is_cut_by_its_trigger_and_the_trace_moves_on(self):
        for trace, rng in traces(60, seed=1):
            pieces = inject(trace, rng, "oscillation")
            if pieces is None:
                continue
            words = [w for w, _ in pieces]
            k = words.index("<INTER>")
            # The words just before the repeat are a completed step, which the repeat starts writing again.
            untrained = [w for w, keep in pieces[len(trace.prompt.split()):] if not keep]
            assert untrained[-1] == "<INTER>"
            assert words[k - len(untrained) + 1] == untrained[0]
            assert all(keep for _, keep in pieces[k + 1 :])
            assert " ".join(words[k + 1 :]) in trace.completion  # what follows is the rendered continuation

    def test_a_false_alarm_teaches_to_keep_what_was_right(self):
        for trace, rng in traces(40, seed=2):
            pieces = inject(trace, rng, "slip_false_alarm")
            if pieces is None:
                continue
            words = [w for w, _ in pieces]
            k = words.index("<INTRA>")
            a, op, b, _, value = words[k + 1 : k + 6]
            # the redone step is one already written before the trigger, with the same (right) value
            assert int(value) == apply(op, int(a), int(b))
            assert any(words[i : i + 5] == [a, op, b, "=", value] for i in range(k))
            assert [w for w, keep in pieces[len(trace.prompt.split()):] if not keep] == ["<INTRA>"]
            pieces = inject(trace, rng, "oscillation_false_alarm")
            assert [w for w, _ in pieces if w != "<INTER>"] == trace.text.split()

    def test_plain_keeps_the_trace_and_a_bad_kind_is_refused(self):
        trace = render_trace(Problem((47, 38)), random.Random(0))
        assert [w for w, _ in inject(trace, random.Random(0), "plain")] == trace.text.split()
        with pytest.raises(ValueError, match="kind must be one of"):
            inject(trace, random.Random(0), "typo")


def label(pieces, trace, tok):
    """The organism labeller's reading of an injected trace, tokenised with the trigger tokens."""
    from workbench.organism.labeler import label_tokens

    ids = tok(" ".join(w for w, _ in pieces)).input_ids
    return label_tokens(Problem.from_id(trace.labels.problem_id), tok.convert_ids_to_tokens(ids))


class TestLabeller:
    """The labeller reads the remedies: a redo after <INTRA> catches the slip; a step cut by a trigger is fine."""

    def test_a_remedied_slip_is_caught_and_the_trace_well_formed(self):
        tok, seen = add_triggers(build_tokenizer()), 0
        for trace, rng in traces(60, seed=3):
            pieces = inject(trace, rng, "slip")
            if pieces is None or trace.labels.slips or trace.labels.repeats:
                continue
            seen += 1
            labels = label(pieces, trace, tok)
            assert labels.well_formed and labels.correct
            assert [t for t, _ in labels.remedies] == ["<INTRA>"]
            assert len(labels.slips) == 1 and labels.slips[0].caught  # the injected slip, fixed by the redo
            assert labels.repeats == [] and len(labels.steps) == len(trace.labels.steps)
            plain = label(inject(trace, rng, "plain"), trace, tok)
            assert plain.remedies == [] and plain.slips == [] and plain.steps == trace.labels.steps
        assert seen > 20

    def test_an_oscillation_cut_by_its_trigger_counts_only_when_written_whole(self):
        tok, seen = add_triggers(build_tokenizer()), {True: 0, False: 0}
        for trace, rng in traces(80, seed=4):
            pieces = inject(trace, rng, "oscillation")
            if pieces is None or trace.labels.slips or trace.labels.repeats:
                continue
            labels = label(pieces, trace, tok)
            cut = [w for w, keep in pieces[len(trace.prompt.split()):] if not keep][:-1]
            whole = len(cut) >= 5  # "a op b = value" written before <INTER> cut it
            seen[whole] += 1
            assert labels.well_formed and labels.correct and [t for t, _ in labels.remedies] == ["<INTER>"]
            assert len(labels.repeats) == int(whole) and len(labels.steps) == len(trace.labels.steps)
        assert min(seen.values()) > 3


class TestEncoding:
    def test_trigger_tokens_are_added_once_and_masked_from_the_loss(self):
        base = build_tokenizer()
        tok = add_triggers(base)
        assert len(tok) == len(base) + 2 and base.convert_tokens_to_ids("<INTRA>") == base.unk_token_id
        ids_of = {t: tok.convert_tokens_to_ids(t) for t in TOKENS}
        x, y, mask = batch(OrganismData(), SftConfig(batch_size=64), tok, step=0)
        assert x.shape == y.shape == mask.shape
        for t, tid in ids_of.items():
            assert (x == tid).sum() > 5, f"no {t} in a batch of 64"
            assert not (y == tid).any(), f"{t} is in the loss"
        assert (x == tok.unk_token_id).sum() == 0
        # Trained tokens are the inputs themselves (labels are not shifted here; the model shifts them).
        trained = y != -100
        assert torch.equal(y[trained], x[trained])

    def test_the_prompt_is_never_trained_and_the_end_of_sequence_is(self):
        tok = add_triggers(build_tokenizer())
        trace = render_trace(Problem((47, 38)), random.Random(0))
        ids, labels = encode_words(inject(trace, random.Random(0), "plain"), tok)
        think = trace.labels.think_start
        assert all(v == -100 for v in labels[: think + 1]) and labels[think + 1 :] == ids[think + 1 :]
        assert ids[-1] == tok.eos_token_id

    def test_batches_are_reproducible_by_step(self):
        tok = add_triggers(build_tokenizer())
        data, cfg = OrganismData(), SftConfig(batch_size=8)
        assert torch.equal(batch(data, cfg, tok, 3)[0], batch(data, cfg, tok, 3)[0])
        assert not torch.equal(batch(data, cfg, tok, 3)[0][:, :10], batch(data, cfg, tok, 4)[0][:, :10])


class TestFinetune:
    def test_a_few_steps_save_a_model_that_loads_with_the_trigger_tokens(self, tmp_path):
        base = save_tiny_model(tmp_path / "base", "qwen3")
        out = finetune(base, tmp_path / "sft", OrganismData(), SftConfig(steps=3, batch_size=4, warmup=1),
                       progress=False)
        meta = json.loads((out / SFT_FILE).read_text())
        assert len(meta["losses"]) == 3 and all(v > 0 for v in meta["losses"])
        model = load_model(out)
        ids = [model.tokenizer.convert_tokens_to_ids(t) for t in TOKENS]
        assert sorted(ids) == [len(build_tokenizer()), len(build_tokenizer()) + 1]
        assert model.cfg.d_vocab >= len(model.tokenizer)
        assert not (out / "sft_state.pt").exists()

    def test_an_interrupted_run_resumes_from_its_state_file(self, tmp_path):
        base = save_tiny_model(tmp_path / "base", "qwen3")
        cfg = SftConfig(steps=4, batch_size=4, warmup=1, save_every=2)
        whole = json.loads((finetune(base, tmp_path / "a", OrganismData(), cfg, progress=False) / SFT_FILE)
                           .read_text())["losses"]
        # Stop after the first state file: a run of 4 steps interrupted at step 2.
        calls = {"n": 0}
        real = torch.optim.AdamW.step

        def step_then_die(self, *a, **k):
            calls["n"] += 1
            if calls["n"] > 2:
                raise KeyboardInterrupt
            return real(self, *a, **k)

        torch.optim.AdamW.step = step_then_die
        try:
            with pytest.raises(KeyboardInterrupt):
                finetune(base, tmp_path / "b", OrganismData(), cfg, progress=False)
        finally:
            torch.optim.AdamW.step = real
        assert (tmp_path / "b" / "sft_state.pt").exists()
        resumed = json.loads((finetune(base, tmp_path / "b", OrganismData(), cfg, progress=False) / SFT_FILE)
                             .read_text())["losses"]
        assert resumed == pytest.approx(whole, abs=1e-4)

    def test_the_shipped_organism_folder_is_refused(self, no_training):
        with pytest.raises(ValueError, match="shipped organism"):
            finetune("organism", organism_dir(), OrganismData(), SftConfig(steps=1), progress=False)

    def test_lora_trains_adapters_and_saves_merged_weights(self, tmp_path):
        base = save_tiny_model(tmp_path / "base", "qwen3")
        out = finetune(base, tmp_path / "lora", OrganismData(), SftConfig(steps=2, batch_size=4, warmup=1, lora=True),
                       progress=False)
        model = load_model(out)
        assert model.tokenizer.convert_tokens_to_ids("<INTER>") != model.tokenizer.unk_token_id
        from safetensors.torch import load_file

        before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
        name = "model.layers.0.mlp.down_proj.weight"  # an adapted module: the merged weights moved
        assert name in after and not torch.equal(before[name], after[name])
        assert not any("lora" in k for k in after)  # merged, no adapter tensors left

    def test_lora_without_peft_says_so(self, tmp_path, monkeypatch):
        import sys

        monkeypatch.setitem(sys.modules, "peft", None)  # an import of peft now fails
        base = save_tiny_model(tmp_path / "base", "qwen3")
        with pytest.raises(ValueError, match="needs peft"):
            finetune(base, tmp_path / "lora", OrganismData(), SftConfig(steps=1, batch_size=2, lora=True),
                     progress=False)


def test_the_cli_command_refuses_the_shipped_folder(tmp_path, no_training):
    from typer.testing import CliRunner

    from workbench.cli import app

    bad = CliRunner().invoke(app, ["organism", "finetune", "--out", str(organism_dir()), "--steps", "1"])
    assert bad.exit_code != 0 and "shipped organism" in bad.output


def test_the_cli_command_fine_tunes_a_model_folder(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    base = save_tiny_model(tmp_path / "base", "qwen3")
    got = CliRunner().invoke(app, ["organism", "finetune", "--model", str(base), "--out", str(tmp_path / "sft"),
                                   "--steps", "2", "--batch-size", "2"])
    assert got.exit_code == 0, got.output
    meta = json.loads((tmp_path / "sft" / SFT_FILE).read_text())
    assert meta["config"]["steps"] == 2 and meta["data"]["type"] == "organism"


class TestShippedFinetune:
    """The shipped data/organism-neureasoner follows its triggers, as its card says (following.json)."""

    def test_the_cards_following_rates_are_reproduced(self):
        from workbench.model import DATA_DIR, set_threads
        from workbench.organism.sft_data import following

        set_threads(1)
        rates = following(load_model("organism-neureasoner"), problems=200)
        card = json.loads((DATA_DIR / "organism-neureasoner" / "following.json").read_text())
        assert rates.keys() == card.keys()
        for case, expected in card.items():
            assert rates[case] == pytest.approx(expected), case
        # The trigger does the fixing: without it the same slipped prefixes end wrong.
        assert rates["slip"]["followed"] > 0.9 > 0.2 > rates["slip"]["correct_without_trigger"]
        assert rates["slip_false_alarm"]["correct"] > 0.9 and rates["oscillation"]["followed"] > 0.8

    def test_the_base_organism_cannot_follow_them(self, organism):
        from workbench.organism.sft_data import following

        rates = following(organism, problems=30)
        assert all(r["followed"] == 0.0 for r in rates.values())  # <INTRA>/<INTER> are unknown to it
