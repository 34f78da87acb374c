"""The real Pulumi engine deploys the repo's `local` stack onto the local cluster.

The CLI and the kubernetes provider are the pinned builds from `inferplane cluster tools`. The
Python language host is not served by the module proxy here, so the program (stacks/__main__.py,
unchanged) runs through the Automation API's inline mode: the Python SDK serves the language
runtime in-process and the CLI does everything else, exactly as in `pulumi up`.
"""

from __future__ import annotations

import runpy
import shutil
import time
from pathlib import Path

import pulumi
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from pulumi import automation as auto
from pulumi.automation.events import OpType

from inferplane.cluster import pulumi_env, tools
from inferplane.cluster.local import fake_gpu_node
from inferplane.config import DeploymentConfig, from_mapping
from inferplane.gateway.keys import KeysFile, create_key
from inferplane.render import GPU_RESOURCE, render

from .conftest import REPO_ROOT, require_tools
from .kube_helpers import spec_differences

STACK = "local"
# The test's await budget for a Deployment that can never become ready (the real one is the model's
# startup budget plus node provisioning: half an hour and more).
FAILING_AWAIT_SECONDS = 90
# What the tests set on top of stacks/Pulumi.local.yaml: wait for readiness (kwok makes pods Ready).
OVERRIDES = {"waitForReady": True}

pytestmark = pytest.mark.cluster


