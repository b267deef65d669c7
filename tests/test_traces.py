"""Trace runs: identity, lock, validation before writing, corrupt shards, and kill -9 resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench.engine import Finished, NeuronEdit
from workbench.errors import ModelLoadError
from workbench.model import load_model, organism_dir
from workbench.neurons import NeuronSet
from workbench.prompting import PromptFormat
from workbench.store import SCHEMA, RunDirError, RunPaths, TraceStore, load_traces
from workbench.tasks import get_task
from workbench.traces import TraceRunConfig, build_record, run_traces

CFG = TraceRunConfig(problems=40, samples=3, batch_size=8, flush_every=5, max_new_tokens=120)
TOTAL = 120
SMALL = TraceRunConfig(problems=4, samples=2, batch_size=4, flush_every=3, max_new_tokens=60)


@pytest.fixture(scope="module")
def full_run(organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    summary = run_traces(out, config=CFG, progress=False, model=organism)
    return out, summary


@pytest.fixture
def organism_copy(tmp_path) -> Path:
    """A private copy of the organism folder whose weights a test may change."""
    return Path(shutil.copytree(organism_dir(), tmp_path / "organism-copy"))


class TestRun:
    def test_every_pair_once_with_all_columns(self, full_run):
        out, summary = full_run
        table = load_traces(out)
        assert table.schema == SCHEMA and summary.traces == table.num_rows == TOTAL
        rows = table.to_pylist()
        assert len({r["trace_id"] for r in rows}) == TOTAL
        assert all(r["trace_id"] == f"{r['problem_id']}/{r['sample_index']}" for r in rows)
        row = rows[0]
        assert row["think_start"] == row["prompt_len"] - 1 and row["think_end"] > row["think_start"]
        assert row["labels"] is not None and json.loads(row["labels"])["problem_id"] == row["problem_id"]

    def test_grades_agree_with_the_labeler(self, full_run):
        """Two independent readings of each trace: the task's grader on the answer text, the labeler on tokens."""
        rows = load_traces(full_run[0]).to_pylist()
        for r in rows:
            labels = json.loads(r["labels"])
            truth = labels["answer"] == sum(int(x) for x in r["problem_id"].split("+"))
            assert r["correct"] == truth, r["text"]
        assert 0 < sum(r["correct"] for r in rows) < len(rows)  # both outcomes occur, so the check can fail

    def test_unfinished_thinking_is_not_graded_from_inside_it(self, organism):
        task = get_task("organism")
        p = task.problems(1, seed=0)[0]
        tok = organism.tokenizer
        fmt = PromptFormat().resolve(tok)
        prompt_ids = fmt.encode(tok, task.message(p, chat=False))
        for tail, correct in ((f" carefully {p.gold} </think> {p.gold}", True), (f" carefully {p.gold}", False)):
            ids = prompt_ids + tok(tail).input_ids[1:]
            rec = build_record(tok, fmt, task, p, 0, "", Finished("k", len(prompt_ids), ids, "length"))
            assert rec["correct"] is correct
            assert (rec["extracted"] is None) is (not correct)

    def test_manifest_records_identity_and_provenance(self, full_run):
        manifest = json.loads(RunPaths(full_run[0]).manifest.read_text())
        identity = manifest["identity"]
        assert identity["config"]["samples"] == 3 and len(identity["model_sha256"]) == 64
        assert identity["prompt_format"]["style"] == "raw" and identity["prompt_format"]["stop_ids"] == [1]
        assert identity["interventions"] == {"edits": [], "controllers": []}
        assert "torch" in manifest["provenance"]["versions"]

    def test_rerun_resumes_nothing_to_do(self, full_run, organism):
        summary = run_traces(full_run[0], config=CFG, progress=False, model=organism)
        assert summary.resumed_from == TOTAL and summary.traces == TOTAL

    def test_other_config_is_refused(self, full_run, organism):
        with pytest.raises(RunDirError, match=r"differs in: config\.samples"):
            run_traces(full_run[0], config=replace(CFG, samples=4), progress=False, model=organism)

    def test_non_run_folder_is_refused(self, tmp_path):
        (tmp_path / "x.txt").write_text("x")
        with pytest.raises(RunDirError, match="not empty"):
            TraceStore.open(tmp_path, {"config": {}})


