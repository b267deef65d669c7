"""NeuReasoner's remedy on the organism: detectors fire online, the controller forces the trigger
token or ends thinking, once per episode, and a model without the trigger tokens is refused."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest

from workbench.evaluation.methods import MethodContext
from workbench.model import load_model, organism_dir, set_threads
from workbench.neureasoner import NeuReasonerConfig, mon_report
from workbench.neureasoner.remedy import NeuReasonerRemedy
from workbench.neureasoner.triggers import add_triggers
from workbench.store import load_traces
from workbench.traces import TraceRunConfig, run_traces

CFG = TraceRunConfig(problems=12, samples=2, temperature=1.0, seed=3)


@pytest.fixture(scope="module")
def analysis(organism_cache, tmp_path_factory):
    """An analysis run with key neurons and detectors of every failure type."""
    set_threads(1)
    run = tmp_path_factory.mktemp("remedy") / "analysis"
    shutil.copytree(organism_cache, run)
    mon_report(run, config=NeuReasonerConfig(top_k=6, hidden=(8,), max_iter=100))
    return run


@pytest.fixture(scope="module")
def with_tokens(tmp_path_factory):
    """The organism with the trigger tokens added (embeddings resized, nothing trained)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("remedy") / "organism-tokens"
    tok = add_triggers(PreTrainedTokenizerFast.from_pretrained(organism_dir()))
    model = AutoModelForCausalLM.from_pretrained(organism_dir())
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return load_model(out)


def generate(model, analysis, tmp_path, method) -> dict[str, dict]:
    edits, controllers = method.build(MethodContext(model, analysis, CFG))
    run_traces(tmp_path / "run", config=CFG, progress=False, model=model, edits=edits, controllers=controllers)
    return {r["trace_id"]: {**r, "events": json.loads(r["events"])} for r in load_traces(tmp_path / "run").to_pylist()}


def test_saved_thresholds_fire_on_some_traces_and_each_firing_forces_its_token(with_tokens, analysis, tmp_path):
    got = generate(with_tokens, analysis, tmp_path, NeuReasonerRemedy(types=("slip", "oscillation")))
    tok = with_tokens.tokenizer
    ids = {"slip": tok.convert_tokens_to_ids("<INTRA>"), "oscillation": tok.convert_tokens_to_ids("<INTER>")}
    notes = 0
    for r in got.values():
        events = r["events"]
        for i, e in enumerate(events):
            if e["kind"].startswith("neureasoner_") and e["kind"] != "neureasoner_dropped":
                notes += 1
                kind = e["kind"].removeprefix("neureasoner_")
                assert e["payload"]["score"] >= e["payload"]["threshold"]
                assert events[i + 1]["kind"] == "force" and events[i + 1]["payload"]["tokens"] == [ids[kind]]
                # the forced token is in the trace, inside thinking, right after the step it fired at
                pos = r["prompt_len"] + e["step"]
                assert r["token_ids"][pos] == ids[kind] and r["think_start"] < pos
        n_forced = sum(t in ids.values() for t in r["token_ids"])
        assert n_forced == sum(e["kind"] == "force" for e in events)
        for kind in ids:  # max_triggers
            assert sum(e["kind"] == f"neureasoner_{kind}" for e in events) <= 2
    assert notes > 0


def test_a_detector_that_always_fires_triggers_once_per_episode(with_tokens, analysis, tmp_path):
    window = NeuReasonerConfig().window
    got = generate(with_tokens, analysis, tmp_path,
                   NeuReasonerRemedy(types=("slip",), threshold=0.0, max_triggers=100, cooldown=10_000))
    for r in got.values():
        fired = [e for e in r["events"] if e["kind"] == "neureasoner_slip"]
        # Always above threshold: never re-armed, so one firing, at the first complete window.
        assert len(fired) == 1 and fired[0]["step"] >= window - 1


