"""NeuReasoner's trigger tokens: what a detector inserts on a failure and a fine-tuned model follows.

The paper names two (arXiv 2604.02972, ``PAPERS.md`` §1(c)): ``<INTRA>`` after an intra-step error (the
model redoes the step) and ``<INTER>`` after an inter-step one (it drops the repeat and moves on). They
are NeuReasoner's, for any model; the organism's labeller reads them too (``workbench.organism.task``
re-exports ``TRIGGERS`` from here). A tokenizer gets them with ``add_triggers`` (the fine-tuning does
this) and the remedy asks for their ids with ``trigger_id``.

Example:
    >>> dict(TRIGGERS)["slip"], dict(TRIGGERS)["oscillation"]
    ('<INTRA>', '<INTER>')
    >>> from workbench.organism.tokenizer import build_tokenizer
    >>> tok = add_triggers(build_tokenizer())
    >>> tok.convert_ids_to_tokens(tok(" 4 <INTRA>", add_special_tokens=False).input_ids)
    ['▁4', '<INTRA>']
    >>> trigger_id(build_tokenizer(), "<INTRA>")
    Traceback (most recent call last):
    ...
    ValueError: the model's tokenizer has no '<INTRA>' token: the NeuReasoner remedy forces it, ...
"""

from __future__ import annotations

import copy

# (failure type, trigger token), sorted by type.
TRIGGERS: tuple[tuple[str, str], ...] = (("oscillation", "<INTER>"), ("slip", "<INTRA>"))
FINETUNE_HINT = ("fine-tune it first: `workbench finetune RUN --out DIR` on a trace run of the task "
                 "(`workbench organism finetune` for the organism)")


def add_triggers(tokenizer, triggers: tuple[tuple[str, str], ...] = TRIGGERS, lstrip: bool = True):
    """A copy of ``tokenizer`` with the trigger tokens added.

    ``lstrip``: the whitespace before a trigger is part of it (the organism's words are joined by spaces,
    and ``" <INTRA>"`` is one token); data that puts a trigger right after a word boundary (a newline,
    punctuation) keeps that whitespace its own (``lstrip=False``). A token the tokenizer already has (some
    vocabularies reserve them) is kept as it is.
    """
    from tokenizers import AddedToken

    tok = copy.deepcopy(tokenizer)
    have = tok.get_vocab()
    tok.add_tokens([AddedToken(t, lstrip=lstrip, rstrip=False, normalized=False, special=False)
                    for _, t in triggers if t not in have])
    return tok


def trigger_id(tokenizer, token: str) -> int:
    """The id of a trigger token; a clear error when the tokenizer lacks it (a model not fine-tuned)."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        raise ValueError(f"the model's tokenizer has no {token!r} token: the NeuReasoner remedy forces it, and only "
                         f"a model fine-tuned to follow it knows what to do next; {FINETUNE_HINT}")
    return int(tid)
