"""Loading models: the bundled organism, any local Hugging Face causal-LM folder, or a hub id, offline.

A hub id (``Qwen/Qwen3-1.7B``) resolves through the Hugging Face cache without the network; it is
downloaded only when asked (``fetch_model``: ``workbench download``, ``--download``, a study's
``download = true``), and a run records the snapshot's revision (``revision_of``).

Everything goes through one path: the tokenizer and the HF model are read from the folder with
``local_files_only`` (and the hub switched off), then wrapped in a TransformerLens
``TransformerBridge``, whose hook names (``blocks.{L}.mlp.hook_post`` is the input of HF's
``mlp.down_proj``) are the project's one addressing scheme. We pass our tokenizer to the bridge
because letting it reload one by name can swap in a different class (a Qwen2-type folder once lost
its custom tokenizer's spaces that way).

Example:
    >>> model = load_model("organism")
    >>> model.cfg.n_layers
    4
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformer_lens.model_bridge import TransformerBridge

from workbench.errors import ModelLoadError  # defined torch-free for the CLI; importable from here as before

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ORGANISM = "organism"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
# Earlier organisms stay loadable by name, so results computed on them can be reproduced; the organism
# fine-tuned (from v2) to follow NeuReasoner's trigger tokens serves studies/neureasoner.toml.
BUNDLED = {name: name for name in ("organism-v1", "organism-v2", "organism-v3", "organism-neureasoner")}


def organism_dir() -> Path:
    """Where the bundled organism lives (``$WORKBENCH_ORGANISM`` overrides it)."""
    return Path(os.environ.get("WORKBENCH_ORGANISM", DATA_DIR / "organism"))


# What a hub download fetches: config, tokenizer and chat template, and safetensors weights (no .bin, no
# training checkpoints or other formats a repository may also carry).
HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_id(spec: str | Path) -> str | None:
    """``spec`` as a hub model id (``ORG/NAME``) when it names one: not a bundled model, not an existing path.

    >>> hub_id("Qwen/Qwen3-1.7B"), hub_id("organism"), hub_id("/tmp"), hub_id("runs/no-such-folder/x")
    ('Qwen/Qwen3-1.7B', None, None, None)
    """
    text = str(spec)
    if text == ORGANISM or text in BUNDLED or Path(text).expanduser().exists() or not _HUB_ID.match(text):
        return None
    return text


def hub_cache() -> Path:
    """The Hugging Face hub cache this process reads (``HF_HUB_CACHE``, else ``HF_HOME/hub``), read now, not at
    import, so a test or a shell can point it elsewhere."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface"
    return Path(home).expanduser() / "hub"


def fetch_model(spec: str, revision: str | None = None) -> Path:
    """Downloads hub model ``spec`` (``ORG/NAME``) into the hub cache, the one step that uses the network; returns
    the snapshot folder. Weights, config and tokenizer only (safetensors preferred)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    if hub_id(spec) is None:
        raise ModelLoadError(f"{spec!r} is not a hub model id (ORG/NAME); a local folder or the organism needs no "
                             "download")
    try:
        path = snapshot_download(spec, revision=revision, cache_dir=hub_cache(), allow_patterns=list(HUB_FILES))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot download {spec} into {hub_cache()}: {exc}") from exc
    return resolve(path)


def _cached_snapshot(repo: str) -> Path:
    """The cached snapshot of hub model ``repo`` (``refs/main``'s), offline; a clear error naming the fetch command."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, cache_dir=hub_cache(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"the hub model {repo} is not in the Hugging Face cache ({hub_cache()}), and models are downloaded only "
            f"when asked: run `workbench download {repo}` (or add --download, or download = true in the study's "
            f"[study]); offline, pass the path of a local folder instead (no folder {repo} exists here)") from exc


def revision_of(path: str | Path) -> str | None:
    """The hub revision (commit hash) a resolved folder is a snapshot of, or None for a plain folder.

    >>> revision_of("/cache/models--Qwen--Qwen3-1.7B/snapshots/0123abc"), revision_of("/data/organism")
    ('0123abc', None)
    """
    path = Path(path)
    return path.name if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--") else None


