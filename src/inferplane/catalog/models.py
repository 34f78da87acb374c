"""Model facts: the one place that says how big a model is and how vLLM should serve it.

Sources are the models' Hugging Face cards and config.json files; where a number is derived
rather than read, the comment beside it says how.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum


class ReasoningStyle(str, Enum):
    """How a model's chain-of-thought is switched on and off."""

    SYSTEM_PROMPT = "system_prompt"  # a magic system prompt ("detailed thinking on|off")
    REASONING_EFFORT = "reasoning_effort"  # the model reads OpenAI's reasoning_effort itself
    NONE = "none"  # no reasoning mode: the parameter passes through untouched


@dataclass(frozen=True)
class Sampling:
    """Recommended sampling parameters from the model card."""

    temperature: float
    top_p: float


@dataclass(frozen=True)
class ToolCalling:
    """How vLLM turns this model's tool-call text into `tool_calls` (`model.tool_calling`).

    `plugin` and `chat_template` name files of ours in `inferplane.nemotron` (or None when vLLM
    ships the parser and the model's own template renders `tools`); render mounts them into the
    vLLM container from a ConfigMap and points `--tool-parser-plugin` / `--chat-template` there.
    """

    parser: str  # --tool-call-parser
    plugin: str | None = None  # file name in inferplane/nemotron/, e.g. "tool_parser.py"
    chat_template: str | None = None  # file name in inferplane/nemotron/

    @property
    def files(self) -> tuple[str, ...]:
        """Our files the vLLM container needs for this model's tool calling."""
        return tuple(name for name in (self.plugin, self.chat_template) if name)


