"""Every analysis runs end to end on a tiny random Llama-family model from a local folder, not only on the organism.

A random model never answers right, so it reads the organism's labelled traces off-policy (same
tokenizer): correctness, thinking spans and failure labels come from the traces, activations from
the tiny model. The figures mean nothing here; what is checked is that every stage reads what the
last one wrote and produces well-formed outputs for a model of another shape.
"""

from __future__ import annotations

import math
import shutil

import pytest

from workbench.model import load_model
from workbench.neurons import NeuronSet
from workbench.store import ActivationStore, CacheConfig, cache_activations


@pytest.mark.slow  # every analysis stage on a second model: about 30 s
@pytest.mark.parametrize("arch", ["llama"])
def test_every_analysis_on_a_tiny_llama(organism_run, tmp_path, arch):
    from tests.conftest import save_tiny_model
    from workbench.adaras import probe_report, rank_rcn
    from workbench.neat import NeatConfig, exit_report
    from workbench.neureasoner import mon_report

    folder = save_tiny_model(tmp_path / arch, arch)
    model = load_model(folder)
    run = tmp_path / "run"
    shutil.copytree(organism_run, run)
    cache_activations(run, config=CacheConfig(top_variance=10**6), model=model, off_policy=True)
    store = ActivationStore(run)
    shape = (model.cfg.n_layers, model.cfg.d_mlp)
    assert (store.n_layers, store.d_mlp) == shape and len(store.token_neurons) == shape[0] * shape[1]

    rcn = rank_rcn(run)
    assert 0 < len(rcn) <= 50 and NeuronSet.load(run / "neurons/rcn.json", model_shape=shape) == rcn
    with pytest.raises(ValueError, match="d_mlp 96"):
        NeuronSet.load(run / "neurons/rcn.json", model_shape=(4, 512))

    probes = probe_report(run, model=model)
    assert 0 <= probes.early.auroc <= 1 and len(probes.curve) == len(store.early_k)

    exit_figures = exit_report(run, model=model, config=NeatConfig(tau_cons=0.0, tau_com=0.0, calibration_traces=16))
    assert 0 <= exit_figures.within_window.exit <= 1 and 0 <= exit_figures.within_window.p_end <= 1

    mon = mon_report(run)
    for t in ("slip", "oscillation", "overthinking"):
        recall = mon.types[t].key.event_recall  # "mon_event_recall_<t>" in the report's JSON
        assert math.isnan(recall) or 0 <= recall <= 1
        assert NeuronSet.load(run / f"neurons/mon-{t}.json", model_shape=shape).method == f"neureasoner:{t}"