def resolve(spec: str | Path) -> Path:
    """Maps a model spec (``"organism"``, ``"organism-v1"``, a folder, or a hub id ``ORG/NAME`` already in the
    Hugging Face cache) to a checked local folder. Never downloads (``fetch_model`` does, when asked)."""
    repo = hub_id(spec)
    if str(spec) == ORGANISM:
        path = organism_dir()
    elif str(spec) in BUNDLED:
        path = DATA_DIR / BUNDLED[str(spec)]
    elif repo is not None:
        path = _cached_snapshot(repo)
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        hint = (
            f"the bundled {spec} is missing: restore data/ from the repository"
            if str(spec) == ORGANISM or str(spec) in BUNDLED
            else "pass 'organism', the path of a local Hugging Face model folder, or a hub id ORG/NAME"
        )
        raise ModelLoadError(f"model folder {path} does not exist: {hint}")
    if not path.is_dir():
        raise ModelLoadError(f"model spec {path} is a file; pass the folder that holds config.json")
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"{path} has no config.json, so it is not a Hugging Face model folder; save one with "
            "`model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)`"
        )
    return path


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Forbids the hub for the duration, whatever the caller's environment says."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _read_config_json(path: Path) -> dict:
    """The raw ``config.json`` of ``path``, checked far enough for a clear message on what is wrong.

    Transformers' own errors for these cases either hide the file or, for an unknown
    ``model_type``, advise upgrading transformers, which does not help a typo or a foreign checkpoint.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    file = path / "config.json"
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{file} is not valid JSON ({exc}); restore the file the checkpoint was saved with "
            "(`model.save_pretrained(folder)` writes it)"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"{file} cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{file} holds a JSON {type(raw).__name__}, not the object of a Hugging Face config")
    model_type = raw.get("model_type")
    if model_type is None:
        raise ModelLoadError(
            f"{file} has no `model_type` field; add the model's type (e.g. \"model_type\": \"qwen3\") "
            "or re-save the checkpoint with `model.save_pretrained(folder)`"
        )
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelLoadError(
            f"{file}: field `model_type` is {model_type!r}, which transformers does not know; check the "
            "field for a typo (known types include qwen3, qwen2, llama, mistral) or convert the checkpoint "
            "to a known architecture"
        )
    return raw


def _check_config(path: Path):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    _read_config_json(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path / 'config.json'} cannot be read as a Hugging Face config: {exc}") from exc
    archs = config.architectures or []
    causal = (
        any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        if archs
        else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if not causal:
        raise ModelLoadError(
            f"{path}: {', '.join(archs) or config.model_type!r} is not a causal language model; the workbench "
            "needs a decoder that generates text (e.g. qwen3, qwen2, llama)"
        )
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config

    try:
        arch = determine_architecture_from_hf_config(config)
    except ValueError:
        arch = None
    if arch not in SUPPORTED_ARCHITECTURES:
        examples = ", ".join(a for a in ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM",
                                         "MistralForCausalLM", "GemmaForCausalLM") if a in SUPPORTED_ARCHITECTURES)
        raise ModelLoadError(
            f"{path}: architecture {', '.join(archs) or config.model_type} is not supported by "
            f"TransformerLens's TransformerBridge (supported include {examples}, ...); convert the "
            "checkpoint to a supported architecture or upgrade transformer-lens"
        )
    return config


def _tokenizer_class(path: Path):
    """AutoTokenizer, except for a generic ``tokenizer.json``, which must be loaded as it is saved.

    For a generic fast tokenizer, AutoTokenizer picks the class of the config's model type instead
    (a qwen2 folder gets ``Qwen2Tokenizer``), which rebuilds the pre-tokenizer and can drop spaces.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_file = path / "tokenizer_config.json"
    try:
        raw = json.loads(config_file.read_text()) if config_file.exists() else {}
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{config_file} holds a JSON {type(raw).__name__}, not a tokenizer config object; save "
                             "the tokenizer again with `tokenizer.save_pretrained(folder)`")
    declared = raw.get("tokenizer_class")
    generic = declared in {"TokenizersBackend", "PreTrainedTokenizerFast"}
    return PreTrainedTokenizerFast if generic else AutoTokenizer


def _check_round_trip(path: Path, tokenizer, probe: str = "Q: 12 + 34 = ?") -> None:
    """Raises unless the ids of ``probe`` survive encode -> decode -> encode, with no unknown token.

    Ids, not text: generated tokens are decoded and re-tokenized, and what must survive is what
    the model sees. Text equality wrongly rejected tokenizers that lower-case, or whose
    ``clean_up_tokenization_spaces`` turns ``= ?`` into ``=?`` while giving back the same ids.
    """
    ids = tokenizer(probe, add_special_tokens=False).input_ids
    text = tokenizer.decode(ids)
    again = tokenizer(text, add_special_tokens=False).input_ids
    unk = tokenizer.unk_token_id
    if not ids or again != ids or (unk is not None and unk in ids):
        raise ModelLoadError(
            f"{path}: the tokenizer does not give back its own tokens: {probe!r} -> {ids} -> "
            f"{text!r} -> {again} (unknown-token id {unk}); it is broken or incomplete (check tokenizer.json's "
            "vocabulary and decoder, and `clean_up_tokenization_spaces` in tokenizer_config.json), or "
            "save the model's own tokenizer with `tokenizer.save_pretrained(folder)`"
        )


