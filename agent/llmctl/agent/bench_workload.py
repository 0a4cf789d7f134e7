"""`llmctl bench --workload`: which prompts a run sends. `mixed` (the default) is random word salad
(bench.make_workload); `repetitive` asks the model to quote or summarise a passage of English text it was
just given, the kind of answer that prompt-lookup (ngram) speculation drafts well; a FILE holds workload keys.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any

WORKLOAD_KINDS = ("mixed", "repetitive")

INSTRUCTIONS = (
    "Repeat the text above word for word.",
    "Quote the first two sentences of the text above exactly, then summarise it.",
    "Copy the text above, then list its key facts.",
)
"""Request i asks the i-th (cyclically): answers that copy the passage, then add some words of their own."""

_PIECE = re.compile(r"\S+\s*")


def workload_arg(value: str | None) -> tuple[str, dict[str, Any] | None]:
    """--workload's (kind, file's workload keys): a kind's name, or a JSON file of keys (a mixed workload)."""
    if value is None or value in WORKLOAD_KINDS:
        return value or "mixed", None
    from llmctl.agent.bench import read_workload_file

    return "mixed", read_workload_file(value)


@functools.cache
def _pieces() -> tuple[str, ...]:
    """The calibration text the project ships, as words with their trailing whitespace."""
    from llmctl.agent.engine.quantization.calibration import DEFAULT_CALIBRATION, read_text

    pieces = _PIECE.findall(read_text(DEFAULT_CALIBRATION))
    # Passages may run past the end into the start again: keep the two apart like paragraphs.
    pieces[-1] = pieces[-1].rstrip() + "\n\n"
    return tuple(pieces)


def _sentence_starts(pieces: tuple[str, ...]) -> list[int]:
    return [i for i in range(len(pieces))
            if i == 0 or "\n" in pieces[i - 1] or pieces[i - 1].rstrip().endswith((".", "!", "?"))]


def _num_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def passage(tokenizer, start: int, num_tokens: int) -> str:
    """The longest run of whole words from piece `start` that takes at most `num_tokens` tokens (one word
    at least)."""
    pieces = _pieces()

    def text(words: int) -> str:
        return "".join(pieces[(start + j) % len(pieces)] for j in range(words)).strip()

    # Every word takes at least one token, so num_tokens words are enough.
    lo, hi = 1, num_tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _num_tokens(tokenizer, text(mid)) <= num_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text(lo)


def passages(tokenizer, seed: int, lengths: list[int]) -> list[str]:
    """One passage per request, `lengths[i]` tokens at most, starting at a sentence chosen by `seed`."""
    rng = random.Random(f"repetitive-{seed}")
    starts = _sentence_starts(_pieces())
    return [passage(tokenizer, rng.choice(starts), n) for n in lengths]


def prompt_ids(tokenizer, message: str) -> list[int]:
    """`message` as the user's turn in the model's chat template, ready for the answer; plain text (with the
    tokenizer's usual special tokens, as a completion prompt) for models without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.encode(message + "\n")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer.encode(text, add_special_tokens=False)


def repetitive_prompts(tokenizer, seed: int, lengths: list[int]) -> list[list[int]]:
    """Prompt ids of a repetitive workload: a passage of `lengths[i]` tokens and an instruction to copy it."""
    return [
        prompt_ids(tokenizer, f"{text}\n\n{INSTRUCTIONS[i % len(INSTRUCTIONS)]}")
        for i, text in enumerate(passages(tokenizer, seed, lengths))
    ]


def check_fits(workload: list, limit: int | None) -> None:
    """Reject a repetitive workload whose longest prompt (passage, instruction and chat template) plus its
    output the model cannot hold; the passage lengths alone were checked before loading."""
    if limit is None or not workload:
        return
    longest = max(workload, key=lambda r: len(r.prompt_token_ids) + r.output_len)
    n_in, n_out = len(longest.prompt_token_ids), longest.output_len
    if n_in + n_out > limit:
        raise ValueError(
            f"the longest repetitive request needs {n_in + n_out} tokens (prompt {n_in} with its instruction and "
            f"chat template + output {n_out}) but the context limit is {limit}; lower --input-len or --output-len"
        )
