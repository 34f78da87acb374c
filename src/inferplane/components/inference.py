"""The inference workload: the manifests `inferplane render` writes, applied by Pulumi, plus its Secrets.

One source of truth: the objects come from `inferplane.render.render(config)` unchanged except for
Pulumi's own await annotations, so `pulumi up` and a GitOps directory deploy the same thing. The
two Secrets (hashed API keys, Hugging Face token) are never rendered to files: they come from
Pulumi secrets and stay encrypted in the state.
"""

from __future__ import annotations

import copy
import importlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pulumi
import pulumi_kubernetes as k8s
import yaml

from inferplane.config import DeploymentConfig, validate
from inferplane.gateway.keys import KeysFile
from inferplane.render import fetch_wait_seconds, labels, render
from inferplane.rollout import api_client, pod_reasons

SERVICE_TYPE = "inferplane:inference:Service"
SKIP_AWAIT = "pulumi.com/skipAwait"
TIMEOUT_SECONDS = "pulumi.com/timeoutSeconds"
# Pulumi's awaiter must still be watching when the Deployment controller declares the rollout stuck
# (its deadline counts from the ReplicaSet's creation, a moment before the await starts), so the
# error carries ProgressDeadlineExceeded.
AWAIT_MARGIN_SECONDS = 60

# Objects a workload's pods need to exist first (they fail admission or mounting without them).
_PREREQUISITE_KINDS = {"Namespace", "PriorityClass", "ServiceAccount", "ConfigMap",
                       "PersistentVolumeClaim", "Secret"}
_WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


@dataclass(kw_only=True)
class InferenceServiceArgs:
    """The deployment, its secrets, and what it runs on."""

    config: DeploymentConfig
    api_keys_json: Optional[pulumi.Input[str]] = None  # the gateway's keys file (hashes only)
    hf_token: Optional[pulumi.Input[str]] = None  # for gated models; None: no token Secret
    platform: Optional[pulumi.Resource] = None  # the Platform (GPU stack, Gateway) it needs
    # With ledger.central: the central ledger's database args (LedgerDatabase.for_cloud). It is
    # created after the namespace and its DSN Secret before the Deployment that reads it.
    ledger_db: Optional[Any] = None
    # False: create the objects without waiting for them to become ready (no GPU, no controller).
    wait_for_ready: bool = True
    # The cluster the provider deploys to (a kubeconfig path or its contents, None: the ambient
    # one), read only when a rollout fails, to print why its pods are not ready.
    kubeconfig: Optional[pulumi.Input[str]] = None
    kube_context: Optional[str] = None


