"""The whole study on a model that is not the organism, with the automatic labeller and no organism labels.

A tiny random Llama with a byte-level BPE tokenizer whose chat template opens ``<think>`` (``tests/text_model``)
answers a math task file. Its analysis traces are planted text with known failures (a wrong sum, a repeated
step, thinking after the answer), written through the pipeline's own records (``plant_run``), so what the
labeller, the ranking and the verdicts say can be checked against what was planted. A second task asks the
same questions with a raw prompt and answers without any thinking span, as a chat model that does not reason
in markers would: every stage and method must then either read the whole generation or say in one line why
it cannot apply, and the study must still run everything else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.text_model import KINDS, direct_generation, plant_run, save_text_model, thinking_generation, write_math_file

STUDY = """
[study]
model = "{model}"
n_resamples = 200

[analysis]
problems = 8
samples = 4
seed = 5
allow_overlap = true
stages = ["cache", "rcn", "probe", "exit", "mon"]
[analysis.rcn]
k = 8
[analysis.probe]
n_resamples = 100
early_span = "think_first_4"
[analysis.exit]
tau_cons = 0.0
tau_com = 0.0
calibration_traces = 16
agreement_traces = 2
random_draws = 2
estimator = "gradient"
[analysis.mon]
labeller = "auto"

[[tasks]]
name = "think"
task = "math"
data = "{data}"
problems = 4
samples = 1
max_new_tokens = 12
seed = 2

[[tasks]]
name = "direct"
task = "math"
data = "{data}"
problems = 4
samples = 1
max_new_tokens = 12
seed = 2
[tasks.prompt]
style = "raw"
raw_template = "{{question}}\\nAnswer:"

[[methods]]
type = "vanilla"
name = "vanilla"

[[methods]]
type = "adaras"
name = "adaras"
k = 8
alpha = 1.0

[[methods]]
type = "random-steering"
name = "random-steering"
control_for = "adaras"
k = 8
alpha = 1.0

[[methods]]
type = "neat"
name = "neat"

[[methods]]
type = "neureasoner"
name = "neureasoner"

[[methods]]
type = "nowait"
name = "nowait"

