"""Training: a tiny run saves a loadable checkpoint, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from workbench.model import load_model
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