class InferenceService(pulumi.ComponentResource):
    """vLLM plus the gateway sidecar, its Service, Ingress, PodDisruptionBudget and NetworkPolicy.

    Outputs: `endpoint_url` (the OpenAI base URL), `namespace`, `keys_secret_name`.
    """

    def __init__(self, name: str, args: InferenceServiceArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        config = validate(args.config)  # a bad config fails here, before anything is registered
        if isinstance(args.api_keys_json, str):
            check_keys_json(args.api_keys_json)  # known now: fail before anything is registered
        manifests = render(config)
        super().__init__(SERVICE_TYPE, name, None, opts)
        self.config = config
        self.manifests = [_with_await_annotations(m, config, args.wait_for_ready) for m in manifests]
        if not _has_ingress_controller(config, args.platform):
            # Nothing will ever give the entry an address: awaiting it would only time out.
            for manifest in self.manifests:
                if manifest["kind"] in ("Ingress", "Gateway", "HTTPRoute"):
                    manifest["metadata"].setdefault("annotations", {})[SKIP_AWAIT] = "true"
        platform = [args.platform] if args.platform is not None else []
        keys_file, token_key = _secret_keys(manifests, config)

        self.resources: dict[tuple[str, str], pulumi.CustomResource] = {}
        namespace_object = next(m for m in self.manifests if m["kind"] == "Namespace")
        namespace = self._apply(name, namespace_object, platform)
        after_namespace = platform + [namespace]

        secrets: list[pulumi.Resource] = []
        if args.api_keys_json is not None:
            keys = pulumi.Output.secret(args.api_keys_json).apply(check_keys_json)
            secrets.append(self._secret(name, config.keys_secret_name, "api-keys",
                                        {keys_file: keys}, args.wait_for_ready, after_namespace))
        if args.hf_token is not None and token_key is None:
            pulumi.log.warn(f"no object reads the Hugging Face token with model_cache.kind "
                            f"{config.model_cache.kind}: the token Secret is not created", self)
        elif args.hf_token is not None:
            token = pulumi.Output.secret(args.hf_token)
            secrets.append(self._secret(name, config.hf_secret_name, "hf-token",
                                        {token_key: token}, args.wait_for_ready, after_namespace))
        self.ledger = None
        if args.ledger_db is not None:
            from inferplane.components.ledger_db import LedgerDatabase

            self.ledger = LedgerDatabase.for_cloud("ledger", args.ledger_db, opts=pulumi.ResourceOptions(
                parent=self, depends_on=after_namespace))
            # The gateway reads the DSN from this Secret: without it the pod cannot start.
            secrets.append(self.ledger.dsn_secret)
        self.secrets = secrets

        prerequisites: list[pulumi.Resource] = list(secrets)
        for manifest in self.manifests:
            if manifest is namespace_object:
                continue
            # Pods start only once what they mount and reference exists; nothing else waits, so
            # the weight-fetch Job and the Deployment whose pod it runs beside start together.
            needs = after_namespace + (prerequisites if manifest["kind"] in _WORKLOAD_KINDS else [])
            hooks = None
            if manifest["kind"] == "Deployment" and args.wait_for_ready:
                hooks = pulumi.ResourceHookBinding(on_error=[self._explain_failed_rollout(
                    name, manifest, args.kubeconfig, args.kube_context)])
            resource = self._apply(name, manifest, needs, hooks)
            if manifest["kind"] in _PREREQUISITE_KINDS:
                prerequisites.append(resource)

        if config.ingress.enabled:
            url = f"https://{config.ingress.host}/v1"
        else:
            url = f"http://{config.name}.{config.namespace}.svc.cluster.local/v1"
        self.endpoint_url = pulumi.Output.from_input(url)
        self.namespace = pulumi.Output.from_input(config.namespace)
        self.keys_secret_name = pulumi.Output.from_input(config.keys_secret_name)
        self.served_model_name = pulumi.Output.from_input(config.served_model_name)
        self.register_outputs({
            "endpoint_url": self.endpoint_url,
            "namespace": self.namespace,
            "keys_secret_name": self.keys_secret_name,
            "served_model_name": self.served_model_name,
        })

    @property
    def deployment(self) -> k8s.apps.v1.Deployment:
        return self.resources[("Deployment", self.config.name)]

    def _explain_failed_rollout(self, name: str, manifest: dict[str, Any],
                                kubeconfig: Optional[pulumi.Input[str]],
                                kube_context: Optional[str]) -> pulumi.ErrorHook:
        """An error hook that prints why the Deployment's pods are not ready (scheduler verdict,
        container state, Warning events) on the stack, then lets the failure stand."""
        cluster: dict[str, Optional[str]] = {"kubeconfig": None}
        if kubeconfig is not None:
            pulumi.Output.from_input(kubeconfig).apply(lambda value: cluster.update(kubeconfig=value))
        namespace = manifest["metadata"]["namespace"]
        selector = manifest["spec"]["selector"]["matchLabels"]
        deployment = manifest["metadata"]["name"]

        def explain(args: pulumi.ErrorHookArgs) -> bool:
            if args.failed_operation == "delete":
                return False
            try:
                client = api_client(cluster["kubeconfig"], kube_context)
                try:
                    reasons = pod_reasons(client, namespace, selector)
                finally:
                    client.close()
            except Exception as error:  # the explanation must never hide the failure itself
                pulumi.log.warn(f"could not read the pods of Deployment {namespace}/{deployment}: "
                                f"{error}")
                return False
            # Not attached to the Deployment: pulumi.log waits for a resource's URN, which a
            # resource whose create failed never resolves, so the message would never be sent.
            if reasons:
                pulumi.log.error(f"Deployment {namespace}/{deployment} is not ready:\n  "
                                 + "\n  ".join(reasons))
            return False

        return pulumi.ErrorHook(f"{name}-explain-rollout", explain)

    def _apply(self, name: str, manifest: dict[str, Any], depends_on: Sequence[pulumi.Resource],
               hooks: Optional[pulumi.ResourceHookBinding] = None) -> pulumi.CustomResource:
        object_name = manifest["metadata"]["name"]
        opts = pulumi.ResourceOptions(parent=self, depends_on=list(depends_on), hooks=hooks)
        resource_name = f"{name}-{manifest['kind'].lower()}-{object_name}"
        resource_class = kubernetes_class(manifest["apiVersion"], manifest["kind"])
        fields = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
        if resource_class is None:
            # A custom resource (KEDA ScaledObject, PodMonitor, ...): metadata and spec only.
            extra = set(fields) - {"metadata", "spec"}
            if extra:
                raise ValueError(f"{manifest['kind']} {object_name}: custom resources with "
                                 f"fields other than spec ({', '.join(sorted(extra))}) are not "
                                 "supported by InferenceService")
            resource = k8s.apiextensions.CustomResource(
                resource_name, api_version=manifest["apiVersion"], kind=manifest["kind"],
                metadata=fields["metadata"], spec=fields.get("spec"), opts=opts)
        else:
            resource = resource_class(resource_name, **{_snake(k): v for k, v in fields.items()},
                                      opts=opts)
        self.resources[(manifest["kind"], object_name)] = resource
        return resource

    def _secret(self, name: str, secret_name: str, component: str,
                string_data: dict[str, pulumi.Output[str]], wait_for_ready: bool,
                depends_on: Sequence[pulumi.Resource]) -> k8s.core.v1.Secret:
        manifest = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret_name, "namespace": self.config.namespace,
                         "labels": labels(self.config, component)},
            "type": "Opaque",
        }
        manifest = _with_await_annotations(manifest, self.config, wait_for_ready)
        secret = k8s.core.v1.Secret(
            f"{name}-secret-{secret_name}",
            metadata=manifest["metadata"],
            type="Opaque",
            string_data=string_data,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(depends_on),
                                        additional_secret_outputs=["data", "stringData"]),
        )
        self.resources[("Secret", secret_name)] = secret
        return secret


