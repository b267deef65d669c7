"""One frozen prompt spec: how a question becomes token ids, when a sequence stops, where thinking is.

Every run records its resolved ``PromptFormat`` in its manifest, so the same trace can be rebuilt and
a resumed run can refuse a different format. It settles four things that are easy to get subtly
wrong on real checkpoints:

* **chat template or raw string**: ``style="auto"`` uses the tokenizer's chat template when it has
  one; ``"raw"`` fills ``raw_template`` instead (the AdaRAS reference code feeds
  ``"Question: {question}\\nThinking process:"`` to a base model);
* **BOS**: added once, as the tokenizer itself would, and never doubled when a chat template already
  wrote it (``bos="auto"``), or forced with ``"always"`` / ``"never"``;
* **stop ids**: the tokenizer's EOS *and* every id of ``generation_config.eos_token_id`` (chat
  models end turns with ``<|im_end|>`` or ``<|eot_id|>``, often listed only there);
* **think markers**: found in the token ids by their text, so a ``</think>`` that the tokenizer
  splits into several tokens is still found.

Example:
    >>> from workbench.organism.tokenizer import build_tokenizer
    >>> tok = build_tokenizer()
    >>> fmt = PromptFormat().resolve(tok)
    >>> fmt.style, fmt.bos, fmt.stop_ids
    ('raw', 'always', (1,))
    >>> ids = fmt.encode(tok, "Q: 4 + 5 = ? <think>")
    >>> ids == tok("Q: 4 + 5 = ? <think>").input_ids
    True
    >>> full = ids + tok(" carefully 4 + 5 = 9 ; </think> 9").input_ids[1:]
    >>> fmt.spans(tok, full, len(ids))
    ThinkSpans(think_start=7, think_end=15, answer_start=16)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Space marks that tokenizers write into token strings (SentencePiece, byte-level BPE).
_SPACE_MARKS = {"▁": " ", "Ġ": " ", "Ċ": "\n", "ĉ": "\t"}


class PromptFormatError(ValueError):
    """A prompt format that cannot be used with this tokenizer; the message says which field."""


# The model families and reference setups of the three papers (``../shared/PAPERS.md``): each preset sets these
# fields (a field given explicitly with another value wins) and is checked against the tokenizer on ``resolve``.
PRESETS: dict[str, dict[str, Any]] = {
    # Qwen3's chat template with thinking on (AdaRAS's generation and evaluation; Qwen3 models in NEAT).
    "qwen3": {"style": "chat", "enable_thinking": True},
    # DeepSeek-R1-Distill: its template opens "<think>\n" itself; no system prompt (the model card).
    "r1-distill": {"style": "chat", "system": None},
    # The AdaRAS reference code's raw string, run through the model without a chat template.
    "adaras": {"style": "raw", "raw_template": "Question: {question}\nThinking process:"},
    # NEAT: R1-Distill (and Qwen3) models through their chat templates, thinking in <think> ... </think>.
    "neat": {"style": "chat", "system": None},
}
_OPENS_THINKING = ("r1-distill",)  # presets whose template must leave the prompt inside a thinking span


@dataclass(frozen=True)
class ThinkSpans:
    """Token positions in a full sequence (prompt included).

    ``think_start`` is the last token of the opening marker (thinking is ``think_start + 1`` up to
    ``think_end``); ``think_end`` is the first token of the closing marker; ``answer_start`` is the
    first token after it. A missing marker is None: thinking that never closed has no answer.
    """

    think_start: int | None
    think_end: int | None
    answer_start: int | None

    def thinking_tokens(self, length: int) -> int:
        """How many tokens were spent thinking in a sequence of ``length`` tokens."""
        if self.think_start is None:
            return 0
        end = self.think_end if self.think_end is not None else length
        return max(0, end - self.think_start - 1)

    def bounds(self, prompt_len: int, length: int) -> tuple[int, int]:
        """The thinking tokens ``[lo, hi)`` of a sequence of ``length`` tokens: after the opening marker (the
        whole generation when thinking never opened: a model that answers without a marked span), up to the
        closing marker (to the end when it never closed). The one rule every reader of a stored trace uses.

        >>> ThinkSpans(3, 9, 10).bounds(4, 12), ThinkSpans(None, None, None).bounds(4, 12)
        ((4, 9), (4, 12))
        """
        lo = self.think_start + 1 if self.think_start is not None else prompt_len
        hi = self.think_end if self.think_end is not None else length
        return lo, max(hi, lo)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> ThinkSpans:
        """The spans a stored trace records (a ``traces.parquet`` row or the activation store's index)."""
        return cls(row.get("think_start"), row.get("think_end"), row.get("answer_start"))


@dataclass(frozen=True, kw_only=True)
class PromptFormat:
    """How to prompt, stop and find the thinking span; ``resolve`` fills the ``"auto"`` choices.

    Attributes:
        style: ``"auto"`` (chat template when the tokenizer has one), ``"chat"`` or ``"raw"``.
        raw_template: the raw prompt, with ``{question}`` where the task's question goes.
        system: a system message for chat templates (None: none).
        enable_thinking: passed to chat templates that understand it (Qwen3).
        bos: ``"auto"`` (as the tokenizer does, never doubled), ``"always"`` or ``"never"``.
        stop_ids: token ids that end a sequence; empty means the model's own (filled by ``resolve``).
        extra_stops: further stop tokens given as token strings, e.g. ``("<|im_end|>",)``.
        think_open, think_close: the thinking markers, as text.
        preset: a name in ``PRESETS`` (``qwen3``, ``r1-distill``, ``adaras``, ``neat``): sets the fields it names
            that were left at their defaults, and ``resolve`` checks the tokenizer fits it.
    """

    style: str = "auto"  # validated below with a clearer message than a type checker gives
    raw_template: str = "{question}"
    system: str | None = None
    enable_thinking: bool = True
    bos: str = "auto"
    stop_ids: tuple[int, ...] = ()
    extra_stops: tuple[str, ...] = ()
    think_open: str = THINK_OPEN
    think_close: str = THINK_CLOSE
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise PromptFormatError(f"prompt preset {self.preset!r} is unknown; choose one of "
                                        f"{', '.join(PRESETS)}")
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in PRESETS[self.preset].items():
                if getattr(self, name) == defaults[name]:
                    object.__setattr__(self, name, value)
        if self.style not in ("auto", "chat", "raw"):
            raise PromptFormatError(f"prompt style must be 'auto', 'chat' or 'raw', got {self.style!r}")
        if self.bos not in ("auto", "always", "never"):
            raise PromptFormatError(f"prompt bos must be 'auto', 'always' or 'never', got {self.bos!r}")
        if "{question}" not in self.raw_template:
            raise PromptFormatError(f"raw_template must contain '{{question}}', got {self.raw_template!r}")
        for name in ("think_open", "think_close"):
            marker = getattr(self, name)
            if not marker or any(c.isspace() for c in marker):
                raise PromptFormatError(f"{name} must be non-empty text without spaces, got {marker!r}")

    @property
    def resolved(self) -> bool:
        return self.style != "auto" and self.bos != "auto" and bool(self.stop_ids)

    def resolve(self, tokenizer, generation_config=None) -> PromptFormat:
        """This format with every ``"auto"`` made concrete for ``tokenizer`` (and the model's generation config)."""
        style = self.style
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if style == "auto":
            style = "chat" if has_template else "raw"
        elif style == "chat" and not has_template:
            raise PromptFormatError("prompt style 'chat' needs a tokenizer with a chat template; this one has none "
                                    "(use style 'raw' with a raw_template)")
        bos = self.bos
        if bos == "auto":
            bos = "always" if _tokenizer_adds_bos(tokenizer) else "never"
        if bos == "always" and tokenizer.bos_token_id is None:
            raise PromptFormatError("prompt bos 'always' but the tokenizer has no BOS token; use bos 'never'")
        stops = set(self.stop_ids) or set(_model_stop_ids(tokenizer, generation_config))
        for text in self.extra_stops:
            stops.add(_single_token(tokenizer, text, "extra_stops"))
        if not stops:
            raise PromptFormatError("no stop token: the tokenizer has no EOS and the generation config none; "
                                    "pass stop_ids or extra_stops")
        out = replace(self, style=style, bos=bos, stop_ids=tuple(sorted(stops)))
        out._check_preset(tokenizer)
        return out

    def _check_preset(self, tokenizer) -> None:
        """Refuses a tokenizer whose chat template does not behave as the preset's model family's does."""
        if self.preset is None or self.style != "chat":
            return
        if not getattr(tokenizer, "chat_template", None):
            raise PromptFormatError(f"prompt preset {self.preset!r} needs the model's chat template; this tokenizer "
                                    "has none")
        probe = [{"role": "user", "content": "1 + 1?"}]
        on, off = (tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True, enable_thinking=e)
                   for e in (True, False))
        if self.preset == "qwen3" and on == off:
            raise PromptFormatError("prompt preset 'qwen3': this tokenizer's chat template ignores enable_thinking, "
                                    "so it is not Qwen3's; use preset 'r1-distill' or none")
        if self.preset in _OPENS_THINKING and on.rfind(self.think_open) <= on.rfind(self.think_close):
            raise PromptFormatError(f"prompt preset {self.preset!r}: this tokenizer's chat template does not open "
                                    f"{self.think_open} itself, as R1-Distill's does; use preset 'qwen3' or none")

    def record(self) -> dict[str, Any]:
        """The spec as plain data, for a run's manifest."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    def render(self, tokenizer, question: str) -> str:
        """The prompt text for ``question`` (a resolved format's chat template or raw template)."""
        self._check_resolved()
        if self.style == "raw":
            return self.raw_template.replace("{question}", question)
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=self.enable_thinking)

    def encode(self, tokenizer, question: str) -> list[int]:
        """Token ids of the prompt for ``question``; see ``tokenize``."""
        return self.tokenize(tokenizer, self.render(tokenizer, question))

    def tokenize(self, tokenizer, prompt: str) -> list[int]:
        """Token ids of a rendered prompt, with BOS exactly once when the policy asks for it."""
        self._check_resolved()
        ids = list(tokenizer(prompt, add_special_tokens=False).input_ids)
        if self.bos == "always" and ids[:1] != [tokenizer.bos_token_id]:
            ids.insert(0, tokenizer.bos_token_id)
        if not ids:
            raise PromptFormatError(f"the prompt {prompt[:40]!r} encodes to no tokens")
        return ids

    def spans(self, tokenizer, token_ids: Sequence[int], prompt_len: int) -> ThinkSpans:
        """Where thinking opens and closes in ``token_ids`` (prompt then generated tokens).

        Thinking is open at the end of the prompt when the prompt's last opening marker comes after
        its last closing one (templates that end with ``<think>``); otherwise the first opening
        marker generated starts it. A closing marker with no opening one (a template that opens
        thinking implicitly) starts thinking at the first generated token.
        """
        text, owner = _token_text(tokenizer, token_ids)
        prompt_chars = next((i for i, t in enumerate(owner) if t >= prompt_len), len(text))
        last_open = text.rfind(self.think_open, 0, prompt_chars)
        last_close = text.rfind(self.think_close, 0, prompt_chars)
        if last_open >= 0 and last_open > last_close and last_open + len(self.think_open) <= prompt_chars:
            open_at = last_open
        else:
            open_at = text.find(self.think_open, prompt_chars)
        think_start = owner[open_at + len(self.think_open) - 1] if open_at >= 0 else None
        close_from = open_at + len(self.think_open) if open_at >= 0 else prompt_chars
        close_at = text.find(self.think_close, close_from)
        if close_at < 0:
            return ThinkSpans(think_start, None, None if think_start is not None else prompt_len)
        if think_start is None:
            think_start = prompt_len - 1
        end_tok = owner[close_at + len(self.think_close) - 1]
        return ThinkSpans(think_start, owner[close_at], end_tok + 1)

    def _check_resolved(self) -> None:
        if not self.resolved:
            raise PromptFormatError("call PromptFormat.resolve(tokenizer) before rendering or encoding prompts")