[[methods]]
type = "budget"
name = "budget"
max_thinking = 4
"""


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    from workbench.evaluation import load_study, run_study
    from workbench.model import load_model

    folder = tmp_path_factory.mktemp("text")
    model_dir = save_text_model(folder / "model")
    data = write_math_file(folder / "problems.jsonl", n=12)
    path = folder / "study.toml"
    path.write_text(STUDY.format(model=model_dir, data=data))
    study = load_study(path)
    model = load_model(model_dir)
    out = folder / "out"
    for task, generation in zip(study.tasks, (thinking_generation, direct_generation), strict=True):
        plant_run(task.analysis.run, out / task.name / "analysis", model, generation)
    rows = run_study(out, study=study, progress=False, model=model)
    return out, rows, study


@pytest.mark.slow  # a whole study, two tasks, every stage: about a minute
class TestStudyOnATextModel:
    def test_the_labeller_finds_what_was_planted(self, study_out):
        from workbench.neureasoner import NeuReasonerConfig, trace_inputs
        from workbench.store import ActivationStore

        out, _, _ = study_out
        for task in ("think", "direct"):
            store = ActivationStore(out / task / "analysis")
            kinds = [KINDS[s % 4] for s in store.index["sample_index"].to_pylist()]
            inputs = trace_inputs(store, NeuReasonerConfig(labeller="truth"))  # the math task has no truth: auto
            found = {kind: [bool(t.events.of(kind)) for t in inputs]
                     for kind in ("slip", "oscillation", "overthinking")}
            assert found["slip"] == [k == "slip" for k in kinds]
            assert found["oscillation"] == [k == "repeat" for k in kinds]
            assert found["overthinking"] == [k == "overthink" for k in kinds]
            tok = store_tokenizer(out / task / "analysis")
            for t, kind in zip(inputs, kinds, strict=True):
                if kind == "repeat":  # the episode is the second copy of the first step, by its text
                    (start, end), = t.events.oscillation
                    first = tok.decode(t.token_ids[start:end]).strip()
                    assert first.count("=") == 1 and first.endswith(str(sum(map(int, first.split("=")[0].split("+")))))

    def test_every_analysis_ran_on_the_thinking_model(self, study_out):
        out, _, _ = study_out
        run = out / "think" / "analysis"
        record = json.loads((run / "evaluation.json").read_text())
        assert list(record["stages"]) == ["cache", "rcn", "probe", "exit", "mon"], record.get("not_applied")
        probes = json.loads((run / "probes" / "report.json").read_text())
        assert 0 <= probes["probe_auroc_early"] <= 1 and probes["traces_without_thinking_span"] == 0
        assert math.isnan(probes["probe_auroc_baseline"])
        assert "no hand features" in probes["probe_auroc_baseline_reason"]
        assert not any(k.startswith("rcn_regime") for k in probes)  # nothing planted: no regime check
        mon = json.loads((run / "neureasoner" / "report.json").read_text())
        assert mon["mon_labeller"] == "auto"
        assert (run / "neurons" / "exit.json").exists() and (run / "neurons" / "rcn.json").exists()

    def test_without_a_thinking_span_the_verdicts_are_true_and_the_rest_runs(self, study_out):
        out, rows, _ = study_out
        run = out / "direct" / "analysis"
        record = json.loads((run / "evaluation.json").read_text())
        assert list(record["stages"]) == ["cache", "rcn", "probe", "mon"]
        reason = record["not_applied"]["exit"]["reason"]
        assert reason.startswith("</think> in 0 of 32 traces") and "exit_token" in reason
        rcn = json.loads((run / "adaras" / "rcn.json").read_text())
        assert rcn["traces_without_thinking_span"] == 32 and "whole generation" in rcn["thinking_note"]
        assert rcn["n_questions"] == 8  # every question has a wrong (slip) sample beside right ones
        skipped = json.loads((out / "not_applied.json").read_text())
        assert {(x["task"], x["what"], x["name"]) for x in skipped} == {("direct", "analysis", "exit"),
                                                                       ("direct", "method", "neat")}
        neat = next(x for x in skipped if x["name"] == "neat")
        assert "</think> in 0 of 32 traces" in neat["reason"]
        direct = {r["method"]: r for r in rows if r["task"] == "direct"}
        assert set(direct) == {"vanilla", "adaras", "random-steering", "neureasoner", "nowait", "budget"}
        for name in ("neureasoner", "nowait", "budget"):
            assert direct[name]["note"].startswith("<think> in 0 of 4 traces") and direct[name]["intervened_share"] == 0
        assert direct["adaras"]["note"] == ""
        think = {r["method"]: r for r in rows if r["task"] == "think"}
        assert set(think) == {"vanilla", "adaras", "random-steering", "neat", "neureasoner", "nowait", "budget"}
        assert think["budget"]["note"] == "" and think["budget"]["intervened_share"] > 0
        md = (out / "results.md").read_text()
        assert "Could not apply" in md and "- method `neat`: " in md and "nowait: <think> in 0 of 4" in md

    def test_neat_exits_on_another_token_when_told(self, study_out, tmp_path):
        import shutil

        from workbench.neat import NeatConfig, rank_exit

        out, _, _ = study_out
        run = tmp_path / "direct"
        shutil.copytree(out / "direct" / "analysis", run)
        cfg = NeatConfig(tau_cons=0.0, tau_com=0.0, calibration_traces=8, agreement_traces=0, random_draws=2,
                         estimator="gradient", exit_token="<|im_end|>")
        neurons = rank_exit(run, config=cfg)
        assert len(neurons) > 0
        reference = json.loads((run / "neat" / "reference.json").read_text())
        assert np.isfinite(reference["mu_ref"]).all()
        with pytest.raises(ValueError, match="'<nope>' is not a token"):
            rank_exit(run, config=NeatConfig(exit_token="<nope>"))


def store_tokenizer(run: Path):
    from transformers import AutoTokenizer

    from workbench.model import resolve
    from workbench.store.rundir import run_model_spec

    return AutoTokenizer.from_pretrained(str(resolve(run_model_spec(run))))