def test_overthinking_remedy_ends_thinking_and_the_answer_is_written(organism, analysis, tmp_path):
    got = generate(organism, analysis, tmp_path, NeuReasonerRemedy(types=("overthinking",), threshold=0.0))
    window = NeuReasonerConfig().window
    ended, answered = 0, 0
    for r in got.values():
        fired = [e for e in r["events"] if e["kind"] == "neureasoner_overthinking"]
        if r["thinking_tokens"] < window:
            continue
        ended += 1
        assert len(fired) == 1
        # Thinking ends at the first complete window, or as soon after as a word ends (the organism: a step's
        # separator).
        assert r["think_end"] is not None and r["thinking_tokens"] == window + fired[0]["payload"]["waited"]
        assert r["finish_reason"] == "eos" and len(r["token_ids"]) > r["answer_start"]  # an answer is written
        answered += r["extracted"] is not None
    assert ended > len(got) // 2
    # Cut off at the end of its first step (the first window, then the wait for a word: the step's separator),
    # the organism answers with a number first (24 of 24 here on v4). Acting at once (word_wait=0) cut it inside
    # a number and 4 of 24 opened the answer with a word or a second `</think>`, which the organism's grader (the
    # answer's first word) reads as no answer.
    assert answered > ended // 2, (answered, ended)


def test_a_model_without_the_trigger_tokens_is_refused_at_build(organism, analysis):
    with pytest.raises(ValueError, match="workbench organism finetune"):
        NeuReasonerRemedy().build(MethodContext(organism, analysis, CFG))
    # overthinking alone needs no fine-tuning
    NeuReasonerRemedy(types=("overthinking",)).build(MethodContext(organism, analysis, CFG))


def test_missing_detectors_and_bad_specs_are_clear(organism, organism_run):
    with pytest.raises(ValueError, match="rank --method mon"):
        NeuReasonerRemedy().build(MethodContext(organism, organism_run, CFG))
    with pytest.raises(ValueError, match="types must be"):
        NeuReasonerRemedy(types=("typo",))
    with pytest.raises(ValueError, match="no trigger token"):
        NeuReasonerRemedy(tokens={"slip": "<INTRA>"})
    assert hash(NeuReasonerRemedy(types=["slip"], tokens={"slip": "<S>"}, thresholds={"slip": 0.5})) is not None
    with pytest.raises(ValueError, match="thresholds"):
        NeuReasonerRemedy(thresholds={"slip": 2.0})


def test_a_per_type_threshold_of_one_silences_that_type(with_tokens, analysis, tmp_path):
    got = generate(with_tokens, analysis, tmp_path,
                   NeuReasonerRemedy(types=("slip", "oscillation"), threshold=0.0, thresholds={"slip": 1.0 + 0}))
    kinds = {e["kind"] for r in got.values() for e in r["events"]}
    assert "neureasoner_oscillation" in kinds and "neureasoner_slip" not in kinds


def test_no_detector_reads_a_window_holding_a_forced_token(with_tokens, analysis, tmp_path):
    window = NeuReasonerConfig().window
    got = generate(with_tokens, analysis, tmp_path,
                   NeuReasonerRemedy(types=("slip", "overthinking"), threshold=0.0, max_triggers=5))
    pairs = 0
    for r in got.values():
        steps = [(e["kind"], e["step"]) for e in r["events"]
                 if e["kind"].startswith("neureasoner_") and e["kind"] != "neureasoner_dropped"]  # the actions
        assert not steps or steps[0][0] == "neureasoner_slip"
        for (_, a), (_, b) in itertools.pairwise(steps):
            assert b - a > window  # the forced token left every window before the next reading
            pairs += 1
    assert pairs > 0


def test_the_random_neuron_control_reads_its_own_neurons_and_fires(with_tokens, analysis, tmp_path):
    spec = NeuReasonerRemedy(types=("slip", "oscillation"), detectors="random", threshold=0.0)
    (controller,) = spec.build(MethodContext(with_tokens, analysis, CFG))[1]
    key = NeuReasonerRemedy(types=("slip", "oscillation")).build(MethodContext(with_tokens, analysis, CFG))[1][0]
    assert controller.neurons.flat(512) != key.neurons.flat(512)
    assert all(d.inputs == "random" for d in controller.detectors.values())
    got = generate(with_tokens, analysis, tmp_path, spec)
    assert sum(e["kind"].startswith("neureasoner_") for r in got.values() for e in r["events"]) > 0
    with pytest.raises(ValueError, match="detectors must be 'neurons' or 'random'"):
        NeuReasonerRemedy(detectors="tokens")


class _Sure:
    """A classifier stub that says every window fails."""

    def predict_proba(self, x):
        return np.tile([0.0, 1.0], (len(x), 1))


