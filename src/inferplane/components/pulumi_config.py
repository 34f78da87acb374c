"""Pulumi stack config -> the one validated DeploymentConfig, plus the few keys only Pulumi needs.

Every DeploymentConfig field is a key of the `inferplane` namespace under its own name
(`inferplane:region`, `inferplane:model` with `--path 'inferplane:model.max_model_len'`), so a
stack config reads like the YAML file `inferplane render` takes. Keys only the Pulumi program
uses are camelCase (`inferplane:nodePool`, `inferplane:platform`, `inferplane:gke`, ...), and
the two secrets are `inferplane:hfToken` and `inferplane:apiKeysJson`. Everything is checked
before any resource exists; an unknown key is an error, with the nearest known key suggested.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferplane.components.inference import check_keys_json
from inferplane.components.node_pool import GpuNodePoolArgs
from inferplane.components.platform import PlatformArgs
from inferplane.config import ConfigError, DeploymentConfig, Section, from_mapping

NAMESPACE = "inferplane"
SECRET_KEYS = ("hfToken", "apiKeysJson", "ledgerDbPassword")
# Values the shipped stack files (stacks/Pulumi.*.yaml) carry as examples: a stack that still holds
# one would fail late in the cloud (no such cluster, account or subnet) or request a certificate
# for a domain no one owns (RFC 2606 reserves example.*). Refused before any resource exists.
PLACEHOLDER_PATTERNS = (
    re.compile(r"\b123456789012\b"),  # the AWS documentation's account id
    re.compile(r"^my-"),  # my-cluster, my-eu-project, my-cluster-nodes
    re.compile(r"/my-[a-z-]+/"),  # projects/my-eu-project/...
    re.compile(r"^(subnet|sg)-0123456789abcdef0$"),
    re.compile(r"^(subnet|sg)-0([a-f])\2{15}$"),  # subnet-0aaaaaaaaaaaaaaaa
    re.compile(r"(^|[.@])example\.(eu|com|org|net)$"),
)


class _Options(BaseModel):
    """Pulumi-only options: camelCase like Pulumi's own keys, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NodePoolOptions(_Options):
    min_nodes: Optional[int] = Field(None, alias="minNodes", ge=0)
    max_nodes: Optional[int] = Field(None, alias="maxNodes", ge=1)
    disk_size_gib: Optional[int] = Field(None, alias="diskSizeGib", ge=50)


class PlatformOptions(_Options):
    gpu_operator: Optional[bool] = Field(None, alias="gpuOperator")
    nvidia_device_plugin: Optional[bool] = Field(None, alias="nvidiaDevicePlugin")
    envoy_gateway: Optional[bool] = Field(None, alias="envoyGateway")
    cert_manager: Optional[bool] = Field(None, alias="certManager")
    keda: Optional[bool] = None
    prometheus_crds: Optional[bool] = Field(None, alias="prometheusCrds")
    storage_class: Optional[bool] = Field(None, alias="storageClass")
    acme_email: Optional[str] = Field(None, alias="acmeEmail")


class GkeOptions(_Options):
    project: Optional[str] = None
    cluster_name: Optional[str] = Field(None, alias="clusterName")
    cluster_location: Optional[str] = Field(None, alias="clusterLocation")
    service_account: Optional[str] = Field(None, alias="serviceAccount")
    gpu_driver_version: str = Field("LATEST", alias="gpuDriverVersion", pattern="^(LATEST|DEFAULT)$")
    release_channel: str = Field("REGULAR", alias="releaseChannel",
                                 pattern="^(RAPID|REGULAR|STABLE|EXTENDED)$")
    system_machine_type: str = Field("e2-standard-4", alias="systemMachineType")
    deletion_protection: bool = Field(False, alias="deletionProtection")
    capacity: str = Field("on_demand", pattern="^(on_demand|reservation|spot|flex_start)$")
    reservation: Optional[str] = None


class EksOptions(_Options):
    cluster_name: str = Field("", alias="clusterName")
    node_role_arn: str = Field("", alias="nodeRoleArn")
    subnet_ids: list[str] = Field(default_factory=list, alias="subnetIds")
    capacity_type: str = Field("ON_DEMAND", alias="capacityType",
                               pattern="^(ON_DEMAND|SPOT|CAPACITY_BLOCK)$")
    capacity_reservation_id: Optional[str] = Field(None, alias="capacityReservationId")
    ebs_csi_role_arn: Optional[str] = Field(None, alias="ebsCsiRoleArn")


class ScalewayOptions(_Options):
    cluster_id: Optional[str] = Field(None, alias="clusterId")
    project_id: Optional[str] = Field(None, alias="projectId")
    kubernetes_version: Optional[str] = Field(None, alias="kubernetesVersion")
    cni: str = "cilium"
    system_node_type: str = Field("PRO2-S", alias="systemNodeType")


