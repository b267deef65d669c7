"""The one prompt spec: chat or raw, BOS exactly once, stop ids from the generation config, think spans by text."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from workbench.engine import SamplingConfig, generate
from workbench.organism.tokenizer import build_tokenizer
from workbench.prompting import PromptFormat, PromptFormatError


@pytest.fixture
def tok():
    return build_tokenizer()


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on text without think markers, so ``</think>`` splits into pieces."""
    inner = Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    corpus = ["the answer is 42 and so on", "think about it < > / thinking", "Question: what is 7 + 5 ?"] * 20
    inner.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>")


class TestPromptText:
    """Chat template or raw template, and BOS exactly once."""

    def test_raw_template_as_the_adaras_reference_code(self, tok):
        fmt = PromptFormat(style="raw", raw_template="Question: {question}\nThinking process:").resolve(tok)
        assert fmt.render(tok, "7 + 5 ?") == "Question: 7 + 5 ?\nThinking process:"

    def test_template_that_writes_bos_gets_no_second_one(self, tok):
        tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
        fmt = PromptFormat().resolve(tok)
        assert fmt.style == "chat" and fmt.bos == "always"
        ids = fmt.encode(tok, "Q: 4 + 5 = ? <think>")
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert ids == tok("Q: 4 + 5 = ? <think>").input_ids  # what the model saw in training

    def test_bos_policy(self, tok):
        never = PromptFormat(bos="never").resolve(tok)
        assert tok.bos_token_id not in never.encode(tok, "Q: 1 + 2 = ?")
        with pytest.raises(PromptFormatError, match="chat template"):
            PromptFormat(style="chat").resolve(tok)

    @pytest.mark.parametrize("kw", [{"style": "markdown"}, {"bos": "twice"}, {"raw_template": "no slot"},
                                    {"think_close": "</ think>"}])
    def test_bad_fields_are_named(self, kw):
        with pytest.raises(PromptFormatError, match=next(iter(kw))):
            PromptFormat(**kw)

    def test_unresolved_format_refuses_to_encode(self, tok):
        with pytest.raises(PromptFormatError, match="resolve"):
            PromptFormat().encode(tok, "x")


class TestStops:
    """Stop ids are the tokenizer's EOS and every EOS id of the generation config."""

    def test_generation_config_ids_are_stops(self, tok):
        wait = tok.convert_tokens_to_ids("▁wait")
        fmt = PromptFormat().resolve(tok, GenerationConfig(eos_token_id=[tok.eos_token_id, wait]))
        assert fmt.stop_ids == tuple(sorted({tok.eos_token_id, wait}))
        assert PromptFormat(extra_stops=("▁;",)).resolve(tok).stop_ids[-1] == tok.convert_tokens_to_ids("▁;")

    def test_engine_stops_on_a_generation_config_id(self, tiny_model):
        tok = tiny_model.tokenizer
        prompt = "Q: 47 + 38 = ? <think>"
        free = generate(tiny_model, [prompt], SamplingConfig(temperature=0.0, max_new_tokens=12))[0]
        stop = free.generated[3]
        gen_cfg = tiny_model.original_model.generation_config
        saved = gen_cfg.eos_token_id
        gen_cfg.eos_token_id = [tok.eos_token_id, stop]
        try:
            out = generate(tiny_model, [prompt], SamplingConfig(temperature=0.0, max_new_tokens=12))[0]
        finally:
            gen_cfg.eos_token_id = saved
        assert out.finish_reason == "eos" and out.generated[-1] == stop
        assert len(out.generated) == free.generated.index(stop) + 1


