"""Training: a tiny run saves a loadable checkpoint, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workbench import atomic
from workbench.atomic import atomic_torch_save, atomic_write_text
from workbench.model import DATA_DIR, load_model
from workbench.organism.task import RECIPE_V2, RECIPE_V3
from workbench.organism.tokenizer import build_tokenizer
from workbench.organism.train import (
    CONFIG_V3,
    CONFIG_V4,
    STATE_FILE,
    TrainConfig,
    _batches,
    _ExitKnob,
    _Knob,
    config_of,
    planted_of,
    recipe_of,
    train,
)

TINY = TrainConfig(n_layers=1, d_model=32, d_mlp=64, n_heads=2, steps=6, batch_size=8, bucket=2, save_every=2,
                   warmup=2, recipe=RECIPE_V2, knob_neurons=0)
TINY_KNOB = TrainConfig(n_layers=2, d_model=32, d_mlp=64, n_heads=2, steps=6, batch_size=8, bucket=2, save_every=2,
                        warmup=2, recipe=RECIPE_V3, knob_layer=1, knob_neurons=8, knob_share=0.5)
TINY_EXIT = TrainConfig(n_layers=2, d_model=32, d_mlp=64, n_heads=2, steps=6, batch_size=8, bucket=2, save_every=2,
                        warmup=2, recipe=RECIPE_V3, knob_layer=1, knob_neurons=8, knob_share=0.3, knob_mode="set",
                        exit_layer=0, exit_neurons=4, exit_share=0.6)


def test_tiny_run_is_a_loadable_checkpoint(tmp_path):
    out = train(TINY, tmp_path / "m", progress=False)
    model = load_model(out)
    assert model.cfg.n_layers == 1 and model.cfg.d_mlp == 64
    assert recipe_of(out) == TINY.recipe
    assert not (out / STATE_FILE).exists()


@pytest.mark.parametrize("cfg", [TINY, TINY_KNOB, TINY_EXIT], ids=["plain", "planted-readout", "planted-exit"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, monkeypatch, cfg):
    full = load_file(train(cfg, tmp_path / "full", progress=False) / "model.safetensors")
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def crash_on_fifth(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as a kill would, mid-run
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False)
    assert torch.load(tmp_path / "cut" / STATE_FILE, weights_only=False)["step"] == 4
    monkeypatch.undo()
    resumed = load_file(train(cfg, tmp_path / "cut", progress=False) / "model.safetensors")
    assert full.keys() == resumed.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], atol=0, rtol=0)


class TestPlantedReadout:
    """v3's planted regime read-out: recorded with the checkpoint, pushed only where the batch says, and its loss
    only on unpushed thinking positions."""

    def test_recorded_and_read_back(self, tmp_path):
        out = train(TINY_KNOB, tmp_path / "m", progress=False)
        planted = planted_of(out)
        assert planted is not None and set(planted.layers) == {1} and list(planted.indices) == TINY_KNOB.knob()
        assert len(set(planted.indices)) == 8 and config_of(out) == TINY_KNOB
        assert planted_of(train(TINY, tmp_path / "plain", progress=False)) is None

    def test_the_bundled_v3_records_its_config_and_readout(self):
        assert config_of(DATA_DIR / "organism-v3") == CONFIG_V3
        planted = planted_of(DATA_DIR / "organism-v3")
        assert planted is not None and list(planted.indices) == CONFIG_V3.knob() and set(planted.layers) == {2}
        assert planted_of(DATA_DIR / "organism-v2") is None  # v2 has none

    def test_the_shipped_v4_records_its_config_and_both_readouts(self):
        assert config_of(DATA_DIR / "organism") == CONFIG_V4
        regime, exit_ = planted_of(DATA_DIR / "organism"), planted_of(DATA_DIR / "organism", "exit")
        assert regime is not None and list(regime.indices) == CONFIG_V4.knob() and set(regime.layers) == {2}
        assert exit_ is not None and list(exit_.indices) == CONFIG_V4.exit_knob() and set(exit_.layers) == {3}

    def test_old_configs_have_no_readout(self):
        assert TrainConfig.from_dict({"recipe": {}}).knob_neurons == 0

    def test_hook_pushes_pushed_rows_at_thinking_positions_only(self):
        from transformers import Qwen3ForCausalLM

        tok = build_tokenizer()
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(TINY_KNOB.model_config(tok))
        batch = next(_batches(TINY_KNOB, tok, 0))
        assert (batch.push != 0).any() and (batch.push == 0).any()
        assert torch.all((batch.knob == 0) == (batch.push != 0))  # a pushed row has no read-out target
        seen = {}
        mlp = model.model.layers[TINY_KNOB.knob_layer].mlp.down_proj
        grab = mlp.register_forward_pre_hook(lambda _m, a: seen.setdefault("before", a[0].clone()))
        knob = _Knob(model, TINY_KNOB)
        knob.batch = batch
        after = mlp.register_forward_pre_hook(lambda _m, a: seen.setdefault("after", a[0].clone()))
        model(input_ids=batch.x)
        grab.remove(), after.remove(), knob.handle.remove()
        diff = seen["after"] - seen["before"]
        idx = torch.tensor(TINY_KNOB.knob())
        assert torch.equal(batch.pushed, batch.thinking & (batch.push != 0)[:, None])  # add mode: every thinking token
        want = (batch.push[:, None] * batch.pushed)[..., None].expand(-1, -1, len(idx))
        torch.testing.assert_close(diff[..., idx], want.float())
        others = torch.ones(diff.shape[-1], dtype=torch.bool)
        others[idx] = False
        assert torch.all(diff[..., others] == 0)
        loss = knob.loss()
        mask = batch.thinking & (batch.push == 0)[:, None]
        torch.testing.assert_close(loss, ((knob.values - batch.knob[:, None, None]) ** 2)[mask].mean())


    def test_set_mode_after_the_cues_sets_the_readout_where_pushed(self):
        import dataclasses

        from transformers import Qwen3ForCausalLM

        cfg = dataclasses.replace(TINY_KNOB, knob_mode="set", knob_after_cues=True, act_cap=1.0)
        tok = build_tokenizer()
        model = Qwen3ForCausalLM(cfg.model_config(tok))
        batch = next(_batches(cfg, tok, 0))
        assert set(batch.push.abs().tolist()) == {0.0, cfg.knob_target}
        for r in range(len(batch.x)):  # pushes start at the last cue word, not at the first
            on = batch.thinking[r].nonzero().flatten()
            if batch.push[r] != 0:
                assert batch.pushed[r].nonzero().flatten()[0] == on[0] + cfg.recipe.cue_words - 1
        seen = {}
        knob = _Knob(model, cfg)
        knob.batch = batch
        mlp = model.model.layers[cfg.knob_layer].mlp.down_proj
        after = mlp.register_forward_pre_hook(lambda _m, a: seen.setdefault("after", a[0].clone()))
        model(input_ids=batch.x)
        after.remove(), knob.handle.remove()
        got = seen["after"][..., torch.tensor(cfg.knob())]
        want = batch.push[:, None, None].expand_as(got)
        mask = batch.pushed[..., None].expand_as(got)
        torch.testing.assert_close(got[mask], want[mask])
        torch.testing.assert_close(got[~mask], knob.values[~mask])
        out = train(dataclasses.replace(cfg, steps=2), Path(tempfile.mkdtemp()) / "m", progress=False)
        assert json.loads((out / "organism.json").read_text())["config"]["act_cap"] == 1.0


class TestPlantedExit:
    """v4's planted exit read-out: 1 where thinking can end, 0 at the other thinking positions; set in some rows
    to 1 at an earlier step's separator (the trace then closes thinking on its running total) or to 0 at the final
    result's separator (the trace then re-checks)."""

    @pytest.fixture(scope="class")
    @classmethod
    def batches(cls):
        tok = build_tokenizer()
        gen = _batches(TINY_EXIT, tok, 0)
        return tok, [next(gen) for _ in range(4)]

    def test_natural_targets_mark_where_thinking_can_end(self, batches):
        tok, bs = batches
        vocab = tok.get_vocab()
        close, seps = vocab["▁</think>"], {vocab["▁;"], vocab["▁,"]}
        natural = 0
        for b in bs:
            for r in range(len(b.x)):
                if b.exit_set[r].any():
                    assert not b.exit_loss[r].any()  # a set row has no read-out target
                    continue
                natural += 1
                x, on = b.x[r].tolist(), b.exit_loss[r].nonzero().flatten().tolist()
                assert x[on[-1] + 1] == close and x[on[0] - 1] == vocab["▁<think>"]  # the thinking span
                ones = b.exit_target[r].nonzero().flatten().tolist()
                assert ones[-1] == on[-1] and 1 <= len(ones) <= 2  # before </think>; and after the final result
                assert all(x[p] in seps for p in ones) and set(ones) <= set(on)
        assert natural > 0

    def test_set_rows_close_or_continue_as_their_readout_says(self, batches):
        tok, bs = batches
        vocab = tok.get_vocab()
        seen = set()
        for b in bs:
            for r in range(len(b.x)):
                at = b.exit_set[r].nonzero().flatten().tolist()
                if not at:
                    continue
                assert len(at) == 1 and b.x[r, at[0]].item() in {vocab["▁;"], vocab["▁,"]}
                value, following = b.exit_value[r, at[0]].item(), b.x[r, at[0] + 1].item()
                seen.add(value)
                if value == 1.0:  # closes thinking there and answers the running total
                    words = tok.decode(b.x[r][b.x[r] != tok.pad_token_id], skip_special_tokens=True).split()
                    assert following == vocab["▁</think>"] and words[words.index("</think>") - 3] == "="
                    assert words[words.index("</think>") + 1] == words[words.index("</think>") - 2]
                else:  # goes on: a re-check, or a repeat of the final step
                    assert value == 0.0 and following != vocab["▁</think>"]
                    assert vocab["▁check"] in b.x[r, at[0]:].tolist()
        assert seen == {0.0, 1.0}

    def test_hook_sets_only_the_marked_positions_and_loss_is_masked(self, batches):
        from transformers import Qwen3ForCausalLM

        tok, bs = batches
        b = next(b for b in bs if b.exit_set.any())
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(TINY_EXIT.model_config(tok))
        knob = _ExitKnob(model, TINY_EXIT)
        knob.batch = b
        seen = {}
        mlp = model.model.layers[TINY_EXIT.exit_layer].mlp.down_proj
        after = mlp.register_forward_pre_hook(lambda _m, a: seen.setdefault("after", a[0].clone()))
        model(input_ids=b.x)
        after.remove(), knob.handle.remove()
        got = seen["after"][..., torch.tensor(TINY_EXIT.exit_knob())]
        mask = b.exit_set[..., None].expand_as(got)
        torch.testing.assert_close(got[mask], b.exit_value[..., None].expand_as(got)[mask])
        torch.testing.assert_close(got[~mask], knob.values[~mask])
        want = ((knob.values - b.exit_target[..., None]) ** 2)[b.exit_loss].mean()
        torch.testing.assert_close(knob.loss(), want)

    def test_recorded_and_read_back(self, tmp_path):
        out = train(dataclasses.replace(TINY_EXIT, steps=2), tmp_path / "m", progress=False)
        planted = planted_of(out, "exit")
        assert planted is not None and set(planted.layers) == {0} and list(planted.indices) == TINY_EXIT.exit_knob()
        assert planted_of(DATA_DIR / "organism-v3", "exit") is None
        with pytest.raises(ValueError, match="what must be one of"):
            planted_of(out, "regimes")

    @pytest.mark.parametrize(("change", "match"), [({"exit_layer": 1}, "a layer of its own"),
                                                   ({"exit_share": 1.0}, "exit_share"),
                                                   ({"exit_layer": 2}, "do not fit")])
    def test_bad_config_is_refused(self, change, match):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(TINY_EXIT, **change)


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
