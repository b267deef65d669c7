"""NeuReasoner's remedy fine-tuning for any model: SFT data from a (planted) trace run of the math task on a tiny
non-organism Llama, the trainer through `workbench finetune RUN` (full and LoRA), and trigger following."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import app
from workbench.neureasoner.following import FollowCase, RunJudge, run_cases, trigger_following
from workbench.neureasoner.sft import TraceRunData
from workbench.neureasoner.trainer import SFT_FILE, SftConfig, batch, finetune
from workbench.neureasoner.triggers import add_triggers

from .text_model import operands, plant_run, planted_thinking, save_text_model, write_math_file

runner = CliRunner()


def planted_run(run, model_dir, data, kinds):
    """A trace run in the real store format whose generations are planted thinking (``planted_thinking``), problem
    ``q<i>`` planting ``kinds[i % len(kinds)]``."""
    from workbench.model import load_model
    from workbench.traces import TraceRunConfig

    def generation(problem, sample):
        thinking, answer = planted_thinking(*operands(problem), kinds[int(problem.id[1:]) % len(kinds)])
        return f"{thinking}\n</think>\n\n{answer}<|im_end|>"

    n = len(data.read_text().splitlines())
    cfg = TraceRunConfig(model=str(model_dir), task="math", data=str(data), problems=n, samples=1, max_new_tokens=96)
    return plant_run(cfg, run, load_model(model_dir), generation)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_text_model(tmp_path_factory.mktemp("any") / "model")


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    """Eight problems: six planted correct (two with a repeat of their own), two with a slip (graded wrong)."""
    root = tmp_path_factory.mktemp("any")
    data = write_math_file(root / "math.jsonl", n=8)
    return planted_run(root / "run", model_dir, data, ["none", "none", "repeat", "slip"])


@pytest.fixture(scope="module")
def tok(model_dir):
    from transformers import AutoTokenizer

    return add_triggers(AutoTokenizer.from_pretrained(model_dir), lstrip=TraceRunData.trigger_lstrip)


def originals(data):
    return [t.lead + t.thinking + t.tail for t in data.traces]


def split(ids, labels, token):
    """The example cut at ``token``: (the untrained span right before it, what follows it)."""
    k = ids.index(token)
    j = k
    while j > 0 and labels[j - 1] == -100:
        j -= 1
    return ids[j:k], k


class TestTraceRunData:
    """Examples from any trace run: an injected error and a trigger, masked; the original continuation, trained."""

    def test_only_correct_traces_with_two_steps_are_used(self, run):
        data = TraceRunData(run=run)
        assert len(data.source.traces) == 8 and len(data.traces) == 6
        assert all(t.correct and len(t.steps) >= 2 for t in data.traces)

    def test_a_slip_changes_a_number_masks_it_with_its_trigger_and_trains_the_redo(self, run, tok):
        data, intra = TraceRunData(run=run, slip_share=1.0, oscillation_share=0.0), tok.convert_tokens_to_ids("<INTRA>")
        rng = random.Random(0)
        for _ in range(20):
            ids, labels, kind = data.example(rng, tok, {"slip": "<INTRA>", "oscillation": "<INTER>"})
            assert kind == "slip" and ids.count(intra) == 1
            error, k = split(ids, labels, intra)
            assert labels[k] == -100 and any(c.isdigit() for c in tok.decode(error))  # the changed number, masked
            after = tok.decode(ids[k + 1 :])
            assert labels[k + 1 :] == ids[k + 1 :]  # the redo and everything after it is trained
            # What follows the trigger is the original continuation from the slipped step on, and the number
            # before the trigger is not what that step wrote.
            source = next(s for s in originals(data) if s.endswith(after))
            step = after.split("\n\n")[0]
            assert step in source and tok.decode(error).strip() not in step.split()
            prompt_end = next(i for i, v in enumerate(labels) if v != -100)
            assert tok.decode(ids[:prompt_end]).endswith("<think>\n")  # the prompt is never trained

    def test_a_repeat_is_masked_with_its_trigger_and_the_trace_moves_on(self, run, tok):
        data, inter = TraceRunData(run=run, slip_share=0.0, oscillation_share=1.0), tok.convert_tokens_to_ids("<INTER>")
        rng = random.Random(1)
        for _ in range(20):
            ids, labels, kind = data.example(rng, tok, {"slip": "<INTRA>", "oscillation": "<INTER>"})
            assert kind == "oscillation" and ids.count(inter) == 1
            repeat, k = split(ids, labels, inter)
            before, after = tok.decode(ids[: k - len(repeat)]), tok.decode(ids[k + 1 :])
            assert repeat and tok.decode(repeat).strip() in before  # it repeats what was written
            assert labels[k] == -100 and labels[k + 1 :] == ids[k + 1 :]
            assert any(s == (before + after).split("<think>\n", 1)[1] for s in originals(data))  # nothing else changed

    def test_shares_are_respected_and_plain_traces_are_trained_whole(self, run, tok):
        triggers = {"slip": "<INTRA>", "oscillation": "<INTER>"}
        rng = random.Random(2)
        plain = TraceRunData(run=run, slip_share=0.0, oscillation_share=0.0)
        for _ in range(10):
            ids, labels, kind = plain.example(rng, tok, triggers)
            first = next(i for i, v in enumerate(labels) if v != -100)
            assert kind == "plain" and labels[first:] == ids[first:]
            assert not {tok.convert_tokens_to_ids(t) for t in triggers.values()} & set(ids)
        mixed = TraceRunData(run=run, slip_share=0.3, oscillation_share=0.3)
        counts = Counter(mixed.example(rng, tok, triggers)[2] for _ in range(300))
        assert abs(counts["plain"] / 300 - 0.4) < 0.1 and abs(counts["slip"] / 300 - 0.3) < 0.1

    def test_batches_are_deterministic_from_the_seed(self, run, tok):
        cfg = SftConfig(batch_size=4, seed=3)
        x, y, mask = batch(TraceRunData(run=run), cfg, tok, 5)
        x2, y2, _ = batch(TraceRunData(run=run), cfg, tok, 5)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert not torch.equal(batch(TraceRunData(run=run), SftConfig(batch_size=4, seed=4), tok, 5)[0], x)
        assert (mask[:, 1:] <= mask[:, :-1]).all() and not ((y != -100) & (mask == 0)).any()  # right-padded

    def test_a_run_without_a_thinking_span_is_read_whole(self, model_dir, tmp_path, tok):
        from workbench.model import load_model
        from workbench.prompting import PromptFormat
        from workbench.traces import TraceRunConfig

        from .text_model import direct_generation

        data = write_math_file(tmp_path / "math.jsonl", n=4)
        cfg = TraceRunConfig(model=str(model_dir), task="math", data=str(data), problems=4, samples=1,
                             prompt=PromptFormat(style="raw"))  # a raw prompt opens no thinking: a direct answer
        run = plant_run(cfg, tmp_path / "run", load_model(model_dir), direct_generation)
        source = TraceRunData(run=run, slip_share=1.0, oscillation_share=0.0)
        assert len(source.traces) == 4  # sample 0 plants no failure: every answer is right
        trace = source.traces[0]
        assert trace.lead == "" and trace.tail == "<|im_end|>" and trace.thinking.endswith("}")  # the stop apart
        assert len(trace.steps) == 3  # two steps and the boxed answer
        ids, labels, _ = source.example(random.Random(0), tok, {"slip": "<INTRA>", "oscillation": "<INTER>"})
        assert ids.count(tok.convert_tokens_to_ids("<INTRA>")) == 1 and labels[-1] == ids[-1] == tok.eos_token_id

    def test_a_run_without_usable_traces_is_a_clear_error(self, model_dir, tmp_path):
        data = write_math_file(tmp_path / "math.jsonl", n=3)
        bad = planted_run(tmp_path / "run", model_dir, data, ["slip"])  # every trace graded wrong
        with pytest.raises(ValueError, match=r"none of its 3 traces can be fine-tuned on: 0 are correct"):
            TraceRunData(run=bad).check()
        TraceRunData(run=bad, correct_only=False).check()  # their steps will do when asked for


class TestTrainer:
    def test_workbench_finetune_trains_the_runs_model_and_it_reloads_with_the_triggers(self, run, tmp_path):
        from workbench.model import load_model

        out = tmp_path / "sft"
        got = runner.invoke(app, ["finetune", str(run), "--out", str(out), "--steps", "12", "--batch-size", "4",
                                  "--lr", "3e-3"])
        assert got.exit_code == 0, got.output
        meta = json.loads((out / SFT_FILE).read_text())
        assert meta["data"]["type"] == "trace_run" and meta["data"]["run"] == str(run)
        losses = meta["losses"]
        assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])  # it learns the traces
        model = load_model(out)
        assert [model.tokenizer.tokenize(t) for t in ("<INTRA>", "<INTER>")] == [["<INTRA>"], ["<INTER>"]]
        assert model.cfg.d_vocab >= len(model.tokenizer)

    def test_lora_merges_adapters_and_trigger_embeddings_into_the_saved_weights(self, run, model_dir, tmp_path, tok):
        from safetensors.torch import load_file

        data = TraceRunData(run=run, slip_share=0.5, oscillation_share=0.5)  # every example has a trigger
        out = finetune(model_dir, tmp_path / "lora", data, SftConfig(steps=2, batch_size=2, warmup=1, lr=1e-2,
                                                                     lora=True), progress=False)
        before, after = load_file(model_dir / "model.safetensors"), load_file(out / "model.safetensors")
        assert not any("lora" in k or "trainable_tokens" in k for k in after)  # merged: no adapter tensors left
        assert set(after) == set(before)
        name = "model.layers.0.mlp.down_proj.weight"
        assert not torch.equal(before[name], after[name])
        emb = "model.embed_tokens.weight"
        intra, other = tok.convert_tokens_to_ids("<INTRA>"), tok.convert_tokens_to_ids("<|im_start|>")
        assert not torch.equal(before[emb][intra], after[emb][intra])  # the trigger's embedding was trained
        assert torch.equal(before[emb][other], after[emb][other])  # no other embedding row was

    def test_the_shipped_organism_folder_is_refused(self, run, no_training):
        from workbench.model import organism_dir

        got = runner.invoke(app, ["finetune", str(run), "--out", str(organism_dir()), "--steps", "1"])
        assert got.exit_code == 2 and "shipped organism" in got.output


class TestFollowing:
    """Cases from a trace run, judged by the text: the redo after <INTRA>, no repeat after <INTER>."""

    def test_cases_end_in_their_trigger_and_controls_lack_it(self, run, tok):
        cases = run_cases(run, tok, traces=4, seed=0)
        assert len(cases["slip"]) == 4 and len(cases["oscillation"]) == 4
        for name, token in (("slip", "<INTRA>"), ("oscillation", "<INTER>")):
            for c in cases[name]:
                assert tok.convert_ids_to_tokens(c.ids[-1]) == token and c.control == c.ids[:-1]

    def test_the_judge_reads_what_follows_the_trigger(self, run, tok):
        judge = RunJudge(run, tok)
        cases = run_cases(run, tok, traces=1, seed=0)
        slip, repeat = cases["slip"][0], cases["oscillation"][0]
        gold = judge.problems[slip.meta].gold

        def verdict(case, written):
            ids = [*case.ids, *tok(written, add_special_tokens=False).input_ids]
            return judge(case, ids, len(case.ids))

        ending = f"\n</think>\n\n\\boxed{{{gold}}}<|im_end|>"
        redo = slip.step.replace(slip.wrong, slip.right) if slip.wrong in slip.step else slip.step
        assert verdict(slip, redo + ending) == (True, True)
        assert verdict(slip, slip.step.replace(slip.right, slip.wrong) + ending).followed is False
        assert verdict(slip, redo + "\n</think>\n\n\\boxed{1}<|im_end|>") == (True, False)
        assert verdict(repeat, "so on\n\nthe end" + ending) == (True, True)
        assert verdict(repeat, repeat.step + "\n\n" + repeat.step + ending).followed is False

    def test_workbench_follow_measures_a_model_on_a_run(self, run, model_dir):
        got = runner.invoke(app, ["follow", str(run), "--model", str(model_dir), "--traces", "3",
                                  "--max-new-tokens", "6", "--json"])
        assert got.exit_code == 0, got.output
        rates = json.loads(got.stdout)
        assert set(rates) == {"slip", "oscillation"} and rates["slip"]["n"] == 3
        # A random model follows nothing: the first step after <INTRA> is not the redo.
        assert rates["slip"]["followed"] == 0.0 and rates["slip"]["correct"] == 0.0

    def test_trigger_following_pairs_each_case_with_its_control(self, model_dir):
        from workbench.model import load_model

        model = load_model(model_dir)
        seen = []

        def judge(case, tokens, prompt_len):
            seen.append((case.case, tokens[:prompt_len]))
            from workbench.neureasoner.following import Verdict

            return Verdict(prompt_len == len(case.ids), True)

        ids = model.tokenizer("12 + 3 = 15\n\n<INTRA>", add_special_tokens=False).input_ids
        case = FollowCase("slip", ids, ids[:-1], None)
        rates = trigger_following(model, {"slip": [case, case]}, judge, max_new_tokens=3)
        assert rates == {"slip": {"n": 2, "followed": 1.0, "correct": 1.0, "correct_without_trigger": 1.0}}
        assert sorted(len(t) for _, t in seen) == [len(ids) - 1] * 2 + [len(ids)] * 2