def _load_tokenizer(path: Path, vocab_size: int) -> PreTrainedTokenizerBase:
    cls = _tokenizer_class(path)  # our own code stays outside the catch below: a bug in it is not a bad file
    try:
        tokenizer = cls.from_pretrained(path, local_files_only=True)
    # Only transformers' loader is inside: on garbled files it raises KeyError ({} as tokenizer.json), TypeError
    # ([]), ValueError, OSError..., all meaning the folder's tokenizer is unusable; the cause stays chained.
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: the tokenizer files cannot be loaded ({type(exc).__name__}: {exc}); save a "
            "working tokenizer into the folder with `tokenizer.save_pretrained(folder)`"
        ) from exc
    if len(tokenizer) > vocab_size:
        raise ModelLoadError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{vocab_size}; the tokenizer belongs to another model"
        )
    _check_round_trip(path, tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_tokenizer(spec: str | Path = ORGANISM) -> PreTrainedTokenizerBase:
    """The tokenizer of model ``spec``, as ``load_model(spec).tokenizer`` has it, without loading the weights.

    ``spec`` resolves as in ``load_model`` (the organism, a bundled name, a local folder, or a hub id already in
    the Hugging Face cache), offline. The tokenizer is the folder's own class (never swapped for the config's
    model type), checked against the model's ``vocab_size`` and for round trips, left-padding, with a pad token
    (the EOS when the folder names none), and, when the folder names no BOS token, its EOS as BOS, as the bridge
    leaves it (so a prompt format's BOS policy resolves alike on both). Raises ``ModelLoadError`` with the file and
    the fix, as ``load_model`` does.

    Example:
        >>> tok = load_tokenizer("organism")
        >>> tok.padding_side, tok.pad_token is not None
        ('left', True)
    """
    path = resolve(spec)
    with offline():
        tokenizer = _load_tokenizer(path, _check_config(path).vocab_size)
    # What the bridge's boot (transformer_lens setup_tokenizer) does to a tokenizer without a BOS token, which it
    # keeps: its EOS becomes its BOS. Not in _load_tokenizer: load_model must hand such a tokenizer over without a
    # BOS, or the bridge would reload one by name, the swap _restore_tokenizer exists to undo.
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str | Path = ORGANISM,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TransformerBridge:
    """Loads ``spec`` (``"organism"`` or a local HF folder) as a hookable TransformerBridge.

    The returned bridge's ``tokenizer`` is the folder's own, left-padding, with a pad token.
    Raises ``ModelLoadError`` with the file and the fix when the folder is unusable.
    """
    from transformers import AutoModelForCausalLM

    path = resolve(spec)
    with offline():
        config = _check_config(path)
        tokenizer = _load_tokenizer(path, config.vocab_size)  # the same as load_tokenizer(spec)
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=dtype, attn_implementation="eager"
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{path}: the weights cannot be loaded: {exc}") from exc
        hf_model.eval()
        bridge = TransformerBridge.boot_transformers(
            str(path), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    _restore_tokenizer(bridge, tokenizer)
    bridge.eval()
    return bridge


def _restore_tokenizer(bridge: TransformerBridge, tokenizer) -> None:
    """Puts the folder's own tokenizer back into the bridge.

    The bridge reloads a tokenizer by name (``AutoTokenizer`` with ``add_bos_token=True``), and its
    setter does so again on reassignment; for a generic ``tokenizer.json`` in a qwen2-type folder
    that yields ``Qwen2Tokenizer``, which drops the spaces of a custom vocabulary. So we set the
    stored tokenizer directly and re-detect its BOS/EOS behaviour for the bridge's config.
    """
    from transformer_lens.model_bridge.sources._bridge_builder import detect_tokenizer_bos_eos

    if bridge.tokenizer is not tokenizer:
        bridge._tokenizer = tokenizer
        driver = getattr(bridge, "_driver", None)
        if driver is not None and hasattr(driver, "tokenizer"):
            driver.tokenizer = tokenizer
        bridge.cfg.tokenizer_prepends_bos, bridge.cfg.tokenizer_appends_eos = detect_tokenizer_bos_eos(tokenizer)
    # String inputs to the bridge (run_with_cache("..."), to_tokens) then get exactly the tokens the
    # HF tokenizer gives, BOS included when it adds one: what the model saw in training.
    bridge.cfg.default_prepend_bos = bool(bridge.cfg.tokenizer_prepends_bos)


def weights_identity(hf_model) -> tuple:
    """What changes when a loaded model's weights do: each parameter's address, in-place version counter,
    dtype and shape. Memos of a model (its fast decoder, its hash) compare it to know they are stale.

    >>> layer = torch.nn.Linear(2, 2)
    >>> before = weights_identity(layer)
    >>> with torch.no_grad():
    ...     _ = layer.weight.add_(1.0)
    >>> weights_identity(layer) == before
    False
    """
    return tuple((p.data_ptr(), p._version, p.dtype, tuple(p.shape)) for p in hf_model.parameters())


def set_threads(n: int | None) -> int:
    """Sets the CPU threads of torch and of the BLAS behind numpy/scikit-learn; returns torch's.

    Small models on few cores often run fastest on one thread; two pools each grabbing every core
    (torch and BLAS, or two processes) were measured up to 30x slower than one thread each.
    """
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(n)
        threadpool_limits(n)
    return torch.get_num_threads()
