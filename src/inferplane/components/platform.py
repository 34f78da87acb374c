"""The cluster add-ons the inference service relies on, as pinned Helm releases (charts/).

Per cloud (docs/deploy.md, "What the Platform installs"): the GPU stack the cloud or NVIDIA
supports for the node OS (nothing on GKE and Scaleway, which run their own; the NVIDIA device
plugin on the EKS AL2023 NVIDIA AMI; the GPU operator on existing clusters), the Gateway API
implementation (GKE's managed controller needs nothing; Envoy Gateway elsewhere), cert-manager with
its Gateway API support, KEDA when autoscaling is on, and the prometheus-operator CRDs when the
observability objects need them. Each can be switched off (a cluster that already has one).
Helm releases rather than rendered charts: the charts manage their CRDs with Helm hooks and
upgrade them in place, which only a real Helm release runs, and `helm list` shows what is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from inferplane.components.charts import ChartPin, load_chart
from inferplane.config import ENVOY_GATEWAY_CLASS, ConfigError, DeploymentConfig

PLATFORM_TYPE = "inferplane:platform:Platform"
LETSENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
# Installing the GPU operator pulls a dozen images; Helm's 5-minute default is too tight.
RELEASE_TIMEOUT_SECONDS = 900
# Envoy Gateway's controller name, which our GatewayClass hands its Gateways to.
ENVOY_GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
# EKS: the StorageClass the weight cache uses (model_cache.storage_class: gp3); EKS 1.30+ creates no
# default one. EBS CSI provisions it (https://docs.aws.amazon.com/eks/latest/userguide/ebs-csi.html);
# WaitForFirstConsumer creates the volume in the zone the GPU pod is scheduled to.
EKS_STORAGE_CLASS = "gp3"
# EKS: Envoy's Service as a Network Load Balancer (layer 4, through the AWS Load Balancer
# Controller): TLS ends at Envoy, and long-lived streams are not cut by an ELB's HTTP idle timeout
# (https://kubernetes-sigs.github.io/aws-load-balancer-controller/latest/guide/service/nlb/).
EKS_ENVOY_SERVICE_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-type": "external",
    "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
    "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
}
# Scaleway: Kapsule's load balancer forwards TCP and drops a connection idle for its tunnel timeout
# (default 10 min, https://github.com/scaleway/scaleway-cloud-controller-manager/blob/master/docs/loadbalancer-annotations.md):
# a long prefill before the first token must not cut the stream, so it follows the read timeout.
SCALEWAY_TUNNEL_TIMEOUT = "service.beta.kubernetes.io/scw-loadbalancer-timeout-tunnel"


def envoy_service_annotations(config: DeploymentConfig) -> dict[str, str]:
    """Annotations for Envoy's LoadBalancer Service on `config.cloud` (none where defaults fit)."""
    if config.cloud == "eks":
        return dict(EKS_ENVOY_SERVICE_ANNOTATIONS)
    if config.cloud == "scaleway":
        return {SCALEWAY_TUNNEL_TIMEOUT: f"{config.ingress.read_timeout_seconds}s"}
    return {}


_SWITCH_KEYS = {"gpu-operator": "gpuOperator", "nvidia-device-plugin": "nvidiaDevicePlugin",
                "envoy-gateway": "envoyGateway", "cert-manager": "certManager", "keda": "keda",
                "prometheus-operator-crds": "prometheusCrds"}


