"""The activation store: exact against a direct readout, resumable, and refusing to mix runs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from workbench.neurons import NeuronSet
from workbench.readout import token_activations
from workbench.store import ActivationStore, CacheConfig, RunDirError, cache_activations
from workbench.store.activation_store import span_bounds


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("activations"))
    return out


def test_summaries_and_tokens_match_a_direct_readout(organism_cache, organism):
    store = ActivationStore(organism_cache)
    rows = store.traces().to_pylist()
    assert store.index["trace_id"].to_pylist() == [r["trace_id"] for r in rows]
    cols = np.array(store.token_neurons.flat(store.d_mlp))
    assert len(cols) == min(512, store.n_neurons) and list(cols) == sorted(cols)
    picks = [0, len(rows) // 2, len(rows) - 1]
    for (batch, acts) in token_activations(organism, [rows[i]["token_ids"] for i in picks]):
        for r, a in zip(batch, acts, strict=True):
            row, a = picks[r], acts[r, : len(rows[picks[r]]["token_ids"])].numpy()
            bounds = span_bounds(rows[row], len(a), store.early_k)
            for span in store.spans:
                got = store.summary(span)[row]
                if bounds[span] is None:
                    assert np.isnan(got).all(), span
                else:
                    want = a[bounds[span][0] : bounds[span][1]].mean(0).reshape(store.n_layers, store.d_mlp)
                    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(store.token_acts(row), a[:, cols], rtol=2e-3, atol=2e-3)


def test_token_neurons_by_variance_are_the_most_variable(organism_cache, organism):
    store = ActivationStore(organism_cache)
    rows = [r for r in store.traces().to_pylist() if r["think_start"] is not None][:64]
    s1 = s2 = n = 0
    for batch, acts in token_activations(organism, [r["token_ids"] for r in rows]):
        for r in batch:
            row = rows[r]
            body = acts[r - batch.start, row["think_start"] + 1 : row["think_end"] or len(row["token_ids"])].double()
            s1, s2, n = s1 + body.sum(0), s2 + (body**2).sum(0), n + len(body)
    var = (s2 / n - (s1 / n) ** 2).numpy()
    chosen = np.array(store.token_neurons.flat(store.d_mlp))
    left_out = np.setdiff1d(np.arange(store.n_neurons), chosen)
    assert len(chosen) == 512
    assert var[chosen].min() >= var[left_out].max() * (1 - 1e-6)
    np.testing.assert_allclose(store.token_neurons.scores, var[chosen], rtol=1e-4)


def test_kill_midway_resumes_to_the_same_cache(organism_run, organism, tmp_path, monkeypatch):
    whole = _copy(organism_run, tmp_path / "whole")
    cfg = CacheConfig(shard_traces=16, batch_size=8, top_variance=64)
    cache_activations(whole, config=cfg, model=organism)

    broken = _copy(organism_run, tmp_path / "broken")
    import workbench.store.activation_store as mod

    real, calls = mod._write_shard, []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "_write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(broken, config=cfg, model=organism)
    with pytest.raises(RunDirError, match="incomplete"):
        ActivationStore(broken)
    # A tensors file whose index never landed (killed between the two writes) is dropped on resume.
    (broken / "activations/shards/part-000099.safetensors").write_bytes(b"half")
    monkeypatch.setattr(mod, "_write_shard", real)
    cache_activations(broken, config=cfg, model=organism)
    a, b = ActivationStore(whole), ActivationStore(broken)
    assert a.index["trace_id"].to_pylist() == b.index["trace_id"].to_pylist()
    np.testing.assert_array_equal(a.summary("think"), b.summary("think"))
    np.testing.assert_array_equal(a.token_acts(len(a) - 1), b.token_acts(len(b) - 1))
    assert not (broken / "activations/shards/part-000099.safetensors").exists()


def test_a_corrupt_shard_is_set_aside_and_recomputed(organism_run, organism, tmp_path):
    run = _copy(organism_run, tmp_path)
    cfg = CacheConfig(shard_traces=32, top_variance=16)
    cache_activations(run, config=cfg, model=organism)
    before = ActivationStore(run).summary("question")
    (run / "activations/index.parquet").unlink()
    (run / "activations/shards/part-000001.parquet").write_bytes(b"not parquet")
    cache_activations(run, config=cfg, model=organism)
    assert (run / "activations/shards-corrupt/part-000001.parquet").exists()
    np.testing.assert_array_equal(ActivationStore(run).summary("question"), before)


def _tiny_shard(root, n: int = 0):
    """One shard as ``_write_shard`` lays it out (tensors, then its parquet index), without a model."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    shards = root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": torch.arange(64, dtype=torch.int32)}, str(shards / f"part-{n:06d}.safetensors"))
    pq.write_table(pa.table({"trace_id": ["t0", "t1"], "row": [0, 1], "token_offset": [0, 32], "n_tokens": [32, 32]}),
                   shards / f"part-{n:06d}.parquet")
    return shards / f"part-{n:06d}"


