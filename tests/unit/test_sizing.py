"""Sizing arithmetic, checked with numbers worked out by hand."""

from __future__ import annotations

import pytest

from inferplane.catalog import ACCELERATORS, MODELS, SizingError, size, smallest_tensor_parallel_size
from inferplane.catalog.sizing import GB, GIB, RUNTIME_OVERHEAD_BYTES_PER_GPU

NEMOTRON = MODELS["nemotron-ultra-253b"]
NEMOTRON_FP8 = MODELS["nemotron-ultra-253b-fp8"]
H100 = ACCELERATORS["H100-80G"]


def test_nemotron_kv_bytes_per_token_from_its_attention_layers():
    # 64 attention layers x (K+V) x 8 KV heads x 128 dims x 2 bytes
    assert NEMOTRON.kv_bytes_per_token() == 64 * 2 * 8 * 128 * 2 == 262_144
    assert NEMOTRON.kv_bytes_per_token(kv_dtype_bytes=1) == 131_072


def test_nemotron_bf16_on_eight_h100_budget_by_hand():
    report = size(NEMOTRON, H100, 8, 131072, gpu_memory_utilization=0.90)
    usable = 8 * int(81559 * 1024**2 * 0.90)
    kv_budget = usable - 506_800_000_000 - 8 * 4 * GIB
    assert report.usable_bytes == usable
    assert report.kv_budget_bytes == kv_budget
    assert report.kv_token_capacity == kv_budget // 262_144
    assert report.max_full_context_sequences == kv_budget // (262_144 * 131072) == 2
    assert (report.total_gpus, report.nodes) == (8, 1)


def test_nemotron_bf16_at_tp4_is_refused_with_the_numbers():
    with pytest.raises(SizingError) as caught:
        size(NEMOTRON, H100, 4, 131072)
    message = str(caught.value)
    assert "506.8 GB" in message and "4 x 85.5 GB" in message
    assert "use tensor_parallel_size 8" in message
    assert caught.value.field == "tensor_parallel_size"


def test_fp8_at_tp4_fits_weights_but_not_a_full_context_and_says_which_length_would():
    with pytest.raises(SizingError) as caught:
        size(NEMOTRON_FP8, H100, 4, 131072)
    assert caught.value.field == "max_model_len"
    assert "lower max_model_len to 125952" in str(caught.value)
    # ... and the suggested length really does fit, and fp8 KV fits the full context
    assert size(NEMOTRON_FP8, H100, 4, 125952).max_full_context_sequences == 1
    assert size(NEMOTRON_FP8, H100, 4, 131072, kv_cache_dtype="fp8").max_full_context_sequences == 1


def test_smallest_tp_per_model_on_h100():
    expected = {"nemotron-ultra-253b": 8, "nemotron-ultra-253b-fp8": 8,
                "llama-3.3-70b-instruct": 4, "gpt-oss-120b": 1}
    for key, tp in expected.items():
        model = MODELS[key]
        assert smallest_tensor_parallel_size(model, H100, model.max_context) == tp, key


def test_nothing_fits_nemotron_bf16_on_l40s():
    model = NEMOTRON
    assert smallest_tensor_parallel_size(model, ACCELERATORS["L40S-48G"], 131072) is None
    with pytest.raises(SizingError, match="larger accelerator"):
        size(model, ACCELERATORS["L40S-48G"], 8, 131072)


def test_sliding_window_layers_hold_only_the_window():
    gpt_oss = MODELS["gpt-oss-120b"]
    per_layer_token = 2 * 8 * 64 * 2
    assert gpt_oss.kv_bytes_per_sequence(100) == (18 * 100 + 18 * 100) * per_layer_token
    assert gpt_oss.kv_bytes_per_sequence(131072) == (18 * 131072 + 18 * 128) * per_layer_token


def test_kv_heads_replicate_when_tp_exceeds_them():
    # gpt-oss has 8 KV heads; at TP=8 none replicate, and the per-token cost is the model's own
    report = size(MODELS["gpt-oss-120b"], H100, 8, 131072)
    assert report.kv_bytes_per_token == MODELS["gpt-oss-120b"].kv_bytes_per_token()


def test_invalid_tp_and_too_long_context_name_their_field():
    with pytest.raises(SizingError, match="power of two"):
        size(NEMOTRON, H100, 3, 1024)
    with pytest.raises(SizingError, match="needs 8 GPUs in one node, but a node has 4"):
        size(NEMOTRON, H100, 8, 1024, gpus_per_node=4)
    with pytest.raises(SizingError) as caught:
        size(NEMOTRON, H100, 8, 200_000)
    assert caught.value.field == "max_model_len"


def test_overhead_constant_is_part_of_the_budget():
    report = size(NEMOTRON, H100, 8, 4096)
    assert report.overhead_bytes == 8 * RUNTIME_OVERHEAD_BYTES_PER_GPU
    assert report.usable_bytes - report.weights_bytes - report.overhead_bytes == report.kv_budget_bytes
    assert report.weights_bytes / GB == pytest.approx(506.8)
