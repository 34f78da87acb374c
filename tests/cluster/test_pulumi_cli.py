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


def test_policy_pack_refuses_a_floating_image_tag(local_stack):
    local_stack.set("image.vllm", "vllm/vllm-openai:latest")
    result = local_stack.preview("--policy-pack", "policy", check=False)
    assert result.returncode != 0
    assert "no-latest-images" in result.stdout + result.stderr
