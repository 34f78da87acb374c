"""The policy pack's rules, called the way the Pulumi engine calls them, on passing and failing resources.

The passing resources are the real ones: the manifests `inferplane render` writes and the
resources the stacks/ program registers under mocks. Each failing case changes one thing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel, PolicyCustomTimeouts, PolicyProviderResource, PolicyResource,
    PolicyResourceOptions, ResourceValidationArgs, StackValidationArgs, StackValidationPolicy,
)

from inferplane.components import testing

from ..conftest import with_gke_proxy_subnet
from inferplane.config import from_mapping
from inferplane.render import render

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "policy"))

from inferplane_policies import POLICIES  # noqa: E402
from inferplane_policies.exposure import auth_on_ingress_path, pod_disruption_budget  # noqa: E402
from inferplane_policies.residency import eu_residency  # noqa: E402
from inferplane_policies.workload import (  # noqa: E402
    gpu_limit_equals_parallel_size, no_latest_images, probes_present, resource_requests,
)

OPTIONS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


# -- calling policies as the engine does --

def kubernetes_type(manifest: dict[str, Any]) -> str:
    group, _, version = manifest["apiVersion"].rpartition("/")
    return f"kubernetes:{group or 'core'}/{version}:{manifest['kind']}"


def check(policy, resource_type: str, props: dict[str, Any],
          provider_props: Optional[dict[str, Any]] = None) -> list[str]:
    """Violations a resource policy reports for one resource."""
    provider = None
    if provider_props is not None:
        provider = PolicyProviderResource(f"pulumi:providers:{resource_type.split(':')[0]}",
                                          provider_props, "urn:provider", "default")
    found: list[str] = []
    args = ResourceValidationArgs(resource_type, props, f"urn:{resource_type}", "r", OPTIONS, provider)
    policy.validate(args, lambda message, urn=None: found.append(message))
    return found


def check_stack(policy, resources: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Violations a stack policy reports for a set of (type, props)."""
    policy_resources = [PolicyResource(t, p, f"urn:{t}:{i}", f"r{i}", OPTIONS, None, None, [], {})
                        for i, (t, p) in enumerate(resources)]
    found: list[str] = []
    policy.validate(StackValidationArgs(policy_resources), lambda m, urn=None: found.append(m))
    return found


def rendered(**overrides) -> list[tuple[str, dict[str, Any]]]:
    data = {"cloud": "gke", "region": "europe-west4", "model": {"name": "nemotron-ultra-253b"}}
    data.update(overrides)
    # Through JSON, as the engine delivers properties.
    return [(kubernetes_type(m), json.loads(json.dumps(m)))
            for m in render(from_mapping(with_gke_proxy_subnet(data)))]


def of_kind(resources, kind: str) -> dict[str, Any]:
    return next(p for t, p in resources if t.endswith(f":{kind}"))


def pod(resources) -> dict[str, Any]:
    return of_kind(resources, "Deployment")["spec"]["template"]["spec"]


def container(resources, name: str) -> dict[str, Any]:
    return next(c for c in pod(resources)["containers"] if c["name"] == name)


# -- the pack --

def test_pack_levels():
    levels = {p.name: p.enforcement_level for p in POLICIES}
    assert len(levels) == len(POLICIES)
    mandatory = {"eu-residency", "gpu-limit-equals-parallel-size", "auth-on-ingress-path",
                 "probes-present", "no-latest-images"}
    assert {n for n, level in levels.items() if level == EnforcementLevel.MANDATORY} == mandatory
    assert {n for n, level in levels.items() if level == EnforcementLevel.ADVISORY} == {
        "resource-requests", "pod-disruption-budget"}


@pytest.mark.parametrize("overrides", [
    {},
    {"model_cache": {"kind": "empty_dir"}},
    {"model": {"name": "llama-3.3-70b-instruct"}, "accelerator": {"tensor_parallel_size": 4}},
    {"replicas": 2, "model_cache": {"kind": "host_path", "host_path": "/mnt/models"}},
])
def test_rendered_manifests_pass_every_policy(overrides):
    resources = rendered(**overrides)
    for policy in POLICIES:
        if isinstance(policy, StackValidationPolicy):
            assert check_stack(policy, resources) == [], policy.name
        else:
            for resource_type, props in resources:
                assert check(policy, resource_type, props) == [], (policy.name, resource_type)


