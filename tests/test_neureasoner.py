"""NeuReasoner: fluctuation features (batch = online), labels, planted-signal ranking and detection, end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from workbench.neureasoner import (
    FEATURES,
    Detector,
    FailureEvents,
    NeuReasonerConfig,
    OnlineFluctuation,
    TraceInput,
    analyse,
    auto_events,
    mon_report,
    rank_mon,
    window_features,
)
from workbench.neureasoner.labels import window_onsets, window_overlaps
from workbench.neurons import NeuronSet

SHAPE = (2, 16)  # a 2-layer model with d_mlp 16: 32 neurons
OSC, SLIP, OVER, LOUD = 5, 9, 20, 0  # planted neurons, and a loud pure-noise one


def planted(n_problems: int = 24, samples: int = 4, n_tokens: int = 64, seed: int = 0):
    """Synthetic traces: neuron OSC flips sign every token inside oscillation episodes and is flat
    elsewhere, SLIP spikes at a slip, OVER drifts slowly during overthinking, LOUD is loud noise."""
    rng = np.random.default_rng(seed)
    traces, acts = [], []
    for p in range(n_problems):
        for _ in range(samples):
            a = rng.normal(0, 0.3, (n_tokens, SHAPE[0] * SHAPE[1]))
            a[:, LOUD] = rng.normal(0, 3.0, n_tokens)
            a[:, OSC] = rng.normal(0, 0.05, n_tokens)
            ev: dict[str, tuple] = {"slip": (), "oscillation": (), "overthinking": ()}
            if rng.random() < 0.5:
                s = int(rng.integers(8, 30))
                ev["oscillation"] = ((s, s + 10),)
                a[s : s + 10, OSC] += 2.0 * (-1.0) ** np.arange(10)
            if rng.random() < 0.5:
                s = int(rng.integers(8, 40))
                ev["slip"] = ((s, s + 1),)
                a[s, SLIP] += 4.0
            if rng.random() < 0.5:
                ev["overthinking"] = ((48, n_tokens),)
                a[48:, OVER] += np.linspace(0, 3, n_tokens - 48)
            ids = rng.integers(0, 50, n_tokens)
            traces.append(TraceInput(f"p{p}", ids, (4, n_tokens), FailureEvents(**ev)))
            acts.append(a.astype(np.float32))
    return traces, acts


class TestFeatures:
    """The fluctuation features: what they measure, and the online version equals the batch one."""

    @pytest.mark.parametrize(("window", "stride"), [(8, 1), (8, 3), (9, 2), (16, 16)])
    def test_online_equals_batch(self, window, stride):
        cfg = NeuReasonerConfig(window=window, stride=stride)
        rng = np.random.default_rng(1)
        acts = rng.normal(size=(300, 7)).astype(np.float32)
        acts[50:90, 2] = 1.5  # a flat stretch: no spectral energy
        batch = window_features(acts, cfg)
        online = OnlineFluctuation(7, cfg)
        got = np.stack([f for f in (online.update(a) for a in acts) if f is not None])
        assert got.shape == batch.shape == (cfg.n_windows(300), 7, len(FEATURES))
        np.testing.assert_allclose(got, batch, rtol=1e-5, atol=1e-5)

    def test_features_tell_fast_from_slow(self):
        cfg = NeuReasonerConfig(window=16, stride=16)
        t = np.arange(16)
        acts = np.stack([np.cos(np.pi * t), np.cos(2 * np.pi * t / 16), np.full(16, 2.0)], 1)
        f = dict(zip(FEATURES, window_features(acts, cfg)[0].T, strict=True))
        assert f["high_ratio"][0] == pytest.approx(1) and f["high_ratio"][1] == pytest.approx(0)
        assert f["dominant_ratio"][:2] == pytest.approx([1, 1])  # pure tones: one frequency holds it all
        assert f["total_variation"][0] > 5 * f["total_variation"][1]
        assert f["std"][2] == 0 and f["spectral_entropy"][2] == 0 and f["mean"][2] == pytest.approx(2)

    def test_online_refuses_wrong_width(self):
        with pytest.raises(ValueError, match="expected 3 activations"):
            OnlineFluctuation(3, NeuReasonerConfig()).update(np.zeros(4))

    def test_config_refuses_bad_values(self):
        with pytest.raises(ValueError, match="stride"):
            NeuReasonerConfig(window=8, stride=9)
        with pytest.raises(ValueError, match="types"):
            NeuReasonerConfig(types=("slip", "boredom"))


class TestThresholds:
    """Operating points on out-of-fold scores: Youden's J, a recall target, a precision target."""

    def test_a_precision_target_fires_less_often_and_more_precisely_than_youden(self):
        from sklearn.metrics import precision_score

        from workbench.neureasoner.detectors import choose_threshold

        rng = np.random.default_rng(0)
        y = rng.random(4000) < 0.05  # rare failing windows, as in traces
        scores = np.clip(rng.normal(0.3 + 0.35 * y, 0.15), 0, 1)
        cuts = {t: choose_threshold(y, scores, NeuReasonerConfig(threshold=t, target_precision=0.6))
                for t in ("youden", "precision")}
        prec = {t: precision_score(y, scores >= c) for t, c in cuts.items()}
        assert cuts["precision"] > cuts["youden"] and prec["precision"] >= 0.6 > prec["youden"]
        lower = scores[(scores < cuts["precision"])].max()  # the next threshold down misses the target
        assert precision_score(y, scores >= lower) < 0.6
        unreachable = choose_threshold(y, scores, NeuReasonerConfig(threshold="precision", target_precision=1.0))
        assert unreachable >= cuts["precision"]  # the most precise threshold when none reaches the target
        common = np.r_[y[:200], np.ones(200, bool)]  # failing windows already 55% of all: a target of 0.5 is met
        assert choose_threshold(common, np.r_[scores[:200], scores[:200] + 0.3], NeuReasonerConfig(
            threshold="precision")) == choose_threshold(common, np.r_[scores[:200], scores[:200] + 0.3],
                                                        NeuReasonerConfig(threshold="youden"))
        with pytest.raises(ValueError, match="target_precision"):
            NeuReasonerConfig(target_precision=0.0)


