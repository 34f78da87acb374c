"""Pulumi mocks for testing programs built from these components, without any cloud account.

`RecordingMocks` records every resource the program registers (type, name, inputs as the engine
sees them: camelCase, secrets still wrapped) and answers the cluster look-ups the node pools make
with placeholder data. `run_program` runs a program function under the mocks until every
registration is done, so a test can then assert on `mocks.resources`.
"""

from __future__ import annotations

import asyncio

import runpy
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

# What a generated password (pulumi_random.RandomPassword) is under the mocks.
MOCK_GENERATED_PASSWORD = "Mock-Generated-Pa55word-0f-32-chars"
# The wrapper the engine protocol puts around a secret value.
SECRET_SIGNATURE = rpc._special_sig_key
SECRET_VALUE_SIGNATURE = rpc._special_secret_sig
_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="  # "-----BEGIN CERTIFICATE-----", base64
_SCALEWAY_KUBECONFIG = (
    "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n"
    "    server: https://mock.api.k8s.fr-par.scw.cloud:6443\n"
)


@dataclass
class RecordedResource:
    """One resource registration as the engine would receive it."""

    type: str
    name: str
    inputs: dict[str, Any]
    provider: Optional[str]
    id: str
    urn: str = ""
    parent: str = ""
    dependencies: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # a component's register_outputs

    def plain(self, key: str) -> Any:
        """An input with any secret wrapper removed."""
        return unwrap_secret(self.inputs.get(key))


def is_secret_value(value: Any) -> bool:
    """True when `value` is the engine's wrapper for a secret."""
    return isinstance(value, dict) and value.get(SECRET_SIGNATURE) == SECRET_VALUE_SIGNATURE


def unwrap_secret(value: Any) -> Any:
    return value["value"] if is_secret_value(value) else value


class RecordingMocks(pulumi.runtime.Mocks):
    """Records registrations; echoes inputs back as outputs, plus what a cluster would report."""

    def __init__(self) -> None:
        self.resources: list[RecordedResource] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._registering = threading.local()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        resource_id = f"{args.name}-id"
        urn, parent, dependencies = getattr(self._registering, "request", None) or ("", "", [])
        self.resources.append(RecordedResource(args.typ, args.name, dict(args.inputs),
                                               args.provider, resource_id, urn, parent,
                                               dependencies))
        outputs = dict(args.inputs)
        outputs.setdefault("name", args.name)
        if args.typ == "gcp:container/cluster:Cluster":
            outputs.update(endpoint="203.0.113.10", masterAuth={"clusterCaCertificate": _CA})
        elif args.typ == "scaleway:kubernetes/cluster:Cluster":
            outputs["kubeconfigs"] = [{"configFile": _SCALEWAY_KUBECONFIG, "host": "https://mock",
                                       "token": "mock-token", "clusterCaCertificate": _CA}]
        elif args.typ == "aws:eks/nodeGroup:NodeGroup":
            outputs.setdefault("nodeGroupName", args.name)
        elif args.typ == "scaleway:databases/instance:Instance" and \
                isinstance(outputs.get("privateNetwork"), dict):
            # Scaleway reports the endpoint it gave the database on the Private Network.
            outputs["privateNetwork"] = {"ip": "172.16.4.2", "port": 5432,
                                         **outputs["privateNetwork"]}
        elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            outputs.setdefault("latestVersion", 1)
        elif args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = MOCK_GENERATED_PASSWORD
        elif args.typ == "random:index/randomId:RandomId":
            outputs["hex"] = "0a1b2c3d"
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append((args.token, dict(args.args)))
        name = args.args.get("name") or "mock-cluster"
        if args.token == "gcp:container/getCluster:getCluster":
            return {"name": name, "endpoint": "203.0.113.10",
                    "masterAuths": [{"clusterCaCertificate": _CA}]}
        if args.token == "aws:eks/getCluster:getCluster":
            return {"name": name, "endpoint": "https://mock.eks.amazonaws.com",
                    "certificateAuthorities": [{"data": _CA}]}
        if args.token == "scaleway:kubernetes/getCluster:getCluster":
            return {"name": name, "kubeconfigs": [{"configFile": _SCALEWAY_KUBECONFIG,
                                                   "host": "https://mock", "token": "mock-token",
                                                   "clusterCaCertificate": _CA}]}
        return {}

    def of_type(self, resource_type: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == resource_type]

    def one(self, resource_type: str) -> RecordedResource:
        """The single resource of `resource_type`; fails if there are none or several."""
        found = self.of_type(resource_type)
        if len(found) != 1:
            raise AssertionError(f"expected one {resource_type}, found {len(found)}: "
                                 f"{[r.name for r in found]}")
        return found[0]

    def types(self) -> list[str]:
        return [r.type for r in self.resources]

    def depends_on(self, resource: RecordedResource, other: RecordedResource) -> bool:
        """True when `resource` waits for `other`, directly or through a component's children."""
        if other.urn in resource.dependencies:
            return True
        return any(r.parent == other.urn and self.depends_on(resource, r) for r in self.resources)


