"""Models by hub id: resolved through a Hugging Face cache laid out as the hub's, offline; fetched only when asked.

The cache is built in the test (``models--ORG--NAME/refs/main`` and ``snapshots/REV/``), so nothing needs the
network; the download path is exercised with ``huggingface_hub.snapshot_download`` patched to fill the cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.errors import ModelLoadError

REV = "0123456789abcdef0123456789abcdef01234567"


def cached(hub: Path, repo: str, source: Path, rev: str = REV) -> Path:
    """Lays ``source`` (a model folder) out in ``hub`` as the hub's cache holds ``repo`` at ``rev``."""
    root = hub / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, root / "snapshots" / rev)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    return root / "snapshots" / rev


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


def test_a_cached_hub_model_resolves_offline_and_runs_record_its_revision(hub, tiny_dir, tmp_path):
    from workbench.model import load_model, resolve, revision_of
    from workbench.store.rundir import read_manifest
    from workbench.traces import TraceRunConfig, run_traces

    snapshot = cached(hub, "acme/tiny-reasoner", tiny_dir)
    assert resolve("acme/tiny-reasoner") == snapshot and revision_of(snapshot) == REV
    model = load_model("acme/tiny-reasoner")
    run = tmp_path / "run"
    run_traces(run, config=TraceRunConfig(model="acme/tiny-reasoner", problems=2, max_new_tokens=4), progress=False,
               model=model)
    identity = read_manifest(run)["identity"]
    assert identity["config"]["model"] == "acme/tiny-reasoner" and identity["model_revision"] == REV


def test_a_model_missing_from_the_cache_names_the_command_that_fetches_it(hub):
    from workbench.model import resolve

    with pytest.raises(ModelLoadError, match=r"not in the Hugging Face cache .*`workbench download acme/absent`"):
        resolve("acme/absent")


def test_local_folders_and_bundled_models_are_not_hub_ids(tiny_dir, tmp_path, monkeypatch):
    from workbench.model import hub_id, resolve, revision_of

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copytree(tiny_dir, tmp_path / "runs" / "model")
    assert hub_id("runs/model") is None and resolve("runs/model") == Path("runs/model")  # a relative folder wins
    assert hub_id("organism-v2") is None and revision_of(resolve("organism")) is None


def test_download_only_when_asked(hub, tiny_dir, monkeypatch, tmp_path):
    """`workbench download` and `--download` fill the cache through huggingface_hub; nothing else calls it."""
    import huggingface_hub

    from workbench.cli import app

    calls = []
    real = huggingface_hub.snapshot_download

    def fake(repo_id, revision=None, cache_dir=None, local_files_only=False, **kwargs):
        if not local_files_only:
            calls.append((repo_id, revision, kwargs.get("allow_patterns")))
            cached(Path(cache_dir), repo_id, tiny_dir)
        return real(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    runner = CliRunner()
    out = tmp_path / "run"
    refused = runner.invoke(app, ["traces", "--model", "acme/tiny", "--out", str(out), "--problems", "1"])
    assert refused.exit_code != 0 and "workbench download acme/tiny" in refused.output and not calls
    done = runner.invoke(app, ["download", "acme/tiny"])
    assert done.exit_code == 0, done.output
    assert [c[0] for c in calls] == ["acme/tiny"] and "*.safetensors" in calls[0][2]
    ran = runner.invoke(app, ["traces", "--model", "acme/tiny", "--out", str(out), "--problems", "1",
                              "--max-new-tokens", "3"])
    assert ran.exit_code == 0, ran.output
    assert json.loads((out / "manifest.json").read_text())["identity"]["model_revision"] == REV
    assert len(calls) == 1  # resolved from the cache from then on


def test_a_study_fetches_its_hub_model_only_with_download(hub, tiny_dir, monkeypatch, tmp_path):
    import huggingface_hub

    from workbench.evaluation import StudyError, load_study

    real = huggingface_hub.snapshot_download
    fetched = []

    def fake(repo_id, revision=None, cache_dir=None, local_files_only=False, **kwargs):
        if not local_files_only:
            fetched.append(repo_id)
            cached(Path(cache_dir), repo_id, tiny_dir)
        return real(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    text = '[study]\nmodel = "acme/study-model"\n{}\n[[tasks]]\ntask = "organism"\n[[methods]]\ntype = "vanilla"\n'
    path = tmp_path / "study.toml"
    path.write_text(text.format(""))
    with pytest.raises(StudyError, match=r"field 'model': .*`workbench download acme/study-model`"):
        load_study(path)
    path.write_text(text.format("download = true"))
    assert load_study(path).model == "acme/study-model" and fetched == ["acme/study-model"]
