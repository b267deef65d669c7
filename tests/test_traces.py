"""Trace runs: the run directory, its manifest, and resuming after kill -9 with nothing lost or doubled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from workbench.store import MANIFEST, SCHEMA, RunDirError, TraceStore, load_traces
from workbench.traces import TraceRunConfig, run_traces

CFG = TraceRunConfig(problems=40, samples=3, batch_size=8, flush_every=5, max_new_tokens=120)
TOTAL = 120


@pytest.fixture(scope="module")
def full_run(organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    summary = run_traces(CFG, out, progress=False, model=organism)
    return out, summary


class TestRun:
    def test_every_pair_once_with_all_columns(self, full_run):
        out, summary = full_run
        table = load_traces(out)
        assert table.schema == SCHEMA and summary["traces"] == table.num_rows == TOTAL
        keys = list(zip(table["problem_id"].to_pylist(), table["sample_index"].to_pylist(), strict=True))
        assert len(set(keys)) == TOTAL
        row = table.slice(0, 1).to_pylist()[0]
        assert row["think_start"] == row["prompt_len"] - 1 and row["think_end"] > row["think_start"]
        assert row["labels"] is not None and json.loads(row["labels"])["problem_id"] == row["problem_id"]
        assert row["correct"] == (row["extracted"] == row["gold"])

    def test_manifest_records_config_versions_and_weights(self, full_run):
        manifest = json.loads((full_run[0] / MANIFEST).read_text())
        assert manifest["config"]["samples"] == 3
        assert len(manifest["model"]["weight_sha256"]) == 64
        assert "torch" in manifest["versions"] and "transformer-lens" in manifest["versions"]

    def test_rerun_resumes_nothing_to_do(self, full_run, organism):
        summary = run_traces(CFG, full_run[0], progress=False, model=organism)
        assert summary["resumed_from"] == TOTAL and summary["traces"] == TOTAL

    def test_other_config_is_refused(self, full_run, organism):
        with pytest.raises(RunDirError, match="another config"):
            run_traces(TraceRunConfig(problems=40, samples=4), full_run[0], progress=False, model=organism)

    def test_non_run_folder_is_refused(self, tmp_path):
        (tmp_path / "x.txt").write_text("x")
        with pytest.raises(RunDirError, match="not empty"):
            TraceStore.create(tmp_path, {"config": {}})


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
    assert resumed.select(["problem_id", "sample_index", "token_ids", "correct"]).equals(
        full.select(["problem_id", "sample_index", "token_ids", "correct"]))