class TestIdentity:
    """A resumed run must be the same run: weights, data, prompt format and interventions."""

    def test_changed_weights_are_refused(self, organism_copy, tmp_path):
        cfg = replace(SMALL, model=str(organism_copy))
        run_traces(tmp_path / "run", config=cfg, progress=False)
        weights = load_file(organism_copy / "model.safetensors")
        name = next(iter(weights))
        weights[name] = weights[name] + 0.01
        save_file(weights, organism_copy / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(RunDirError, match="model_sha256"):
            run_traces(tmp_path / "run", config=cfg, progress=False)

    def test_a_model_changed_in_memory_is_refused(self, organism_copy, tmp_path):
        model = load_model(organism_copy)
        run_traces(tmp_path / "run", config=SMALL, progress=False, model=model)
        with torch.no_grad():
            next(model.original_model.parameters()).add_(0.01)
        with pytest.raises(RunDirError, match="model_sha256"):
            run_traces(tmp_path / "run", config=SMALL, progress=False, model=model)

    def test_changed_data_is_refused(self, tiny_dir, tmp_path):
        data = tmp_path / "d.jsonl"
        data.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": "#### 4"}\n')
        cfg = TraceRunConfig(model=str(tiny_dir), task="math", data=str(data), problems=None, max_new_tokens=4)
        run_traces(tmp_path / "run", config=cfg, progress=False)
        data.write_text('{"question": "1+1?", "answer": "#### 3"}\n{"question": "2+2?", "answer": "#### 4"}\n')
        with pytest.raises(RunDirError, match="data_sha256"):
            run_traces(tmp_path / "run", config=cfg, progress=False)

    def test_other_interventions_and_prompt_format_are_refused(self, organism, tmp_path):
        run_traces(tmp_path / "run", config=SMALL, progress=False, model=organism)
        edit = NeuronEdit(NeuronSet.from_pairs([(1, 3)]), (2.0,))
        with pytest.raises(RunDirError, match=r"interventions\.edits"):
            run_traces(tmp_path / "run", config=SMALL, progress=False, model=organism, edits=[edit])
        with pytest.raises(RunDirError, match="prompt_format"):
            run_traces(tmp_path / "run", config=replace(SMALL, prompt=PromptFormat(bos="never")), progress=False,
                       model=organism)


class TestWriters:
    """One writer per run directory; shard names never collide."""

    def test_second_writer_is_refused(self, organism, tmp_path):
        out = tmp_path / "run"
        run_traces(out, config=SMALL, progress=False, model=organism)
        manifest = json.loads(RunPaths(out).manifest.read_text())
        with TraceStore.open(out, manifest["identity"]):
            with pytest.raises(RunDirError, match="another process"):
                run_traces(out, config=SMALL, progress=False, model=organism)
        run_traces(out, config=SMALL, progress=False, model=organism)  # the lock went with the first writer

    def test_shard_names_are_unique_per_writer(self, tmp_path):
        rows = _one_row()
        for _ in range(2):
            with TraceStore.open(tmp_path / "run", {"config": {}}) as store:
                store.append(rows)
        names = sorted(p.name for p in (tmp_path / "run" / "shards").iterdir())
        assert len(names) == 2 and names[0].split("-")[1] != names[1].split("-")[1]


def _one_row() -> list[dict]:
    row = {name: None for name in SCHEMA.names}
    row.update(trace_id="p/0", problem_id="p", sample_index=0, token_ids=[1, 2], correct=False)
    return [row]


class TestValidateBeforeWriting:
    """Bad settings, models or folders fail before any run directory exists."""

    def test_bad_settings_fail_at_construction(self):
        for kw in ({"top_p": 0.0}, {"samples": 0}, {"temperature": -1.0}, {"problems": 0}):
            with pytest.raises(ValueError, match=next(iter(kw))):
                TraceRunConfig(**kw)

    def test_garbage_config_leaves_no_run_dir(self, organism_copy, tmp_path):
        (organism_copy / "config.json").write_text("{not json")
        with pytest.raises(ModelLoadError, match=r"config\.json"):
            run_traces(tmp_path / "run", config=replace(SMALL, model=str(organism_copy)), progress=False)
        assert not (tmp_path / "run").exists()

    @pytest.mark.parametrize("where", ["under_a_file", "in_proc"])
    def test_unwritable_out_is_a_clear_error(self, organism, tmp_path, where):
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run" if where == "under_a_file" else Path("/proc/workbench-run")
        with pytest.raises(RunDirError, match=r"run directory|not a directory"):
            run_traces(out, config=SMALL, progress=False, model=organism)


class TestCorruptShard:
    def test_corrupt_shard_is_named_then_recomputed(self, organism, tmp_path):
        out = tmp_path / "run"
        reference = run_traces(out, config=SMALL, progress=False, model=organism)
        full = load_traces(out).select(["trace_id", "token_ids"])
        (out / "traces.parquet").unlink()
        shard = sorted((out / "shards").iterdir())[0]
        shard.write_bytes(shard.read_bytes()[:40])
        with pytest.raises(RunDirError, match=shard.name):
            load_traces(out)
        summary = run_traces(out, config=SMALL, progress=False, model=organism)
        assert summary.shards_set_aside and shard.name in summary.shards_set_aside[0]
        assert summary.traces == reference.traces and summary.resumed_from < reference.traces
        assert load_traces(out).select(["trace_id", "token_ids"]).equals(full)


def test_kill_9_then_resume_loses_and_doubles_nothing(full_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "workbench.cli", "traces", "--out", str(out), "--problems", "40", "--samples", "3",
           "--batch-size", "8", "--max-new-tokens", "120", "--flush-every", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "shards").glob("part-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(TraceStore(out).done_keys())
    assert 0 < partial < TOTAL and not (out / "traces.parquet").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed, full = pq.read_table(out / "traces.parquet"), pq.read_table(full_run[0] / "traces.parquet")
    assert resumed.num_rows == TOTAL and json.loads(done.stdout[done.stdout.index("{"):])["resumed_from"] == partial
    columns = ["trace_id", "token_ids", "correct"]
    assert resumed.select(columns).equals(full.select(columns))
