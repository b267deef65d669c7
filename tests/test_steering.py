"""AdaRAS steering as a harness method: the edit's values, the gate's switching, pairing with vanilla, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from workbench.adaras import AdarasConfig, GateConfig, fit_gate, question_activations, rank_rcn, select_features
from workbench.adaras.steering import AdarasSteering, GateSwitch, mean_difference, random_signs, scaled
from workbench.evaluation import MethodContext
from workbench.model import set_threads
from workbench.neurons import NeuronSet, NeuronSetError
from workbench.store import ActivationStore, CacheConfig, cache_activations, load_traces
from workbench.traces import TraceRunConfig, prompt_ids, run_traces

K = 20
TARGET = TraceRunConfig(problems=6, samples=2, temperature=1.0, seed=11, max_new_tokens=120)


@pytest.fixture(scope="module")
def analysis(organism_run, organism, tmp_path_factory) -> Path:
    """The organism run, cached and ranked, with a gate whose threshold splits ``TARGET``'s questions."""
    set_threads(1)
    run = tmp_path_factory.mktemp("steer") / "run"
    shutil.copytree(organism_run, run)
    cache_activations(run, config=CacheConfig(top_variance=2048), model=organism)
    rank_rcn(run, config=AdarasConfig(k=K))
    store = ActivationStore(run)
    fail = 1 - np.array(store.index["correct"].to_pylist(), dtype=int)
    groups = np.array(store.index["problem_id"].to_pylist())
    neurons = select_features(store.summary("question"), fail, 32)
    ids, plen = store.traces()["token_ids"].to_pylist(), store.index["prompt_len"].to_pylist()
    acts = question_activations(organism, [t[:n] for t, n in zip(ids, plen, strict=True)], neurons)
    gate = fit_gate(acts, fail, groups, neurons, GateConfig(epochs=3, n_features=32))
    # A 3-epoch gate may flag all or none; its threshold at the median score of the target questions
    # makes sure both kinds occur, so that switching is tested both ways.
    target = sorted({tuple(p) for p in prompt_ids(TARGET, organism).values()})
    gate.threshold = float(np.median(gate.scores(question_activations(organism, [list(p) for p in target],
                                                                      neurons))))
    gate.save(run / "adaras" / "gate")
    return run


def ctx(model, run, cfg=TARGET) -> MethodContext:
    return MethodContext(model, run, cfg)


def tokens(run: Path) -> dict[str, list[int]]:
    t = load_traces(run)
    return dict(zip(t["trace_id"].to_pylist(), t["token_ids"].to_pylist(), strict=True))


class TestEdit:
    """The edit is alpha * S' on the top-K neurons of the chosen set."""

    def test_values_are_alpha_times_mean_difference(self, analysis, organism):
        edits, controllers = AdarasSteering(k=K, alpha=0.7, gate=False).build(ctx(organism, analysis))
        rcn = NeuronSet.load(analysis / "neurons" / "rcn.json")
        assert controllers == [] and len(edits) == 1
        edit = edits[0]
        assert edit.neurons.layers == rcn.layers and edit.neurons.indices == rcn.indices
        correct, incorrect = (np.array(dict(rcn.group_means)[g]) for g in ("correct", "incorrect"))
        np.testing.assert_allclose(edit.values, 0.7 * (correct - incorrect), rtol=1e-12)
        np.testing.assert_allclose(edit.values, 0.7 * np.array(rcn.scores), rtol=1e-5)  # S as ranked
        assert edit.default_on and edit.mode == "add" and edit.name == "adaras"

    def test_max_scale_makes_alpha_the_largest_push(self, analysis, organism):
        raw = AdarasSteering(k=K, alpha=1.0, gate=False).edit(ctx(organism, analysis))
        unit = AdarasSteering(k=K, alpha=2.0, scale="max", gate=False).edit(ctx(organism, analysis))
        assert max(abs(v) for v in unit.values) == pytest.approx(2.0)
        np.testing.assert_allclose(np.array(unit.values) / 2.0, np.array(raw.values) / max(map(abs, raw.values)))

    def test_random_control_has_the_rcn_magnitudes_on_random_neurons(self, analysis, organism):
        rcn = AdarasSteering(k=K, gate=False).edit(ctx(organism, analysis))
        rnd = AdarasSteering(k=K, neurons="rcn-random", gate=False, seed=3).edit(ctx(organism, analysis))
        drawn = NeuronSet.load(analysis / "neurons" / "rcn-random.json")
        assert (rnd.neurons.layers, rnd.neurons.indices) == (drawn.layers, drawn.indices)
        np.testing.assert_allclose(np.abs(rnd.values), np.abs(rcn.values))
        np.testing.assert_array_equal(np.sign(rnd.values), random_signs(K, 3) * (np.array(rcn.values) != 0))
        assert len(set(np.sign(rnd.values))) == 2  # both signs drawn (20 fair coins)

    def test_controls_steer_along_their_own_difference(self, analysis, organism):
        for name in ("rcn-probe", "rcn-unfiltered"):
            edit = AdarasSteering(k=K, neurons=name, gate=False).edit(ctx(organism, analysis))
            s = NeuronSet.load(analysis / "neurons" / f"{name}.json")
            np.testing.assert_allclose(edit.values, 0.3 * mean_difference(s))

    def test_scaled_and_mean_difference_refuse_what_they_cannot_use(self):
        with pytest.raises(ValueError, match="choose one of"):
            scaled(np.ones(2), "std")
        with pytest.raises(ValueError, match="group means"):
            mean_difference(NeuronSet.from_pairs([(0, 1)]), "x.json")


