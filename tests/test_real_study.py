"""`studies/real-model.toml`'s mechanics, run on a tiny random model: the shipped file with only its model and its
sizes swapped, its benchmarks (MATH-500, AIME-24) read from a patched loader instead of the Hub.

A random model answers nothing right and never closes a thinking span, so what is checked is that the study
loads as written (presets, disjoint analysis problems, cross-task analyses), runs end to end, and says which
analyses and methods could not apply and why, not what the methods achieve.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QWEN3_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
SIZES = [  # (the shipped line, the tiny one)
    ("problems = 400", "problems = 6"), ("problems = 100", "problems = 4"), ("samples = 8", "samples = 2"),
    ("samples = 4", "samples = 1"), ("max_new_tokens = 16384", "max_new_tokens = 6"),
    ("max_new_tokens = 8192", "max_new_tokens = 6"), ("n_resamples = 2000", "n_resamples = 200"),
]


def _rows(benchmark) -> tuple[list[dict], str]:
    if benchmark.name == "math500":
        return [{"problem": f"What is {i} + {i}?", "answer": str(2 * i), "solution": f"\\boxed{{{2 * i}}}",
                 "unique_id": f"test/algebra/{i}.json"} for i in range(12)], "a" * 40
    return [{"id": i, "problem": f"Find {i} * 3.", "answer": str(3 * i), "solution": ""} for i in range(5)], "b" * 40


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    from tests.text_model import build_tokenizer, save_text_model
    from workbench.evaluation import load_study

    folder = tmp_path_factory.mktemp("real")
    model = save_text_model(folder / "qwen3-like")
    tok = build_tokenizer()
    tok.chat_template = QWEN3_TEMPLATE  # the qwen3 preset refuses a template that ignores enable_thinking
    tok.save_pretrained(model)
    text = (ROOT / "studies" / "real-model.toml").read_text()
    text = text.replace('model = "Qwen/Qwen3-1.7B"', f'model = "{model}"')
    for shipped, tiny in SIZES:
        assert shipped in text, shipped  # the shipped study still says this
        text = text.replace(shipped, tiny)
    path = folder / "study.toml"
    path.write_text(text)
    return path, load_study


def test_the_real_model_study_runs_on_a_tiny_model(real_study, monkeypatch, tmp_path):
    from workbench.evaluation import run_study
    from workbench.tasks import benchmarks

    path, load_study = real_study
    monkeypatch.setattr(benchmarks, "_hub_rows", lambda b, download, cache_dir: _rows(b))
    study = load_study(path)
    math500, aime24 = study.tasks
    assert math500.run.prompt.preset == "qwen3" and math500.analysis.run.disjoint_from == (6, 1)
    assert aime24.analysis.stages == () and study.method("adaras").analysis_from == "math500"

    out = tmp_path / "out"
    rows = run_study(out, study=study, progress=False)
    manifest = json.loads((out / "math500" / "analysis" / "manifest.json").read_text())
    assert manifest["identity"]["config"]["disjoint_from"] == [6, 1]
    assert manifest["identity"]["data_revision"] == "a" * 40
    assert manifest["identity"]["prompt_format"]["preset"] == "qwen3"
    evaluation = {r["problem_id"] for r in _traces(out / "math500" / "vanilla")}
    analysis = {r["problem_id"] for r in _traces(out / "math500" / "analysis")}
    assert len(evaluation) == 6 and len(analysis) == 4 and not evaluation & analysis

    skipped = json.loads((out / "not_applied.json").read_text())
    assert all(x["reason"] and "\n" not in x["reason"] for x in skipped)
    ran = {(r["task"], r["method"]) for r in rows}
    for task in ("math500", "aime24"):  # methods that need no analysis always run
        assert {(task, m) for m in ("vanilla", "budget-4096", "nowait", "deer", "answer-consistency")} <= ran
    for x in skipped:
        assert (x["task"], x["name"]) not in ran
    md = (out / "results.md").read_text()
    assert "### math500" in md and "### aime24" in md


def _traces(run: Path) -> list[dict]:
    from workbench.store import load_traces

    return load_traces(run).select(["problem_id"]).to_pylist()


def test_the_shipped_study_keeps_the_papers_settings():
    import tomllib

    doc = tomllib.loads((ROOT / "studies" / "real-model.toml").read_text())
    methods = {m["name"]: m for m in doc["methods"]}
    assert (methods["adaras"]["k"], methods["adaras"]["alpha"]) == (50, 0.3) and methods["adaras"].get("gate", True)
    assert (methods["neat"]["tau_sim"], methods["neat"]["tau_mag"], methods["neat"]["tau_sup"]) == (0.6, 0.2, 0.4)
    for task in doc["tasks"]:
        assert (task["temperature"], task["top_p"]) == (0.6, 0.95) and task["prompt"]["preset"] == "qwen3"
    assert re.fullmatch(r"[\w-]+/[\w.-]+", doc["study"]["model"])  # a hub id, resolved through the cache
