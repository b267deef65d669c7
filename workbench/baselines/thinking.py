"""Where each sequence's thinking is, online, and the token vocabularies exit controllers act with.

Every early-exit method (NEAT's graded exit, the budget, NoWait, the answer-consistency exit, DEER)
acts only inside the thinking span: after the opening marker, before the closing one has been
written. ``ThinkingController`` tracks that per sequence from the tokens the engine shows it, the
same way ``PromptFormat.spans`` finds the span afterwards (markers found in the joined token
strings, so a marker split over several tokens is still found), and calls ``act`` for the rows that
are thinking. Its ``exit`` forces the closing marker and lets the model write its answer.

* ``marker_ids(tok, "</think>")``: the ids forced to end thinking (one token when the tokenizer has
  one for the marker, with its leading space when that is how the model writes it);
* ``word_ids(tok, words)``: every single-token variant of each word, lower case and capitalised,
  with and without a leading space ("wait" -> ``wait``, ``▁wait``; real models: ``Wait``, ``ĠWait``);
* ``step_separators(task)`` and ``reflection_words(task)``: what ends a reasoning step and which words
  reflect, as the task says (``Task.text``): a newline and "wait"/"hmm"/"alternatively" for free text (the
  NEAT reference code suppresses right after a ``"\\n"`` token), ``;``/``,`` and ``wait`` on the organism.

Example:
    >>> from workbench.organism.tokenizer import build_tokenizer
    >>> tok = build_tokenizer()
    >>> tok.convert_ids_to_tokens(marker_ids(tok, "</think>"))
    ['▁</think>']
    >>> tok.convert_ids_to_tokens(word_ids(tok, ("wait",)))
    ['wait', '▁wait']
    >>> from workbench.tasks import get_task
    >>> step_separators(get_task("organism")), step_separators(None), reflection_words(None)
    ((';', ','), ('\\n',), ('wait', 'hmm', 'alternatively'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workbench.engine import Controller, StepView
from workbench.prompting import THINK_CLOSE, THINK_OPEN
from workbench.tasks.base import Task, TextConventions

# Space marks tokenizers write into token strings (as ``PromptFormat.spans`` reads them).
_SPACE_MARKS = {"▁": " ", "Ġ": " ", "Ċ": "\n", "ĉ": "\t"}


def token_text(tokenizer, token_id: int) -> str:
    """A token's text with space marks as spaces (``▁;`` -> `` ;``)."""
    s = tokenizer.convert_ids_to_tokens(int(token_id)) or ""
    return "".join(_SPACE_MARKS.get(c, c) for c in s)


def _single(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) == 1 and (tokenizer.unk_token_id is None or ids[0] != tokenizer.unk_token_id):
        return int(ids[0])
    return None


def marker_ids(tokenizer, marker: str = THINK_CLOSE) -> list[int]:
    """The ids to force for ``marker``: a single token with a leading space, else a single token
    without, else the marker's own multi-token encoding."""
    for text in (" " + marker, marker):
        tid = _single(tokenizer, text)
        if tid is not None:
            return [tid]
    ids = list(tokenizer(marker, add_special_tokens=False).input_ids)
    if not ids:
        raise ValueError(f"the thinking marker {marker!r} encodes to no tokens with this tokenizer")
    return ids


def word_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Every single-token variant of ``words`` (as written, capitalised; with and without a leading
    space); a clear error when none of them is a single token."""
    out: list[int] = []
    for word in words:
        for form in dict.fromkeys((word, word[:1].upper() + word[1:])):
            for text in (form, " " + form):
                tid = _single(tokenizer, text)
                if tid is not None and tid not in out:
                    out.append(tid)
    if not out:
        raise ValueError(f"reflection_words {tuple(words)}: none is a single token for this tokenizer "
                         "(with or without a leading space); give words the tokenizer has, e.g. 'Wait'")
    return out


def as_words(value: Sequence[str] | str, field: str) -> tuple[str, ...]:
    """A study file's list (or one word) as the tuple a frozen spec keeps; empty is an error.

    >>> as_words(["wait", "hmm"], "reflection_words"), as_words("wait", "reflection_words")
    (('wait', 'hmm'), ('wait',))
    """
    words = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    if not words or not all(words):
        raise ValueError(f"{field} must name at least one non-empty word, got {value!r}")
    return words


def _text(task: Task | None) -> TextConventions:
    return task.text if task is not None else TextConventions()


def step_separators(task: Task | None) -> tuple[str, ...]:
    """What ends a reasoning step in ``task``'s traces (a token containing one is a step boundary)."""
    return tuple(_text(task).step_ends)


