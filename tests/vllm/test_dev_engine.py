"""`inferplane dev --engine vllm-cpu`: the README's dev command in front of real vLLM on the
trained tiny checkpoint answers the agentic API as the simulator does — a `tools` request gets
`tool_calls` written by the model, reasoning comes back apart — bills it, and stops vLLM with it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
from openai import OpenAI

from inferplane.nemotron import examples as ex

from .conftest import _require_venv


@pytest.fixture(scope="module")
def dev_on_vllm(tmp_path_factory):
    """(base_url, api_key, vllm_url, process, folder) of a running `inferplane dev --engine
    vllm-cpu`."""
    _require_venv()
    folder = tmp_path_factory.mktemp("dev-vllm")
    stderr_path = folder / "dev.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "inferplane.cli", "dev", "--port", "0", "--engine", "vllm-cpu"],
            cwd=folder, text=True, stdout=subprocess.PIPE, stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        banner = []
        for line in process.stdout:  # vLLM's start comes first: a minute or more
            banner.append(line)
            if "Ctrl-C" in line:
                break
        text, log = "".join(banner), stderr_path.read_text()
        assert "Ctrl-C" in text, text + log
        base_url = re.search(r"Base URL\s+(\S+)", text).group(1)
        key = re.search(r"API key\s+(ip-\S+)", text).group(1)
        vllm_url = re.search(r"vllm-cpu: ready at (\S+)", log).group(1)
        yield base_url, key, vllm_url, process, folder
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_a_tools_request_gets_the_models_tool_calls(dev_on_vllm):
    base_url, key, _, _, _ = dev_on_vllm
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    response = client.chat.completions.create(
        model=model, tools=ex.TOOLS, temperature=0.0, max_tokens=160,
        messages=[ex.REASONING_OFF, {"role": "user", "content": ex.WEATHER_QUESTION}])
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert [{"name": call.function.name, "arguments": json.loads(call.function.arguments)}
            for call in choice.message.tool_calls] == [ex.WEATHER_CALL]


def test_reasoning_comes_back_apart_and_everything_is_billed(dev_on_vllm):
    base_url, key, _, _, folder = dev_on_vllm
    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model, reasoning_effort="high", temperature=0.0, max_tokens=80,
        messages=[{"role": "user", "content": "Tell me about two plus two."}])
    message = reply.choices[0].message
    assert (message.model_extra or {}).get("reasoning", "").strip() == \
        "The user asks about two plus two. I answer briefly."
    assert message.content.strip() == "Two plus two is four."
    report = subprocess.run([sys.executable, "-m", "inferplane.cli", "usage", "-o", "json"],
                            cwd=folder, text=True, capture_output=True, timeout=60)
    assert report.returncode == 0, report.stderr
    totals = json.loads(report.stdout)["totals"][0]
    assert totals["requests"] >= 1 and totals["completion_tokens"] >= reply.usage.completion_tokens
    reasoning_tokens = reply.usage.completion_tokens_details.reasoning_tokens
    assert totals["reasoning_tokens"] >= reasoning_tokens > 0


def test_ctrl_c_stops_the_gateway_and_vllm(dev_on_vllm):
    base_url, _, vllm_url, process, _ = dev_on_vllm
    assert httpx.get(f"{vllm_url}/health", timeout=10).status_code == 200
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 0
    for url in (base_url.removesuffix("/v1") + "/healthz", f"{vllm_url}/health"):
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=2)