@dataclass(kw_only=True)
class PlatformArgs:
    """Which add-ons to install; None takes the default for the cloud and the config."""

    config: DeploymentConfig
    gpu_operator: Optional[bool] = None
    nvidia_device_plugin: Optional[bool] = None
    envoy_gateway: Optional[bool] = None  # default: when the entry is Envoy Gateway (not on GKE)
    cert_manager: Optional[bool] = None  # default: when there is a public entry
    keda: Optional[bool] = None  # default: when autoscaling.enabled
    prometheus_crds: Optional[bool] = None  # default: when PodMonitor/PrometheusRule are rendered
    storage_class: Optional[bool] = None  # EKS: create the gp3 StorageClass (default on EKS)
    acme_email: Optional[str] = None  # set: create the config's ClusterIssuer (Let's Encrypt)
    acme_server: str = LETSENCRYPT_PRODUCTION

    def switches(self) -> dict[str, bool]:
        """Chart key -> installed, after defaults; a refused combination raises ConfigError."""
        config = self.config
        cloud = config.cloud
        chosen = {"gpu-operator": self.gpu_operator, "nvidia-device-plugin": self.nvidia_device_plugin,
                  "envoy-gateway": self.envoy_gateway, "cert-manager": self.cert_manager,
                  "keda": self.keda, "prometheus-operator-crds": self.prometheus_crds}
        needed = {
            "envoy-gateway": config.edge == "envoy-gateway",
            "cert-manager": config.edge != "none" and bool(config.ingress.cluster_issuer),
            "keda": config.autoscaling.enabled,
            "prometheus-operator-crds": (config.observability.pod_monitor
                                         or config.observability.prometheus_rules),
        }
        result, problems = {}, []
        for key, value in chosen.items():
            pin = load_chart(key)
            if key in needed:
                default = needed[key] and (cloud != "local" or key in ("keda", "prometheus-operator-crds"))
            else:
                default = pin.default_enabled(cloud)
            if value and cloud in pin.refused:
                problems.append((f"platform.{_SWITCH_KEYS[key]}",
                                 f"not on {cloud}: {pin.refused[cloud]}; remove it"))
            result[key] = default if value is None else value
        if problems:
            raise ConfigError(problems)
        return result