def _has_ingress_controller(config: DeploymentConfig, platform: Optional[pulumi.Resource]) -> bool:
    """A `local` cluster has a Gateway controller only when our Platform installs Envoy Gateway;
    clouds and `existing` clusters are assumed to have one (the Platform's, GKE's or their own)."""
    if config.cloud != "local":
        return True
    return getattr(platform, "envoy_gateway", None) is not None


def _with_await_annotations(manifest: dict[str, Any], config: DeploymentConfig,
                            wait_for_ready: bool) -> dict[str, Any]:
    """A copy with Pulumi's await settings: skip waiting, or wait as long as a model load takes."""
    manifest = copy.deepcopy(manifest)
    annotations = manifest["metadata"].setdefault("annotations", {})
    if not wait_for_ready:
        annotations[SKIP_AWAIT] = "true"
    elif manifest["kind"] == "Deployment":
        # Pulumi's 10-minute default would fail every first deploy of a 500 GB model, and the
        # fetch Job's hours-long deadline would hold a stuck one: wait as long as the rendered
        # progress deadline (node, image, weight fetch, load, as estimated for this config) for
        # each pod an update replaces in turn. The provider does not stop at that deadline itself.
        deadline = manifest["spec"]["progressDeadlineSeconds"]
        annotations[TIMEOUT_SECONDS] = str(deadline * rollout_waves(config) + AWAIT_MARGIN_SECONDS)
    elif manifest["kind"] == "Job":
        annotations[TIMEOUT_SECONDS] = str(
            config.probes.node_and_pull_seconds + fetch_wait_seconds(config))
    if not annotations:
        # The engine drops an empty map from the state on create, so every later preview would
        # want to add `annotations: {}` back (seen with the real engine on the keys Secret).
        del manifest["metadata"]["annotations"]
    return manifest