class TestLabels:
    """Episodes from the organism's ground truth and from decoded text; window labels."""

    @staticmethod
    def pieces(steps, tail=("</think>", " 14")):
        out = ["Q: ?", "<think>"]
        for i, s in enumerate(steps):
            out += ([] if i == 0 else ["\n\n"]) + s.split("|")
        return out + list(tail)

    def test_blank_line_steps_repeat_and_overthinking(self):
        steps = ["Let x| = 3 + 4 = 7.", "Then| 7 * 2 = 14.", "So| the answer is 14.", "Hmm|, let me| double-check."]
        p = self.pieces(["Let x| = 3 + 4 = 7.", "Hmm, x = 3 + 4 = 7 again", *steps[1:]])
        ev = auto_events(p, think_start=1, think_end=p.index("</think>"), answer="14")
        assert ev.slip == ()
        # the repeated computation (same expression left of '=') spans its own step's tokens
        assert ev.oscillation == ((p.index("Hmm, x = 3 + 4 = 7 again"), p.index("Hmm, x = 3 + 4 = 7 again") + 1),)
        # 14 first appears in "Then 7 * 2 = 14.": everything from the next step on is overthinking
        assert ev.overthinking == ((p.index("So"), p.index("</think>")),)

    def test_wrong_arithmetic_is_a_slip_and_its_redo_no_repeat(self):
        p = self.pieces(["12 + 30 = 52", "no wait, 12 + 30 = 42"], tail=("</think>", " 42"))
        ev = auto_events(p, think_start=1, think_end=p.index("</think>"), answer="42")
        assert len(ev.slip) == 1 and p[ev.slip[0][0]] == "12 + 30 = 52"
        assert ev.oscillation == () and ev.overthinking == ()

    def test_no_answer_no_overthinking_and_values_repeat(self):
        p = self.pieces(["a = 5", "b = 5", "c = 6"], tail=())
        ev = auto_events(p, think_start=1, think_end=None, answer=None)
        assert ev.overthinking == () and ev.oscillation == ((p.index("b = 5"), p.index("b = 5") + 1),)

    def test_organism_events_from_trace_labels(self):
        from dataclasses import asdict

        from workbench.organism.task import Repeat, Slip, TraceLabels
        from workbench.tasks import get_task

        labels = TraceLabels("1+2", slips=[Slip(0, 20, False)], repeats=[Repeat(1, "stagnation", 30, 40)],
                             overthinking=(44, 55))
        ev = FailureEvents.from_spans(get_task("organism").failure_spans(asdict(labels)))
        assert ev == FailureEvents(slip=((20, 21),), oscillation=((30, 40),), overthinking=((44, 55),))
        lab = ev.token_labels(60)
        assert lab.sum(1).tolist() == [1, 10, 11]

    def test_window_overlap_and_onset(self):
        starts = np.array([0, 4, 8, 12])
        assert window_overlaps(starts, 4, [(9, 10)]).tolist() == [False, False, True, False]
        assert window_onsets(starts, 4, [(9, 10)]).tolist() == [False, True, False, False]


