"""The dashboard and alerts query only metrics that exist: every PromQL expression is parsed, and
every metric it names is found on a live gateway (which relays vLLM's series) after real traffic."""

from __future__ import annotations

import json
import re

import httpx
import openai
import promql_parser
import pytest

from inferplane.config import from_mapping
from inferplane.observability import DCGM_METRICS, alert_rules, dashboard, queries
from inferplane.render import render

SELECTOR = re.compile(r'VectorSelector \{\s*name: Some\(\s*"([^"]+)"')


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (parsing fails loudly on a syntax error)."""
    return set(SELECTOR.findall(repr(promql_parser.parse(expr))))


@pytest.fixture(scope="module")
def config():
    return from_mapping({"cloud": "gke", "region": "europe-west4",
                         "ingress": {"source_cidrs": ["10.129.0.0/23"]},
                         "observability": {"prometheus_rules": True, "dashboard_config_map": True}})


def test_every_expression_parses_and_names_a_metric(config):
    exprs = queries(config)
    assert len(exprs) >= 20
    for expr in exprs:
        assert metric_names(expr), expr


def test_a_broken_expression_would_be_caught():
    with pytest.raises(Exception):
        promql_parser.parse("sum(rate(vllm:num_requests_waiting[5m])")


def test_dashboard_covers_what_an_operator_asks(config):
    board = dashboard(config)
    titles = {panel["title"] for panel in board["panels"]}
    for wanted in ("Requests by status", "Tokens per second", "Cost per hour by key",
                   "Time to first token (vLLM)", "Inter-token latency (vLLM)", "Queue depth",
                   "KV-cache usage", "GPU utilisation (DCGM)"):
        assert wanted in titles
    rendered = {m["metadata"]["name"]: m for m in render(config) if m["kind"] == "ConfigMap"}
    shipped = json.loads(rendered["nemotron-ultra-dashboard"]["data"]["inferplane-nemotron-ultra.json"])
    assert shipped == board
    alerts = {rule["alert"] for group in alert_rules(config) for rule in group["rules"]}
    assert alerts == {"InferplaneModelNotReady", "InferplaneQueueGrowing", "InferplaneHighErrorRate",
                      "InferplaneBudgetNearlySpent", "InferplaneLedgerWriteFailures",
                      "InferplaneSpoolNotShipping", "InferplaneSpoolNearlyFull",
                      "InferplaneStreamsStoppedWithoutAbort"}
    simulated = from_mapping({"cloud": "local", "model": {"engine": "simulator"}})
    assert "InferplaneStreamsStoppedWithoutAbort" not in {
        rule["alert"] for group in alert_rules(simulated) for rule in group["rules"]}, \
        "the simulator always half-closes: the alert would fire on every stream a client leaves"


def test_every_metric_queried_is_exposed_by_the_gateway_or_vllm(config, tmp_path):
    from inferplane.gateway.keys import create_key, save_keys_file, KeysFile
    from inferplane.gateway.settings import GatewaySettings
    from inferplane.gateway.testing import running_gateway
    from inferplane.simulator import SimulatorSettings, running_simulator

    plaintext, entry = create_key(tenant="ops", budget="100")
    keys_file = tmp_path / "keys.json"
    save_keys_file(keys_file, KeysFile(keys=[entry]))
    with running_simulator(SimulatorSettings.from_deployment(config)) as upstream:
        settings = GatewaySettings.from_deployment(
            config, upstream_url=upstream, keys_file=str(keys_file),
            ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
        with running_gateway(settings) as (gateway, _app):
            client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=plaintext)
            client.chat.completions.create(model=config.served_model_name,
                                           messages=[{"role": "user", "content": "hello"}])
            stream = client.chat.completions.create(model=config.served_model_name, stream=True,
                                                    messages=[{"role": "user", "content": "hi"}])
            assert [chunk for chunk in stream]
            httpx.get(f"{gateway}/v1/models", headers={"Authorization": "Bearer wrong"})
            exposition = httpx.get(f"{gateway}/metrics").text
    exposed = {line.split("{", 1)[0].split(" ", 1)[0]
               for line in exposition.splitlines() if line and not line.startswith("#")}
    families = {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE")}
    missing = set()
    for expr in queries(config):
        for name in metric_names(expr):
            if name in DCGM_METRICS:
                continue  # the GPU operator's exporter, not ours
            if name not in exposed and name not in families:
                missing.add(name)
    assert not missing, f"queried but not exposed: {sorted(missing)}"
    # An alert on increase() misses a series's first event unless the series is there before it.
    assert 'inferplane_gateway_upstream_stops_total{how="half_close"} 0.0' in exposition