class LedgerDbOptions(_Options):
    """The central ledger's PostgreSQL (used while ledger.central is true)."""

    network: Optional[str] = None  # GKE: the VPC with private services access
    subnet_ids: list[str] = Field(default_factory=list, alias="subnetIds")  # EKS
    security_group_ids: list[str] = Field(default_factory=list, alias="securityGroupIds")  # EKS
    private_network_id: Optional[str] = Field(None, alias="privateNetworkId")  # Scaleway
    instance_type: Optional[str] = Field(None, alias="instanceType")
    storage_gib: int = Field(20, alias="storageGib", ge=10)
    backup_retention_days: int = Field(7, alias="backupRetentionDays", ge=7, le=35)
    storage_class: Optional[str] = Field(None, alias="storageClass")  # local/existing
    image: Optional[str] = None  # local/existing: default the official postgres image, pinned
    deletion_protection: bool = Field(True, alias="deletionProtection")  # Cloud SQL, RDS


class StackOptions(_Options):
    """The Pulumi-only keys of the `inferplane` namespace."""

    kubeconfig: Optional[str] = None
    kube_context: Optional[str] = Field(None, alias="kubeContext")
    wait_for_ready: bool = Field(True, alias="waitForReady")
    node_pool: NodePoolOptions = Field(default_factory=NodePoolOptions, alias="nodePool")
    platform: PlatformOptions = Field(default_factory=PlatformOptions)
    gke: GkeOptions = Field(default_factory=GkeOptions)
    eks: EksOptions = Field(default_factory=EksOptions)
    scaleway: ScalewayOptions = Field(default_factory=ScalewayOptions)
    ledger_db: LedgerDbOptions = Field(default_factory=LedgerDbOptions, alias="ledgerDb")


DEPLOYMENT_KEYS = tuple(DeploymentConfig.model_fields)
PULUMI_KEYS = tuple(field.alias or name for name, field in StackOptions.model_fields.items())
CLOUD_SECTIONS = ("gke", "eks", "scaleway")  # Pulumi-only keys named after the cloud they serve


def key_paths() -> list[str]:
    """Every key the docs table must list: each DeploymentConfig field (its sub-fields are the
    Config table of docs/deploy.md), each Pulumi-only key with its sub-keys, and the secrets."""
    paths: list[str] = list(DEPLOYMENT_KEYS)
    for name, field in StackOptions.model_fields.items():
        key = field.alias or name
        paths.append(key)
        if isinstance(field.annotation, type) and issubclass(field.annotation, _Options):
            paths += [f"{key}.{sub.alias or sub_name}"
                      for sub_name, sub in field.annotation.model_fields.items()]
    return paths + list(SECRET_KEYS)