class Platform(pulumi.ComponentResource):
    """The add-ons as pinned Helm releases, each switchable.

    `values` holds the values each enabled release got (after the cloud overlay), for review.
    """

    def __init__(self, name: str, args: PlatformArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        config = args.config
        switches = args.switches()
        issuer = config.ingress.cluster_issuer
        if args.acme_email and "@" not in args.acme_email:
            raise ConfigError([("platform.acmeEmail",
                                f"{args.acme_email!r} is not an e-mail address; Let's Encrypt "
                                "sends expiry warnings there")])
        super().__init__(PLATFORM_TYPE, name, None, opts)
        self.config = config
        self.enabled = switches
        self.values: dict[str, dict[str, Any]] = {}
        self.releases: dict[str, k8s.helm.v3.Release] = {}
        cloud = config.cloud

        for key in ("gpu-operator", "nvidia-device-plugin", "keda", "prometheus-operator-crds"):
            if switches[key]:
                pin = load_chart(key)
                self._release(name, pin, pin.namespace, pin.values(cloud))
        self.gateway_class: Optional[k8s.apiextensions.CustomResource] = None
        gateway_crds: list[pulumi.Resource] = []
        if switches["envoy-gateway"]:
            pin = load_chart("envoy-gateway")
            release = self._release(name, pin, config.edge_namespace or pin.namespace,
                                    pin.values(cloud))
            gateway_crds.append(release)  # its chart brings the Gateway API CRDs
            class_spec: dict[str, Any] = {"controllerName": ENVOY_GATEWAY_CONTROLLER}
            annotations = envoy_service_annotations(config)
            if annotations:
                namespace = config.edge_namespace or pin.namespace
                proxy = k8s.apiextensions.CustomResource(
                    f"{name}-envoyproxy", api_version="gateway.envoyproxy.io/v1alpha1",
                    kind="EnvoyProxy", metadata={"name": "inferplane", "namespace": namespace},
                    spec={"provider": {"type": "Kubernetes", "kubernetes": {"envoyService": {
                        "annotations": annotations}}}},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[release]))
                gateway_crds.append(proxy)
                class_spec["parametersRef"] = {"group": "gateway.envoyproxy.io",
                                               "kind": "EnvoyProxy", "name": "inferplane",
                                               "namespace": namespace}
            self.gateway_class = k8s.apiextensions.CustomResource(
                f"{name}-gatewayclass", api_version="gateway.networking.k8s.io/v1",
                kind="GatewayClass", metadata={"name": ENVOY_GATEWAY_CLASS},
                spec=class_spec, opts=pulumi.ResourceOptions(parent=self, depends_on=gateway_crds))
        self.cluster_issuer: Optional[k8s.apiextensions.CustomResource] = None
        if switches["cert-manager"]:
            pin = load_chart("cert-manager")
            # cert-manager's Gateway API support needs the Gateway API CRDs when it starts.
            release = self._release(name, pin, pin.namespace, pin.values(cloud), gateway_crds)
            if args.acme_email and issuer:
                self.cluster_issuer = self._acme_issuer(name, issuer, args, release)
            elif issuer:
                pulumi.log.info(f"no inferplane:platform.acmeEmail: create the ClusterIssuer "
                                f"{issuer!r} the Gateway names yourself", self)
        self.storage_class: Optional[k8s.storage.v1.StorageClass] = None
        if cloud == "eks" and args.storage_class is not False:
            self.storage_class = k8s.storage.v1.StorageClass(
                f"{name}-storageclass-{EKS_STORAGE_CLASS}",
                metadata={"name": EKS_STORAGE_CLASS, "labels": {
                    "app.kubernetes.io/part-of": "inferplane",
                    "app.kubernetes.io/managed-by": "pulumi"}},
                provisioner="ebs.csi.aws.com",
                volume_binding_mode="WaitForFirstConsumer",
                allow_volume_expansion=True,
                reclaim_policy="Delete",
                parameters={"type": "gp3", "encrypted": "true"},
                opts=pulumi.ResourceOptions(parent=self))

        self.gpu_operator = self.releases.get("gpu-operator")
        self.envoy_gateway = self.releases.get("envoy-gateway")
        self.cert_manager = self.releases.get("cert-manager")
        self.keda = self.releases.get("keda")
        self.register_outputs({
            "enabled": switches,
            "versions": {key: release.version for key, release in self.releases.items()},
            "gateway_class": config.gateway_class_name if config.edge not in ("none", "ingress") else None,
            "cluster_issuer": issuer if self.cluster_issuer else None,
        })

    def _release(self, name: str, pin: ChartPin, namespace: str, values: dict[str, Any],
                 after: Optional[list[pulumi.Resource]] = None) -> k8s.helm.v3.Release:
        ns = k8s.core.v1.Namespace(
            f"{name}-{pin.key}-namespace",
            metadata={"name": namespace, "labels": {
                "app.kubernetes.io/part-of": "inferplane",
                "app.kubernetes.io/managed-by": "pulumi"}},
            opts=pulumi.ResourceOptions(parent=self),
        )
        release = k8s.helm.v3.Release(
            f"{name}-{pin.key}",
            name=pin.release,
            chart=f"{pin.repo}/{pin.chart}" if pin.oci else pin.chart,
            version=pin.version,
            repository_opts=None if pin.oci else k8s.helm.v3.RepositoryOptsArgs(repo=pin.repo),
            namespace=namespace,
            create_namespace=False,
            values=values,
            timeout=RELEASE_TIMEOUT_SECONDS,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ns, *(after or [])]),
        )
        self.values[pin.key] = values
        self.releases[pin.key] = release
        return release

    def _acme_issuer(self, name: str, issuer: str, args: PlatformArgs,
                     cert_manager: k8s.helm.v3.Release) -> k8s.apiextensions.CustomResource:
        """Let's Encrypt over HTTP-01, answered through the deployment's own Gateway (its http
        listener) or, with the opt-in Ingress, through the ingress class: no DNS access needed."""
        config = args.config
        if config.edge == "ingress":
            solver = {"ingress": {"ingressClassName": config.ingress.class_name}}
        else:
            solver = {"gatewayHTTPRoute": {"parentRefs": [{
                "name": config.name, "namespace": config.namespace, "kind": "Gateway",
                "sectionName": "http"}]}}
        return k8s.apiextensions.CustomResource(
            f"{name}-cluster-issuer",
            api_version="cert-manager.io/v1",
            kind="ClusterIssuer",
            metadata={"name": issuer},
            spec={"acme": {
                "server": args.acme_server,
                "email": args.acme_email,
                "privateKeySecretRef": {"name": f"{issuer}-account-key"},
                "solvers": [{"http01": solver}],
            }},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cert_manager]),
        )
