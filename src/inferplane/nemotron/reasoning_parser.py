"""vLLM reasoning-parser plugin for Llama-Nemotron: `<think>…</think>` to the `reasoning` field.

Loaded by vLLM with `--reasoning-parser-plugin <this file> --reasoning-parser
inferplane_nemotron`; mounted alone into the vLLM container, so it imports nothing of ours.
Without vllm installed only the text functions are defined (the simulator and tests use them).

Why our own: Nemotron-Ultra thinks only when the system prompt says "detailed thinking on", and
then opens its answer with `<think>`; with "off" it answers directly. vLLM's `<think>` parsers
assume the opposite (deepseek_r1: text before a missing `</think>` is reasoning; qwen3 and
nemotron_v3: the template opened the block), so an answer without a think block would come back
as reasoning. Here:
- an output that opens with `<think>` puts what follows, up to `</think>`, in `reasoning`, and
  the rest in `content`; any other output is all `content`;
- at the end of a prompt, reasoning is "still to come" only when the system turn says
  "detailed thinking on" (what guided decoding and the streaming parser ask), so structured
  outputs constrain the answer after the think block, or from the first token when off.
Reasoning tokens (between the markers) are counted by the base class for
`usage.completion_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

try:
    from vllm.entrypoints.generate.base.protocol import DeltaMessage
    from vllm.reasoning import ReasoningParserManager
    from vllm.reasoning.basic_parsers import BaseThinkingReasoningParser
except ImportError:  # imported by inferplane for split_reasoning / stream_view only
    BaseThinkingReasoningParser = None  # type: ignore[assignment,misc]

PARSER_NAME = "inferplane_nemotron"
THINK_START, THINK_END = "<think>", "</think>"
TOGGLE_ON, TOGGLE_OFF = "detailed thinking on", "detailed thinking off"
_HEADER_END, _TURN_END = "<|end_header_id|>", "<|eot_id|>"


def split_reasoning(text: str) -> tuple[str | None, str | None]:
    """(reasoning, content) of a whole output; None where there is none."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_START):
        return None, text or None
    inner = stripped[len(THINK_START):]
    reasoning, closed, content = inner.partition(THINK_END)
    reasoning = reasoning.strip()
    return reasoning or None, (content or None) if closed else None


def stream_view(text: str) -> tuple[str, str]:
    """(reasoning so far, content so far) of a growing output; each only grows as text grows
    (trailing whitespace of unfinished reasoning is held back until more text follows)."""
    stripped = text.lstrip()
    if not stripped or (THINK_START.startswith(stripped) and stripped != THINK_START):
        return "", ""  # nothing yet, or a marker spelt in pieces that is not whole yet
    if not stripped.startswith(THINK_START):
        return "", text
    inner = stripped[len(THINK_START):]
    reasoning, closed, content = inner.partition(THINK_END)
    if not closed:
        for length in range(len(THINK_END) - 1, 0, -1):  # a half-written end marker
            if reasoning.endswith(THINK_END[:length]):
                reasoning = reasoning[:-length]
                break
    return reasoning.strip(), content


if BaseThinkingReasoningParser is not None:

    @ReasoningParserManager.register_module(PARSER_NAME)
    class NemotronReasoningParser(BaseThinkingReasoningParser):
        """`<think>` blocks of Llama-Nemotron, present only when the system prompt turns them on."""

        @property
        def start_token(self) -> str:
            return THINK_START

        @property
        def end_token(self) -> str:
            return THINK_END

        def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(tokenizer, *args, **kwargs)
            vocab = self.vocab
            self._header_end_id = vocab.get(_HEADER_END)
            self._turn_end_id = vocab.get(_TURN_END)

        # -- where the output starts, and whether it thinks -------------------------------------

        def _is_blank(self, token_id: int) -> bool:
            # Only the few tokens before the first word are ever asked about.
            return not self.model_tokenizer.decode([token_id]).strip()

        def _output_of(self, input_ids: Sequence[int]) -> tuple[Sequence[int], bool]:
            """The generated part of `input_ids` (after the last header: a prompt's generation
            prompt, or the output alone), and whether a header was seen (a prompt is included)."""
            if self._header_end_id is not None:
                for index in range(len(input_ids) - 1, -1, -1):
                    if input_ids[index] == self._header_end_id:
                        return input_ids[index + 1:], True
            return input_ids, False

        def _thinking_on(self, input_ids: Sequence[int]) -> bool:
            """The toggle in the prompt's first (system) turn; on when it says neither."""
            end = len(input_ids)
            if self._turn_end_id is not None and self._turn_end_id in input_ids:
                end = list(input_ids).index(self._turn_end_id)
            system = self.model_tokenizer.decode(list(input_ids[:end]))
            lines = [line.strip() for line in system.splitlines()]
            return not (TOGGLE_OFF in lines and TOGGLE_ON not in lines)

        def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
            output, has_prompt = self._output_of(input_ids)
            opened = False
            for token_id in output:
                if token_id == self.start_token_id:
                    opened = True
                elif token_id == self.end_token_id and opened:
                    return True
                elif not opened and not self._is_blank(token_id):
                    return True  # answered without a think block
            if opened:
                return False
            # Nothing generated yet: reasoning comes first only when the prompt turned it on.
            return has_prompt and not self._thinking_on(input_ids)

        def is_reasoning_end_streaming(self, input_ids: Sequence[int],
                                       delta_ids: Iterable[int]) -> bool:
            return self.is_reasoning_end(input_ids)

        def extract_content_ids(self, input_ids: list[int]) -> list[int]:
            output, _ = self._output_of(input_ids)
            if self.start_token_id not in output:
                return list(output)
            after = list(output)
            if self.end_token_id not in after:
                return []
            return after[after.index(self.end_token_id) + 1:]

        # -- text ---------------------------------------------------------------------------------

        def extract_reasoning(self, model_output: str, request: Any) -> tuple[str | None, str | None]:
            return split_reasoning(model_output)

        def extract_reasoning_streaming(self, previous_text: str, current_text: str,
                                        delta_text: str, previous_token_ids: Sequence[int],
                                        current_token_ids: Sequence[int],
                                        delta_token_ids: Sequence[int]) -> DeltaMessage | None:
            before_reasoning, before_content = stream_view(previous_text)
            reasoning, content = stream_view(current_text)
            reasoning_delta = reasoning[len(before_reasoning):]
            content_delta = content[len(before_content):]
            if not reasoning_delta and not content_delta:
                return None
            return DeltaMessage(reasoning=reasoning_delta or None, content=content_delta or None)
