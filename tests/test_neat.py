"""NEAT exit neurons: planted signals recovered by the selection, estimators that agree, runs end to end."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from unittest.mock import ANY

import numpy as np
import pytest
import torch

from workbench.neat import (
    ExitMonitor,
    ExitReference,
    NeatConfig,
    ablation_importance,
    agreement,
    candidates,
    exit_report,
    gradient_importance,
    load_exit_traces,
    load_fit,
    rank_exit,
    temporal_profile,
    trace_vote,
    vote,
)
from workbench.neat.results import ExitReport
from workbench.neurons import NeuronSet
from workbench.readout import run_forced
from workbench.splits import fit_half
from workbench.store import TraceStore, load_traces
from workbench.store.paths import RunPaths
from workbench.traces import TraceRunConfig, run_traces

REPORT_KEYS = ("exit_within3", "exit_within3_random", "exit_within3_top_activated", "exit_within3_all",
               "exit_within3_p_end", "exit_traces")


def planted_votes(n_traces: int, cfg: NeatConfig, rng: np.random.Generator, late_share: float = 1.0):
    """Synthetic traces over 40 neurons: 0 spikes up just before the end token, 1 spikes down there,
    2 is constant (and has the highest Imp), 3 is up over the last two positions in only
    ``late_share`` of the traces; the rest is noise with small Imp."""
    votes = []
    for i in range(n_traces):
        n_pos, n = int(rng.integers(20, 40)), 40
        span = rng.normal(0, 0.05, size=(n_pos, n))
        span[-1, 0] += 3.0
        span[-1, 1] -= 3.0
        span[:, 2] = 1.0
        if i < late_share * n_traces:
            span[-2:, 3] += 2.0
        imp = rng.uniform(0.0, 0.01, size=n)
        imp[[0, 1, 3]] = [0.5, 0.4, 0.3]
        imp[2] = 1.0
        c = candidates(imp, cfg)
        votes.append(trace_vote(c, imp[c], span[:, c], span[-1, c], cfg))
    return votes


class TestSelection:
    """The temporal filter and vote on planted arrays."""

    def test_late_spikes_are_selected_with_their_signs_and_a_constant_is_rejected(self):
        cfg = NeatConfig(vote_k=5)
        sel = vote(planted_votes(10, cfg, np.random.default_rng(0)), cfg)
        chosen = dict(zip(sel.flat.tolist(), sel.signs.tolist(), strict=True))
        assert chosen[0] == 1 and chosen[1] == -1 and 3 in chosen
        assert 2 not in chosen  # highest Imp, but its centre of mass is 0.5 < tau_com
        assert sel.com.min() >= cfg.tau_com and sel.consistency.min() >= cfg.tau_cons

    def test_constant_neuron_votes_but_fails_the_centre_of_mass_threshold(self):
        cfg = NeatConfig(vote_k=50, tau_com=0.0)
        sel = vote(planted_votes(10, cfg, np.random.default_rng(1)), cfg)
        assert 2 in sel.flat.tolist()  # without the temporal threshold the constant neuron passes
        com, ent, _ = temporal_profile(np.ones((30, 1)), np.array([1]))
        assert abs(com[0] - 31 / 60) < 1e-9 and abs(ent[0] - 1.0) < 1e-9

    def test_consistency_threshold(self):
        cfg = NeatConfig(vote_k=3)  # 0, 1 and 3 (when it spikes) outrank the noise
        votes = planted_votes(10, cfg, np.random.default_rng(2), late_share=0.5)
        assert 3 not in vote(votes, cfg).flat.tolist()  # votes in 5 of 10 traces < 0.6
        assert 3 in vote(votes, NeatConfig(vote_k=3, tau_cons=0.5)).flat.tolist()

    def test_entropy_ceiling_is_optional(self):
        cfg = NeatConfig(vote_k=50, tau_com=0.0, tau_entropy=0.5)
        assert 2 not in vote(planted_votes(6, cfg, np.random.default_rng(3)), cfg).flat.tolist()

    def test_only_positive_importance_is_a_candidate(self):
        imp = np.array([-2.0, 0.0, 0.3, np.nan, 0.2])
        assert candidates(imp, NeatConfig(top_attr=300, top_temporal=100)).tolist() == [2, 4]
        assert candidates(imp, NeatConfig(top_attr=1)).tolist() == [2]


class TestSignals:
    """Reference pattern signals, batch and online."""

    def test_signals_peak_at_the_reference_pattern_and_monitor_matches(self):
        ref = ExitReference(flat=(0, 5, 9), signs=(1, -1, 1), mu_ref=(2.0, -1.0, 0.5))
        rng = np.random.default_rng(0)
        acts = rng.normal(0, 1, size=(12, 3))
        acts[7] = 1.5 * np.array(ref.mu_ref)
        s = ref.signals(acts)
        assert int(np.argmax(s["rho"])) == 7 and abs(s["rho"][7] - 1) < 1e-9 and abs(s["phi"][7] - 1.5) < 1e-9
        assert abs(s["sim"][7] - 1) < 1e-9 and abs(s["mag"][7] - 1.5 * np.sqrt(3)) < 1e-9
        monitor = ExitMonitor(ref)
        online = [monitor.update(a) for a in acts]
        assert np.allclose([r.rho for r in online], s["rho"]) and np.allclose([r.sim for r in online], s["sim"])

    def test_empty_reference_is_refused_by_the_monitor(self):
        with pytest.raises(ValueError, match="no neurons"):
            ExitMonitor(ExitReference((), (), ()))


@pytest.mark.parity
class TestAttribution:
    """Exact ablation against a plain forward pass, and against activation x gradient."""

    def test_ablation_matches_a_full_forward_and_agrees_with_the_gradient(self, tiny_model):
        tok = tiny_model.tokenizer
        seqs = [tok(f"Q: {a} + {b} = ? <think> carefully {a} + {b} = {a + b} ; </think> {a + b}").input_ids
                for a, b in [(12, 30), (47, 5), (8, 61)]]
        pos = [s.index(tok.convert_tokens_to_ids("▁</think>")) - 1 for s in seqs]
        ends = [s[p + 1] for s, p in zip(seqs, pos, strict=True)]
        exact = ablation_importance(tiny_model, seqs, pos, ends, batch_size=40)
        d_mlp = tiny_model.cfg.d_mlp
        for layer, j in [(0, 3), (1, 77)]:
            def zero(act, hook, j=j, p=pos[0]):
                act = act.clone()
                act[:, p, j] = 0
                return act

            full = torch.log_softmax(run_forced(tiny_model, [seqs[0]])[0, pos[0]], -1)[ends[0]]
            cut = torch.log_softmax(run_forced(tiny_model, [seqs[0]], [(f"blocks.{layer}.mlp.hook_post", zero)])
                                    [0, pos[0]], -1)[ends[0]]
            assert abs(float(full - cut) - exact[0, layer * d_mlp + j]) < 1e-4
        approx = gradient_importance(tiny_model, seqs, pos, ends)
        agree = agreement(exact, approx)
        assert agree["attribution_spearman"] > 0.8, agree

    def test_ablation_restricted_to_layers_leaves_the_rest_nan(self, tiny_model):
        tok = tiny_model.tokenizer
        ids = tok("Q: 4 + 5 = ? <think> 4 + 5 = 9 ; </think> 9").input_ids
        imp = ablation_importance(tiny_model, [ids], [len(ids) - 3], [ids[-2]], layers=[1])
        d_mlp = tiny_model.cfg.d_mlp
        assert np.isnan(imp[0, :d_mlp]).all() and np.isfinite(imp[0, d_mlp:]).all()
        with pytest.raises(ValueError, match="outside"):
            ablation_importance(tiny_model, [ids], [len(ids)], [ids[-2]])


@pytest.fixture(scope="module")
def organism_run(organism, tmp_path_factory):
    run = tmp_path_factory.mktemp("neat") / "run"
    run_traces(run, config=TraceRunConfig(model="organism", task="organism", problems=16, samples=2, temperature=1.0),
               progress=False, model=organism)
    return run


RANK_CFG = NeatConfig(calibration_traces=16, agreement_traces=4)


class TestOrganismRun:
    """rank_exit and exit_report on a small organism run: the report measures what the rank wrote."""

    def test_rank_exit_writes_the_neuron_set_reference_and_fit(self, organism, organism_run):
        neurons = rank_exit(organism_run, model=organism, config=RANK_CFG)
        assert len(neurons) > 0 and neurons.method == "neat" and neurons.signs is not None
        paths = RunPaths(organism_run)
        loaded = NeuronSet.load(paths.exit_set, model_shape=(4, 512))
        assert loaded.layers == neurons.layers and set(dict(loaded.group_means)) == {"exit", "thinking"}
        assert loaded.params["tau_cons"] == 0.6 and loaded.params["estimator_used"] == "ablation"
        ref = json.loads(paths.exit_reference.read_text())
        flat = neurons.flat(512)
        assert tuple(ref["flat"]) == flat and ref["signs"] == list(neurons.signs)
        assert min(ref["consistency"]) >= 0.6 and ref["agreement"]["attribution_spearman"] > 0.9
        # mu_ref's sign is each neuron's sign: the pattern is what the neurons do at exit points
        assert all(np.sign(m) == s for m, s in zip(ref["mu_ref"], ref["signs"], strict=True))
        # calibrated on the fitting half only, which the reference records with the config
        problems = {t.problem_id for t in load_exit_traces(organism_run)}
        assert set(ref["fit_problems"]) == fit_half(problems, RANK_CFG.seed)
        assert NeatConfig.from_dict(ref["config"]) == RANK_CFG
        saved = load_fit(organism_run)
        assert saved.fit_ids == set(ref["fit_problems"]) and saved.cfg == RANK_CFG
        assert tuple(saved.fit.selection.flat.tolist()) == flat and saved.fit.exit_mean.shape == (4 * 512,)
        assert np.allclose(saved.fit.exit_mean[list(flat)], ref["mu_ref"])

    def test_exit_report_measures_the_signal_beside_its_controls(self, organism, organism_run):
        report = exit_report(organism_run, model=organism).to_json()  # the recorded config: nothing refitted
        assert all(k in report for k in REPORT_KEYS)
        assert report["exit_traces"] > 0 and report["exit_neurons"] > 0
        for k in REPORT_KEYS[:-1]:
            assert 0.0 <= report[k] <= 1.0
        # The planted exit pattern is there to find: NEAT's neurons beat random neurons on held-out problems.
        assert report["exit_within3"] > report["exit_within3_random"]
        assert sum(report["exit_layer_counts"].values()) == report["exit_neurons"] == len(report["exit_selected"])
        assert {str(layer) for layer, _ in report["exit_selected"]} == set(report["exit_layer_counts"])
        assert json.loads(RunPaths(organism_run).exit_report.read_text())["exit_traces"] == report["exit_traces"]
        # what the rank wrote, measured on the problems it did not fit on
        saved = load_fit(organism_run)
        neurons = NeuronSet.load(RunPaths(organism_run).exit_set, model_shape=(4, 512))
        assert report["exit_selected"] == [list(p) for p in zip(neurons.layers, neurons.indices, strict=True)]
        held_out = [t for t in load_exit_traces(organism_run) if t.problem_id not in saved.fit_ids]
        assert report["exit_traces"] == len(held_out) and report["exit_fit_traces"] == saved.n_fit_traces
        # a measuring-only field may differ; a fitting one is refused, naming the field and the command
        assert exit_report(organism_run, model=organism, config=replace(RANK_CFG, window=5)).window == 5
        with pytest.raises(ValueError, match=r"differs in: agreement_traces.*workbench rank --method exit"):
            exit_report(organism_run, model=organism, config=replace(RANK_CFG, agreement_traces=0))

    def test_exit_report_fits_first_on_a_run_without_an_exit_result(self, organism, organism_run, tmp_path):
        run = tmp_path / "run"
        shutil.copytree(organism_run, run)
        paths = RunPaths(run)
        for p in (paths.exit_set, paths.exit_fit, paths.exit_reference, paths.exit_report):
            p.unlink()
        cfg = replace(RANK_CFG, agreement_traces=0)
        report = exit_report(run, model=organism, config=cfg).to_json()
        assert paths.exit_set.exists() and load_fit(run).cfg == cfg
        again = exit_report(run, model=organism).to_json()
        assert again == {**report, "exit_seconds": ANY}  # read back: the same figures
        # exit neurons ranked before the fit was recorded are refused, not silently refitted
        paths.exit_fit.unlink()
        with pytest.raises(ValueError, match=r"before NEAT recorded its fit.*workbench rank --method exit"):
            exit_report(run, model=organism)

    def test_an_empty_vote_is_recorded_and_reported_as_nan(self, organism, organism_run, tmp_path):
        run = tmp_path / "run"
        shutil.copytree(organism_run, run)
        cfg = replace(RANK_CFG, tau_com=1.0, agreement_traces=0)  # no neuron peaks only at the exit position
        with pytest.raises(ValueError, match="no neuron passed NEAT's vote"):
            rank_exit(run, model=organism, config=cfg)
        assert not RunPaths(run).exit_set.exists() and len(load_fit(run).fit.selection.flat) == 0  # no stale set
        report = exit_report(run, model=organism)
        assert report.neurons == 0 and np.isnan(report.within_window.exit) and report.note is not None
        assert 0.0 <= report.within_window.all <= 1.0
        assert "exit_note" in ExitReport.load(RunPaths(run).exit_report).to_json()


class TestOtherModels:
    """A tiny random Llama-family model from a local folder, and bad input."""

    def test_tiny_model_from_the_run_manifest(self, tiny_dir, organism_run, tmp_path):
        # A random model rarely closes its thinking, so its run holds traces written for it: the
        # organism's token ids (the tiny models share its tokenizer) under a manifest naming the folder.
        run = tmp_path / "tiny-run"
        rows = load_traces(organism_run).to_pylist()
        with TraceStore.open(run, {"config": {"model": str(tiny_dir), "task": "organism"}}) as store:
            store.append(rows)
            store.finalize()
        cfg = NeatConfig(calibration_traces=8, tau_cons=0.0, tau_com=0.0, agreement_traces=2)
        neurons = rank_exit(run, config=cfg)
        assert neurons.model_shape == (2, 96) and max(neurons.layers) <= 1
        report = exit_report(run, config=cfg)
        assert report.traces > 0 and 0.0 <= report.within_window.exit <= 1.0

    def test_tiny_model_that_never_closes_thinking_is_a_clear_error(self, tiny_dir, tmp_path):
        run = tmp_path / "open-run"
        run_traces(run, config=TraceRunConfig(model=str(tiny_dir), problems=2, samples=1, max_new_tokens=8),
                   progress=False)
        if any(t is not None for t in load_traces(run).column("think_end").to_pylist()):
            pytest.skip("this random model closed its thinking")
        with pytest.raises(ValueError, match=r"</think> in 0 of 2 traces.*NeatConfig.exit_token"):
            rank_exit(run)

    def test_run_without_traces_and_path_without_run(self, organism_run, tmp_path):
        empty = tmp_path / "empty"
        with TraceStore.open(empty, {"config": {"model": "organism"}}):
            pass
        with pytest.raises(ValueError, match="no traces"):
            rank_exit(empty)
        with pytest.raises(ValueError, match="not a run directory"):
            exit_report(tmp_path / "nowhere")
        one = tmp_path / "one-problem"
        rows = load_traces(organism_run).to_pylist()
        with TraceStore.open(one, {"config": {"model": "organism"}}) as store:
            store.append([r for r in rows if r["problem_id"] == rows[0]["problem_id"]])
            store.finalize()
        with pytest.raises(ValueError, match="at least 2"):
            exit_report(one)
