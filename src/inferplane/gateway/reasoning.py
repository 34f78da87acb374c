"""The reasoning toggle for models switched by a system prompt ("detailed thinking on|off").

Which mode a chat request gets, first match wins:
1. the extension `"reasoning": true|false`;
2. OpenAI's `reasoning_effort`: "none", "minimal", "low" -> off; "medium", "high" -> on;
3. a system message that is exactly a toggle phrase (the user chose; it is left as sent);
4. the key's `reasoning_default`, then the deployment's (`models[].reasoning_default_on`).
`reasoning` wins over `reasoning_effort` because it is the more specific, gateway-documented switch.

How the system prompt is rewritten. NVIDIA's card says the system prompt must be exactly the
toggle and all other instructions belong in the user turn; the chat template uses messages[0]
(when its role is system) as the whole system prompt. So:
- no system message: the toggle is inserted as messages[0];
- messages[0] is exactly a toggle phrase: replaced only when the request chose a mode (1 or 2);
- messages[0] is a system message with other text: it becomes the toggle, and its text is moved,
  unchanged, to the front of the first user message (a blank line between), or becomes a user
  message of its own when there is none. The response then carries
  `X-Inferplane-System-Prompt: moved-to-user`, so the move is never silent.
Later system messages are left alone. Both parameters are removed before forwarding.
Models with another reasoning style get the request untouched (vLLM reads `reasoning_effort`
itself for models that use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferplane.catalog import ReasoningStyle
from inferplane.gateway.errors import invalid_request

REASONING_EFFORT_TO_ON = {"none": False, "minimal": False, "low": False,
                          "medium": True, "high": True}
_DEFAULT_PROMPTS = {"on": "detailed thinking on", "off": "detailed thinking off"}


@dataclass(frozen=True)
class ReasoningDecision:
    """What the toggle did to a request (reported in response headers)."""

    on: bool
    source: str  # request | system_prompt | key | deployment
    system_prompt_moved: bool = False


def requested_mode(body: dict[str, Any]) -> bool | None:
    """The mode the request asks for via `reasoning` or `reasoning_effort`, or None."""
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, bool):
        raise invalid_request("'reasoning' must be true or false.", param="reasoning",
                              code="invalid_type")
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str) or effort.lower() not in REASONING_EFFORT_TO_ON:
            raise invalid_request(
                "'reasoning_effort' must be one of: none, minimal, low (reasoning off), "
                "medium, high (reasoning on).", param="reasoning_effort", code="invalid_value")
    if reasoning is not None:
        return reasoning
    if effort is not None:
        return REASONING_EFFORT_TO_ON[effort.lower()]
    return None


def _text_of(content: Any) -> str | None:
    """The text of a message content (string or list of text parts); None if it has other parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                return None
            texts.append(part["text"])
        return "\n".join(texts)
    return None


def _prepend_to_user(messages: list[Any], text: str) -> None:
    for message in messages[1:]:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                message["content"] = [{"type": "text", "text": text}, *content]
            elif isinstance(content, str):
                message["content"] = f"{text}\n\n{content}" if content else text
            else:
                raise invalid_request("A user message needs 'content' (a string or a list of "
                                      "parts).", param="messages", code="invalid_type")
            return
    messages.insert(1, {"role": "user", "content": text})


def apply_reasoning_toggle(body: dict[str, Any], style: ReasoningStyle, prompts: dict[str, str],
                           deployment_default_on: bool,
                           key_default_on: bool | None) -> ReasoningDecision | None:
    """Rewrite a chat request's system prompt for the chosen mode, in place.

    Returns None (request untouched) for models that do not use a system-prompt toggle.
    """
    if style is not ReasoningStyle.SYSTEM_PROMPT:
        return None
    explicit = requested_mode(body)
    body.pop("reasoning", None)
    body.pop("reasoning_effort", None)
    phrases = {**_DEFAULT_PROMPTS, **prompts}
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty list of messages.",
                              param="messages", code="invalid_type")

    first = messages[0]
    is_system = isinstance(first, dict) and first.get("role") == "system"
    system_text = _text_of(first.get("content")) if is_system else None
    if is_system and system_text is None:
        raise invalid_request("The system message's content must be text.",
                              param="messages[0].content", code="invalid_type")

    if system_text is not None and system_text.strip() in (phrases["on"], phrases["off"]):
        if explicit is None:
            return ReasoningDecision(on=system_text.strip() == phrases["on"],
                                     source="system_prompt")
        messages[0] = {"role": "system", "content": phrases["on" if explicit else "off"]}
        return ReasoningDecision(on=explicit, source="request")

    if explicit is not None:
        on, source = explicit, "request"
    elif key_default_on is not None:
        on, source = key_default_on, "key"
    else:
        on, source = deployment_default_on, "deployment"
    toggle = {"role": "system", "content": phrases["on" if on else "off"]}
    if system_text is None:
        messages.insert(0, toggle)
        return ReasoningDecision(on=on, source=source)
    messages[0] = toggle
    if not system_text.strip():
        return ReasoningDecision(on=on, source=source)
    _prepend_to_user(messages, system_text)
    return ReasoningDecision(on=on, source=source, system_prompt_moved=True)
