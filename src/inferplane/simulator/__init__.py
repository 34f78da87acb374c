"""A vLLM-compatible OpenAI server that needs no GPU: for `inferplane dev`, tests, benchmarks
and kind clusters. Usage is exact and deterministic (see `tokens`), so tests can assert it.

Exports load lazily, so `inferplane render` does not pay for Starlette and uvicorn.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SimulatorSettings": "inferplane.simulator.settings",
    "create_app": "inferplane.simulator.app",
    "serve": "inferplane.simulator.server",
    "running_simulator": "inferplane.simulator.testing",
    "simulator_subprocess": "inferplane.simulator.testing",
    "count_text_tokens": "inferplane.simulator.tokens",
    "count_chat_prompt_tokens": "inferplane.simulator.tokens",
    "count_completion_prompt_tokens": "inferplane.simulator.tokens",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'inferplane.simulator' has no attribute {name!r}")
