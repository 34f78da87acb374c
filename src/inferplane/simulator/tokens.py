"""The simulator's deterministic tokenizer: tests compute expected usage with these functions.

A token is a run of word characters (`\\w+`) or a single other non-space character; whitespace
is free. A chat prompt is counted the way Llama 3's chat template lays it out: a fixed primer
(begin-of-text and the assistant header the template appends) plus, per message, a fixed
overhead (role header and end-of-turn) and the tokens of its text. Completion prompts get one
begin-of-text token. The numbers are not a real tokenizer's, but they are exact and stable, so
a test can assert usage to the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

CHAT_PRIMER_TOKENS = 5  # <|begin_of_text|> + <|start_header_id|>assistant<|end_header_id|>\n\n
MESSAGE_OVERHEAD_TOKENS = 5  # <|start_header_id|>role<|end_header_id|>\n\n ... <|eot_id|>
COMPLETION_PRIMER_TOKENS = 1  # <|begin_of_text|>

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_text_tokens(text: str) -> int:
    """Tokens in a piece of text: word runs and single punctuation characters."""
    return len(_TOKEN.findall(text))


def token_pieces(text: str) -> list[str]:
    """`text` cut into its tokens, each with the whitespace before it (joined, they give
    `text` back but for trailing whitespace): the echoed prompt's tokens in logprobs."""
    pieces = [match.group() for match in re.finditer(r"\s*(?:\w+|[^\w\s])", text)]
    if pieces:
        pieces[-1] += text[len("".join(pieces)):]
    return pieces


def message_text(message: Mapping[str, Any] | Any) -> str:
    """The text of one chat message that the template renders: its text content and the names
    and arguments of its tool calls. Takes OpenAI message dicts or objects with those attributes."""
    content = _field(message, "content")
    if content is None:
        parts: list[str] = []
    elif isinstance(content, str):
        parts = [content]
    else:
        parts = [_field(part, "text") or "" for part in content if _field(part, "type") == "text"]
    for call in _field(message, "tool_calls") or ():
        function = _field(call, "function") or {}
        parts.append(_field(function, "name") or "")
        parts.append(_field(function, "arguments") or "")
    return "\n".join(parts)


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def count_tools_tokens(tools: Iterable[Mapping[str, Any]]) -> int:
    """Tokens the chat template adds for a request's `tools` (their JSON, as it lists them)."""
    return count_text_tokens(json.dumps(list(tools), ensure_ascii=False))


def count_chat_prompt_tokens(messages: Iterable[Mapping[str, Any]],
                             tools: Iterable[Mapping[str, Any]] | None = None) -> int:
    """prompt_tokens the simulator reports for these chat messages (OpenAI message dicts)."""
    total = CHAT_PRIMER_TOKENS + (count_tools_tokens(tools) if tools else 0)
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + count_text_tokens(message_text(message))
    return total


def count_completion_prompt_tokens(prompt: str | list[int]) -> int:
    """prompt_tokens for /v1/completions: a text prompt or a list of token ids."""
    if isinstance(prompt, str):
        return COMPLETION_PRIMER_TOKENS + count_text_tokens(prompt)
    return len(prompt)
