"""Shared fixtures: tiny random-weight checkpoints built from a config, and the bundled organism."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from workbench.model import load_model, organism_dir, set_threads
from workbench.organism.tokenizer import build_tokenizer

ARCHITECTURES = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_threads(1)


@pytest.fixture
def no_training(monkeypatch):
    """Makes a training step fail loudly, so that a broken refusal cannot overwrite the shipped weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(torch.optim.AdamW, "step", refuse)


def save_tiny_model(folder: Path, arch: str, n_layers: int = 2, seed: int = 0) -> Path:
    """Saves a random-weight ``arch`` checkpoint with the offline organism tokenizer into ``folder``."""
    tok = build_tokenizer()
    config_cls, model_cls = ARCHITECTURES[arch]
    config = config_cls(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    # Random init leaves RMSNorm weights at 1; perturb them so parity tests would see a skipped norm.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=sorted(ARCHITECTURES))
def tiny_dir(request, tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return load_model(save_tiny_model(tmp_path_factory.mktemp("qwen3"), "qwen3"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (starting one takes seconds to a minute on 2 cores)."""
    ray = pytest.importorskip("ray", reason="the scale-out tests need Ray: pip install ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def organism():
    if not (organism_dir() / "config.json").exists():
        pytest.fail(f"the bundled organism is missing from {organism_dir()}; run `workbench organism train`")
    return load_model("organism")


@pytest.fixture(scope="session")
def organism_v1():
    return load_model("organism-v1")


@pytest.fixture(scope="session")
def organism_run(tmp_path_factory, organism) -> Path:
    """A small finished trace run of the organism (24 problems x 4 samples at T=1), not cached.

    Read-only: copy it (``shutil.copytree``) before caching or writing into it.
    """
    from workbench.traces import TraceRunConfig, run_traces

    set_threads(1)
    out = tmp_path_factory.mktemp("organism-run") / "run"
    cfg = TraceRunConfig(model="organism", task="organism", problems=24, samples=4, temperature=1.0, seed=7)
    run_traces(out, config=cfg, progress=False, model=organism)
    return out


@pytest.fixture(scope="session")
def organism_cache(tmp_path_factory, organism_run, organism) -> Path:
    """``organism_run`` copied and cached with the default ``CacheConfig`` (read-only)."""
    import shutil

    from workbench.store import cache_activations

    set_threads(1)
    out = tmp_path_factory.mktemp("organism-cache") / "run"
    shutil.copytree(organism_run, out)
    cache_activations(out, model=organism)
    return out


@pytest.fixture(scope="session")
def organism_study(tmp_path_factory, organism) -> Path:
    """A finished small study (``tests/data/study-small.toml``): ``OUT/organism/{analysis,<method>}`` and
    ``OUT/results.{json,md,parquet}``, every analysis stage run (read-only: copy it before writing)."""
    from workbench.evaluation import load_study, run_study

    set_threads(1)
    out = tmp_path_factory.mktemp("organism-study") / "study"
    study = load_study(Path(__file__).parent / "data" / "study-small.toml")
    run_study(out, study=study, progress=False, model=organism)
    return out


def traces_by_id(run: Path) -> dict[str, dict]:
    """A run's traces keyed by trace id, each with its events parsed."""
    import json

    from workbench.store import load_traces

    return {r["trace_id"]: {**r, "events": json.loads(r["events"])} for r in load_traces(run).to_pylist()}


def run_method(model, method, cfg, out: Path, analysis: Path | None = None) -> dict[str, dict]:
    """Generates ``cfg``'s traces into ``out`` with ``method`` built from ``analysis``; returns them by trace id."""
    from workbench.evaluation.methods import MethodContext
    from workbench.traces import run_traces

    edits, controllers = method.build(MethodContext(model, analysis, cfg))
    run_traces(out, config=cfg, progress=False, model=model, edits=edits, controllers=controllers)
    return traces_by_id(out)