class TestThinkSpans:
    """Think markers are found by their text, whatever the tokenizer does to them."""

    def test_organism_spans(self, tok):
        fmt = PromptFormat().resolve(tok)
        prompt = fmt.encode(tok, "Q: 4 + 5 = ? <think>")
        full = prompt + tok(" carefully 4 + 5 = 9 ; </think> 9").input_ids[1:]
        spans = fmt.spans(tok, full, len(prompt))
        strs = tok.convert_ids_to_tokens(full)
        assert strs[spans.think_start] == "▁<think>" and strs[spans.think_end] == "▁</think>"
        assert strs[spans.answer_start] == "▁9" and spans.thinking_tokens(len(full)) == 7

    def test_split_close_marker_is_found(self):
        bpe = bpe_tokenizer()
        fmt = PromptFormat().resolve(bpe)
        prompt = bpe("Question: what is 7 + 5 ?<think>", add_special_tokens=False).input_ids
        full = prompt + bpe("think about it</think>the answer is 12", add_special_tokens=False).input_ids
        strs = bpe.convert_ids_to_tokens(full)
        assert "</think>" not in strs  # the tokenizer really splits the marker
        spans = fmt.spans(bpe, full, len(prompt))
        assert spans.think_start == len(prompt) - 1  # the prompt's last token ends the open marker
        assert bpe.decode(full[spans.answer_start:]) == "the answer is 12"
        assert bpe.decode(full[spans.think_start + 1 : spans.think_end]) == "think about it"

    def test_unfinished_thinking_has_no_answer(self, tok):
        fmt = PromptFormat().resolve(tok)
        prompt = fmt.encode(tok, "Q: 4 + 5 = ? <think>")
        full = prompt + tok(" carefully 4 + 5 = 9 ; 9").input_ids[1:]
        spans = fmt.spans(tok, full, len(prompt))
        assert spans.think_end is None and spans.answer_start is None
        assert spans.thinking_tokens(len(full)) == len(full) - len(prompt)

    def test_no_thinking_at_all_answers_with_everything(self, tok):
        fmt = PromptFormat().resolve(tok)
        prompt = fmt.encode(tok, "Q: 4 + 5 = ?")
        full = prompt + tok(" 9").input_ids[1:]
        spans = fmt.spans(tok, full, len(prompt))
        assert spans == type(spans)(None, None, len(prompt))

    def test_open_marker_generated_by_the_model(self, tok):
        fmt = PromptFormat().resolve(tok)
        prompt = fmt.encode(tok, "Q: 4 + 5 = ?")
        full = prompt + tok(" <think> carefully </think> 9").input_ids[1:]
        spans = fmt.spans(tok, full, len(prompt))
        assert spans.think_start == len(prompt) and spans.think_end == len(prompt) + 2


# -- presets: tokenizers built here carry the chat templates of the model families ----------------------------------

QWEN3_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
R1_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user {{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_end|>assistant<think>\n{% endif %}"
)


def _family(template: str):
    from tests.text_model import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = template
    return tok


def test_presets_fit_their_families_and_refuse_others():
    from workbench.prompting import PromptFormat, PromptFormatError

    qwen, r1 = _family(QWEN3_TEMPLATE), _family(R1_TEMPLATE)
    fmt = PromptFormat(preset="qwen3").resolve(qwen)
    assert fmt.style == "chat" and fmt.enable_thinking and fmt.record()["preset"] == "qwen3"
    assert "<think>" not in fmt.render(qwen, "2 + 2?")  # Qwen3 writes its own <think> when thinking is on
    off = PromptFormat(preset="qwen3", enable_thinking=False).resolve(qwen)  # a field given explicitly wins
    assert off.render(qwen, "2 + 2?").endswith("<think>\n\n</think>\n\n")
    with pytest.raises(PromptFormatError, match="ignores enable_thinking"):
        PromptFormat(preset="qwen3").resolve(r1)

    fmt = PromptFormat(preset="r1-distill").resolve(r1)
    prompt = fmt.encode(r1, "2 + 2?")
    full = prompt + r1("so 4\n</think>\n\n4<|im_end|>", add_special_tokens=False).input_ids
    spans = fmt.spans(r1, full, len(prompt))
    assert spans.think_start == len(prompt) - 2 and spans.think_end is not None  # opened by the template ("<think>\n")
    with pytest.raises(PromptFormatError, match="does not open <think> itself"):
        PromptFormat(preset="r1-distill").resolve(qwen)

    adaras = PromptFormat(preset="adaras").resolve(qwen)
    assert adaras.style == "raw" and adaras.render(qwen, "2 + 2?") == "Question: 2 + 2?\nThinking process:"
    assert PromptFormat(preset="neat").resolve(r1).style == "chat"
    with pytest.raises(PromptFormatError, match="unknown; choose one of qwen3, r1-distill, adaras, neat"):
        PromptFormat(preset="llama")
