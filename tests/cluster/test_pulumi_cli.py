"""`pulumi preview --policy-pack policy/` with the CLI as a user runs it: the program from
Pulumi.yaml through the Python language host, the policy pack through the real analyzer
(pulumi-policy, run by the same language host)."""

from __future__ import annotations

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