def rollout_waves(config: DeploymentConfig) -> int:
    """How many pods an update replaces one after another (each gets the progress deadline): one
    with one replica (it surges), else every replica the Deployment may have (maxUnavailable 1)."""
    if config.replicas == 1 and not config.autoscaling.enabled:
        return 1
    return max(config.replicas, config.autoscaling.max_replicas if config.autoscaling.enabled else 0)


def _secret_keys(manifests: list[dict[str, Any]],
                 config: DeploymentConfig) -> tuple[str, Optional[str]]:
    """The file name the gateway reads its keys from, and the key pods read HF_TOKEN from (None
    when no pod reads it), both taken from the rendered objects so the Secrets match them."""
    gateway_map = next(m for m in manifests if m["kind"] == "ConfigMap"
                       and m["metadata"]["name"] == f"{config.name}-gateway")
    settings = yaml.safe_load(gateway_map["data"]["gateway.yaml"])
    keys_file = posixpath.basename(settings["keys_file"])
    token_keys = {
        env["valueFrom"]["secretKeyRef"]["key"]
        for manifest in manifests if manifest["kind"] in _WORKLOAD_KINDS
        for container in _pod_spec(manifest).get("containers", [])
        for env in container.get("env", [])
        if env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == config.hf_secret_name
    }
    if len(token_keys) > 1:
        raise ValueError(f"rendered pods read {config.hf_secret_name} under several keys: "
                         f"{sorted(token_keys)}")
    return keys_file, next(iter(token_keys), None)


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest.get("spec", {}).get("template", {}).get("spec", {})


def kubernetes_class(api_version: str, kind: str) -> Optional[type]:
    """The typed pulumi_kubernetes class for a built-in kind (apps/v1 Deployment ->
    pulumi_kubernetes.apps.v1.Deployment), or None for a custom resource."""
    group, _, version = api_version.rpartition("/")
    if group and "." in group and (not group.endswith(".k8s.io")
                                   or group == "gateway.networking.k8s.io"):
        return None  # keda.sh, monitoring.coreos.com, Gateway API, ...: a CRD
    package = group.split(".")[0] if group else "core"
    try:
        module = importlib.import_module(f"pulumi_kubernetes.{package}.{version}")
        return getattr(module, kind)
    except (ImportError, AttributeError):
        raise ValueError(f"{kind} ({api_version}) is a built-in kind this pulumi-kubernetes "
                         "does not know; upgrade pulumi-kubernetes") from None


def check_keys_json(text: str) -> str:
    """The keys file must parse as the gateway's (gateway.keys.KeysFile): a paste error fails the
    deploy, not the gateway. Messages name the problem, never the content (it is a secret)."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"inferplane:apiKeysJson is not valid JSON ({error.msg} at line "
                         f"{error.lineno}); set it from the keys file: pulumi config set "
                         "--secret inferplane:apiKeysJson < keys.json") from None
    try:
        KeysFile.model_validate(data)
    except ValueError as error:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in error.errors()})  # type: ignore[attr-defined]
        raise ValueError(f"inferplane:apiKeysJson is not a keys file (problems at: "
                         f"{', '.join(fields)}); write it with `inferplane keys create --file "
                         "keys.json`") from None
    return text


def _snake(name: str) -> str:
    """Top-level Kubernetes field names as Pulumi's Python arguments (stringData -> string_data)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
