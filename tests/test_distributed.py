"""Scale-out on Ray: traces from 2 workers equal one process's; dead workers lose nothing; no Ray for one.

One local Ray cluster (conftest's ``ray_cluster``, one per test session) and one pool of 2 workers serve the
module (starting them is the slow part).
The pool's workers can be armed to die; the tests that kill them come last in the file.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.engine import NeuronEdit
from workbench.neurons import NeuronSet
from workbench.store import RunDirError, ShardWriter, TraceStore, load_traces
from workbench.traces import TraceRunConfig, run_traces
from workbench.workers import TraceWorker, TraceWorkers, chunks

# flush_every below the chunk size (24 traces / (4 chunks x 2 workers) -> 4), so a worker that dies
# after its first shard dies in the middle of a chunk.
CFG = TraceRunConfig(problems=12, samples=2, batch_size=8, flush_every=2, max_new_tokens=120)
GREEDY, SAMPLED = (replace(CFG, temperature=t) for t in (0.0, 1.0))
TOTAL = 24


def steer(model) -> tuple[list[NeuronEdit], tuple]:
    """A ``build`` function: the edit is made on each worker, from its own model (here from its shape)."""
    neurons = NeuronSet.from_pairs([(model.cfg.n_layers - 1, i) for i in range(64)])
    return [NeuronEdit(neurons, (10.0,) * 64)], ()


class FaultyWorker(TraceWorker):
    """A ``TraceWorker`` that, once armed, dies like a ``kill -9`` right after writing its next shard."""

    armed = False

    def arm(self) -> None:
        self.armed = True

    def writer(self, run_dir: str) -> ShardWriter:
        writer = super().writer(run_dir)
        if self.armed:
            write = writer.append

            def append_then_die(rows):
                write(rows)
                if rows:
                    os._exit(1)

            writer.append = append_then_die
        return writer


@pytest.fixture(scope="module")
def pool(ray_cluster):
    """Two workers, 1 torch thread each; unarmed they are plain ``TraceWorker``s."""
    with TraceWorkers.start(2, worker=FaultyWorker) as workers:
        yield workers


@pytest.fixture(scope="module")
def reference(organism, tmp_path_factory) -> dict[float, Path]:
    """Single-process runs (no Ray), greedy and sampled."""
    out = tmp_path_factory.mktemp("single")
    for cfg in (GREEDY, SAMPLED):
        run_traces(out / str(cfg.temperature), config=cfg, progress=False, model=organism)
    return {cfg.temperature: out / str(cfg.temperature) for cfg in (GREEDY, SAMPLED)}


def shard_ids(run: Path) -> Counter:
    """How often each trace id occurs across the raw shards (the store's reader would hide duplicates)."""
    tables = [pq.read_table(p, columns=["trace_id"]) for p in sorted((run / "shards").glob("part-*.parquet"))]
    return Counter(pa.concat_tables(tables)["trace_id"].to_pylist())


def assert_same_traces(run: Path, reference: Path) -> None:
    got, want = load_traces(run), load_traces(reference)
    assert got.num_rows == want.num_rows == TOTAL
    assert got["trace_id"].to_pylist() == want["trace_id"].to_pylist()
    assert got["token_ids"].to_pylist() == want["token_ids"].to_pylist()
    assert got["correct"].to_pylist() == want["correct"].to_pylist()
    assert got.equals(want)  # every column: spans, grades, labels, events


@pytest.mark.slow  # one local Ray cluster and 2 workers: 30-110 s to start on a shared 2-core box
class TestSameAsOneProcess:
    """Each (problem, sample) has its own sampler seed, so sharding changes nothing."""

    @pytest.mark.parametrize("cfg", [GREEDY, SAMPLED], ids=["greedy", "T=1"])
    def test_traces_equal_a_single_process_run(self, pool, reference, cfg, tmp_path, organism):
        summary = run_traces(tmp_path / "run", config=cfg, progress=False, workers=pool, model=organism)
        assert summary.traces == TOTAL and summary.workers == 2 and summary.workers_lost == []
        assert_same_traces(tmp_path / "run", reference[cfg.temperature])
        writers = {p.name.split("-")[1].split(".")[0] for p in (tmp_path / "run" / "shards").iterdir()}
        assert writers == {"w0", "w1"}  # both workers wrote their own shards into the run
        if cfg.temperature > 0:  # sampling happened: samples of one problem differ
            rows = load_traces(tmp_path / "run").to_pylist()
            assert any(a["token_ids"] != b["token_ids"] for a, b in zip(rows[::2], rows[1::2], strict=True))

    def test_manifest_is_the_single_process_one(self, pool, reference, tmp_path):
        """Same identity, so a run started on Ray resumes without it and vice versa."""
        run_traces(tmp_path / "run", config=GREEDY, progress=False, workers=pool)
        ray_manifest = TraceStore(tmp_path / "run").manifest()
        assert ray_manifest["identity"] == TraceStore(reference[0.0]).manifest()["identity"]
        assert ray_manifest["provenance"]["workers"]["count"] == 2

    def test_interventions_built_on_the_workers(self, pool, reference, tmp_path, organism):
        edits, _ = steer(organism)
        run_traces(tmp_path / "single", config=GREEDY, progress=False, model=organism, edits=edits)
        pool.run(GREEDY, tmp_path / "ray", progress=False, build=steer)
        assert load_traces(tmp_path / "ray").equals(load_traces(tmp_path / "single"))
        assert TraceStore(tmp_path / "ray").manifest()["identity"]["interventions"]["edits"]  # recorded
        steered, plain = (load_traces(p)["token_ids"].to_pylist() for p in (tmp_path / "ray", reference[0.0]))
        assert steered != plain  # the edit acted, so the comparison above could fail
        with pytest.raises(ValueError, match="not both"):
            pool.run(GREEDY, tmp_path / "both", progress=False, edits=edits, build=steer)

    def test_a_workers_error_is_raised_as_itself_before_anything_is_written(self, pool, tmp_path):
        from workbench.tasks import TaskDataError

        cfg = TraceRunConfig(task="math", data=str(tmp_path / "missing.jsonl"), problems=2)
        with pytest.raises(TaskDataError, match=r"missing\.jsonl does not exist"):
            run_traces(tmp_path / "run", config=cfg, progress=False, workers=pool)
        assert not (tmp_path / "run").exists()

    def test_a_model_edited_in_memory_is_refused(self, pool, tmp_path):
        import torch

        from workbench.model import load_model

        model = load_model("organism")
        with torch.no_grad():
            next(model.original_model.parameters()).add_(1.0)
        with pytest.raises(ValueError, match="not the one the workers loaded"):
            run_traces(tmp_path / "run", config=GREEDY, progress=False, workers=pool, model=model)


@pytest.mark.slow  # one local Ray cluster and 2 workers: 30-110 s to start on a shared 2-core box
class TestResume:
    """A partial run finishes with or without Ray, whoever wrote its first part."""

    def test_lost_shards_are_made_again_with_or_without_ray(self, pool, reference, tmp_path, organism):
        run_traces(tmp_path / "a", config=SAMPLED, progress=False, workers=pool)
        (tmp_path / "a" / "traces.parquet").unlink()
        for shard in (tmp_path / "a" / "shards").glob("part-w1.*"):  # as if worker 1 never ran
            shard.unlink()
        saved = sum(shard_ids(tmp_path / "a").values())
        assert 0 < saved < TOTAL
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        assert run_traces(tmp_path / "a", config=SAMPLED, progress=False, workers=pool).resumed_from == saved
        assert run_traces(tmp_path / "b", config=SAMPLED, progress=False, model=organism).resumed_from == saved
        for run in (tmp_path / "a", tmp_path / "b"):
            assert max(shard_ids(run).values()) == 1
            assert_same_traces(run, reference[1.0])

    def test_ray_finishes_a_single_process_run(self, pool, reference, tmp_path):
        out = tmp_path / "run"
        shutil.copytree(reference[1.0], out)
        (out / "traces.parquet").unlink()
        shards = sorted((out / "shards").glob("part-*"))
        for shard in shards[len(shards) // 2:]:
            shard.unlink()
        summary = run_traces(out, config=SAMPLED, progress=False, workers=pool)
        assert 0 < summary.resumed_from < TOTAL
        assert max(shard_ids(out).values()) == 1
        assert_same_traces(out, reference[1.0])


class TestOptions:
    """``--workers 1`` is a plain process; bad values fail before anything starts."""

    def test_one_worker_needs_no_ray(self, tmp_path, monkeypatch):
        monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now raises ImportError
        result = CliRunner().invoke(app, ["traces", "--out", str(tmp_path / "run"), "--problems", "2",
                                          "--max-new-tokens", "40", "--workers", "1"])
        assert result.exit_code == 0, result.output
        assert load_traces(tmp_path / "run").num_rows == 2

    def test_missing_ray_is_named_with_the_install_command(self, tmp_path, monkeypatch):
        monkeypatch.setitem(sys.modules, "ray", None)
        result = CliRunner().invoke(app, ["traces", "--out", str(tmp_path / "run"), "--workers", "2"])
        assert result.exit_code == 2 and "pip install ray" in result.output
        assert not (tmp_path / "run").exists()

    @pytest.mark.parametrize("value", ["0", "-1"])
    def test_bad_worker_counts_are_refused(self, tmp_path, value):
        result = CliRunner().invoke(app, ["traces", "--out", str(tmp_path / "run"), "--workers", value])
        assert result.exit_code == 2 and "--workers" in result.output
        with pytest.raises(ValueError, match="workers must be >= 1"):
            TraceWorkers.start(int(value))

    @pytest.mark.slow  # the Ray cluster
    def test_more_workers_than_the_cluster_holds_are_refused(self, ray_cluster):
        with pytest.raises(ValueError, match="the Ray cluster has 2 CPUs"):
            TraceWorkers.start(3)


class TestPieces:
    def test_chunks_keep_problems_whole_and_every_key_once_in_order(self):
        keys = [(f"p{i}", s) for i in range(7) for s in range(3)]
        for rows in (1, 2, 4, 9, 100):
            parts = chunks(keys, rows)
            assert [k for part in parts for k in part] == keys
            assert len({p for part in parts for p in {k[0] for k in part}}) == 7  # no problem split
            assert sum(len({k[0] for k in part}) for part in parts) == 7
            assert all(len(part) >= rows for part in parts[:-1])
        with pytest.raises(ValueError, match="rows"):
            chunks(keys, 0)

    def test_shard_writer_needs_a_run_and_a_clean_name(self, tmp_path):
        with pytest.raises(RunDirError, match="shards"):
            ShardWriter(tmp_path)
        with TraceStore.open(tmp_path / "run", {"config": {}}):
            with pytest.raises(ValueError, match="must not contain"):
                ShardWriter(tmp_path / "run", "w-1")
            a, b = ShardWriter(tmp_path / "run", "w1"), ShardWriter(tmp_path / "run", "w1")
            assert a.name != b.name and a.name.startswith("w1.")  # a restarted worker never overwrites


@pytest.mark.slow  # one local Ray cluster and 2 workers: 30-110 s to start on a shared 2-core box
class TestDeadWorkers:
    """A worker killed mid-run loses nothing; when all die, a rerun finishes. Last: they kill the pool."""

    def test_a_worker_dying_mid_chunk_loses_nothing(self, pool, reference, tmp_path):
        import ray

        ray.get(pool.actors[1].arm.remote())
        summary = run_traces(tmp_path / "run", config=SAMPLED, progress=False, workers=pool)
        assert summary.workers_lost == [1] and summary.traces == TOTAL
        w1 = [p for p in (tmp_path / "run" / "shards").iterdir() if p.name.startswith("part-w1.")]
        assert len(w1) == 1 and pq.read_metadata(w1[0]).num_rows == SAMPLED.flush_every  # died mid-chunk
        assert max(shard_ids(tmp_path / "run").values()) == 1  # what it wrote was not generated again
        assert_same_traces(tmp_path / "run", reference[1.0])

    def test_when_every_worker_dies_a_rerun_without_ray_finishes(self, pool, reference, tmp_path, organism):
        import ray

        ray.get([actor.arm.remote() for actor in pool.actors.values()])  # the last test to use the pool
        with pytest.raises(RunDirError, match="every worker died"):
            run_traces(tmp_path / "run", config=SAMPLED, progress=False, workers=pool)
        saved = sum(shard_ids(tmp_path / "run").values())
        assert 0 < saved < TOTAL
        with pytest.raises(RunDirError, match="no workers left"):
            run_traces(tmp_path / "run", config=SAMPLED, progress=False, workers=pool)
        assert run_traces(tmp_path / "run", config=SAMPLED, progress=False, model=organism).resumed_from == saved
        assert max(shard_ids(tmp_path / "run").values()) == 1
        assert_same_traces(tmp_path / "run", reference[1.0])
