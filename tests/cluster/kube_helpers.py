"""What we rendered vs what the API server stored; kubectl and pod helpers for the test clusters."""

from __future__ import annotations

import json
import re
import subprocess
import time

from kubernetes import client as k8s
from kubernetes.utils.quantity import parse_quantity

from inferplane.render import LEDGER_DIR

# The gateway's SQLite spool, as rendered (templates/, render.LEDGER_DIR).
LEDGER_URL = f"sqlite:///{LEDGER_DIR}/ledger.db"
INFERENCE = "app.kubernetes.io/component=inference"


def kubectl(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """kubectl with the test cluster's admin kubeconfig."""
    return subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=120, check=check)


def ledger_usage(cluster, api_client, config, key_id: str) -> dict[str, int]:
    """The key's usage summed over every gateway's ledger spool, read in the pods themselves."""
    pods = k8s.CoreV1Api(api_client).list_namespaced_pod(config.namespace,
                                                         label_selector=INFERENCE).items
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for pod in pods:
        if not pod.status.pod_ip or pod.metadata.deletion_timestamp:
            continue
        usage = kubectl(cluster, "-n", config.namespace, "exec", pod.metadata.name, "-c", "gateway",
                        "--", "inferplane", "usage", "--ledger", LEDGER_URL, "--by", "key", "-o",
                        "json")
        for row in json.loads(usage.stdout)["rows"]:
            if row["key_id"] == key_id:
                for field in totals:
                    totals[field] += row[field]
    return totals

# The API server stores quantities in canonical form (1024Mi -> 1Gi): same value, other spelling.
_QUANTITY = re.compile(r"^[0-9.]+(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")


def _same_quantity(expected: object, actual: object) -> bool:
    if not (isinstance(expected, str) and isinstance(actual, str)):
        return False
    if not (_QUANTITY.match(expected) and _QUANTITY.match(actual)):
        return False
    return parse_quantity(expected) == parse_quantity(actual)


def spec_differences(expected, actual, path="") -> list[str]:
    """Where `actual` (the live object, with server defaults) differs from what we rendered."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected a mapping, got {actual!r}"]
        problems = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}.{key}: missing on the server")
            else:
                problems += spec_differences(value, actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} items, got {actual!r}"]
        return [p for i, (e, a) in enumerate(zip(expected, actual))
                for p in spec_differences(e, a, f"{path}[{i}]")]
    if expected == actual or _same_quantity(expected, actual):
        return []
    return [f"{path}: rendered {expected!r}, server has {actual!r}"]


def running_pods(api_client, namespace: str, selector: str) -> list:
    """The selector's pods that are not being deleted."""
    pods = k8s.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def service_base_url(api_client, config) -> str:
    """The deployment's OpenAI base URL through its Service's ClusterIP (kube-proxy's rules)."""
    service = k8s.CoreV1Api(api_client).read_namespaced_service(config.name, config.namespace)
    return f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}/v1"


def wait_gone(api_client, namespace: str, timeout_seconds: float = 240) -> None:
    """Until the namespace is gone, so the next deployment starts from nothing."""
    core = k8s.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except k8s.exceptions.ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(1)


def assert_ledger_holds_one_reply(cluster, api_client, config, key_id: str, reply) -> None:
    """The pods' ledgers hold exactly this reply's usage for the key (records land within
    seconds of the response)."""
    expected = {"requests": 1, "prompt_tokens": reply.usage.prompt_tokens,
                "completion_tokens": reply.usage.completion_tokens}
    deadline = time.monotonic() + 30
    while (found := ledger_usage(cluster, api_client, config, key_id)) != expected:
        assert time.monotonic() < deadline, f"ledger has {found}, expected {expected}"
        time.sleep(1)
