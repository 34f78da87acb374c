"""Deterministic completions: the same seed and prompt always give the same tokens.

Every piece the generator emits holds exactly one token of `tokens.count_text_tokens` (a word
with its leading space, one punctuation mark, or a think-block marker with its newlines), so
the generated text re-tokenizes to exactly `completion_tokens`.
"""

from __future__ import annotations

import random
import zlib

THINK_OPEN = ("<", "think", ">\n")
THINK_CLOSE = ("\n<", "/", "think", ">\n\n")
THINK_OVERHEAD_TOKENS = len(THINK_OPEN) + len(THINK_CLOSE)

_WORDS = (
    "the model answers with a short and careful reply that weighs each point in turn so "
    "reader can follow why this result holds for case at hand given what we know about "
    "tokens context cache latency throughput memory node replica request stream usage "
    "price budget limit key tenant region cluster gateway ledger metric probe weight layer "
    "head batch queue prefix sample"
).split()
_CYCLE_LENGTH = 4096


def prompt_digest(prompt_text: str, request_seed: int | None = None) -> int:
    """A stable 32-bit digest of the prompt (and the request's own `seed`, if it sent one)."""
    digest = zlib.crc32(prompt_text.encode("utf-8", "surrogatepass"))
    return digest if request_seed is None else digest ^ (request_seed & 0xFFFFFFFF)


class TextGenerator:
    """Token pieces drawn from a word cycle fixed by the seed; the prompt digest picks the start."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        cycle: list[str] = []
        for _ in range(_CYCLE_LENGTH):
            roll = rng.random()
            if cycle and cycle[-1][0] == " " and roll < 0.06:
                cycle.append(",")
            elif cycle and cycle[-1][0] == " " and roll < 0.12:
                cycle.append(".")
            else:
                cycle.append(" " + rng.choice(_WORDS))
        self._cycle = cycle

    def pieces(self, digest: int, reasoning_tokens: int, length: int,
               continuation: bool = False) -> list[str]:
        """`length` pieces: a think block with `reasoning_tokens` words (0: none), then the answer.

        `continuation` (for /v1/completions) keeps the first word's leading space, as a model
        continuing a text would; chat answers start with a capital instead.
        """
        out: list[str] = []
        start = digest % _CYCLE_LENGTH
        if reasoning_tokens:
            out.extend(THINK_OPEN)
            out.extend(self._words(start, min(reasoning_tokens, max(length - len(out), 0))))
            out.extend(THINK_CLOSE)
            del out[length:]
            start += reasoning_tokens
        if len(out) < length:
            # A prime step, so the answer does not repeat the reasoning's words.
            out.extend(self._words(start + 7919, length - len(out), continuation))
        return out

    def _words(self, start: int, count: int, continuation: bool = False) -> list[str]:
        if count <= 0:
            return []
        cycle = self._cycle
        start %= _CYCLE_LENGTH
        while cycle[start][0] != " ":  # begin on a word, not on punctuation
            start = (start + 1) % _CYCLE_LENGTH
        words: list[str] = []
        while len(words) < count:
            words.extend(cycle[start:start + count - len(words)])
            start = 0
        if not continuation:
            words[0] = words[0][1:].capitalize()
        return words
