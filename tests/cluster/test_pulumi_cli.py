"""`pulumi preview --policy-pack policy/` with the CLI as a user runs it: the program from
Pulumi.yaml through the Python language host, the policy pack through the real analyzer
(pulumi-policy, run by the same language host)."""

from __future__ import annotations

import time

import pytest

from inferplane.cluster import tools
from inferplane.gateway.keys import KeysFile, create_key

from .conftest import require_tools
from .pulumi_cli import PulumiCli, project_copy

pytestmark = pytest.mark.cluster


@pytest.fixture
def local_stack(local_cluster, tmp_path):
    """A fresh `local` stack of a scratch copy of the project, with a keys secret set."""
    require_tools(tools.PULUMI_TOOLS, "pulumi preview with the policy pack")
    cli = PulumiCli(project_copy(tmp_path / "project"), tmp_path / "engine",
                    local_cluster.kubeconfig)
    cli.init()
    keys = KeysFile()
    create_key(keys, tenant="policy", name="preview")
    cli.set("apiKeysJson", keys.model_dump_json(), secret=True)
    yield cli
    cli.destroy()


def test_preview_with_the_policy_pack_passes_the_local_stack(local_stack):
    result = local_stack.preview("--policy-pack", "policy")
    assert "inferplane" in result.stdout  # the policy pack ran and is named in the report
    assert "mandatory" not in result.stdout.lower(), result.stdout


# A program that writes its own Deployment with a floating tag: our config already refuses
# `image.vllm: ...:latest` before any resource exists, so only a program that bypasses it shows
# the policy pack itself refusing (what a user's own program built on our components could do).
FLOATING_TAG_PROGRAM = """
import pulumi_kubernetes as k8s

k8s.apps.v1.Deployment("floating", spec={
    "selector": {"matchLabels": {"app": "floating"}},
    "template": {"metadata": {"labels": {"app": "floating"}},
                 "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:latest",
                                          "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}},
})
"""


def test_policy_pack_refuses_a_floating_image_tag(local_stack):
    (local_stack.project / "stacks" / "__main__.py").write_text(FLOATING_TAG_PROGRAM)
    result = local_stack.preview("--policy-pack", "policy", check=False)
    assert result.returncode != 0
    assert "no-latest-images" in result.stdout + result.stderr, result.stdout + result.stderr


# The test's budgets: no node to create, a 60 s startup budget (the smallest the config takes).
STUCK_STARTUP_BUDGET_SECONDS = 60
STUCK_NAMESPACE = "inferplane-stuck"


def test_a_rollout_that_cannot_schedule_fails_at_its_deadline_naming_the_pods_reason(
        local_stack, kube_client):
    """`pulumi up` of a pod no node can take: it fails once the rendered progress deadline has
    passed (not Pulumi's timeout of old, half an hour and more), and says why: the scheduler's
    verdict, which the provider's own error leaves out."""
    from kubernetes import client as k8s

    from inferplane.cluster.local import fake_gpu_node
    from inferplane.render import GPU_RESOURCE

    # The only H200 node has 4 GPUs, while Nemotron-Ultra needs 8 on one node (TP=8).
    core = k8s.CoreV1Api(kube_client)
    small = fake_gpu_node("gpu-h200-141g-small", "H200-141G")
    for resources in (small["status"]["capacity"], small["status"]["allocatable"]):
        resources[GPU_RESOURCE] = "4"
    core.create_node(small)
    try:
        core.patch_node_status(small["metadata"]["name"], {"status": small["status"]})
        local_stack.set("namespace", STUCK_NAMESPACE)
        local_stack.set("waitForReady", True)
        local_stack.set("accelerator.type", "H200-141G")
        local_stack.set("probes.startup_budget_seconds", STUCK_STARTUP_BUDGET_SECONDS)
        local_stack.set("probes.node_and_pull_seconds", 0)
        started = time.monotonic()
        result = local_stack("up", "--stack", local_stack.stack, "--yes", "--skip-preview",
                             check=False, timeout=900)
        elapsed = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        print(f"pulumi up failed after {elapsed:.0f} s")  # reported, not asserted (no timing tests)

        # Pulumi waited for the controller's verdict at the rendered deadline, not longer ...
        deployment = k8s.AppsV1Api(kube_client).read_namespaced_deployment(
            "nemotron-ultra", STUCK_NAMESPACE)
        assert deployment.spec.progress_deadline_seconds == STUCK_STARTUP_BUDGET_SECONDS
        timeout = int(deployment.metadata.annotations["pulumi.com/timeoutSeconds"])
        assert timeout < STUCK_STARTUP_BUDGET_SECONDS + 1800  # the old fixed node allowance alone
        progressing = next(c for c in deployment.status.conditions if c.type == "Progressing")
        assert (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")
        assert "ProgressDeadlineExceeded" in output, output
        # ... and its output says why: the scheduler's verdict on the pod, which the provider's
        # own error ("Minimum number of live Pods was not attained") leaves out.
        assert "Deployment inferplane-stuck/nemotron-ultra is not ready" in output, output
        assert "Unschedulable: 0/" in output and "Insufficient nvidia.com/gpu" in output, output
    finally:
        core.delete_node(small["metadata"]["name"])
