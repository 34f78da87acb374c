"""The cluster add-ons the inference service relies on: GPU operator, ingress controller, cert-manager.

Each is a Helm release of the chart pinned in charts/, with our values and the cloud's overlay,
and each can be switched off (a cluster that already has one). Helm releases rather than
rendered charts: the GPU operator and cert-manager manage their CRDs with Helm hooks and upgrade
them in place, which only a real Helm release runs, and `helm list` shows what is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from inferplane.components.charts import ChartPin, deep_merge, load_chart
from inferplane.config import ConfigError, DeploymentConfig

PLATFORM_TYPE = "inferplane:platform:Platform"
LETSENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
# Installing the GPU operator pulls a dozen images; Helm's 5-minute default is too tight.
RELEASE_TIMEOUT_SECONDS = 900


@dataclass(kw_only=True)
class PlatformArgs:
    """Which add-ons to install; None takes the chart's default for the cloud (charts/*/chart.yaml)."""

    config: DeploymentConfig
    gpu_operator: Optional[bool] = None
    ingress_nginx: Optional[bool] = None  # also off by default when config.ingress.enabled is false
    cert_manager: Optional[bool] = None  # also off by default when config.ingress.enabled is false
    acme_email: Optional[str] = None  # set: create the config's ClusterIssuer (Let's Encrypt)
    acme_server: str = LETSENCRYPT_PRODUCTION

    def switches(self) -> dict[str, bool]:
        """Chart key -> installed, after defaults."""
        cloud = self.config.cloud
        ingress_on = self.config.ingress.enabled
        chosen = {"gpu-operator": self.gpu_operator, "ingress-nginx": self.ingress_nginx,
                  "cert-manager": self.cert_manager}
        result = {}
        for key, value in chosen.items():
            default = load_chart(key).default_enabled(cloud)
            if key != "gpu-operator" and not ingress_on:
                default = False
            result[key] = default if value is None else value
        return result


class Platform(pulumi.ComponentResource):
    """GPU operator, ingress-nginx and cert-manager as pinned Helm releases, each switchable.

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

        if switches["gpu-operator"]:
            pin = load_chart("gpu-operator")
            self._release(name, pin, pin.namespace, pin.values(cloud), pin.manifests(cloud))
        if switches["ingress-nginx"]:
            pin = load_chart("ingress-nginx")
            ingress = config.ingress
            # The class the rendered Ingress names, in the namespace its NetworkPolicy admits.
            values = deep_merge(pin.values(cloud), {"controller": {
                "ingressClass": ingress.class_name,
                "ingressClassResource": {"name": ingress.class_name},
            }})
            self._release(name, pin, ingress.controller_namespace, values, [])
        self.cluster_issuer: Optional[k8s.apiextensions.CustomResource] = None
        if switches["cert-manager"]:
            pin = load_chart("cert-manager")
            release = self._release(name, pin, pin.namespace, pin.values(cloud), [])
            if args.acme_email and issuer:
                self.cluster_issuer = self._acme_issuer(name, issuer, args, release)
            elif issuer:
                pulumi.log.info(f"no inferplane:platform.acmeEmail: create the ClusterIssuer "
                                f"{issuer!r} the Ingress names yourself", self)

        self.gpu_operator = self.releases.get("gpu-operator")
        self.ingress_nginx = self.releases.get("ingress-nginx")
        self.cert_manager = self.releases.get("cert-manager")
        self.register_outputs({
            "enabled": switches,
            "versions": {key: release.version for key, release in self.releases.items()},
            "ingress_class": config.ingress.class_name if switches["ingress-nginx"] else None,
            "cluster_issuer": issuer if self.cluster_issuer else None,
        })

    def _release(self, name: str, pin: ChartPin, namespace: str, values: dict[str, Any],
                 manifests: list[dict[str, Any]]) -> k8s.helm.v3.Release:
        ns = k8s.core.v1.Namespace(
            f"{name}-{pin.key}-namespace",
            metadata={"name": namespace, "labels": {
                "app.kubernetes.io/part-of": "inferplane",
                "app.kubernetes.io/managed-by": "pulumi"}},
            opts=pulumi.ResourceOptions(parent=self),
        )
        before: list[pulumi.Resource] = [ns]
        for manifest in manifests:
            object_name = f"{name}-{pin.key}-{manifest['kind'].lower()}-{manifest['metadata']['name']}"
            before.append(_apply_object(object_name, manifest, namespace,
                                        pulumi.ResourceOptions(parent=self, depends_on=[ns])))
        release = k8s.helm.v3.Release(
            f"{name}-{pin.key}",
            name=pin.release,
            chart=pin.chart,
            version=pin.version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=pin.repo),
            namespace=namespace,
            create_namespace=False,
            values=values,
            timeout=RELEASE_TIMEOUT_SECONDS,
            opts=pulumi.ResourceOptions(parent=self, depends_on=before),
        )
        self.values[pin.key] = values
        self.releases[pin.key] = release
        return release

    def _acme_issuer(self, name: str, issuer: str, args: PlatformArgs,
                     cert_manager: k8s.helm.v3.Release) -> k8s.apiextensions.CustomResource:
        """Let's Encrypt over HTTP-01 through our ingress class: certificates with no DNS access."""
        return k8s.apiextensions.CustomResource(
            f"{name}-cluster-issuer",
            api_version="cert-manager.io/v1",
            kind="ClusterIssuer",
            metadata={"name": issuer},
            spec={"acme": {
                "server": args.acme_server,
                "email": args.acme_email,
                "privateKeySecretRef": {"name": f"{issuer}-account-key"},
                "solvers": [{"http01": {"ingress": {
                    "ingressClassName": args.config.ingress.class_name}}}],
            }},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cert_manager]),
        )


def _apply_object(resource_name: str, manifest: dict[str, Any], namespace: str,
                  opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """One extra object from charts/ (today: GKE's ResourceQuota) in the release's namespace."""
    if (manifest["apiVersion"], manifest["kind"]) != ("v1", "ResourceQuota"):
        raise ValueError(f"charts/: extra manifest kind {manifest['kind']!r} is not supported; "
                         "add it to platform._apply_object")
    metadata = dict(manifest["metadata"], namespace=namespace)
    return k8s.core.v1.ResourceQuota(resource_name, metadata=metadata, spec=manifest["spec"],
                                     opts=opts)