@dataclass
class StackSettings:
    """What the program needs from the stack config, validated."""

    deployment: DeploymentConfig
    options: StackOptions
    hf_token: Optional[pulumi.Output[str]] = None
    api_keys_json: Optional[pulumi.Output[str]] = None
    ledger_db_password: Optional[pulumi.Output[str]] = None

    @property
    def kubeconfig(self) -> Optional[str]:
        """The kubeconfig path from config, or KUBECONFIG for existing/local clusters, else None."""
        path = self.options.kubeconfig
        if not path and self.deployment.cloud in ("existing", "local"):
            path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        return os.path.expanduser(path) if path else None

    def platform_args(self) -> PlatformArgs:
        platform = self.options.platform
        return PlatformArgs(config=self.deployment, gpu_operator=platform.gpu_operator,
                            nvidia_device_plugin=platform.nvidia_device_plugin,
                            envoy_gateway=platform.envoy_gateway,
                            cert_manager=platform.cert_manager, keda=platform.keda,
                            prometheus_crds=platform.prometheus_crds,
                            storage_class=platform.storage_class, acme_email=platform.acme_email)

    def node_pool_args(self) -> GpuNodePoolArgs:
        """The typed args of this cloud's node pool (no cloud SDK is imported for it)."""
        config, pool = self.deployment, self.options.node_pool
        common = dict(config=config, min_nodes=pool.min_nodes, max_nodes=pool.max_nodes,
                      disk_size_gib=pool.disk_size_gib)
        if config.cloud == "gke":
            from inferplane.components.node_pool_gke import GkeGpuNodePoolArgs
            gke = self.options.gke
            return GkeGpuNodePoolArgs(
                **common, project=gke.project, cluster_name=gke.cluster_name,
                cluster_location=gke.cluster_location, service_account=gke.service_account,
                gpu_operator=self.platform_args().switches()["gpu-operator"],
                gpu_driver_version=gke.gpu_driver_version, release_channel=gke.release_channel,
                system_machine_type=gke.system_machine_type,
                deletion_protection=gke.deletion_protection, capacity=gke.capacity,
                reservation=gke.reservation)
        if config.cloud == "eks":
            from inferplane.components.node_pool_eks import EksGpuNodePoolArgs
            eks = self.options.eks
            return EksGpuNodePoolArgs(
                **common, cluster_name=eks.cluster_name, node_role_arn=eks.node_role_arn,
                subnet_ids=list(eks.subnet_ids), capacity_type=eks.capacity_type,
                capacity_reservation_id=eks.capacity_reservation_id,
                ebs_csi_role_arn=eks.ebs_csi_role_arn)
        if config.cloud == "scaleway":
            from inferplane.components.node_pool_scaleway import ScalewayGpuNodePoolArgs
            scw = self.options.scaleway
            return ScalewayGpuNodePoolArgs(
                **common, cluster_id=scw.cluster_id, project_id=scw.project_id,
                kubernetes_version=scw.kubernetes_version, cni=scw.cni,
                system_node_type=scw.system_node_type)
        from inferplane.components.node_pool_existing import ExistingGpuNodePoolArgs
        return ExistingGpuNodePoolArgs(**common)

    def ledger_db_args(self, node_pool: Any = None,
                       password: Optional[pulumi.Input[str]] = None) -> Any:
        """The typed args of this cloud's ledger database, or None while ledger.central is off.
        On Scaleway the database joins the Private Network of a cluster the node pool created."""
        from inferplane.components import ledger_db as db

        config, options = self.deployment, self.options.ledger_db
        if not config.ledger.central:
            return None
        common: dict[str, Any] = dict(
            config=config, password=password if password is not None else self.ledger_db_password,
            storage_gib=options.storage_gib, wait_for_ready=self.options.wait_for_ready,
            deletion_protection=options.deletion_protection)
        sized = {"gke": "tier", "eks": "instance_class", "scaleway": "node_type"}.get(config.cloud)
        if sized and options.instance_type:
            common[sized] = options.instance_type
        if config.cloud in ("gke", "eks", "scaleway"):
            common["backup_retention_days"] = options.backup_retention_days
        if config.cloud == "gke":
            return db.GkeLedgerDatabaseArgs(**common, network=options.network or "",
                                            project=self.options.gke.project)
        if config.cloud == "eks":
            return db.EksLedgerDatabaseArgs(**common, subnet_ids=list(options.subnet_ids),
                                            security_group_ids=list(options.security_group_ids))
        if config.cloud == "scaleway":
            network = options.private_network_id or getattr(node_pool, "private_network_id", None)
            if network is None and node_pool is None and not self.options.scaleway.cluster_id:
                network = "(the created cluster's Private Network)"  # known once the pool exists
            return db.ScalewayLedgerDatabaseArgs(**common, private_network_id=network,
                                                 project_id=self.options.scaleway.project_id)
        image = {"image": options.image} if options.image else {}
        return db.InClusterLedgerDatabaseArgs(**common, storage_class=options.storage_class,
                                              **image)


def read_stack_settings(config: Optional[pulumi.Config] = None) -> StackSettings:
    """Read and validate the stack's `inferplane:*` config; raise ConfigError naming each bad key."""
    config = config or pulumi.Config(NAMESPACE)
    problems = _unknown_key_problems()
    deployment_data: dict[str, Any] = {}
    for key, field in DeploymentConfig.model_fields.items():
        value = _read(config, key, as_object=_is_section(field.annotation), problems=problems)
        if value is not None:
            deployment_data[key] = value
    options_data: dict[str, Any] = {}
    for name, field in StackOptions.model_fields.items():
        key = field.alias or name
        as_object = isinstance(field.annotation, type) and issubclass(field.annotation, _Options)
        value = _read(config, key, as_object=as_object, problems=problems)
        if value is not None:
            options_data[key] = value

    deployment: Optional[DeploymentConfig] = None
    try:
        deployment = from_mapping(deployment_data, "Pulumi stack config")
    except ConfigError as error:
        problems += error.problems
    try:
        options = StackOptions.model_validate(options_data)
    except ValidationError as error:
        problems += [(".".join(str(p) for p in item["loc"]),
                      "unknown key; remove it or fix its spelling"
                      if item["type"] == "extra_forbidden" else item["msg"])
                     for item in error.errors()]
        options = StackOptions()
    if problems or deployment is None:
        raise _stack_error(problems)

    problems += placeholder_problems(deployment_data, options_data)
    if (deployment.edge != "none" and "host" not in (deployment_data.get("ingress") or {})
            and PLACEHOLDER_PATTERNS[-1].search(deployment.ingress.host)):
        problems.append(("ingress.host", f"the default {deployment.ingress.host!r} is an example "
                                         "domain; set the host your endpoint answers on: "
                                         f"pulumi config set --path '{NAMESPACE}:ingress.host' "
                                         "llm.your-domain.eu"))
    if problems:
        raise _stack_error(problems)
    settings = StackSettings(deployment=deployment, options=options)
    # Read as text to check it now; it stays a secret from here on.
    ledger_password = config.get("ledgerDbPassword")
    problems += _cloud_problems(settings, ledger_password)
    if problems:
        raise _stack_error(problems)
    _warn_unless_secret(SECRET_KEYS)
    settings.hf_token = config.get_secret("hfToken")
    # Read as text to check it now, before any resource exists; it stays a secret from here on.
    keys_text = config.get("apiKeysJson")
    if keys_text is None and deployment.auth.enabled:
        # With auth on, a deployment without keys would answer every request with 401: ask now.
        raise _stack_error([("apiKeysJson", "required while auth.enabled is true; create keys "
                                            "with `inferplane keys create --file keys.json`, then "
                                            "pulumi config set --secret inferplane:apiKeysJson "
                                            "< keys.json")])
    if keys_text is not None:
        try:
            check_keys_json(keys_text)
        except ValueError as error:
            raise _stack_error([("apiKeysJson", str(error).removeprefix("inferplane:apiKeysJson "))])
        settings.api_keys_json = pulumi.Output.secret(keys_text)
    if ledger_password is not None:
        settings.ledger_db_password = pulumi.Output.secret(ledger_password)
    return settings


