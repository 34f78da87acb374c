"""What the simulator pretends to be: which models, how fast, how long its answers are.

Model facts (context length, reasoning style, KV-cache capacity) come from the catalog and its
sizing, so the simulator of a deployment answers like the vLLM it stands in for.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferplane.catalog import MODELS, ModelSpec, get_accelerator, get_model, size

DEFAULT_CATALOG_KEY = "nemotron-ultra-253b"
# The design's reference replica: Nemotron-Ultra in BF16 on one 8 x H100-80G node.
_REFERENCE_ACCELERATOR = "H100-80G"
_REFERENCE_TENSOR_PARALLEL_SIZE = 8


def _default_served_names() -> list[str]:
    return [get_model(DEFAULT_CATALOG_KEY).hf_repo]


def _reference_kv_capacity_tokens() -> int:
    spec = get_model(DEFAULT_CATALOG_KEY)
    report = size(spec, get_accelerator(_REFERENCE_ACCELERATOR), _REFERENCE_TENSOR_PARALLEL_SIZE,
                  spec.max_context)
    return report.kv_token_capacity


class SimulatorSettings(BaseModel):
    """Everything `create_app` needs; defaults model the reference Nemotron-Ultra replica.

    Output length: a request without `max_tokens` gets `output_tokens` answer tokens (plus the
    think block when reasoning is on) and finishes with "stop"; `max_tokens` /
    `max_completion_tokens` cut that short with "length"; vLLM's `ignore_eos: true` makes it
    generate exactly `max_tokens` (what benchmarks use).
    """

    model_config = ConfigDict(extra="forbid")

    served_model_names: list[str] = Field(default_factory=_default_served_names, min_length=1)
    # served name -> catalog key; names equal to a catalog key or hf_repo need no entry.
    catalog_keys: dict[str, str] = Field(default_factory=dict)
    ttft_seconds: float = Field(0.0, ge=0)
    inter_token_seconds: float = Field(0.0, ge=0)
    output_tokens: int = Field(16, ge=1)
    reasoning_tokens: int = Field(16, ge=1)  # words inside <think>...</think> when reasoning is on
    max_model_len: int | None = Field(None, ge=2)  # None: the catalog model's full context
    max_num_seqs: int = Field(256, ge=1)  # vLLM's batch limit: further requests wait in queue
    kv_cache_capacity_tokens: int = Field(default_factory=_reference_kv_capacity_tokens, ge=1)
    # vLLM's flag of the same name: report prefix-cache hits as usage cached_tokens
    enable_prompt_tokens_details: bool = False
    # vLLM's --enable-auto-tool-choice with the catalog's parser (config model.tool_calling):
    # off, `tools` are still rendered but no tool_calls are parsed, and auto/required/named
    # tool choices are refused as vLLM refuses them.
    enable_auto_tool_choice: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _check_models(self) -> "SimulatorSettings":
        if len(set(self.served_model_names)) != len(self.served_model_names):
            raise ValueError("served_model_names: each name may appear once")
        unknown = set(self.catalog_keys) - set(self.served_model_names)
        if unknown:
            raise ValueError(f"catalog_keys: {sorted(unknown)} are not in served_model_names")
        for name in self.served_model_names:
            self.catalog_key_for(name)  # raises with the fix
        return self

    def catalog_key_for(self, served_name: str) -> str:
        """The catalog key behind a served name (explicit entry, a catalog key, or an hf_repo)."""
        if served_name in self.catalog_keys:
            key = self.catalog_keys[served_name]
            if key not in MODELS:
                raise ValueError(f"catalog_keys[{served_name!r}]: unknown catalog key {key!r}; "
                                 f"known: {', '.join(sorted(MODELS))}")
            return key
        if served_name in MODELS:
            return served_name
        for spec in MODELS.values():
            if spec.hf_repo == served_name:
                return spec.key
        raise ValueError(
            f"served model {served_name!r} is not a catalog model: set catalog_keys="
            f"{{{served_name!r}: '<key>'}} with one of {', '.join(sorted(MODELS))}"
        )

    def model_spec_for(self, served_name: str) -> ModelSpec:
        return get_model(self.catalog_key_for(served_name))

    def max_model_len_for(self, served_name: str) -> int:
        return self.max_model_len or self.model_spec_for(served_name).max_context

    @classmethod
    def from_deployment(cls, config: Any, **overrides: Any) -> "SimulatorSettings":
        """Settings that answer like the vLLM of `config` (a DeploymentConfig)."""
        values: dict[str, Any] = dict(
            served_model_names=[config.served_model_name],
            catalog_keys={config.served_model_name: config.model_spec.key},
            max_model_len=config.max_model_len,
            kv_cache_capacity_tokens=config.sizing().kv_token_capacity,
            enable_auto_tool_choice=config.model.tool_calling_enabled,
        )
        values.update(overrides)
        return cls(**values)
