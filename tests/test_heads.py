"""Attention heads as NeuReasoner units: the per-head feature, the store's heads, ranking and detectors over
neurons and heads, and the neurons-only default left as it was."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.test_neureasoner import OSC, SHAPE, planted
from workbench.heads import HeadSet, attn_z
from workbench.neureasoner import Detector, NeuReasonerConfig, analyse, mon_report
from workbench.neureasoner.analysis import rank_key_units
from workbench.neurons import NeuronSet
from workbench.readout import Budget, read_heads, read_mlp
from workbench.store import ActivationStore, CacheConfig, cache_activations

HEAD_SHAPE = (2, 4)  # the planted traces' model: 2 layers of 4 heads beside its 2 x 16 neurons
HEAD = 6  # flat index of the planted head: blocks.1.attn.hook_z[2]


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("activations"))
    return out


class TestReader:
    """The per-head feature: ||z_h W_O[h]|| from hook_z, read through the one readout."""

    def test_a_head_feature_is_the_norm_of_its_write_from_hook_z(self, tiny_model):
        model = tiny_model
        seqs = [[2, 5, 7, 9, 11, 13, 17, 19, 3], [2, 8, 9, 4]]
        got = torch.zeros(2, 9, model.cfg.n_layers, model.cfg.n_heads)

        def grab(layer, norms, start):
            got[:, start : start + norms.shape[1], layer] = norms.cpu()

        read_heads(model, seqs, range(model.cfg.n_layers), grab, Budget(chunk_tokens=4))  # over the KV cache
        for r, seq in enumerate(seqs):
            _, cache = model.run_with_cache(torch.tensor([seq]))
            for layer in range(model.cfg.n_layers):
                z = cache[attn_z(layer)][0]  # (pos, head_index, d_head)
                want = torch.einsum("phd,hde->phe", z, model.blocks[layer].attn.W_O).norm(dim=-1)
                torch.testing.assert_close(got[r, : len(seq), layer], want, atol=1e-6, rtol=1e-4)

    def test_heads_ride_along_without_changing_the_neurons(self, tiny_model):
        seqs = [[2, 5, 7, 9, 11], [2, 8, 9]]
        alone, both, heads = {}, {}, {}
        read_mlp(tiny_model, seqs, [0, 1], lambda layer, a, s: alone.setdefault(layer, a.clone()), Budget())
        read_mlp(tiny_model, seqs, [0, 1], lambda layer, a, s: both.setdefault(layer, a.clone()), Budget(),
                 heads=lambda layer, n, s: heads.setdefault(layer, n))
        assert all(torch.equal(alone[layer], both[layer]) for layer in (0, 1))
        assert heads[1].shape == (2, 5, tiny_model.cfg.n_heads)

    def test_the_fast_backend_is_refused_for_heads_and_auto_reads_them_on_the_bridge(self, tiny_model):
        with pytest.raises(ValueError, match=r"backend='fast' cannot read attention heads.*'bridge' or 'auto'"):
            read_heads(tiny_model, [[2, 5, 7]], [0], lambda *a: None, Budget(backend="fast"))
        got = []
        read_heads(tiny_model, [[2, 5, 7]], [0], lambda layer, n, s: got.append(n.shape), Budget(backend="auto"))
        assert got == [(1, 3, tiny_model.cfg.n_heads)]
        with pytest.raises(ValueError, match=r"CacheConfig\.heads needs the bridge"):
            CacheConfig(heads=True, backend="fast")


class TestStore:
    """The activation store keeps every head per token when asked, resumably, and nothing changes when not."""

    def test_the_store_round_trips_heads_and_its_neurons_stay_as_without(self, organism_run, organism_cache,
                                                                         organism, tmp_path):
        run = _copy(organism_run, tmp_path)
        cache_activations(run, config=CacheConfig(heads=True), model=organism)
        store, plain = ActivationStore(run), ActivationStore(organism_cache)
        n_layers, n_heads = organism.cfg.n_layers, organism.cfg.n_heads
        assert store.has_heads and not plain.has_heads
        assert store.heads == HeadSet.every(n_layers, n_heads)
        assert store.heads.names()[n_heads + 1] == "blocks.1.attn.hook_z[1]"
        rows = store.traces().to_pylist()
        for row in (0, len(rows) - 1):
            ids = rows[row]["token_ids"]
            want = torch.zeros(len(ids), n_layers * n_heads)

            def grab(layer, norms, start, want=want):
                want[start : start + norms.shape[1], layer * n_heads : (layer + 1) * n_heads] = norms[0]

            read_heads(organism, [ids], range(n_layers), grab)
            np.testing.assert_allclose(store.token_heads(row), want.numpy(), rtol=2e-3, atol=2e-3)  # float16
            np.testing.assert_array_equal(store.token_acts(row), plain.token_acts(row))
        np.testing.assert_array_equal(store.summary("think"), plain.summary("think"))
        assert "heads" not in json.loads((organism_cache / "activations/manifest.json").read_text())[
            "identity"]["config"]  # a cache without heads keeps the identity it always had
        with pytest.raises(ValueError, match=r"holds no attention heads.*CacheConfig\(heads=True\)"):
            plain.token_heads(0)

    def test_a_killed_cache_with_heads_resumes_to_the_same_heads(self, organism_run, organism, tmp_path,
                                                                 monkeypatch):
        import workbench.store.activation_store as mod

        cfg = CacheConfig(heads=True, shard_traces=32, top_variance=16)
        whole = _copy(organism_run, tmp_path / "whole")
        cache_activations(whole, config=cfg, model=organism)
        broken = _copy(organism_run, tmp_path / "broken")
        real, calls = mod._write_shard, []

        def dies_on_second(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(mod, "_write_shard", dies_on_second)
        with pytest.raises(KeyboardInterrupt):
            cache_activations(broken, config=cfg, model=organism)
        monkeypatch.setattr(mod, "_write_shard", real)
        cache_activations(broken, config=cfg, model=organism)
        a, b = ActivationStore(whole), ActivationStore(broken)
        for row in (0, len(a) - 1):
            np.testing.assert_array_equal(a.token_heads(row), b.token_heads(row))


def planted_heads(n_problems: int = 24):
    """The planted traces of ``test_neureasoner`` with 8 head columns after the 32 neurons: the oscillation
    now flips head HEAD, not neuron OSC (which stays flat noise)."""
    traces, acts = planted(n_problems)
    rng = np.random.default_rng(1)
    out = []
    for a in acts:
        h = rng.normal(1.0, 0.1, (len(a), HEAD_SHAPE[0] * HEAD_SHAPE[1])).astype(np.float32)
        h[:, HEAD] = a[:, OSC] + 1.0
        a = a.copy()
        a[:, OSC] = rng.normal(0, 0.05, len(a))
        out.append(np.concatenate([a, h], 1))
    return traces, out


COLUMNS = NeuronSet.from_flat(range(SHAPE[0] * SHAPE[1]), SHAPE[1], model_shape=SHAPE)
FAST = dict(window=8, stride=2, top_k=3, hidden=(16,), max_iter=150, folds=2)


@pytest.fixture(scope="module")
def mixed():
    traces, acts = planted_heads()
    cfg = NeuReasonerConfig(**FAST, units=("neurons", "heads"))
    return analyse(traces, lambda i: acts[i], COLUMNS, SHAPE, cfg, "planted", heads=HeadSet.every(*HEAD_SHAPE))


class TestRanking:
    """Ranking and detectors over the union of neurons and heads."""

    def test_a_planted_head_ranks_first_and_its_detector_finds_the_episodes(self, mixed):
        r = mixed.report
        assert r["mon_chosen_oscillation"][0] == "blocks.1.attn.hook_z[2]"
        assert mixed.heads["oscillation"].flat(4)[0] == HEAD and r["mon_chosen_heads_oscillation"] >= 1
        assert r["mon_chosen_neurons_oscillation"] + r["mon_chosen_heads_oscillation"] == 3
        assert OSC not in mixed.sets["oscillation"].flat(SHAPE[1])
        # slip and overthinking still live in neurons
        assert r["mon_chosen_slip"][0] == "blocks.0.mlp.hook_post[9]"
        assert r["mon_event_recall_oscillation"] >= 0.9 and r["mon_auroc_oscillation"] > 0.9
        det = mixed.detectors["oscillation"]
        assert det.needs == (*(("neurons",) if len(det.neurons) else ()), "heads")
        assert det.heads == mixed.heads["oscillation"] and det.neurons == mixed.sets["oscillation"]

    def test_a_detector_with_heads_round_trips_and_refuses_neurons_alone(self, mixed, tmp_path):
        det = mixed.detectors["oscillation"]
        back = Detector.load(det.save(tmp_path / "d.joblib"))
        assert back.heads == det.heads and back.neurons == det.neurons
        x = np.random.default_rng(0).normal(size=(4, 3 * 6))
        np.testing.assert_array_equal(back.score(x), det.score(x))
        with pytest.raises(ValueError, match=r"attention heads.*live head features are not read at generation"):
            det.score(x[:, : 6 * len(det.neurons)])

    def test_units_select_the_kinds_and_neurons_alone_ignore_the_heads(self):
        traces, acts = planted_heads(12)
        fit = [i for i, t in enumerate(traces) if int(t.problem[1:]) % 2 == 0]
        sub = [traces[i] for i in fit]
        heads = HeadSet.every(*HEAD_SHAPE)
        with_heads = rank_key_units(sub, lambda j: acts[fit[j]], COLUMNS, SHAPE,
                                    NeuReasonerConfig(**FAST, units=("neurons",)), heads=heads)
        without = rank_key_units(sub, lambda j: acts[fit[j]][:, :32], COLUMNS, SHAPE, NeuReasonerConfig(**FAST))
        assert with_heads == without and without[1] == {}
        only = rank_key_units(sub, lambda j: acts[fit[j]], COLUMNS, SHAPE,
                              NeuReasonerConfig(**FAST, units=("heads",)), heads=heads)
        assert only[0] == {} and only[1]["oscillation"].flat(4)[0] == HEAD
        with pytest.raises(ValueError, match=r"units asks for 'heads'.*CacheConfig\(heads=True\)"):
            rank_key_units(sub, lambda j: acts[fit[j]], COLUMNS, SHAPE, NeuReasonerConfig(units=("heads",)))

    def test_bad_units_name_the_field(self):
        for bad in (("neurons", "experts"), (), ("heads", "heads")):
            with pytest.raises(ValueError, match=r"NeuReasonerConfig\.units must be"):
                NeuReasonerConfig(units=bad)


def test_mon_report_on_the_organism_with_a_planted_head(organism_run, organism_cache, organism, tmp_path,
                                                         monkeypatch):
    """End to end on a cached organism run: the default report is the one a cache without heads gives; with
    units=('neurons', 'heads') and an oscillation planted in one head's column, that head is chosen, saved
    beside the detectors and counted in the report."""
    run = _copy(organism_run, tmp_path)
    cache_activations(run, config=CacheConfig(heads=True), model=organism)
    plain = tmp_path / "plain"
    shutil.copytree(organism_cache, plain)
    cfg = NeuReasonerConfig(top_k=4, hidden=(8,), max_iter=50)
    a, b = mon_report(run, config=cfg).to_json(), mon_report(plain, config=cfg).to_json()
    assert json.dumps(a, allow_nan=True) == json.dumps(b, allow_nan=True)  # nan == nan as text
    assert not any(k.startswith("mon_chosen") for k in a) and not list((run / "neureasoner").glob("heads-*"))

    from workbench.neureasoner.run import trace_inputs

    traces = trace_inputs(ActivationStore(run), cfg)
    real = ActivationStore.token_heads
    planted_col = 2 * 4 + 1  # blocks.2.attn.hook_z[1]

    def with_a_planted_head(self, row):  # the head is quiet, and flips sign every token of an oscillation
        h = real(self, row).copy()
        h[:, planted_col] = 0.0
        for s, e in traces[row].events.oscillation:
            h[s:e, planted_col] = (-1.0) ** np.arange(e - s)
        return h

    monkeypatch.setattr(ActivationStore, "token_heads", with_a_planted_head)
    mixed = mon_report(run, config=NeuReasonerConfig(top_k=4, hidden=(8,), max_iter=50, units=("neurons", "heads")))
    assert mixed.types["oscillation"].chosen[0] == "blocks.2.attn.hook_z[1]"
    assert mixed.types["oscillation"].chosen_heads >= 1 and mixed.token_heads == 16
    saved = HeadSet.load(run / "neureasoner" / "heads-oscillation.json")
    assert saved.names()[0] == "blocks.2.attn.hook_z[1]" and saved.method == "neureasoner:oscillation"
    assert Detector.load(run / "neureasoner" / "detector-oscillation.joblib").heads == saved
    assert NeuronSet.load(run / "neurons" / "mon-oscillation.json").flat(512) == \
        Detector.load(run / "neureasoner" / "detector-oscillation.joblib").neurons.flat(512)


def test_the_cli_caches_heads_and_ranks_them(organism_run, tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import app

    run, runner = _copy(organism_run, tmp_path), CliRunner()
    result = runner.invoke(app, ["cache", str(run), "--heads", "--top-variance", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["token_heads"] == 16
    result = runner.invoke(app, ["rank", str(run), "--method", "mon", "--units", "neurons,heads", "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for t in ("slip", "oscillation", "overthinking"):
        assert report[f"mon-{t}"]["neurons"] + len(report[f"heads-{t}"]["heads"]) == 4
        assert HeadSet.load(run / "neureasoner" / f"heads-{t}.json").names() == report[f"heads-{t}"]["heads"]
    result = runner.invoke(app, ["rank", str(run), "--method", "mon", "--units", "experts"])
    assert result.exit_code == 2 and "NeuReasonerConfig.units must be" in result.output
