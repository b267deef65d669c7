"""The organism's tokenizer: a word-level vocabulary with one token per digit, built offline.

Words carry a leading ``▁`` when a space precedes them (as in SentencePiece), so decoding
restores the text exactly and the tokenizer saves as an ordinary Hugging Face
``PreTrainedTokenizerFast`` that ``AutoTokenizer`` reloads with no custom code.

Example:
    >>> tok = build_tokenizer()
    >>> tok.decode(tok("Q: 47 + 38 = ? <think>").input_ids, skip_special_tokens=True)
    'Q: 47 + 38 = ? <think>'
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from workbench.organism.task import (
    ALT_STEP_END,
    CAREFUL_OPENERS,
    CARELESS_OPENERS,
    CHECK_OK,
    CHECK_WORD,
    REFLECTION_WORD,
    STEP_END,
    THINK_CLOSE,
    THINK_OPEN,
)

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
SPACE = "▁"
WORDS: tuple[str, ...] = (
    "Q:", "+", "=", "?", STEP_END, THINK_OPEN, THINK_CLOSE, REFLECTION_WORD, CHECK_WORD, CHECK_OK,
    *CAREFUL_OPENERS, *CARELESS_OPENERS, *"0123456789", "-", ALT_STEP_END,
)


def vocabulary() -> dict[str, int]:
    vocab = {PAD: 0, EOS: 1, BOS: 2, UNK: 3}
    for word in WORDS:
        vocab[word] = len(vocab)
        vocab[SPACE + word] = len(vocab)
    return vocab


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Builds the tokenizer; ``<bos>`` is prepended to every encoded text."""
    tok = Tokenizer(models.WordLevel(vocabulary(), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=False),
        # A digit (with its space) is a token; so is each run of other characters.
        pre_tokenizers.Split(Regex(f"{SPACE}?[0-9]|{SPACE}?[^{SPACE}0-9]+"), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocabulary()[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", model_max_length=256,
    )
    return fast
