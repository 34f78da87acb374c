"""The cost plan: throughput from the catalog's roofline, prices split like the API's, break-even."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from inferplane.catalog import ACCELERATORS, MODELS
from inferplane.catalog.cost import estimate_cost, estimate_throughput
from inferplane.planning import cost_estimate, node_hourly_price, plan_document, plan_rows

H100 = ACCELERATORS["H100-80G"]
NEMOTRON = MODELS["nemotron-ultra-253b"]


def test_throughput_follows_the_roofline_by_hand():
    rate = estimate_throughput(NEMOTRON, H100, 8, batch=64, context_tokens=4096, input_per_output=3.0)
    memory_s = (506.8e9 + 64 * 4096 * 262_144) / (8 * 3350e9 * 0.7)
    compute_s = 2 * 253.4e9 * 64 * 4 / (8 * 989e12 * 0.4)
    assert rate.step_seconds == pytest.approx(max(memory_s, compute_s))
    assert rate.bound == "compute"
    assert rate.output_tokens_per_second == pytest.approx(64 / compute_s)
    assert rate.input_tokens_per_second == pytest.approx(3 * 64 / compute_s)
    # decode alone (no prompts to absorb) is memory-bound
    decode_only = estimate_throughput(NEMOTRON, H100, 8, 64, 4096, 0.0)
    assert decode_only.bound == "memory" and decode_only.step_seconds == pytest.approx(memory_s)


def test_fp8_weights_use_fp8_flops_and_half_the_bytes():
    bf16 = estimate_throughput(NEMOTRON, H100, 8, 64, 4096, 3.0)
    fp8 = estimate_throughput(MODELS["nemotron-ultra-253b-fp8"], H100, 8, 64, 4096, 3.0)
    assert fp8.output_tokens_per_second == pytest.approx(2 * bf16.output_tokens_per_second, rel=0.01)


def test_cost_split_in_the_api_price_proportion_and_break_even():
    rate = estimate_throughput(NEMOTRON, H100, 8, 64, 4096, 3.0)
    cost = estimate_cost(rate, Decimal("63"), nodes=1, replicas=1, input_price_per_million=Decimal("0.60"),
                         output_price_per_million=Decimal("1.80"), input_per_output=3.0)
    assert cost.monthly_cost == Decimal("45990.00")
    # output costs 3x input, like the API's prices
    assert cost.cost_per_million_output == pytest.approx(3 * cost.cost_per_million_input, abs=Decimal("0.0002"))
    # one second of node time pays for exactly the tokens it produced
    paid = (Decimal(str(rate.input_tokens_per_second)) * cost.cost_per_million_input
            + Decimal(str(rate.output_tokens_per_second)) * cost.cost_per_million_output) / 10**6
    assert paid == pytest.approx(Decimal(63) / 3600, rel=Decimal("0.0001"))
    # 45,990 USD / (1.80 + 3 x 0.60 USD per million output tokens with their inputs)
    assert cost.break_even_monthly_output_tokens == 12_775_000_000
    assert cost.monthly_output_capacity == int(rate.output_tokens_per_second * 3600 * 730)
    assert cost.self_hosting_can_win is False


def test_cheap_nodes_win_and_the_plan_says_so(make_config):
    config = make_config(cloud="scaleway", region="fr-par", zone="fr-par-2",
                         model={"name": "nemotron-ultra-253b-fp8"}, cost={"node_hourly_price": "20"})
    _, cost = cost_estimate(config, config.sizing())
    assert cost.self_hosting_can_win is True
    rows = dict(plan_rows(config, config.sizing()))
    assert "self-hosting is cheaper above it" in rows["break-even volume"]


def test_node_price_defaults_to_the_catalog_example_only_in_usd(make_config):
    assert node_hourly_price(make_config()) == Decimal("88.0")
    assert node_hourly_price(make_config(metering={"currency": "EUR"})) is None
    assert node_hourly_price(make_config(cloud="existing")) is None
    rows = dict(plan_rows(make_config(cloud="existing"), make_config(cloud="existing").sizing()))
    assert "set cost.node_hourly_price" in rows["self-hosted cost"]


def test_measured_throughput_replaces_the_estimate(make_config):
    config = make_config(cost={"output_tokens_per_second": 1000, "input_tokens_per_second": 5000})
    document = json.loads(json.dumps(plan_document(config, config.sizing())))
    assert document["throughput"]["measured"] is True
    assert document["throughput"]["output_tokens_per_second"] == 1000
    assert document["cost"]["monthly_output_capacity"] == 1000 * 3600 * 730
    assert document["tensor_parallel_size"] == 8
