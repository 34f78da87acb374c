"""The reasoning toggle: which mode a request gets and how the system prompt is rewritten."""

from __future__ import annotations

import pytest

from inferplane.catalog import ReasoningStyle, get_model
from inferplane.gateway.errors import GatewayError
from inferplane.gateway.reasoning import apply_reasoning_toggle

PROMPTS = dict(get_model("nemotron-ultra-253b").reasoning_prompts)
ON, OFF = PROMPTS["on"], PROMPTS["off"]
USER = {"role": "user", "content": "What is 2+2?"}


def toggle(body, deployment_on=True, key_on=None, style=ReasoningStyle.SYSTEM_PROMPT):
    return apply_reasoning_toggle(body, style, PROMPTS, deployment_on, key_on)


@pytest.mark.parametrize("params, expected", [
    ({"reasoning": True}, ON), ({"reasoning": False}, OFF),
    ({"reasoning_effort": "none"}, OFF), ({"reasoning_effort": "minimal"}, OFF),
    ({"reasoning_effort": "low"}, OFF), ({"reasoning_effort": "medium"}, ON),
    ({"reasoning_effort": "high"}, ON),
    # the extension wins over reasoning_effort
    ({"reasoning": False, "reasoning_effort": "high"}, OFF),
    ({"reasoning": True, "reasoning_effort": "none"}, ON),
])
def test_request_parameters_choose_the_mode_and_are_removed(params, expected):
    body = {"model": "m", "messages": [dict(USER)], **params}
    decision = toggle(body, deployment_on=expected != ON)  # the default says the opposite
    assert body["messages"] == [{"role": "system", "content": expected}, USER]
    assert "reasoning" not in body and "reasoning_effort" not in body
    assert decision.on == (expected == ON) and decision.source == "request"


def test_defaults_apply_key_before_deployment():
    body = {"messages": [dict(USER)]}
    assert toggle(body, deployment_on=True, key_on=False).source == "key"
    assert body["messages"][0] == {"role": "system", "content": OFF}
    body = {"messages": [dict(USER)]}
    assert toggle(body, deployment_on=False).source == "deployment"
    assert body["messages"][0] == {"role": "system", "content": OFF}


def test_users_own_toggle_is_kept_unless_a_parameter_overrides_it():
    body = {"messages": [{"role": "system", "content": OFF}, dict(USER)]}
    decision = toggle(body, deployment_on=True, key_on=True)
    assert decision.on is False and decision.source == "system_prompt"
    assert body["messages"] == [{"role": "system", "content": OFF}, USER]

    body = {"messages": [{"role": "system", "content": OFF}, dict(USER)], "reasoning": True}
    toggle(body)
    assert body["messages"] == [{"role": "system", "content": ON}, USER]  # replaced, not added


def test_other_system_instructions_move_to_the_first_user_message():
    body = {"messages": [{"role": "system", "content": "Answer in French."}, dict(USER),
                         {"role": "assistant", "content": "4"}, {"role": "user", "content": "x"}]}
    decision = toggle(body, deployment_on=True, key_on=None)
    assert decision.system_prompt_moved
    assert body["messages"][0] == {"role": "system", "content": ON}
    assert body["messages"][1] == {"role": "user", "content": "Answer in French.\n\nWhat is 2+2?"}
    assert body["messages"][3] == {"role": "user", "content": "x"}  # later turns untouched
    assert sum(m["role"] == "system" for m in body["messages"]) == 1


def test_moved_instructions_join_list_content_and_survive_without_a_user_message():
    body = {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                         {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    toggle(body, deployment_on=False)
    assert body["messages"][1]["content"] == [{"type": "text", "text": "Be brief."},
                                              {"type": "text", "text": "Hi"}]
    body = {"messages": [{"role": "system", "content": "Be brief."}]}
    toggle(body, deployment_on=False)
    assert body["messages"] == [{"role": "system", "content": OFF},
                                {"role": "user", "content": "Be brief."}]


@pytest.mark.parametrize("style", [ReasoningStyle.REASONING_EFFORT, ReasoningStyle.NONE])
def test_other_models_get_the_request_untouched(style):
    body = {"messages": [dict(USER)], "reasoning_effort": "high", "reasoning": False}
    before = {**body, "messages": [dict(USER)]}
    assert toggle(body, style=style) is None
    assert body == before


@pytest.mark.parametrize("body, param", [
    ({"messages": [USER], "reasoning": "yes"}, "reasoning"),
    ({"messages": [USER], "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"messages": [USER], "reasoning_effort": 3}, "reasoning_effort"),
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url"}]}, USER]},
     "messages[0].content"),
])
def test_bad_values_are_400_naming_the_field(body, param):
    with pytest.raises(GatewayError) as caught:
        toggle(body)
    assert caught.value.status == 400 and caught.value.param == param