def _project_copy(destination: Path) -> Path:
    """The Pulumi project (Pulumi.yaml, stacks/) in a scratch dir: config changes stay out of the repo."""
    destination.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "Pulumi.yaml", destination / "Pulumi.yaml")
    shutil.copytree(REPO_ROOT / "stacks", destination / "stacks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def _program(work: Path, await_timeout_seconds: int | None = None):
    """stacks/__main__.py as an inline program, with the test cluster's await adjustments."""
    def program() -> None:
        pulumi.runtime.register_resource_transform(_await_adjustments(await_timeout_seconds))
        runpy.run_path(str(work / "stacks" / "__main__.py"), run_name="__main__")
    return program


def _await_adjustments(deployment_timeout_seconds: int | None):
    """Optionally give Deployments a short await budget (for the failing case). The Ingress needs
    nothing: on a `local` cluster without our ingress controller the component does not await it."""
    def transform(args: pulumi.ResourceTransformArgs):
        annotations = {}
        if args.type_ == "kubernetes:apps/v1:Deployment" and deployment_timeout_seconds:
            annotations["pulumi.com/timeoutSeconds"] = str(deployment_timeout_seconds)
        if not annotations:
            return None
        props = dict(args.props)
        metadata = dict(props.get("metadata") or {})
        metadata["annotations"] = {**(metadata.get("annotations") or {}), **annotations}
        props["metadata"] = metadata
        return pulumi.ResourceTransformResult(props, args.opts)
    return transform


def _stack_config(work: Path, stack: str) -> dict:
    return yaml.safe_load((work / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def _deployment_config(work: Path, stack: str, overrides: dict) -> DeploymentConfig:
    """The DeploymentConfig the program builds from the stack config (to render the expectation)."""
    data = {key.split(":", 1)[1]: value for key, value in _stack_config(work, stack).items()
            if key.startswith("inferplane:")}
    data.update(overrides)
    return from_mapping({k: v for k, v in data.items() if k in DeploymentConfig.model_fields})


def _keys_json() -> str:
    keys = KeysFile()
    create_key(keys, tenant="cluster-test", name="pulumi-up")
    return keys.model_dump_json()


def _set_overrides(stack: auto.Stack, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                stack.set_config(f"inferplane:{key}.{sub}", auto.ConfigValue(str(sub_value)),
                                 path=True)
        else:
            stack.set_config(f"inferplane:{key}", auto.ConfigValue(str(value).lower()
                                                                   if isinstance(value, bool)
                                                                   else str(value)))
    stack.set_config("inferplane:apiKeysJson", auto.ConfigValue(_keys_json(), secret=True))


def _stack(work: Path, engine_dir: Path, kubeconfig: Path, name: str,
           await_timeout_seconds: int | None = None) -> auto.Stack:
    env = pulumi_env.engine_environment(engine_dir)
    env["KUBECONFIG"] = str(kubeconfig)
    workspace = auto.LocalWorkspace(
        work_dir=str(work), pulumi_home=env["PULUMI_HOME"], env_vars=env,
        program=_program(work, await_timeout_seconds),
        pulumi_command=auto.PulumiCommand(root=str(tools.PULUMI.directory), skip_version_check=True),
    )
    return auto.Stack.create_or_select(name, workspace)


class Engine:
    """Collects the engine's output and per-resource outcomes of one operation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ops: dict[str, OpType] = {}

    def on_output(self, line: str) -> None:
        self.lines.append(line)

    def on_event(self, event) -> None:
        outputs = event.res_outputs_event
        if outputs is not None:
            self.ops[outputs.metadata.urn] = outputs.metadata.op

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def deployed(local_cluster, tmp_path_factory):
    """The `local` stack, up; destroyed (and removed) at the end whatever the tests did."""
    require_tools(tools.PULUMI_TOOLS, "the Pulumi engine tests")
    base = tmp_path_factory.mktemp("pulumi")
    work = _project_copy(base / "project")
    stack = _stack(work, base / "engine", local_cluster.kubeconfig, STACK)
    _set_overrides(stack, OVERRIDES)
    engine = Engine()
    try:
        try:
            result = stack.up(on_output=engine.on_output, on_event=engine.on_event, color="never")
        except auto.CommandError as error:
            pytest.fail(f"pulumi up of the local stack failed:\n{error}")
        yield {"stack": stack, "work": work, "up": result, "engine": engine}
    finally:
        try:
            stack.destroy(color="never")
        finally:
            stack.workspace.remove_stack(STACK)


def _live(dyn: DynamicClient, manifest: dict):
    resource = dyn.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    meta = manifest["metadata"]
    return resource.get(name=meta["name"], namespace=meta.get("namespace"))


def test_up_creates_every_rendered_object(deployed, kube_client):
    config = _deployment_config(deployed["work"], STACK, OVERRIDES)
    dyn = DynamicClient(kube_client)
    assert deployed["up"].summary.result == "succeeded"
    for manifest in render(config):
        live = _live(dyn, manifest)  # raises 404 if the engine did not create it
        assert live.metadata.labels["app.kubernetes.io/instance"] == config.name


def test_service_ingress_networkpolicy_and_pdb_have_the_rendered_spec(deployed, kube_client):
    config = _deployment_config(deployed["work"], STACK, OVERRIDES)
    dyn = DynamicClient(kube_client)
    checked = set()
    for manifest in render(config):
        if manifest["kind"] in ("Service", "Ingress", "NetworkPolicy", "PodDisruptionBudget"):
            live = _live(dyn, manifest).to_dict()
            problems = spec_differences(manifest["spec"], live["spec"], manifest["kind"])
            assert not problems, "\n".join(problems)
            checked.add(manifest["kind"])
    assert checked == {"Service", "Ingress", "NetworkPolicy", "PodDisruptionBudget"}


def test_vllm_pod_runs_on_a_fake_eight_gpu_node_and_the_deployment_is_available(
        deployed, kube_client, local_cluster):
    config = _deployment_config(deployed["work"], STACK, OVERRIDES)
    apps, core = k8s.AppsV1Api(kube_client), k8s.CoreV1Api(kube_client)
    # kwok reports the fake node's pod Ready within seconds, and the Deployment controller then
    # marks it Available: wait for that (a loaded machine can take a while), then check it.
    deadline = time.monotonic() + 180
    while True:
        deployment = apps.read_namespaced_deployment(config.name, config.namespace)
        available = [c for c in deployment.status.conditions or [] if c.type == "Available"]
        if (available and available[0].status == "True") or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert available and available[0].status == "True"
    assert deployment.status.available_replicas == config.replicas
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
    pods = core.list_namespaced_pod(config.namespace, label_selector=selector).items
    running = [p for p in pods if p.status.phase == "Running"]
    assert len(running) == config.replicas
    pod = running[0]
    assert pod.spec.node_name in local_cluster.nodes
    vllm = next(c for c in pod.spec.containers if c.name == "vllm")
    assert vllm.resources.limits[GPU_RESOURCE] == str(config.tensor_parallel_size) == "8"
    node = core.read_node(pod.spec.node_name)
    assert node.status.allocatable[GPU_RESOURCE] == "8"


def test_second_preview_shows_no_changes(deployed):
    preview = deployed["stack"].preview(color="never", diff=True)
    changes = {op: count for op, count in preview.change_summary.items() if op != OpType.SAME}
    assert changes == {}, f"a preview right after up wants changes:\n{preview.stdout}"


def test_changing_one_config_value_updates_exactly_the_deployment(deployed, kube_client):
    stack = deployed["stack"]
    stack.set_config("inferplane:model.gpu_memory_utilization", auto.ConfigValue("0.85"), path=True)
    engine = Engine()
    result = stack.up(on_output=engine.on_output, on_event=engine.on_event, color="never")
    assert result.summary.result == "succeeded"
    changed = {urn.rsplit("::", 2)[-2].rsplit("$", 1)[-1]: op for urn, op in engine.ops.items()
               if op not in (OpType.SAME, OpType.READ)}
    assert changed == {"kubernetes:apps/v1:Deployment": OpType.UPDATE}, engine.text
    config = _deployment_config(deployed["work"], STACK, OVERRIDES)
    deployment = k8s.AppsV1Api(kube_client).read_namespaced_deployment(config.name, config.namespace)
    args = next(c for c in deployment.spec.template.spec.containers if c.name == "vllm").args
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.85"


def test_destroy_leaves_nothing_of_ours(deployed, kube_client):
    config = _deployment_config(deployed["work"], STACK, OVERRIDES)
    manifests = render(config)
    deployed["stack"].destroy(color="never")
    dyn = DynamicClient(kube_client)
    for manifest in manifests:
        with pytest.raises(ApiException) as missing:
            _live(dyn, manifest)
        assert missing.value.status == 404, f"{manifest['kind']} {manifest['metadata']['name']} left"
    pods = k8s.CoreV1Api(kube_client).list_pod_for_all_namespaces(
        label_selector=f"app.kubernetes.io/instance={config.name}").items
    assert pods == []


def test_more_gpus_than_a_node_has_fails_within_the_await_budget(local_cluster, kube_client, tmp_path):
    require_tools(tools.PULUMI_TOOLS, "the Pulumi engine tests")
    # An L40S node that has only 4 GPUs, while the catalog (and so the config) expects 8 per node.
    core = k8s.CoreV1Api(kube_client)
    small = fake_gpu_node("gpu-l40s-48g-small", "L40S-48G")
    for resources in (small["status"]["capacity"], small["status"]["allocatable"]):
        resources[GPU_RESOURCE] = "4"
    core.create_node(small)
    core.patch_node_status(small["metadata"]["name"], {"status": small["status"]})
    work = _project_copy(tmp_path / "project")
    name = "local-too-big"
    shutil.copy(work / "stacks" / f"Pulumi.{STACK}.yaml", work / "stacks" / f"Pulumi.{name}.yaml")
    stack = _stack(work, tmp_path / "engine", local_cluster.kubeconfig, name,
                   await_timeout_seconds=FAILING_AWAIT_SECONDS)
    _set_overrides(stack, {**OVERRIDES, "namespace": "inferplane-too-big",
                           "model": {"name": "llama-3.3-70b-instruct"},
                           "accelerator": {"type": "L40S-48G", "tensor_parallel_size": 8}})
    engine = Engine()
    try:
        with pytest.raises(auto.CommandError) as failed:
            stack.up(on_output=engine.on_output, color="never")
        message = str(failed.value)
        assert "kubernetes:apps/v1:Deployment" in message and "timed out waiting to be Ready" in message
        assert "Minimum number of live Pods was not attained" in message, message
        # Why: the scheduler's verdict on the pod. The pinned provider logs it only as a progress
        # status, not in the error, so it is read from the API (what `kubectl describe` shows).
        pods = core.list_namespaced_pod("inferplane-too-big").items
        assert pods, "the Deployment created no pod"
        verdicts = [c for p in pods for c in p.status.conditions or []
                    if c.type == "PodScheduled" and c.reason == "Unschedulable"]
        assert verdicts and "Insufficient nvidia.com/gpu" in verdicts[0].message, pods
    finally:
        try:
            stack.destroy(color="never")
            stack.workspace.remove_stack(name)
        finally:
            core.delete_node(small["metadata"]["name"])
