"""The one readout: budgets, the bridge's chunks over the KV cache, the fast forward, p(token) without the
full logits, and NEAT's attribution over a cached prefix, each against the plain full pass."""

import numpy as np
import pytest
import torch

from tests.conftest import ARCHITECTURES
from workbench import load_model
from workbench.neurons import layer_of, mlp_post
from workbench.readout import Budget, read_mlp, run_forced, token_activations

BACKENDS = {
    "bridge": Budget(backend="bridge"),
    "bridge, chunks of 5": Budget(backend="bridge", chunk_tokens=5),
    "fast": Budget(backend="fast"),
}


def _sequences(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [23, 9, 16][:n]
    return [torch.randint(3, model.cfg.d_vocab, (n_tok,), generator=g).tolist() for n_tok in lengths]


def _full_pass(model, sequences):
    """Every layer's hook_post and the logits of one plain bridge forward (no budget, no chunks)."""
    got = {}

    def grab(act, hook):
        got[layer_of(hook.name)] = act.detach().clone()

    logits = run_forced(model, sequences, [(mlp_post(layer), grab) for layer in range(model.cfg.n_layers)])
    return torch.cat([got[layer] for layer in range(model.cfg.n_layers)], -1), logits


def _real(sequences, width):
    mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for r, s in enumerate(sequences):
        mask[r, : len(s)] = True
    return mask


def test_budget_splits_batches_by_rows_and_padded_tokens():
    budget = Budget(batch_size=3, max_tokens_per_batch=100)
    assert [list(r) for r in budget.batches([10, 20, 30, 5, 5, 5, 5])] == [[0, 1, 2], [3, 4, 5], [6]]
    # a long sequence raises the batch's padded width: it starts a batch of its own; longer than the
    # budget, it runs alone (its chunks bound its memory)
    assert [list(r) for r in budget.batches([10, 40, 30, 90, 500, 5])] == [[0, 1], [2], [3], [4], [5]]
    assert list(Budget().batches([])) == []
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        Budget(max_tokens_per_batch=0)
    with pytest.raises(ValueError, match="backend"):
        Budget(backend="flash")


@pytest.mark.parity  # the bridge's chunks and cache, and the fast forward, against a plain forward
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_backend_reads_what_the_full_pass_computes(arch, tmp_path):
    from tests.conftest import save_tiny_model

    model = load_model(save_tiny_model(tmp_path / arch, arch, n_layers=3))
    seqs = _sequences(model)
    acts, logits = _full_pass(model, seqs)
    real = _real(seqs, acts.shape[1])
    target = [5, 7, 11]
    ref_p = torch.softmax(logits.float(), -1)[torch.arange(3), :, torch.tensor(target)]
    for name, budget in BACKENDS.items():
        (rows, got), = list(token_activations(model, seqs, budget))
        assert list(rows) == [0, 1, 2]
        torch.testing.assert_close(got[real], acts[real], atol=2e-5, rtol=1e-4, msg=name)
        p = read_mlp(model, seqs, [0], lambda *a: None, budget, p_of=target)
        torch.testing.assert_close(p[real], ref_p[real], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parity
def test_the_bridge_unchunked_is_the_full_pass_bit_for_bit(organism):
    seqs = _sequences(organism)
    acts, logits = _full_pass(organism, seqs)
    (_, got), = list(token_activations(organism, seqs, Budget(backend="bridge")))
    real = _real(seqs, acts.shape[1])
    assert torch.equal(got[real], acts[real])
    p = read_mlp(organism, seqs, [1], lambda *a: None, Budget(backend="bridge"), p_of=[4, 4, 4])
    assert torch.equal(p, torch.softmax(logits.float(), -1)[:, :, 4])


def test_a_long_batch_is_split_and_its_reads_keep_their_rows(organism):
    seqs = _sequences(organism)
    whole = next(token_activations(organism, seqs, Budget(backend="bridge")))[1]
    parts = list(token_activations(organism, seqs, Budget(backend="bridge", max_tokens_per_batch=20)))
    assert [list(r) for r, _ in parts] == [[0], [1], [2]]  # 23 tokens alone; 9 + 16 would pad to 32
    for rows, acts in parts:
        (r,) = rows
        n = len(seqs[r])
        torch.testing.assert_close(acts[0, :n], whole[r, :n], atol=2e-5, rtol=1e-4)


def test_logits_are_made_a_few_positions_at_a_time(organism, monkeypatch):
    """p(token) reaches the unembedding with at most the step's positions, never batch x pos x d_vocab."""
    import workbench.readout as readout

    monkeypatch.setattr(readout, "LOGITS_PER_STEP", 3 * 4 * organism.cfg.d_vocab)  # 4 positions of 3 rows
    seqs = _sequences(organism)
    widths = []
    handle = organism.original_model.lm_head.register_forward_pre_hook(
        lambda module, args: widths.append(args[0].shape[1]))
    try:
        p = read_mlp(organism, seqs, [0], lambda *a: None, Budget(backend="bridge"), p_of=[4, 4, 4])
    finally:
        handle.remove()
    assert max(widths) == 4 and sum(widths) == 23
    ref = torch.softmax(_full_pass(organism, seqs)[1].float(), -1)[:, :, 4]
    torch.testing.assert_close(p, ref, atol=1e-6, rtol=1e-5)


def test_the_fast_backend_is_refused_where_it_cannot_read(organism, monkeypatch):
    import workbench.engine.fast as fast

    monkeypatch.setattr(fast, "unsupported_reason", lambda config: "architecture ['X'] is not supported")
    with pytest.raises(ValueError, match=r"Budget\.backend='fast' cannot read this model: architecture"):
        read_mlp(organism, [[1, 2, 3]], [0], lambda *a: None, Budget(backend="fast"))
    (_, acts), = list(token_activations(organism, [[1, 2, 3]], Budget(backend="auto")))  # auto: the bridge
    assert acts.shape == (1, 3, 4 * organism.cfg.d_mlp)


@pytest.mark.parity
def test_neat_gradient_over_a_cached_prefix_equals_the_full_backward(organism):
    """The exit token alone runs with gradients over the prefix's KV cache; the full sequence's backward
    (the former implementation) gives the same a * d log p(end) / d a."""
    from workbench.neat.attribution import gradient_importance

    seqs = [[*s, 5] for s in _sequences(organism)]
    positions = [len(s) - 2 for s in seqs]
    ends = [s[-1] for s in seqs]
    got = gradient_importance(organism, seqs, positions, ends, layers=[0, 2], batch_size=2)
    d_mlp = organism.cfg.d_mlp
    for r, (s, p, end) in enumerate(zip(seqs, positions, ends, strict=True)):
        deltas, acts = {}, {}

        def probe(act, hook, deltas=deltas, acts=acts, p=p):
            delta = torch.zeros_like(act, requires_grad=True)
            deltas[layer_of(hook.name)], acts[layer_of(hook.name)] = delta, act.detach()[0, p]
            return act + delta

        with torch.enable_grad(), organism.hooks(fwd_hooks=[(mlp_post(layer), probe) for layer in (0, 2)]):
            logits = organism.original_model(input_ids=torch.tensor([s[: p + 1]])).logits
            logp = torch.log_softmax(logits[0, p].float(), -1)[end]
            grads = torch.autograd.grad(logp, [deltas[0], deltas[2]])
        for layer, g in zip((0, 2), grads, strict=True):
            want = (acts[layer] * g[0, p]).numpy()
            np.testing.assert_allclose(got[r, layer * d_mlp : (layer + 1) * d_mlp], want, atol=1e-5, rtol=1e-4)
        assert np.isnan(got[r, d_mlp : 2 * d_mlp]).all()  # layer 1 was not asked for
