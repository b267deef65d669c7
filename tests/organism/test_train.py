"""Training: a tiny run saves a loadable checkpoint, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from workbench import atomic
from workbench.atomic import atomic_torch_save, atomic_write_text
from workbench.model import DATA_DIR, load_model
from workbench.organism.train import STATE_FILE, TrainConfig, recipe_of, train

TINY = TrainConfig(n_layers=1, d_model=32, d_mlp=64, n_heads=2, steps=6, batch_size=8, bucket=2, save_every=2,
                   warmup=2)


def test_tiny_run_is_a_loadable_checkpoint(tmp_path):
    out = train(TINY, tmp_path / "m", progress=False)
    model = load_model(out)
    assert model.cfg.n_layers == 1 and model.cfg.d_mlp == 64
    assert recipe_of(out) == TINY.recipe
    assert not (out / STATE_FILE).exists()


def test_interrupted_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    full = load_file(train(TINY, tmp_path / "full", progress=False) / "model.safetensors")
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def crash_on_fifth(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as a kill would, mid-run
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path / "cut", progress=False)
    assert torch.load(tmp_path / "cut" / STATE_FILE, weights_only=False)["step"] == 4
    monkeypatch.undo()
    resumed = load_file(train(TINY, tmp_path / "cut", progress=False) / "model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], atol=0, rtol=0)


def test_resume_refuses_another_config(tmp_path):
    torch.save({"config": {"steps": 999}}, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="different training config"):
        train(TINY, tmp_path, progress=False)


def test_refuses_to_train_into_the_shipped_organism(no_training, tmp_path):
    weights = DATA_DIR / "organism" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    (tmp_path / "link").symlink_to(DATA_DIR / "organism")
    for out in (DATA_DIR / "organism", DATA_DIR / "organism" / ".", tmp_path / "link"):
        with pytest.raises(ValueError, match="shipped organism"):
            train(TINY, out, progress=False)
    assert weights.stat().st_mtime_ns == before


def test_refuses_the_organism_folder_set_by_the_environment(no_training, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_ORGANISM", str(tmp_path / "mine"))
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="shipped organism"):
        train(TINY, tmp_path / "mine", progress=False)
    assert list((tmp_path / "mine").iterdir()) == []


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it after."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(umask, tmp_path, mask, mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.json", "{}")
    atomic_torch_save({"x": 1}, tmp_path / "b.pt")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == mode


def test_umask_is_read_without_changing_it(umask):
    umask(0o027)
    assert atomic.current_umask() == 0o027
    assert os.umask(0o022) == 0o027


def test_atomic_rewrite_keeps_the_file_mode(umask, tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640