def placeholder_problems(*sections: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for each example value of the shipped stack files still set."""
    problems = []

    def visit(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(f"{path}.{key}" if path else key, item)
        elif isinstance(value, list):
            for item in value:
                visit(path, item)
        elif isinstance(value, str) and any(p.search(value) for p in PLACEHOLDER_PATTERNS):
            problems.append((path, f"{value!r} is the stack file's example value; set yours: "
                                   f"pulumi config set --path '{NAMESPACE}:{path}' <value>"))

    for section in sections:
        visit("", section)
    return sorted(set(problems))


def _warn_unless_secret(keys: tuple[str, ...]) -> None:
    from pulumi.runtime.config import is_config_secret

    for key in keys:
        full_key = f"{NAMESPACE}:{key}"
        if key in _configured_keys() and not is_config_secret(full_key):
            pulumi.log.warn(f"{full_key} is stored in plain text in the stack config; set it with "
                            f"`pulumi config set --secret {full_key} ...`")


def _cloud_problems(settings: StackSettings,
                    ledger_password: Optional[str] = None) -> list[tuple[str, str]]:
    """Checks that need the deployment and the options together (node bounds, cloud keys)."""
    problems: list[tuple[str, str]] = []
    cloud = settings.deployment.cloud
    for section in CLOUD_SECTIONS:
        if section != cloud and getattr(settings.options, section).model_fields_set:
            pulumi.log.warn(f"inferplane:{section} is set but cloud is {cloud}; it is ignored")
    try:
        args = settings.node_pool_args()
        args.node_bounds()
        check = getattr(args, "check", None)
        if check:
            check()
        settings.platform_args().switches()
    except ConfigError as error:
        problems += error.problems
    try:
        ledger_args = settings.ledger_db_args(password=ledger_password)
        if ledger_args is not None:
            ledger_args.check()
    except ConfigError as error:
        problems += error.problems
    return problems


def _read(config: pulumi.Config, key: str, as_object: bool,
          problems: list[tuple[str, str]]) -> Any:
    raw = config.get(key)
    if raw is None or not as_object:
        return raw
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        problems.append((key, f"expected an object, got {raw!r}; set its fields with --path, "
                              f"e.g. pulumi config set --path '{NAMESPACE}:{key}.<field>' <value>"))
        return None
    return value


def _configured_keys() -> set[str]:
    """Keys of the `inferplane` namespace the stack sets (the engine passes config to the program
    through this runtime map or the PULUMI_CONFIG environment variable)."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{NAMESPACE}:"
    return {key[len(prefix):] for key in keys if key.startswith(prefix)}


def _unknown_key_problems() -> list[tuple[str, str]]:
    known = set(DEPLOYMENT_KEYS) | set(PULUMI_KEYS) | set(SECRET_KEYS)
    problems = []
    for key in sorted(_configured_keys() - known):
        near = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"did you mean {NAMESPACE}:{near[0]}?" if near else "remove it"
        problems.append((key, f"unknown key; {hint} (pulumi config rm {NAMESPACE}:{key})"))
    return problems


def _stack_error(problems: list[tuple[str, str]]) -> ConfigError:
    named = [(field if field.startswith(f"{NAMESPACE}:") or field.startswith("(")
              else f"{NAMESPACE}:{field}", message) for field, message in problems]
    return ConfigError(named, "Pulumi stack config")


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)