@dataclass(frozen=True)
class ReasoningParser:
    """vLLM's reasoning parser for the model: `<think>` text goes to the `reasoning` field.

    `plugin` names our file in `inferplane.nemotron` (None when vLLM ships the parser).
    """

    parser: str  # --reasoning-parser
    plugin: str | None = None  # --reasoning-parser-plugin, file name in inferplane/nemotron/


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one model checkpoint; sizing and rendering derive everything from these."""

    key: str
    hf_repo: str
    display_name: str
    parameters_billion: float
    bytes_per_weight: float
    weights_gb: float  # checkpoint size on disk and in GPU memory, 10^9 bytes
    layers: int
    attention_layers: int  # full-attention layers that keep a KV cache for every token
    attention_heads: int
    kv_heads: int
    head_dim: int
    max_context: int
    dtype: str  # the checkpoint's activation / KV dtype when kv-cache-dtype is "auto"
    reasoning_style: ReasoningStyle
    sampling: dict[str, Sampling]  # "default", or "reasoning_on" / "reasoning_off"
    input_price_per_million: Decimal
    output_price_per_million: Decimal
    vllm_args: tuple[str, ...] = ()
    tool_calling: ToolCalling | None = None  # None: no known parser, tool_calling must be off
    reasoning_parser: ReasoningParser | None = None
    reasoning_prompts: dict[str, str] = field(default_factory=dict)  # "on" / "off" -> system prompt
    reasoning_default_on: bool = False  # what the model does when no toggle is sent
    sliding_window_layers: int = 0  # layers whose KV cache holds only the last `sliding_window`
    sliding_window: int = 0
    notes: str = ""

    def kv_bytes_per_layer_token(self, kv_dtype_bytes: int = 2) -> int:
        """KV-cache bytes one token occupies in one attention layer (K and V, all KV heads)."""
        return 2 * self.kv_heads * self.head_dim * kv_dtype_bytes

    def kv_bytes_per_token(self, kv_dtype_bytes: int = 2) -> int:
        """KV-cache bytes per token of context in the full-attention layers."""
        return self.attention_layers * self.kv_bytes_per_layer_token(kv_dtype_bytes)

    def kv_bytes_per_sequence(self, tokens: int, kv_dtype_bytes: int = 2) -> int:
        """KV-cache bytes one sequence of `tokens` needs, sliding-window layers included."""
        windowed = self.sliding_window_layers * min(tokens, self.sliding_window)
        return (self.attention_layers * tokens + windowed) * self.kv_bytes_per_layer_token(
            kv_dtype_bytes
        )

    @property
    def weights_bytes(self) -> int:
        return int(self.weights_gb * 1e9)


_NEMOTRON_PROMPTS = {"on": "detailed thinking on", "off": "detailed thinking off"}
_NEMOTRON_SAMPLING = {
    "reasoning_on": Sampling(temperature=0.6, top_p=0.95),
    # The card recommends greedy decoding with reasoning off.
    "reasoning_off": Sampling(temperature=0.0, top_p=1.0),
}
# 162 decoder blocks from the NAS search; GGUF metadata of the checkpoint (n_head_kv per layer)
# shows attention kept in 64 of them, each with 8 KV heads of dim 128 (16384 / 128 heads).
_NEMOTRON_ULTRA_COMMON = dict(
    parameters_billion=253.4,
    layers=162,
    attention_layers=64,
    attention_heads=128,
    kv_heads=8,
    head_dim=128,
    max_context=131072,
    dtype="bfloat16",
    reasoning_style=ReasoningStyle.SYSTEM_PROMPT,
    sampling=_NEMOTRON_SAMPLING,
    input_price_per_million=Decimal("0.60"),
    output_price_per_million=Decimal("1.80"),
    # DeciLM (nemotron-nas) ships its config class as remote code.
    vllm_args=("--trust-remote-code",),
    reasoning_prompts=_NEMOTRON_PROMPTS,
    reasoning_default_on=True,  # its chat template uses "detailed thinking on" when no system prompt
    # Tool calling is trained in (card), emitted as <TOOLCALL>[...]</TOOLCALL> (NVIDIA NIM docs);
    # vLLM 0.33 has no parser for it and the card's template does not render `tools`: ours do.
    tool_calling=ToolCalling(parser="inferplane_nemotron_json", plugin="tool_parser.py",
                             chat_template="chat_template.jinja"),
    reasoning_parser=ReasoningParser(parser="inferplane_nemotron", plugin="reasoning_parser.py"),
)

MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            key="nemotron-ultra-253b",
            hf_repo="nvidia/Llama-3_1-Nemotron-Ultra-253B-v1",
            display_name="Llama-3.1-Nemotron-Ultra-253B-v1 (BF16)",
            bytes_per_weight=2.0,
            weights_gb=506.8,  # 253.4e9 parameters x 2 bytes
            **_NEMOTRON_ULTRA_COMMON,
        ),
        ModelSpec(
            key="nemotron-ultra-253b-fp8",
            hf_repo="nvidia/Llama-3_1-Nemotron-Ultra-253B-v1-FP8",
            display_name="Llama-3.1-Nemotron-Ultra-253B-v1 (FP8)",
            bytes_per_weight=1.0,
            # FP8 linear weights; embeddings, lm_head and norms stay BF16 (~4.2e9 parameters).
            weights_gb=257.6,
            **_NEMOTRON_ULTRA_COMMON,
        ),
        ModelSpec(
            key="llama-3.3-70b-instruct",
            hf_repo="meta-llama/Llama-3.3-70B-Instruct",
            display_name="Llama-3.3-70B-Instruct",
            parameters_billion=70.6,
            bytes_per_weight=2.0,
            weights_gb=141.1,
            layers=80,
            attention_layers=80,
            attention_heads=64,
            kv_heads=8,
            head_dim=128,
            max_context=131072,
            dtype="bfloat16",
            reasoning_style=ReasoningStyle.NONE,
            sampling={"default": Sampling(temperature=0.6, top_p=0.9)},
            input_price_per_million=Decimal("0.23"),
            output_price_per_million=Decimal("0.40"),
            tool_calling=ToolCalling(parser="llama3_json"),
        ),
        ModelSpec(
            key="gpt-oss-120b",
            hf_repo="openai/gpt-oss-120b",
            display_name="gpt-oss-120b (MXFP4 MoE)",
            parameters_billion=116.8,
            # MoE experts in MXFP4 (4.25 bits), attention and embeddings in BF16: 60.8 GiB.
            bytes_per_weight=0.56,
            weights_gb=65.3,
            layers=36,
            # Layers alternate between full attention and a 128-token sliding window.
            attention_layers=18,
            sliding_window_layers=18,
            sliding_window=128,
            attention_heads=64,
            kv_heads=8,
            head_dim=64,
            max_context=131072,
            dtype="bfloat16",
            reasoning_style=ReasoningStyle.REASONING_EFFORT,
            sampling={"default": Sampling(temperature=1.0, top_p=1.0)},
            input_price_per_million=Decimal("0.15"),
            output_price_per_million=Decimal("0.60"),
            tool_calling=ToolCalling(parser="openai"),
        ),
    )
}


def get_model(key: str) -> ModelSpec:
    """The catalog entry for `key`; a KeyError names the known keys."""
    try:
        return MODELS[key]
    except KeyError:
        raise KeyError(f"unknown model {key!r}; known: {', '.join(sorted(MODELS))}") from None
