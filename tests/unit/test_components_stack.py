"""The Pulumi program in stacks/ with each shipped stack config, under mocks, and its config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from inferplane.components import testing
from inferplane.components.pulumi_config import key_paths
from inferplane.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "stacks" / "__main__.py"
KEYS_FILE = json.dumps({"version": 1, "keys": []})
# Cloud stacks ship usage to the central ledger by default, so they need its password.
NODE_POOL_TYPES = {
    "gke": "gcp:container/nodePool:NodePool",
    "eks": "aws:eks/nodeGroup:NodeGroup",
    "scaleway": "scaleway:kubernetes/pool:Pool",
}


@pytest.fixture
def mocks():
    return testing.install()


def stack_config(stack: str) -> dict:
    return testing.shipped_stack_config(stack)


def run_stack(config: dict, secrets: dict | None = None) -> dict[str, testing.Export]:
    """Run stacks/__main__.py with `config` (+ secrets) as the engine would pass it."""
    values = dict(config)
    # The central ledger is on for every cloud stack; its password is generated when not set.
    secrets = {"inferplane:apiKeysJson": KEYS_FILE} if secrets is None else secrets
    values.update(secrets)
    testing.set_stack_config(values, tuple(secrets))
    return testing.run_stack_program(PROGRAM)


@pytest.mark.parametrize("stack", ["local", "gke", "eks", "scaleway"])
def test_every_shipped_stack_deploys_nemotron_ultra_on_8_gpus(mocks, stack):
    outputs = run_stack(stack_config(stack))
    deployment = mocks.one("kubernetes:apps/v1:Deployment").inputs
    vllm = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    assert vllm["args"][vllm["args"].index("--tensor-parallel-size") + 1] == "8"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert outputs["namespace"].value == "inferplane"
    assert outputs["keys_secret_name"].value == "nemotron-ultra-api-keys"
    assert outputs["endpoint_url"].value.startswith("https://")
    assert outputs["node_pool"].value["gpus_per_node"] == 8
    assert not any(export.secret for name, export in outputs.items() if name != "kubeconfig")
    # The Kubernetes objects go through the program's own provider, not an ambient default one.
    provider = mocks.one("pulumi:providers:kubernetes")
    assert deployment and all(r.provider.startswith(provider.urn) for r in mocks.resources
                              if r.type.startswith("kubernetes:"))


@pytest.mark.parametrize("stack", ["gke", "eks", "scaleway"])
def test_cloud_stacks_create_the_catalog_machine_in_their_eu_region(mocks, stack):
    config = stack_config(stack)
    outputs = run_stack(config)
    pools = [r for r in mocks.of_type(NODE_POOL_TYPES[stack]) if r.name.endswith("-gpu")]
    assert len(pools) == 1
    inputs = pools[0].inputs
    machine = {"gke": lambda i: i["nodeConfig"]["machineType"],
               "eks": lambda i: i["instanceTypes"][0],
               "scaleway": lambda i: i["nodeType"]}[stack](inputs)
    assert machine == {"gke": "a3-highgpu-8g", "eks": "p5.48xlarge", "scaleway": "H100-SXM-8-80G"}[stack]
    region = inputs.get("location") or inputs.get("region")
    assert region == config["inferplane:region"]
    # The kubeconfig the program derives is exported, and only as a secret.
    assert outputs["kubeconfig"].secret


def test_local_stack_creates_no_cloud_resource_and_does_not_wait(mocks, monkeypatch, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    run_stack(stack_config("local"))
    assert not [t for t in mocks.types() if t.split(":")[0] in ("gcp", "aws", "scaleway")]
    assert mocks.of_type("kubernetes:helm.sh/v3:Release") == []
    assert mocks.one("pulumi:providers:kubernetes").inputs["kubeconfig"] == str(kubeconfig)
    for resource in mocks.resources:
        if resource.type.startswith("kubernetes:"):
            assert resource.inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"


def test_kubeconfig_key_wins_over_the_environment(mocks, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", "/elsewhere")
    config = stack_config("local") | {"inferplane:kubeconfig": str(tmp_path / "kc")}
    run_stack(config)
    assert mocks.one("pulumi:providers:kubernetes").inputs["kubeconfig"] == str(tmp_path / "kc")


def test_api_keys_reach_the_cluster_only_as_a_secret(mocks):
    outputs = run_stack(stack_config("gke"))
    secret = next(r for r in mocks.of_type("kubernetes:core/v1:Secret")
                  if r.inputs["metadata"]["name"] == "nemotron-ultra-api-keys")
    assert testing.is_secret_value(secret.inputs["stringData"])
    assert KEYS_FILE not in json.dumps({name: e.value for name, e in outputs.items()})


def test_non_eu_region_fails_before_any_resource_is_created(mocks):
    config = stack_config("gke") | {"inferplane:region": "us-central1",
                                    "inferplane:zone": "us-central1-a"}
    with pytest.raises(ConfigError) as error:
        run_stack(config)
    assert "inferplane:region" in str(error.value) and "europe-west4" in str(error.value)
    assert mocks.resources == []


def test_a_misspelt_key_is_an_error_that_suggests_the_right_one(mocks):
    config = stack_config("local") | {"inferplane:regoin": "local"}
    with pytest.raises(ConfigError, match="did you mean inferplane:region"):
        run_stack(config)
    assert mocks.resources == []


def test_a_section_set_as_a_string_explains_path_syntax(mocks):
    config = stack_config("local") | {"inferplane:model": "nemotron-ultra-253b"}
    with pytest.raises(ConfigError, match=r"--path 'inferplane:model\.<field>'"):
        run_stack(config)
    assert mocks.resources == []


def test_nested_typos_in_pulumi_only_keys_are_named(mocks):
    config = stack_config("gke") | {"inferplane:nodePool": {"maxNode": 3}}
    with pytest.raises(ConfigError, match="inferplane:nodePool.maxNode"):
        run_stack(config)
    assert mocks.resources == []


def test_auth_on_without_keys_asks_for_them(mocks):
    with pytest.raises(ConfigError, match="pulumi config set --secret inferplane:apiKeysJson"):
        run_stack(stack_config("local"), secrets={})
    assert mocks.resources == []


def test_auth_off_needs_no_keys(mocks):
    run_stack(stack_config("local") | {"inferplane:auth": {"enabled": False}}, secrets={})
    assert mocks.of_type("kubernetes:core/v1:Secret") == []


def test_eks_without_its_cluster_keys_names_them(mocks):
    config = {k: v for k, v in stack_config("eks").items() if k != "inferplane:eks"}
    with pytest.raises(ConfigError) as error:
        run_stack(config)
    for key in ("inferplane:eks.clusterName", "inferplane:eks.nodeRoleArn", "inferplane:eks.subnetIds"):
        assert key in str(error.value)
    assert mocks.resources == []


def test_path_set_values_reach_the_deployment(mocks):
    config = stack_config("gke")
    config["inferplane:model"] = dict(config["inferplane:model"], max_model_len=65536)
    run_stack(config)
    vllm = mocks.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]["containers"][0]
    assert vllm["args"][vllm["args"].index("--max-model-len") + 1] == "65536"


def test_the_program_stays_a_page():
    assert len(PROGRAM.read_text().splitlines()) <= 80


def test_the_deploy_doc_table_lists_every_config_key():
    doc = (REPO / "docs" / "deploy.md").read_text()
    table_rows = [line for line in doc.splitlines() if line.startswith("| `inferplane:")]
    documented = {row.split("`")[1].removeprefix("inferplane:") for row in table_rows}
    missing = [key for key in key_paths() if key not in documented]
    assert not missing, f"docs/deploy.md has no Pulumi table row for: {missing}"


@pytest.mark.parametrize("stack, keys", [
    ("eks", {"inferplane:eks.clusterName", "inferplane:eks.nodeRoleArn", "inferplane:eks.subnetIds",
             "inferplane:ledgerDb.subnetIds", "inferplane:ledgerDb.securityGroupIds",
             "inferplane:ingress.host", "inferplane:platform.acmeEmail"}),
    ("gke", {"inferplane:gke.project", "inferplane:ledgerDb.network", "inferplane:ingress.host",
             "inferplane:platform.acmeEmail"}),
])
def test_the_stack_files_example_values_are_refused_with_the_key_to_set(mocks, stack, keys):
    # Defect 8: `my-cluster`, `123456789012`, `subnet-0123...` passed validation and failed late in
    # the cloud (or asked Let's Encrypt for example.eu).
    raw = dict(yaml.safe_load((REPO / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"])
    with pytest.raises(ConfigError) as error:
        run_stack(raw)
    named = {field for field, _ in error.value.problems}
    assert keys <= named, named
    assert "pulumi config set --path" in str(error.value)
    assert mocks.resources == []


def test_the_default_example_host_is_refused_on_a_cloud(mocks):
    config = {k: v for k, v in stack_config("scaleway").items() if k != "inferplane:ingress"}
    with pytest.raises(ConfigError, match=r"inferplane:ingress\.host"):
        run_stack(config)


def test_pyproject_floors_admit_only_sdks_with_the_apis_used():
    # Defect 8: `region=` on aws resources needs pulumi-aws 7 (which itself needs pulumi 3.165, with
    # InvokeOutputOptions); generated passwords need pulumi-random.
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    requirements = {Requirement(r).name: Requirement(r).specifier
                    for group in ("pulumi", "aws", "gcp") for r in extras[group]
                    if not r.startswith("inferplane")}
    assert not requirements["pulumi-aws"].contains("6.99.0")
    assert requirements["pulumi-aws"].contains("7.0.0")
    assert not requirements["pulumi"].contains("3.164.0")
    assert "pulumi-random" in requirements
    assert not requirements["pulumi-gcp"].contains("8.0.0")