@pytest.mark.parametrize("damage", ["truncated tensors", "garbage tensors", "truncated index", "garbage index",
                                    "no tensors"])
def test_only_a_shard_that_fails_to_parse_is_set_aside(tmp_path, damage):
    from workbench.store.activation_store import _recover

    stem = _tiny_shard(tmp_path, 0)
    _tiny_shard(tmp_path, 1)
    file = stem.with_suffix(".safetensors" if "tensors" in damage else ".parquet")
    raw = file.read_bytes()
    if damage == "no tensors":
        file.unlink()
    else:
        file.write_bytes(raw[: len(raw) // 2] if damage.startswith("truncated") else b"\x13garbage" * 40)
    done = _recover(tmp_path)
    assert done == {"t0": ("part-000001", {"trace_id": "t0", "row": 0, "token_offset": 0, "n_tokens": 32}),
                    "t1": ("part-000001", {"trace_id": "t1", "row": 1, "token_offset": 32, "n_tokens": 32})}
    assert (tmp_path / "shards-corrupt" / "part-000000.parquet").exists()
    assert not stem.with_suffix(".parquet").exists() and not stem.with_suffix(".safetensors").exists()


def test_a_bug_while_reading_a_shard_propagates_and_leaves_it_in_place(tmp_path, monkeypatch):
    """Not every error is a corrupt file: a TypeError from the reader is a bug, raised, and the shard stays."""
    import pyarrow.parquet as pq

    from workbench.store.activation_store import _recover

    stem = _tiny_shard(tmp_path)

    def buggy(*args, **kwargs):
        raise TypeError("read_table() got an unexpected keyword argument")

    monkeypatch.setattr(pq, "read_table", buggy)
    with pytest.raises(TypeError, match="unexpected keyword"):
        _recover(tmp_path)
    assert stem.with_suffix(".parquet").exists() and stem.with_suffix(".safetensors").exists()
    assert not (tmp_path / "shards-corrupt").exists()


def test_refuses_another_model_other_settings_and_changed_traces(organism_run, organism, organism_v1, tmp_path):
    run = _copy(organism_run, tmp_path)
    with pytest.raises(RunDirError, match="not the one that wrote the traces"):
        cache_activations(run, model=organism_v1)
    cache_activations(run, config=CacheConfig(top_variance=8), model=organism)
    with pytest.raises(RunDirError, match=r"differs in: config\.top_variance"):
        cache_activations(run, config=CacheConfig(top_variance=9), model=organism)
    (run / "traces.parquet").write_bytes((run / "traces.parquet").read_bytes() + b"\0")
    with pytest.raises(RunDirError, match="changed since it was cached"):
        ActivationStore(run)


def test_chosen_token_neurons_and_full_layers(organism_run, organism, tmp_path):
    run = _copy(organism_run, tmp_path)
    chosen = NeuronSet.from_pairs([(3, 5), (0, 7), (3, 1)], model_shape=(4, 512))
    path = chosen.save(tmp_path / "n.json")
    cache_activations(run, config=CacheConfig(token_neurons=str(path), layers=(2,)), model=organism)
    store = ActivationStore(run)
    assert store.token_neurons.flat(512) == (7, 3 * 512 + 5, 3 * 512 + 1)
    full = store.layer_acts(1, 2)
    tok = store.token_acts(1)
    assert full.shape == (tok.shape[0], 512)
    with pytest.raises(ValueError, match="was not cached in full"):
        store.layer_acts(1, 0)
    wrong = NeuronSet.from_pairs([(0, 1)], model_shape=(2, 96)).save(tmp_path / "w.json")
    run2 = _copy(organism_run, tmp_path / "b")
    with pytest.raises(ValueError, match="2 layers and d_mlp 96"):
        cache_activations(run2, config=CacheConfig(token_neurons=str(wrong)), model=organism)
    assert not (run2 / "activations").exists()  # refused before writing anything


def test_a_tiny_llama_family_model_from_a_local_folder(tiny_dir, tmp_path):
    from workbench.model import load_model
    from workbench.traces import TraceRunConfig, run_traces

    run = tmp_path / "run"
    model = load_model(tiny_dir)
    run_traces(run, config=TraceRunConfig(model=str(tiny_dir), task="organism", problems=3, samples=2, temperature=1.0,
                              max_new_tokens=12), progress=False, model=model)
    cache_activations(run, config=CacheConfig(top_variance=10))  # loads the model named in the run manifest
    store = ActivationStore(run)
    assert store.summary("question").shape == (6, model.cfg.n_layers, model.cfg.d_mlp)
    assert not np.isnan(store.summary("question")).any()
    assert store.token_acts(5).shape[1] == 10
    torch.testing.assert_close(torch.tensor(store.summary("last").shape), torch.tensor([6, 2, 96]))


def test_no_cache_is_a_clear_error(organism_run):
    with pytest.raises(RunDirError, match="workbench cache"):
        ActivationStore(organism_run)


def test_the_same_weights_from_another_folder_are_the_same_model(tmp_path):
    from workbench.model import load_model, organism_dir
    from workbench.store import model_hash

    copy = shutil.copytree(organism_dir(), tmp_path / "copy")
    assert model_hash(load_model(copy)) == model_hash(load_model("organism"))
    other = shutil.copytree(organism_dir(), tmp_path / "other")
    cfg = (other / "config.json").read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05')
    assert cfg != (other / "config.json").read_text()
    (other / "config.json").write_text(cfg)
    assert model_hash(load_model(other)) != model_hash(load_model("organism"))


def test_a_model_is_hashed_once_until_its_weights_change(monkeypatch):
    import hashlib
    import types

    import torch

    from workbench.store import model_hash, rundir

    calls = []
    monkeypatch.setattr(rundir, "hashlib", types.SimpleNamespace(sha256=lambda: calls.append(1) or hashlib.sha256()))
    model = torch.nn.Linear(4, 3)
    first = model_hash(model)
    assert model_hash(model) == first and len(calls) == 1  # memoised: a study hashes its model once
    with torch.no_grad():
        model.weight[0, 0] += 1.0  # in place: the version counter moves
    edited = model_hash(model)
    assert edited != first and len(calls) == 2
    model.weight = torch.nn.Parameter(model.weight.detach().clone())  # replaced: another address, same values
    assert model_hash(model) == edited and len(calls) == 3
    assert model_hash(torch.nn.Linear(4, 3)) not in (first, edited)  # another object is hashed for itself


def test_off_policy_reads_another_models_traces_on_purpose(organism_run, tiny_model, organism_v1, tmp_path):
    run = _copy(organism_run, tmp_path)
    with pytest.raises(RunDirError, match="tokenizer"):  # v1 has no subtraction tokens: other ids
        cache_activations(run, config=CacheConfig(top_variance=8), model=organism_v1, off_policy=True)
    cache_activations(run, config=CacheConfig(top_variance=8), model=tiny_model, off_policy=True)
    store = ActivationStore(run)
    assert store.manifest["identity"]["on_policy"] is False
    assert (store.n_layers, store.d_mlp) == (tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp)


@pytest.mark.parametrize("backend", ["bridge", "fast"])
def test_reads_of_activations_alone_never_reach_the_unembedding(organism_run, organism, tmp_path, backend,
                                                                 monkeypatch):
    """Caching, window means, per-token reads and the app's replay read activations only: each pass stops after
    the last layer it reads, so the unembedding (pos x d_vocab) is never computed, nor any later layer. On the
    bridge the traces run in chunks of 16 positions over the KV cache; the fast forward has its own copy of the
    unembedding, which refuses too."""
    from workbench.engine.backends import fast_decoder
    from workbench.readout import Budget, neuron_activations, window_means

    hf = organism.original_model
    dec = fast_decoder(hf, pack=False)  # the decoder reads use

    def touched(what):
        def refuse(*args):
            raise AssertionError(f"{what} ran during a read of activations alone")
        return refuse

    hooks_before = sum(len(hp._forward_hooks) for hp in organism.hook_dict.values())
    monkeypatch.setattr(dec, "lm_head", touched("the fast forward's unembedding"))
    budget = Budget(backend=backend, chunk_tokens=16)
    handles = [hf.lm_head.register_forward_pre_hook(touched("the unembedding"))]
    try:
        run = tmp_path / "run"
        shutil.copytree(organism_run, run)
        cache_activations(run, config=CacheConfig(backend=backend, chunk_tokens=16), model=organism)
        assert ActivationStore(run).summary("think").shape[0] == 96
        text = "Q: 47 + 38 = ? <think> carefully 47 + 38 = 85 ; 85 + 1 = 86 ; 86 - 1 = 85 ;"
        ids = organism.tokenizer(text).input_ids
        assert len(ids) > 16  # more than one chunk on the bridge
        assert window_means(organism, [ids], starts=[8], length=4, budget=budget).shape == (1, 4, 512)
        assert next(token_activations(organism, [ids], budget))[1].shape == (1, len(ids), 4 * 512)
        handles += [layer.register_forward_pre_hook(touched(f"layer {i}")) for i, layer in enumerate(hf.model.layers)
                    if i > 1]
        monkeypatch.setattr(dec, "layers", dec.layers[:2])  # nor may the fast forward run past layer 1
        [acts] = neuron_activations(organism, [ids], NeuronSet.from_pairs([(1, 7), (0, 2)]), budget)
        assert acts.shape == (len(ids), 2)
    finally:
        for h in handles:
            h.remove()
    assert sum(len(hp._forward_hooks) for hp in organism.hook_dict.values()) == hooks_before
    logits = organism.original_model(input_ids=torch.tensor([ids])).logits  # a logits request still reaches it
    assert logits.shape == (1, len(ids), organism.cfg.d_vocab)


def test_a_cache_split_by_token_budgets_and_chunks_equals_the_plain_cache(organism_run, organism, tmp_path):
    """Long traces are what budgets are for: small budgets here (a few traces per pass, chunks of 7
    positions over the KV cache, shards of a few hundred tokens) must cache what one pass per batch does."""
    plain, small = tmp_path / "plain", tmp_path / "small"
    for run in (plain, small):
        shutil.copytree(organism_run, run)
    cache_activations(plain, config=CacheConfig(top_variance=32, layers=(1,)), model=organism)
    cache_activations(small, config=CacheConfig(top_variance=32, layers=(1,), max_tokens_per_batch=120, chunk_tokens=7,
                                         shard_tokens=400), model=organism)
    shards = [len(list((run / "activations" / "shards").glob("part-*.parquet"))) for run in (plain, small)]
    assert shards[1] > shards[0] == 1
    a, b = ActivationStore(plain), ActivationStore(small)
    assert a.token_neurons.flat(organism.cfg.d_mlp) == b.token_neurons.flat(organism.cfg.d_mlp)
    for span in ("question", "think", "last"):
        np.testing.assert_allclose(a.summary(span), b.summary(span), atol=2e-3, rtol=2e-3)
    for row in (0, 17, 95):
        np.testing.assert_allclose(a.token_acts(row), b.token_acts(row), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(a.layer_acts(row, 1), b.layer_acts(row, 1), atol=2e-3, rtol=2e-3)


def test_cache_settings_are_checked_with_the_field_named():
    with pytest.raises(ValueError, match=r"CacheConfig\.max_tokens_per_batch must be >= 1"):
        CacheConfig(max_tokens_per_batch=0)
    with pytest.raises(ValueError, match=r"CacheConfig\.backend must be one of"):
        CacheConfig(backend="sdpa")
    with pytest.raises(ValueError, match=r"CacheConfig\.early_k"):
        CacheConfig(early_k=(0,))