@pytest.mark.parametrize("stack", ["local", "gke", "eks", "scaleway"])
def test_what_each_stack_registers_passes_every_policy(stack):
    mocks = testing.install()
    config = testing.shipped_stack_config(stack)
    secrets = {"inferplane:apiKeysJson": json.dumps({"version": 1, "keys": []})}
    testing.set_stack_config(config | secrets, tuple(secrets))
    testing.run_stack_program(REPO / "stacks" / "__main__.py")
    provider_props = {k.split(":")[1]: v for k, v in config.items() if not k.startswith("inferplane:")}
    resources = [(r.type, _plain(r.inputs)) for r in mocks.resources]
    assert check_stack(auth_on_ingress_path, resources) == []
    for policy in (eu_residency, gpu_limit_equals_parallel_size, probes_present, no_latest_images):
        for resource_type, props in resources:
            assert check(policy, resource_type, props, provider_props) == [], (policy.name, resource_type)


def _plain(value: Any) -> Any:
    """Inputs as a policy sees them: secrets unwrapped."""
    value = testing.unwrap_secret(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# -- EU residency --

@pytest.mark.parametrize("resource_type,props", [
    ("gcp:container/nodePool:NodePool", {"location": "europe-west4", "nodeLocations": ["europe-west4-c"]}),
    ("gcp:container/cluster:Cluster", {"location": "europe-north1-a"}),
    ("aws:eks/nodeGroup:NodeGroup", {"region": "eu-north-1"}),
    ("aws:ec2/subnet:Subnet", {"availabilityZone": "eu-central-1b"}),
    ("scaleway:kubernetes/pool:Pool", {"region": "fr-par", "zone": "fr-par-2"}),
    ("pulumi:providers:aws", {"region": "eu-west-3"}),
    ("pulumi:providers:gcp", {"project": "p", "region": "europe-west9"}),
    ("kubernetes:apps/v1:Deployment", {}),  # not a cloud resource
])
def test_eu_locations_pass(resource_type, props):
    assert check(eu_residency, resource_type, props) == []


@pytest.mark.parametrize("resource_type,props,needle", [
    ("gcp:container/nodePool:NodePool", {"location": "us-central1"}, "us-central1"),
    ("gcp:container/nodePool:NodePool", {"location": "europe-west4", "nodeLocations": ["us-east1-b"]},
     "us-east1-b"),
    # London is in Europe but outside the EU/EEA.
    ("gcp:container/cluster:Cluster", {"location": "europe-west2"}, "europe-west2"),
    ("aws:eks/nodeGroup:NodeGroup", {"region": "us-east-1"}, "us-east-1"),
    ("aws:eks/nodeGroup:NodeGroup", {"region": "eu-west-2"}, "eu-west-2"),
    ("scaleway:kubernetes/pool:Pool", {"zone": "fr-par-2", "region": "us-east"}, "us-east"),
    ("pulumi:providers:aws", {"region": "us-west-2"}, "us-west-2"),
    ("pulumi:providers:aws", {}, "no region"),
])
def test_non_eu_locations_fail(resource_type, props, needle):
    (violation,) = check(eu_residency, resource_type, props)
    assert needle in violation


def test_region_from_the_provider_counts():
    node_group = {"clusterName": "c"}
    assert check(eu_residency, "aws:eks/nodeGroup:NodeGroup", node_group, {"region": "eu-west-1"}) == []
    (violation,) = check(eu_residency, "aws:eks/nodeGroup:NodeGroup", node_group, {"region": "us-east-2"})
    assert "provider" in violation and "us-east-2" in violation


def test_a_regional_resource_with_no_region_anywhere_fails():
    (violation,) = check(eu_residency, "aws:eks/nodeGroup:NodeGroup", {"clusterName": "c"}, {})
    assert "no region" in violation


# -- GPU limit = parallel size --

def test_gpu_limit_below_tensor_parallel_size_fails():
    resources = rendered()
    limits = container(resources, "vllm")["resources"]["limits"]
    limits["nvidia.com/gpu"] = "4"
    violations = check(gpu_limit_equals_parallel_size, *of_type(resources, "Deployment"))
    assert any("limit 4" in v and "--tensor-parallel-size 8" in v for v in violations)


def test_missing_gpu_limit_fails():
    resources = rendered()
    del container(resources, "vllm")["resources"]["limits"]["nvidia.com/gpu"]
    (violation, *_) = check(gpu_limit_equals_parallel_size, *of_type(resources, "Deployment"))
    assert "no nvidia.com/gpu limit" in violation


@pytest.mark.parametrize("args,gpus,ok", [
    (["--tensor-parallel-size=8"], "8", True),
    (["-tp", "4"], "4", True),
    (["--tensor-parallel-size", "4", "--pipeline-parallel-size", "2"], "8", True),
    (["--tensor-parallel-size", "4", "--pipeline-parallel-size", "2"], "4", False),
    ([], "1", True),  # vLLM's default is one GPU
    ([], "8", False),
])
def test_parallel_flags_in_any_spelling(args, gpus, ok):
    props = {"spec": {"template": {"spec": {"containers": [{
        "name": "engine", "image": "vllm/vllm-openai:v0.33.0", "command": ["vllm", "serve"],
        "args": ["some/model", *args],
        "resources": {"limits": {"nvidia.com/gpu": gpus}}}]}}}}
    violations = check(gpu_limit_equals_parallel_size, "kubernetes:apps/v1:Deployment", props)
    assert (violations == []) is ok, violations


def test_containers_that_are_not_vllm_are_not_judged_by_parallelism():
    props = {"spec": {"template": {"spec": {"containers": [{
        "name": "trainer", "image": "example/trainer:1.0", "resources": {"limits": {"nvidia.com/gpu": 2}}}]}}}}
    assert check(gpu_limit_equals_parallel_size, "kubernetes:apps/v1:Deployment", props) == []


# -- probes --

def test_gateway_without_liveness_fails():
    resources = rendered()
    del container(resources, "gateway")["livenessProbe"]
    (violation,) = check(probes_present, *of_type(resources, "Deployment"))
    assert "'gateway'" in violation and "livenessProbe" in violation


def test_gpu_container_without_startup_probe_fails():
    resources = rendered()
    del container(resources, "vllm")["startupProbe"]
    (violation,) = check(probes_present, *of_type(resources, "Deployment"))
    assert "startupProbe" in violation


def test_jobs_need_no_probes():
    resources = rendered()
    assert check(probes_present, *of_type(resources, "Job")) == []


# -- pinned images --

@pytest.mark.parametrize("image,ok", [
    ("vllm/vllm-openai:v0.33.0", True),
    ("vllm/vllm-openai@sha256:" + "a" * 64, True),
    ("registry.example.eu:5000/team/vllm:v0.33.0", True),
    ("vllm/vllm-openai:latest", False),
    ("vllm/vllm-openai", False),
    ("registry.example.eu:5000/team/vllm", False),
])
def test_image_pinning(image, ok):
    resources = rendered()
    container(resources, "vllm")["image"] = image
    violations = check(no_latest_images, *of_type(resources, "Deployment"))
    assert (violations == []) is ok, violations


def test_init_containers_are_pinned_too():
    resources = rendered()
    spec = pod(resources)
    spec.setdefault("initContainers", []).append({"name": "setup", "image": "busybox:latest"})
    (violation,) = check(no_latest_images, *of_type(resources, "Deployment"))
    assert "'setup'" in violation


# -- advisory: requests --

def test_container_without_memory_request_is_reported():
    resources = rendered()
    del container(resources, "gateway")["resources"]["requests"]["memory"]
    (violation,) = check(resource_requests, *of_type(resources, "Deployment"))
    assert "'gateway'" in violation and "memory" in violation


# -- auth on the ingress path --

def test_ingress_straight_to_vllm_fails():
    resources = rendered()
    vllm = container(resources, "vllm")
    vllm["ports"] = [{"name": "vllm", "containerPort": 8000}]
    service = of_kind(resources, "Service")
    service["spec"]["ports"][0]["targetPort"] = 8000
    (violation,) = check_stack(auth_on_ingress_path, resources)
    assert "'vllm'" in violation and "bypassing" in violation


def test_gateway_with_auth_off_fails():
    resources = rendered()
    config_map = of_kind(resources, "ConfigMap")
    settings = yaml.safe_load(config_map["data"]["gateway.yaml"])
    settings["auth_enabled"] = False
    config_map["data"]["gateway.yaml"] = yaml.safe_dump(settings)
    (violation,) = check_stack(auth_on_ingress_path, resources)
    assert "auth_enabled: false" in violation


def test_rendered_auth_off_config_is_caught():
    # The config says auth off: render writes it, and the policy stops it.
    (violation,) = check_stack(auth_on_ingress_path, rendered(auth={"enabled": False}))
    assert "auth" in violation


def route(resources) -> dict[str, Any]:
    return next(p for t, p in resources if t.endswith(":HTTPRoute")
                and p["spec"]["rules"][0].get("backendRefs"))


def test_the_default_entry_is_an_http_route_the_policy_follows():
    resources = rendered()
    assert "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute" in [t for t, _ in resources]
    assert check_stack(auth_on_ingress_path, resources) == []


def test_http_route_to_a_service_outside_the_stack_fails():
    resources = rendered()
    route(resources)["spec"]["rules"][0]["backendRefs"][0]["name"] = "other"
    (violation,) = check_stack(auth_on_ingress_path, resources)
    assert "HTTPRoute" in violation and "'other'" in violation and "does not define" in violation


def test_http_route_port_the_service_lacks_fails():
    resources = rendered()
    route(resources)["spec"]["rules"][0]["backendRefs"][0]["port"] = 8000
    (violation,) = check_stack(auth_on_ingress_path, resources)
    assert "no port" in violation


def test_http_route_to_something_other_than_a_service_fails():
    resources = rendered()
    route(resources)["spec"]["rules"][0]["backendRefs"][0].update(
        {"group": "inference.networking.k8s.io", "kind": "InferencePool"})
    (violation,) = check_stack(auth_on_ingress_path, resources)
    assert "InferencePool" in violation and "auth cannot be shown" in violation


def test_http_route_with_auth_off_fails():
    (violation,) = check_stack(auth_on_ingress_path, rendered(auth={"enabled": False}))
    assert "HTTPRoute" in violation and "auth" in violation


def test_ingress_to_a_service_outside_the_stack_fails():
    resources = rendered(ingress={"api": "ingress"})
    of_kind(resources, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "other"
    (violation,) = check_stack(auth_on_ingress_path, resources)
    assert "'other'" in violation and "does not define" in violation


def test_ingress_port_the_service_lacks_fails():
    resources = rendered(ingress={"api": "ingress"})
    backend = of_kind(resources, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    backend["service"]["port"] = {"number": 9999}
    (violation,) = check_stack(auth_on_ingress_path, resources)
    assert "no port" in violation


def test_gateway_settings_not_in_the_stack_fail():
    resources = [(t, p) for t, p in rendered() if not t.endswith(":ConfigMap")]
    (violation,) = check_stack(auth_on_ingress_path, resources)
    assert "not part of this stack" in violation


# -- advisory: disruption budget --

def test_deployment_without_a_budget_is_reported():
    resources = [(t, p) for t, p in rendered() if not t.endswith(":PodDisruptionBudget")]
    (violation,) = check_stack(pod_disruption_budget, resources)
    assert "PodDisruptionBudget" in violation


def test_a_budget_for_other_pods_does_not_count():
    resources = rendered()
    budget = of_kind(resources, "PodDisruptionBudget")
    budget["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "something-else"}
    assert len(check_stack(pod_disruption_budget, resources)) == 1


def of_type(resources, kind: str) -> tuple[str, dict[str, Any]]:
    return next((t, p) for t, p in resources if t.endswith(f":{kind}"))


# -- the pack as the engine runs it: a process serving the analyzer protocol --

@pytest.fixture
def analyzer():
    """policy/__main__.py started the way Pulumi starts it; yields a gRPC stub to it."""
    import subprocess

    import grpc
    from pulumi.runtime.proto import analyzer_pb2_grpc

    process = subprocess.Popen([sys.executable, str(REPO / "policy" / "__main__.py")],
                               stdout=subprocess.PIPE, cwd=REPO / "policy")
    try:
        port = int(process.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        process.kill()
        process.wait()


def test_the_pack_serves_its_policies_and_reports_over_grpc(analyzer):
    from google.protobuf import empty_pb2, struct_pb2
    from pulumi.runtime.proto import analyzer_pb2

    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "inferplane"
    assert {p.name for p in info.policies} == {p.name for p in POLICIES}

    properties = struct_pb2.Struct()
    properties.update({"location": "us-central1"})
    response = analyzer.Analyze(analyzer_pb2.AnalyzeRequest(
        type="gcp:container/nodePool:NodePool", properties=properties,
        urn="urn:pulumi:test::inferplane::gcp:container/nodePool:NodePool::gpu", name="gpu"))
    (diagnostic,) = response.diagnostics
    assert diagnostic.policyName == "eu-residency"
    assert diagnostic.enforcementLevel == analyzer_pb2.MANDATORY
    assert "us-central1" in diagnostic.message