def _token_text(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[int]]:
    """The token strings joined (space marks as spaces) and, per character, the token it came from.

    Token strings keep ASCII markers intact in SentencePiece and byte-level vocabularies alike, and
    unlike decoding they map every character back to its token without a decode per token.
    """
    parts, owner = [], []
    for i, s in enumerate(tokenizer.convert_ids_to_tokens(list(token_ids))):
        s = "".join(_SPACE_MARKS.get(c, c) for c in (s or ""))
        parts.append(s)
        owner.extend([i] * len(s))
    return "".join(parts), owner


def _tokenizer_adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x").input_ids[:1] == [bos]


def _model_stop_ids(tokenizer, generation_config) -> list[int]:
    ids = [tokenizer.eos_token_id]
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids += list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return [int(i) for i in ids if i is not None]


def _single_token(tokenizer, text: str, field: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(text)
    if tid is not None and (tid != tokenizer.unk_token_id or text == tokenizer.unk_token):
        return int(tid)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise PromptFormatError(f"{field}: {text!r} is {len(ids)} tokens for this tokenizer; a stop must be one token")
    return int(ids[0])


def model_stop_ids(model) -> tuple[int, ...]:
    """The stop ids a model ends sequences with: its tokenizer's EOS and its generation config's."""
    gen = getattr(model.original_model, "generation_config", None)
    return tuple(sorted(set(_model_stop_ids(model.tokenizer, gen))))