def always(kind: str, window: int = 4):
    """A detector that fires on every window."""
    from workbench.neureasoner.detectors import Detector
    from workbench.neurons import NeuronSet

    neurons = NeuronSet.from_flat([0, 1], d_mlp=8, model_shape=(2, 8))
    return Detector(kind, "neurons", _Sure(), 0.5, neurons, NeuReasonerConfig(window=window, stride=1).to_dict())


@pytest.fixture(scope="module")
def text_tok():
    from .text_model import build_tokenizer

    return build_tokenizer()


def drive(controller, tok, prompt: str, script: str, steps: int = 40):
    """Feeds ``script``'s tokens to ``controller`` one step at a time, as the engine does (forced tokens replace
    the script's while they last); returns the token ids written and the events."""
    import torch

    from workbench.engine.interventions import StepView

    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    todo, tokens, forced, events = list(tok(script, add_special_tokens=False).input_ids), list(prompt_ids), [], []
    controller.on_start("a")
    for _ in range(steps):
        view = StepView(["a"], torch.tensor([True]), torch.zeros(1, len(tok)), torch.zeros(1, 2),
                        [len(tokens) - len(prompt_ids)], [tokens], [], torch.zeros(1, 0, dtype=torch.bool))
        controller.on_step(view)
        events += [(len(tokens), e.kind, e.payload) for e in view.events]
        forced = view.forced.get(0, forced)
        if forced:
            tokens.append(forced.pop(0))
        elif todo:
            tokens.append(todo.pop(0))
        else:
            break
    return tokens[len(prompt_ids):], events


class TestActionsWaitForAWord:
    """Any model: a trigger decided inside a number lands after it; ending thinking writes the paper's phrase."""

    PROMPT = "<|im_start|>assistant\n<think>\n"
    SCRIPT = "12 + 34 = 46\n\n46 * 3 = 138\n\n"

    def controller(self, tok, kind, **spec):
        from workbench.neureasoner.remedy import RemedyController
        from workbench.tasks.base import TextConventions

        method = NeuReasonerRemedy(types=(kind,), **spec)
        ids = {"slip": tok.convert_tokens_to_ids("<INTRA>")}
        return RemedyController(method, {kind: always(kind)}, tok, "<think>", "</think>",
                                {k: v for k, v in ids.items() if k == kind}, TextConventions().word_pattern)

    def test_a_trigger_decided_mid_number_is_inserted_after_the_number(self, text_tok):
        tok = text_tok
        script = "5 + 1234 = 1239\n\n1239 * 2 = 2478\n\n"
        # The first window completes on the "3" of "1234": acting at once (word_wait=0, as before) cuts the number.
        written, _ = drive(self.controller(tok, "slip", word_wait=0), tok, self.PROMPT, script)
        assert tok.decode(written).startswith("5 + 123<INTRA>4 = 1239")
        # Waiting for a word, the trigger comes after the step's result and its newline.
        written, events = drive(self.controller(tok, "slip"), tok, self.PROMPT, script)
        assert tok.decode(written).startswith("5 + 1234 = 1239\n<INTRA>\n1239 * 2")
        (note,) = [p for _, k, p in events if k == "neureasoner_slip"]
        assert note["waited"] == 6 and [k for _, k, _ in events] == ["neureasoner_slip", "force"]

    def test_a_detection_with_no_boundary_in_time_is_dropped(self, text_tok):
        tok = text_tok
        written, events = drive(self.controller(tok, "slip", word_wait=3), tok, self.PROMPT, "1234567890123456")
        assert "<INTRA>" not in tok.decode(written)
        assert [k for _, k, _ in events] == ["neureasoner_dropped"]

    def test_ending_thinking_writes_the_papers_phrase_before_the_marker(self, text_tok):
        tok = text_tok
        written, _ = drive(self.controller(tok, "overthinking"), tok, self.PROMPT, self.SCRIPT)
        # (the script goes on after the marker where a model would write its answer)
        assert tok.decode(written).startswith("12 + 34 = 46\nOkay, I have finished thinking.</think>")
        written, _ = drive(self.controller(tok, "overthinking", concluding_phrase="Done."), tok, self.PROMPT,
                           self.SCRIPT)
        assert tok.decode(written).startswith("12 + 34 = 46\nDone.</think>")
        written, _ = drive(self.controller(tok, "overthinking", concluding_phrase=""), tok, self.PROMPT, self.SCRIPT)
        assert tok.decode(written).startswith("12 + 34 = 46\n</think>")