class TestGenerate:
    """Runs through ``run_traces``: paired with vanilla, and gated by the gate's own predictions."""

    def test_gate_switches_on_exactly_the_predicted_failures(self, analysis, organism, tmp_path):
        edits, controllers = AdarasSteering(k=K, alpha=1.0).build(ctx(organism, analysis))
        (switch,) = controllers
        assert isinstance(switch, GateSwitch) and not edits[0].default_on
        spec = switch.spec()
        assert spec["gate"]["sha256"] and spec["threshold"] == switch.threshold and spec["alpha"] == 1.0
        assert spec["neurons"]["set"] == "rcn"
        run_traces(tmp_path / "gated", config=TARGET, progress=False, model=organism, edits=edits,
                   controllers=controllers)
        table = load_traces(tmp_path / "gated")
        on = {tid for tid, ev in zip(table["trace_id"].to_pylist(), table["events"].to_pylist(), strict=True)
              if any(e["kind"] == "edit_on" and e["step"] == 0 for e in json.loads(ev))}
        # The gate's own predictions, computed here independently of the controller.
        from workbench.adaras import Gate

        gate = Gate.load(analysis / "adaras" / "gate")
        ids = prompt_ids(TARGET, organism)
        keys = sorted(ids)
        scores = gate.scores(question_activations(organism, [ids[k] for k in keys], gate.neurons))
        predicted = {k for k, s in zip(keys, scores, strict=True) if s >= gate.threshold}
        assert 0 < len(predicted) < len(keys)
        assert on == predicted
        manifest = json.loads((tmp_path / "gated" / "manifest.json").read_text())
        assert "GateSwitch" in json.dumps(manifest)

    def test_steering_changes_traces_and_alpha_zero_is_vanilla(self, analysis, organism, tmp_path):
        run_traces(tmp_path / "vanilla", config=TARGET, progress=False, model=organism)
        # The organism barely notices small pushes (alpha 20 changed no token of these 12 traces; 100 changes
        # most), so a large alpha shows that the edit reaches generation.
        for alpha in (0.0, 100.0):
            edits, controllers = AdarasSteering(k=K, alpha=alpha, gate=False).build(ctx(organism, analysis))
            run_traces(tmp_path / f"a{alpha}", config=TARGET, progress=False, model=organism, edits=edits,
                       controllers=controllers)
        base = tokens(tmp_path / "vanilla")
        assert tokens(tmp_path / "a0.0") == base
        steered = tokens(tmp_path / "a100.0")
        assert steered.keys() == base.keys() and any(steered[k] != base[k] for k in base)

    def test_cross_task_neurons_from_addition_steer_subtraction(self, analysis, organism, tmp_path):
        sub = TraceRunConfig(task="organism-sub", problems=3, samples=1, seed=5, max_new_tokens=80)
        method = AdarasSteering(k=K, alpha=1.0, analysis_run=str(analysis))
        edits, controllers = method.build(ctx(organism, None, sub))
        summary = run_traces(tmp_path / "sub", config=sub, progress=False, model=organism, edits=edits,
                             controllers=controllers)
        assert summary.traces == 3
        events = [json.loads(e) for e in load_traces(tmp_path / "sub")["events"].to_pylist()]
        assert all(any(e["kind"] == "gate" for e in ev) for ev in events)


class TestErrors:
    """Missing inputs name the file and the command that makes it."""

    def test_missing_neuron_set_and_gate(self, analysis, organism, tmp_path):
        run = tmp_path / "bare"
        (run / "neurons").mkdir(parents=True)
        with pytest.raises(ValueError, match=r"rcn\.json.*workbench rank --method rcn"):
            AdarasSteering(gate=False).build(ctx(organism, run))
        shutil.copy(analysis / "neurons" / "rcn.json", run / "neurons" / "rcn.json")
        with pytest.raises(ValueError, match=r"adaras/gate.*workbench probe"):
            AdarasSteering(k=K).build(ctx(organism, run))
        with pytest.raises(ValueError, match="fewer than k=50"):
            AdarasSteering(k=50, gate=False).build(ctx(organism, run))
        with pytest.raises(ValueError, match="needs an analysis run"):
            AdarasSteering().build(ctx(organism, None))

    def test_another_models_neurons(self, analysis, tiny_model):
        with pytest.raises(NeuronSetError, match="rank neurons on this model"):
            AdarasSteering(k=K, gate=False).build(ctx(tiny_model, analysis))

    def test_bad_parameters(self):
        for kwargs, match in (({"k": 0}, "k=0"), ({"alpha": float("nan")}, "alpha"),
                              ({"neurons": "rcn.json"}, "without '.json'"), ({"scale": "unit"}, "scale")):
            with pytest.raises(ValueError, match=match):
                AdarasSteering(**kwargs)
