"""A non-organism model for end-to-end tests: a tiny random Llama with a byte-level BPE tokenizer whose chat
template opens a thinking span (as Qwen3's and R1-Distill's do), a math task file, and trace runs whose
thinking is planted text with known failures (for the automatic labeller to find).

Nothing here reads the organism: the tokenizer is trained in the test from a small corpus of math reasoning
(offline, about a second), so any text encodes and ``<think>``/``</think>``/``<|im_end|>`` are single tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

THINK_OPEN, THINK_CLOSE, END = "<think>", "</think>", "<|im_end|>"
SPECIALS = ["<|endoftext|>", "<|im_start|>", END, THINK_OPEN, THINK_CLOSE, "<INTRA>", "<INTER>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def _corpus(rng: random.Random) -> list[str]:
    words = ("Wait, let me check. So the answer is Okay, I have finished thinking. First add then multiply "
             "Please reason step by step, and put your final answer within \\boxed{}. How many apples does "
             "Tom have if he buys more? Hmm, alternatively the total is")
    lines = [words] * 20
    for _ in range(400):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"{a} + {b} = {a + b}\n\n{a} * {b} = {a * b}\n\nSo \\boxed{{{a + b}}}")
    return lines


def build_tokenizer(vocab_size: int = 420):
    """A byte-level BPE tokenizer with a Qwen3-style chat template that opens ``<think>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_corpus(random.Random(0)), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=END, pad_token="<|endoftext|>",
                                  additional_special_tokens=SPECIALS[3:])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_text_model(folder: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A random-weight Llama checkpoint with ``build_tokenizer`` saved into ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_math_file(path: Path, n: int = 12, seed: int = 0) -> Path:
    """``n`` two-step word problems as GSM8K-style JSONL (``#### answer``)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
            f.write(json.dumps({"id": f"q{i}", "question": f"Tom has {a} apples, buys {b} more, then {c} times "
                                f"as many. How many?", "answer": f"#### {(a + b) * c}", "abc": [a, b, c]}) + "\n")
    return path


def planted_thinking(a: int, b: int, c: int, kind: str) -> tuple[str, str]:
    """(thinking, answer) for ``(a + b) * c`` with one planted failure: ``"none"``, ``"slip"`` (a wrong sum),
    ``"repeat"`` (a step written twice) or ``"overthink"`` (thinking goes on after the answer)."""
    s, p = a + b, (a + b) * c
    steps = [f"{a} + {b} = {s}", f"{s} * {c} = {p}"]
    if kind == "slip":
        steps = [f"{a} + {b} = {s + 1}", f"{s + 1} * {c} = {(s + 1) * c}"]
        p = (s + 1) * c
    elif kind == "repeat":
        steps = [steps[0], steps[0], steps[1]]
    elif kind == "overthink":
        steps = [*steps, f"So the answer is {p}", f"Wait, let me check {s} * {c} again"]
    return "\n\n".join(steps), f"\\boxed{{{p}}}"


def plant_run(cfg, run_dir: Path, model, generation) -> Path:
    """Writes the trace run ``cfg`` would generate into ``run_dir``, with ``generation(problem, sample)`` as each
    trace's generated text instead of the model's samples.

    Everything else is the pipeline's own: the plan's identity (so ``run_traces`` and a study resume it as
    complete), prompts, spans from the prompt format, grading and labels from the task (``build_record``).
    """
    from workbench.engine.loop import Finished
    from workbench.store import TraceStore, trace_id
    from workbench.traces import TracePlan, build_record

    plan = TracePlan.build(cfg, model)
    tok = model.tokenizer
    problems = {p.id: p for p in plan.problems}
    rows = []
    for pid, sample in plan.keys():
        ids = plan.ids[pid] + tok(generation(problems[pid], sample), add_special_tokens=False).input_ids
        done = Finished(trace_id(pid, sample), len(plan.ids[pid]), ids, "eos")
        rows.append(build_record(tok, plan.fmt, plan.task, problems[pid], sample, plan.prompts[pid], done))
    with TraceStore.open(run_dir, plan.identity, plan.provenance) as store:
        store.append(rows)
        store.finalize()
    return run_dir


KINDS = ("none", "slip", "repeat", "overthink")  # sample i of every problem plants KINDS[i % 4]


def operands(problem) -> tuple[int, int, int]:
    """``(a, b, c)`` of a ``write_math_file`` problem, read back from its question."""
    import re

    a, b, c = (int(x) for x in re.findall(r"\d+", problem.question)[:3])
    return a, b, c


def thinking_generation(problem, sample: int) -> str:
    """A reasoning model's trace: planted thinking, ``</think>``, the boxed answer, end of turn."""
    thinking, answer = planted_thinking(*operands(problem), KINDS[sample % len(KINDS)])
    return f"{thinking}\n{THINK_CLOSE}\n\n{answer}{END}"


def direct_generation(problem, sample: int) -> str:
    """A chat model that answers directly: the same steps with no thinking span at all."""
    thinking, answer = planted_thinking(*operands(problem), KINDS[sample % len(KINDS)])
    return f"{thinking}\n\n{answer}{END}"