class _RecordingMonitor(MockMonitor):
    """The standard mock monitor, also keeping each registration's URN, parent and dependencies."""

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method name
        # Registrations may run on several threads: hand the request to new_resource per thread.
        self.mocks._registering.request = (self.make_urn(request.parent, request.type, request.name),
                                           request.parent, list(request.dependencies))
        try:
            return super().RegisterResource(request)
        finally:
            self.mocks._registering.request = None

    def RegisterResourceOutputs(self, request):  # noqa: N802
        outputs = dict(rpc.deserialize_properties(request.outputs))
        for record in self.mocks.resources:
            if record.urn == request.urn:
                record.outputs = outputs
        return super().RegisterResourceOutputs(request)


def ensure_event_loop() -> None:
    """Pulumi registers the root Stack on the current event loop. After an `asyncio.run()` anywhere
    earlier in the process the main thread has none (or a closed one): give it a fresh one."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())


def install(project: str = "inferplane", stack: str = "test") -> RecordingMocks:
    """Fresh mocks for one test (not a preview: outputs are known)."""
    ensure_event_loop()
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False,
                             monitor=_RecordingMonitor(mocks))
    return mocks


def set_stack_config(values: dict[str, Any], secret_keys: tuple[str, ...] = ()) -> None:
    """Set `namespace:key` config as the engine passes it: objects as JSON, scalars as strings."""
    import json

    encoded = {key: value if isinstance(value, str) else json.dumps(value)
               for key, value in values.items()}
    pulumi.runtime.set_all_config(encoded, list(secret_keys))


def run_program(program: Callable[[], Any]) -> None:
    """Run `program` under the installed mocks and wait for every registration and returned Output."""

    @pulumi.runtime.test
    def _run() -> Any:
        return program()

    _run()


@dataclass
class Export:
    """A resolved stack output."""

    value: Any
    secret: bool


def run_stack_program(path: str | Path) -> dict[str, Export]:
    """Run a Pulumi program file (e.g. stacks/__main__.py) under the installed mocks and return
    its `pulumi.export`s, resolved, with whether each is a secret."""
    root = pulumi.runtime.get_root_resource()
    root.outputs.clear()  # the mocks' root stack lives for the whole test session
    exported: dict[str, Export] = {}

    def program() -> Any:
        runpy.run_path(str(path), run_name="__main__")

        async def resolve() -> None:
            for name, value in root.outputs.items():
                output = pulumi.Output.from_input(value)
                exported[name] = Export(await output.future(), await output.is_secret())

        return pulumi.Output.from_input(resolve())

    run_program(program)
    return exported


# Stand-ins for the example values of the shipped stack files, which the program refuses
# (pulumi_config.PLACEHOLDER_PATTERNS): what a user would have set instead.
STACK_FILE_FILLS = {
    "my-cluster": "prod-eu",
    "arn:aws:iam::123456789012:role/my-cluster-nodes": "arn:aws:iam::210987654321:role/prod-eu-nodes",
    "subnet-0123456789abcdef0": "subnet-07f3a9c2e1d4b5a60",
    "subnet-0aaaaaaaaaaaaaaaa": "subnet-03c1d2e4f5a6b7c80",
    "subnet-0bbbbbbbbbbbbbbbb": "subnet-09e8d7c6b5a4f3e20",
    "sg-0cccccccccccccccc": "sg-04b3c2d1e0f9a8b70",
    "my-eu-project": "acme-inference-eu",
    "projects/my-eu-project/global/networks/default": "projects/acme-inference-eu/global/networks/default",
    "llm.example.eu": "llm.acme-inference.eu",
    "ops@example.eu": "ops@acme-inference.eu",
}


def shipped_stack_config(stack: str) -> dict[str, Any]:
    """stacks/Pulumi.<stack>.yaml's config with its example values replaced by plausible ones."""
    import yaml

    path = Path(__file__).resolve().parents[3] / "stacks" / f"Pulumi.{stack}.yaml"

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return STACK_FILE_FILLS.get(value, value) if isinstance(value, str) else value

    return fill(dict(yaml.safe_load(path.read_text())["config"]))
