"""The gateway's drain, as the pod's preStop hook starts it (SIGUSR1, before SIGTERM): /readyz
says not ready, and every response closes its connection, so a keep-alive client opens its next
connection (kube-proxy sends it to a pod still in the Service) instead of having this one closed
under a request at shutdown. tests/cluster/test_real_node_ledger.py checks the effect on a real
rolling update."""

from __future__ import annotations

import signal
import time

import httpx

from inferplane.gateway.testing import gateway_process

from .gateway_on_simulator import gateway_config_on_simulator

QUESTION = [{"role": "user", "content": "Hello?"}]


def test_sigusr1_drains_not_ready_and_closing_each_connection(tmp_path):
    with gateway_config_on_simulator(tmp_path, tenant="drain") as configured:
        body = {"model": configured.model, "messages": QUESTION, "max_tokens": 4}
        headers = configured.headers
        with gateway_process(configured.config_path) as gateway, \
                httpx.Client(timeout=10) as client:
            before = client.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
            assert before.status_code == 200 and "close" not in before.headers.get("connection", "")
            assert client.get(f"{gateway.url}/readyz").status_code == 200

            gateway.process.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while (ready := client.get(f"{gateway.url}/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "SIGUSR1 did not start the drain"
                time.sleep(0.1)
            assert ready.status_code == 503 and "draining" in ready.text
            assert ready.headers["connection"] == "close"
            # Still serving (the Service may route here for a moment), each on its own connection.
            for _ in range(2):
                during = client.post(f"{gateway.url}/v1/chat/completions", json=body,
                                     headers=headers)
                assert during.status_code == 200 and during.json()["usage"]["completion_tokens"]
                assert during.headers["connection"] == "close"
            assert gateway.process.poll() is None  # draining is not stopping: SIGTERM does that