def reflection_words(task: Task | None) -> tuple[str, ...]:
    """The words ``task``'s traces reflect with (the default of every method's ``reflection_words``)."""
    return tuple(_text(task).reflection_words)


def reflection_ids(tokenizer, words: Sequence[str] | None, task: Task | None) -> list[int]:
    """``word_ids`` of ``words``, or of the task's reflection words when a method was given none."""
    return word_ids(tokenizer, words if words is not None else reflection_words(task))


def run_settings(ctx) -> tuple[str, str, Task | None]:
    """(think_open, think_close, task) of the trace run a method is built for (defaults without one)."""
    cfg = getattr(ctx, "run_cfg", None) if ctx is not None else None
    prompt = getattr(cfg, "prompt", None)
    task = None
    if cfg is not None:
        from workbench.traces import config_task

        task = config_task(cfg)
    return getattr(prompt, "think_open", THINK_OPEN), getattr(prompt, "think_close", THINK_CLOSE), task


@dataclass
class ThinkState:
    """One sequence's place: ``start`` is the index of its first thinking token once thinking opened."""

    seen: int = 0
    tail: str = ""
    phase: str = "before"  # "before" | "thinking" | "after"
    start: int | None = None
    exiting: bool = False

    def thinking_tokens(self, n_tokens: int) -> int:
        """Thinking tokens in a sequence of ``n_tokens`` tokens so far (0 before thinking opens)."""
        return 0 if self.start is None else n_tokens - self.start


class ThinkingController(Controller):
    """Tracks each sequence's thinking span and calls ``act(view, row, state)`` while it thinks.

    A sequence whose prompt ends inside thinking (its last opening marker after its last closing
    one) thinks from its first generated token; otherwise from the token after the opening marker
    it writes. Thinking ends once the closing marker is written. After ``exit`` the controller
    leaves the row alone while the forced marker is emitted.
    """

    def __init__(self, tokenizer, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE) -> None:
        self.tokenizer, self.think_open, self.think_close = tokenizer, think_open, think_close
        self.close_ids = marker_ids(tokenizer, think_close)
        self.states: dict[str, ThinkState] = {}
        self._text_cache: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        got = self._text_cache.get(token_id)
        if got is None:
            got = self._text_cache[token_id] = token_text(self.tokenizer, token_id)
        return got

    def on_start(self, key: str) -> None:
        self.states[key] = ThinkState()

    def on_finish(self, key: str) -> None:
        self.states.pop(key, None)

    def _advance(self, state: ThinkState, tokens: list[int], prompt_len: int) -> None:
        if state.seen == 0:  # the prompt: is thinking open at its end?
            text = "".join(self.text(t) for t in tokens[:prompt_len])
            if text.rfind(self.think_open) >= 0 and text.rfind(self.think_open) > text.rfind(self.think_close):
                state.phase, state.start = "thinking", prompt_len
            state.seen = prompt_len
        keep = max(len(self.think_open), len(self.think_close))
        for i in range(state.seen, len(tokens)):
            state.tail = (state.tail + self.text(tokens[i]))[-2 * keep :]
            if state.phase == "before" and self.think_open in state.tail:
                state.phase, state.start, state.tail = "thinking", i + 1, ""
            elif state.phase == "thinking" and self.think_close in state.tail:
                state.phase, state.tail = "after", ""
        state.seen = len(tokens)

    def on_step(self, view: StepView) -> None:
        rows = []
        for row in view.rows():
            key = view.keys[row]
            state = self.states.setdefault(key, ThinkState())
            tokens = view.tokens[row]
            self._advance(state, tokens, len(tokens) - view.n_generated[row])
            if state.phase == "thinking" and not state.exiting:
                rows.append(row)
        self.step(view, rows)

    def step(self, view: StepView, rows: list[int]) -> None:
        """Acts on ``rows`` (those thinking); by default one ``act`` per row."""
        for row in rows:
            self.act(view, row, self.states[view.keys[row]])

    def act(self, view: StepView, row: int, state: ThinkState) -> None:
        """Override: what to do for one thinking row."""

    def exit(self, view: StepView, row: int, kind: str, **payload: Any) -> None:
        """Records why (``kind`` with ``payload``), then forces the closing marker."""
        view.note(row, kind, **payload)
        view.force(row, self.close_ids)
        self.states[view.keys[row]].exiting = True

    def at_boundary(self, view: StepView, row: int, separators: Sequence[str]) -> bool:
        """Whether the row's last token ends a step (its text contains a separator)."""
        last = self.text(view.tokens[row][-1])
        return any(sep in last for sep in separators)