@pytest.fixture(scope="module")
def result():
    traces, acts = planted()
    columns = NeuronSet.from_flat(range(SHAPE[0] * SHAPE[1]), SHAPE[1])
    cfg = NeuReasonerConfig(window=8, stride=2, top_k=3, hidden=(16,), max_iter=150, folds=2)
    return analyse(traces, lambda i: acts[i], columns, SHAPE, cfg, provenance="planted")


class TestPlantedSignal:
    """The analysis finds planted neurons, detects their episodes, and the controls do not."""

    def test_planted_neurons_rank_first(self, result):
        for kind, neuron in (("oscillation", OSC), ("slip", SLIP), ("overthinking", OVER)):
            s = result.sets[kind]
            assert s.flat(SHAPE[1])[0] == neuron, kind
            assert s.method == f"neureasoner:{kind}" and s.model_shape == SHAPE
            assert s.scores[0] > 2.0 and s.scores[0] > 3 * s.scores[1]
        assert result.sets["oscillation"].params["best_feature"][0] in ("std", "total_variation")
        assert result.sets["overthinking"].signs[0] == 1

    def test_loud_noise_is_not_selected(self, result):
        for s in result.sets.values():
            assert LOUD not in s.flat(SHAPE[1])

    def test_detectors_find_the_episodes_and_controls_do_not(self, result):
        r = result.report
        for kind in ("oscillation", "slip", "overthinking"):
            assert r[f"mon_event_recall_{kind}"] >= 0.9, kind
            assert r[f"mon_auroc_{kind}"] > 0.9, kind
            assert r[f"mon_auroc_{kind}_random"] < 0.75, kind
        assert r["mon_auroc_oscillation_tokens"] < 0.7  # the synthetic tokens carry nothing
        assert r["mon_events_oscillation"] > 12 and r["mon_event_precision_oscillation"] > 0.7

    def test_detector_round_trip(self, result, tmp_path):
        det = result.detectors["oscillation"]
        back = Detector.load(det.save(tmp_path / "d.joblib"))
        x = np.random.default_rng(0).normal(size=(5, 3 * len(FEATURES)))
        np.testing.assert_array_equal(back.score(x), det.score(x))
        assert back.neurons == det.neurons and back.threshold == det.threshold
        with pytest.raises(FileNotFoundError, match="no detector"):
            Detector.load(tmp_path / "missing.joblib")


def test_mon_end_to_end_on_organism(organism_cache, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(organism_cache, run)
    cfg = NeuReasonerConfig(top_k=4, hidden=(8,), max_iter=50)
    report = mon_report(run, config=cfg).to_json()
    for kind in ("slip", "oscillation", "overthinking"):
        for figure in ("recall", "precision", "auroc", "event_recall", "event_precision", "anticipation_auroc"):
            assert f"mon_{figure}_{kind}" in report and f"mon_{figure}_{kind}_tokens" in report
        s = NeuronSet.load(run / "neurons" / f"mon-{kind}.json", model_shape=(4, 512))
        assert len(s) == 4 and s.method == f"neureasoner:{kind}"
        assert {g for g, _ in s.group_means} == {"failing", "healthy"}
        assert Detector.load(run / "neureasoner" / f"detector-{kind}.joblib").neurons == s
    assert json.loads((run / "neureasoner" / "report.json").read_text())["mon_windows"] == report["mon_windows"]
    assert rank_mon(run, config=cfg)["slip"] == NeuronSet.load(run / "neurons" / "mon-slip.json")
