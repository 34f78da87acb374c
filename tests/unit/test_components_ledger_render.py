"""The rendered pod with a central ledger: the DSN reaches the gateway only from a Secret, the
spool volume is bounded, and the gateway's settings name the variable and the spool bound."""

from __future__ import annotations

import kubernetes_validate
import yaml

from inferplane.config import load
from inferplane.gateway.settings import GatewaySettings
from inferplane.render import CENTRAL_LEDGER_URL_ENV, render, to_multi_document

from ..conftest import EXAMPLE, KUBERNETES_SCHEMA_VERSION


def rendered(**ledger):
    config = load(EXAMPLE)
    config.ledger = config.ledger.model_copy(update=ledger)
    manifests = render(config)
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    gateway = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                   if c["name"] == "gateway")
    config_map = next(m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("-gateway"))
    settings = GatewaySettings.model_validate(yaml.safe_load(config_map["data"]["gateway.yaml"]))
    return manifests, deployment, gateway, settings


def test_central_ledger_dsn_comes_from_a_secret_never_the_config_map():
    manifests, deployment, gateway, settings = rendered(central=True, spool_max_records=5000)
    assert gateway["env"] == [{"name": CENTRAL_LEDGER_URL_ENV, "valueFrom": {"secretKeyRef": {
        "name": "nemotron-ultra-ledger-db", "key": "url"}}}]
    assert settings.central_ledger_url is None
    assert settings.central_ledger_url_env == CENTRAL_LEDGER_URL_ENV
    assert settings.spool_max_records == 5000
    # The drain may use the whole grace period; the kubelet's SIGKILL bounds it.
    assert settings.ship_drain_seconds == deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert "postgresql://" not in to_multi_document(manifests)
    kubernetes_validate.validate(deployment, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_named_secret_and_bounded_spool_volume():
    _, deployment, gateway, _ = rendered(central=True, url_secret_name="billing-db", spool_size_limit_mib=256)
    assert gateway["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "billing-db"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ledger"] == {"name": "ledger", "emptyDir": {"sizeLimit": "256Mi"}}


def test_without_central_ledger_no_env_and_no_shipping():
    _, _, gateway, settings = rendered(central=False, pod_local=True)
    assert "env" not in gateway
    assert settings.resolved_central_ledger_url() is None
