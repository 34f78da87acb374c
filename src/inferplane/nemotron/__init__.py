"""Llama-Nemotron's agentic API pieces we ship: the chat template and the vLLM tool parser.

Both files are mounted into the vLLM container (ConfigMap) and passed as `--chat-template` and
`--tool-parser-plugin`; the simulator reads the same template facts so `inferplane dev` matches.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHAT_TEMPLATE_PATH = PACKAGE_DIR / "chat_template.jinja"
TOOL_PARSER_PATH = PACKAGE_DIR / "tool_parser.py"
TOOL_PARSER_NAME = "inferplane_nemotron_json"
TOOL_CALL_START = "<TOOLCALL>"
TOOL_CALL_END = "</TOOLCALL>"
REASONING_PARSER_PATH = PACKAGE_DIR / "reasoning_parser.py"
REASONING_PARSER_NAME = "inferplane_nemotron"

