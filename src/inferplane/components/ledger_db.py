"""The central usage ledger's PostgreSQL, in the deployment's EU region, and the DSN Secret the pods read.

Each cloud gets its managed PostgreSQL (Cloud SQL on GKE, RDS on EKS, Scaleway Managed Database),
reachable only on the cluster's private network, with backups and deletion protection on. `local`
and `existing` get one PostgreSQL pod from the official `postgres` image, pinned by tag (or the
image `inferplane:ledgerDb.image` names, e.g. one built from Debian packages by `inferplane cluster
image --postgres` where no registry is reachable): a StatefulSet needs no operator or CRDs, which a
lab cluster or someone else's cluster may not allow; the gateways' spools bridge its restarts. Every variant ends in the same place: the
Secret `<name>-ledger-db` (config.ledger_secret_name) whose key `url` is the DSN, a Pulumi secret,
which the gateway reads as INFERPLANE_CENTRAL_LEDGER_URL. The password is generated
(pulumi_random.RandomPassword, a secret in the state) to each cloud's rules unless the secret stack
key `inferplane:ledgerDbPassword` gives one, which is then checked against the same rules.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional
from urllib.parse import quote

import pulumi
import pulumi_kubernetes as k8s

from inferplane.components.node_pool import import_cloud_sdk
from inferplane.config import ConfigError, DeploymentConfig, validate
from inferplane.render import labels, selector_labels

LEDGER_DB_TYPE = "inferplane:ledger:Database"
DATABASE_NAME = "inferplane"
USER_NAME = "inferplane"
POSTGRES_PORT = 5432
MIN_PASSWORD_CHARS = 16
GENERATED_PASSWORD_CHARS = 32
# Special characters a generated password draws from: none of RDS's forbidden / " @ (nor space, nor
# quotes a shell would need escaped); ledger_dsn() URL-encodes the rest. RDS, MasterUserPassword:
# "Can include any printable ASCII character except "/", """, or "@"", 8 to 128 characters for
# PostgreSQL (https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBInstance.html).
# Scaleway, CreateInstance: "Password must be between 8 and 128 characters, contain at least one
# digit, one uppercase, one lowercase and one special character" (Scaleway's RDB v1 API, as
# documented in github.com/scaleway/scaleway-sdk-python, scaleway/rdb/v1/api.py).
PASSWORD_SPECIALS = "-_.~!#%^*+="
_RDS_FORBIDDEN = set('/"@ ')
# The official image (Docker Official Images, maintained with PostgreSQL's packagers), pinned to a
# minor release on Debian bookworm; uid 999 is its `postgres` user.
POSTGRES_IMAGE = "postgres:17.6-bookworm"
POSTGRES_UID = 999
SKIP_AWAIT = "pulumi.com/skipAwait"
_CLOUD_COMPONENTS = {
    "gke": "GkeLedgerDatabase",
    "eks": "EksLedgerDatabase",
    "scaleway": "ScalewayLedgerDatabase",
    "existing": "InClusterLedgerDatabase",
    "local": "InClusterLedgerDatabase",
}


def ledger_dsn(host: str, port: Any, password: str, sslmode: str) -> str:
    """The DSN the gateway's psycopg connects with; the password is URL-encoded, never logged."""
    return (f"postgresql://{USER_NAME}:{quote(password, safe='')}@{host}:{int(port)}/"
            f"{DATABASE_NAME}?sslmode={sslmode}")


@dataclass(kw_only=True)
class LedgerDatabaseArgs:
    """What every ledger database needs: the deployment and the database user's password."""

    config: DeploymentConfig
    password: Optional[pulumi.Input[str]] = None  # None: generated; taken as a secret either way
    storage_gib: int = 20
    wait_for_ready: bool = True  # False: create the Kubernetes objects without waiting (no cluster)
    deletion_protection: bool = True  # managed databases: False lets `pulumi destroy` delete it

    def check(self) -> None:
        """Cloud keys; each cloud's args add theirs. Runs before any resource is registered."""
        if isinstance(self.password, str):
            problems = password_problems(self.config.cloud, self.password)
            if problems:
                raise ConfigError([("ledgerDbPassword", "; ".join(problems) + "; or unset it and "
                                                        "let the stack generate one")])


def password_problems(cloud: str, password: str) -> list[str]:
    """Why `cloud`'s managed PostgreSQL would refuse `password` (never echoing it)."""
    problems = []
    if len(password) < MIN_PASSWORD_CHARS:
        problems.append(f"shorter than {MIN_PASSWORD_CHARS} characters")
    if len(password) > 128:
        problems.append("longer than 128 characters")
    if cloud == "eks" and (_RDS_FORBIDDEN & set(password)
                           or any(ord(c) < 33 or ord(c) > 126 for c in password)):
        problems.append('RDS accepts printable ASCII except / " @ and space')
    if cloud == "scaleway":
        classes = [string.ascii_uppercase, string.ascii_lowercase, string.digits]
        if not all(any(c in group for c in password) for group in classes) or all(
                c.isalnum() for c in password):
            problems.append("Scaleway needs an upper-case letter, a lower-case letter, a digit "
                            "and a special character")
    return problems


def generated_password(name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A password every cloud here accepts (upper, lower, digit, special; no / " @), as a secret."""
    random = import_cloud_sdk("pulumi_random", "pulumi", "A generated ledger password")
    password = random.RandomPassword(
        f"{name}-password", length=GENERATED_PASSWORD_CHARS, special=True,
        override_special=PASSWORD_SPECIALS, min_upper=2, min_lower=2, min_numeric=2, min_special=2,
        opts=pulumi.ResourceOptions(parent=parent))
    return pulumi.Output.secret(password.result)


@dataclass(kw_only=True)
class GkeLedgerDatabaseArgs(LedgerDatabaseArgs):
    """Cloud SQL on the VPC's private services access range (no public IP)."""

    network: str = ""  # the cluster's VPC: projects/<p>/global/networks/<n>, with private services access
    project: Optional[str] = None
    tier: str = "db-custom-2-7680"
    backup_retention_days: int = 7

    def check(self) -> None:
        super().check()
        if not self.network:
            raise ConfigError([("ledgerDb.network", "required on GKE: the cluster's VPC, e.g. "
                                                    "projects/my-project/global/networks/default, "
                                                    "with private services access configured")])


@dataclass(kw_only=True)
class EksLedgerDatabaseArgs(LedgerDatabaseArgs):
    """RDS in the cluster's private subnets, reachable through the given security groups."""

    subnet_ids: list[str] = field(default_factory=list)  # private subnets, two AZs or more
    security_group_ids: list[str] = field(default_factory=list)  # allow 5432 from the nodes
    instance_class: str = "db.t4g.medium"
    backup_retention_days: int = 7

    def check(self) -> None:
        super().check()
        problems = []
        if len(self.subnet_ids) < 2:
            problems.append(("ledgerDb.subnetIds", "required on EKS: two or more private subnets "
                                                   "in different AZs of the region (RDS needs two)"))
        if not self.security_group_ids:
            problems.append(("ledgerDb.securityGroupIds", "required on EKS: security groups that "
                                                          "let the nodes reach port 5432"))
        if problems:
            raise ConfigError(problems)


@dataclass(kw_only=True)
class ScalewayLedgerDatabaseArgs(LedgerDatabaseArgs):
    """A Managed Database for PostgreSQL attached only to the cluster's Private Network."""

    private_network_id: Optional[pulumi.Input[str]] = None  # default: the node pool's own network
    project_id: Optional[str] = None
    node_type: str = "DB-PRO2-XXS"
    backup_retention_days: int = 7

    def check(self) -> None:
        super().check()
        if self.private_network_id is None:
            raise ConfigError([("ledgerDb.privateNetworkId", "required with an existing cluster "
                                                             "(scaleway.clusterId): the cluster's "
                                                             "Private Network, e.g. fr-par/<uuid>")])


@dataclass(kw_only=True)
class InClusterLedgerDatabaseArgs(LedgerDatabaseArgs):
    """One PostgreSQL pod with a PersistentVolumeClaim, for `local` and `existing`."""

    storage_class: Optional[str] = None  # default: the cluster's default StorageClass
    # Any image with the official one's POSTGRES_* environment, uid 999 and PGDATA contract.
    image: str = POSTGRES_IMAGE


class LedgerDatabase(pulumi.ComponentResource):
    """The central ledger's PostgreSQL for one deployment, and the Secret with its DSN.

    Build one with `LedgerDatabase.for_cloud(name, args)`. Outputs: `host`, `secret_name`, and
    `url` (a secret). Kubernetes objects use the provider in `opts.providers`.
    """

    cloud: ClassVar[str] = ""

    def __init__(self, name: str, args: LedgerDatabaseArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__(LEDGER_DB_TYPE, name, None, opts)
        self.config = args.config
        self.region = args.config.region
        self.secret_name = args.config.ledger_secret_name
        self.password = (pulumi.Output.secret(args.password) if args.password is not None
                         else generated_password(name, self))
        self.host: pulumi.Output[str]
        self.url: pulumi.Output[str]
        self.dsn_secret: Optional[k8s.core.v1.Secret] = None

    def _publish(self, name: str, host: pulumi.Input[str], port: pulumi.Input[int], sslmode: str,
                 depends_on: Optional[list[pulumi.Resource]] = None,
                 wait_for_ready: bool = True) -> None:
        """Create the DSN Secret the pods read and register the outputs (each component's last step)."""
        self.host = pulumi.Output.from_input(host)
        self.url = pulumi.Output.secret(pulumi.Output.all(host, port, self.password).apply(
            lambda v: ledger_dsn(v[0], v[1], v[2], sslmode)))
        metadata: dict[str, Any] = {"name": self.secret_name, "namespace": self.config.namespace,
                                    "labels": labels(self.config, "ledger-db")}
        if not wait_for_ready:
            metadata["annotations"] = {SKIP_AWAIT: "true"}
        self.dsn_secret = k8s.core.v1.Secret(
            f"{name}-secret-{self.secret_name}", metadata=metadata, type="Opaque",
            string_data={"url": self.url},
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on or [],
                                        additional_secret_outputs=["data", "stringData"]))
        self.register_outputs({"cloud": self.cloud, "region": self.region, "host": self.host,
                               "secret_name": self.secret_name, "url": self.url})

    @staticmethod
    def for_cloud(name: str, args: LedgerDatabaseArgs,
                  opts: Optional[pulumi.ResourceOptions] = None) -> "LedgerDatabase":
        """The ledger database for `args.config.cloud`; its cloud SDK is imported only by it."""
        component = globals()[_CLOUD_COMPONENTS[args.config.cloud]]
        return component(name, args, opts)


def _checked(args: LedgerDatabaseArgs, expected: type, cloud: str) -> DeploymentConfig:
    """Right args for the cloud, EU region and every key checked: nothing is registered otherwise."""
    if not isinstance(args, expected):
        raise TypeError(f"the {cloud} ledger database takes {expected.__name__}, "
                        f"got {type(args).__name__}")
    allowed = ("existing", "local") if cloud == "existing" else (cloud,)
    if args.config.cloud not in allowed:
        raise ConfigError([("cloud", f"this ledger database is for {cloud}, but the config says "
                                     f"cloud: {args.config.cloud}; use LedgerDatabase.for_cloud")])
    config = validate(args.config)  # residency first: a non-EU region stops here
    args.check()
    return config


def _tags(config: DeploymentConfig) -> dict[str, str]:
    return {"inferplane-deployment": config.name, "inferplane-role": "ledger"}


class GkeLedgerDatabase(LedgerDatabase):
    """Cloud SQL for PostgreSQL 17, private IP only, PITR backups, deletion protection twice over."""

    cloud = "gke"

    def __init__(self, name: str, args: GkeLedgerDatabaseArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        config = _checked(args, GkeLedgerDatabaseArgs, self.cloud)
        gcp = import_cloud_sdk("pulumi_gcp", "gcp", "The GKE ledger database")
        super().__init__(name, args, opts)
        child = pulumi.ResourceOptions(parent=self)
        sql = gcp.sql
        self.instance = sql.DatabaseInstance(
            f"{name}-postgres",
            region=config.region,
            project=args.project,
            database_version="POSTGRES_17",
            # Terraform-level guard (pulumi destroy fails) and the API-level one (console, gcloud);
            # inferplane:ledgerDb.deletionProtection: false lifts both (a test stack).
            deletion_protection=args.deletion_protection,
            settings=sql.DatabaseInstanceSettingsArgs(
                tier=args.tier,
                edition="ENTERPRISE",
                availability_type="REGIONAL",  # a standby in another zone of the same region
                disk_size=args.storage_gib,
                disk_autoresize=True,
                deletion_protection_enabled=args.deletion_protection,
                ip_configuration=sql.DatabaseInstanceSettingsIpConfigurationArgs(
                    ipv4_enabled=False, private_network=args.network,
                    ssl_mode="ENCRYPTED_ONLY"),
                backup_configuration=sql.DatabaseInstanceSettingsBackupConfigurationArgs(
                    enabled=True, point_in_time_recovery_enabled=True,
                    location=config.region,  # backups stay in the region too (default: multi-region)
                    backup_retention_settings=(
                        sql.DatabaseInstanceSettingsBackupConfigurationBackupRetentionSettingsArgs(
                            retained_backups=args.backup_retention_days))),
                user_labels=_tags(config),
            ),
            opts=child,
        )
        database = sql.Database(f"{name}-database", name=DATABASE_NAME, instance=self.instance.name,
                                project=args.project, opts=child)
        user = sql.User(f"{name}-user", name=USER_NAME, instance=self.instance.name,
                        project=args.project, password=self.password, opts=child)
        self._publish(name, self.instance.private_ip_address, POSTGRES_PORT, "require",
                      [database, user], args.wait_for_ready)


class EksLedgerDatabase(LedgerDatabase):
    """RDS for PostgreSQL 17 in private subnets: not public, encrypted, backed up, protected."""

    cloud = "eks"

    def __init__(self, name: str, args: EksLedgerDatabaseArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        config = _checked(args, EksLedgerDatabaseArgs, self.cloud)
        aws = import_cloud_sdk("pulumi_aws", "aws", "The EKS ledger database")
        super().__init__(name, args, opts)
        child = pulumi.ResourceOptions(parent=self)
        subnets = aws.rds.SubnetGroup(f"{name}-subnets", region=config.region,
                                      subnet_ids=args.subnet_ids, tags=_tags(config), opts=child)
        identifier = f"{config.name}-ledger"
        # A final snapshot's name must be new on every destroy: a second destroy of a re-created
        # stack would otherwise collide with the first one's snapshot and fail.
        random = import_cloud_sdk("pulumi_random", "pulumi", "The RDS final snapshot name")
        snapshot_suffix = random.RandomId(f"{name}-final-snapshot", byte_length=4, opts=child)
        self.instance = aws.rds.Instance(
            f"{name}-postgres",
            region=config.region,  # stated on the resource, not left to the provider's default
            identifier=identifier,
            engine="postgres",
            engine_version="17",
            instance_class=args.instance_class,
            allocated_storage=args.storage_gib,
            max_allocated_storage=args.storage_gib * 5,
            storage_type="gp3",
            storage_encrypted=True,
            db_name=DATABASE_NAME,
            username=USER_NAME,
            password=self.password,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=args.security_group_ids,
            publicly_accessible=False,
            multi_az=True,
            backup_retention_period=args.backup_retention_days,
            deletion_protection=args.deletion_protection,
            skip_final_snapshot=False,
            final_snapshot_identifier=snapshot_suffix.hex.apply(
                lambda suffix: f"{identifier}-final-{suffix}"),
            copy_tags_to_snapshot=True,
            tags=_tags(config),
            opts=child,
        )
        self._publish(name, self.instance.address, POSTGRES_PORT, "require", [self.instance],
                      args.wait_for_ready)


class ScalewayLedgerDatabase(LedgerDatabase):
    """A Scaleway Managed Database for PostgreSQL on the Private Network only, backed up in-region.

    Scaleway's database API has no deletion-protection flag; the instance is Pulumi-protected
    (`protect=True`), so `pulumi destroy` refuses to delete it until that is lifted.
    """

    cloud = "scaleway"

    def __init__(self, name: str, args: ScalewayLedgerDatabaseArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        config = _checked(args, ScalewayLedgerDatabaseArgs, self.cloud)
        scw = import_cloud_sdk("pulumiverse_scaleway", "scaleway", "The Scaleway ledger database")
        super().__init__(name, args, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.instance = scw.databases.Instance(
            f"{name}-postgres",
            region=config.region,
            project_id=args.project_id,
            engine="PostgreSQL-16",
            node_type=args.node_type,
            is_ha_cluster=True,
            encryption_at_rest=True,
            volume_type="sbs_5k",
            volume_size_in_gb=args.storage_gib,
            disable_backup=False,
            backup_same_region=True,  # Scaleway's default copies backups to another region
            backup_schedule_frequency=24,
            backup_schedule_retention=args.backup_retention_days,
            user_name=USER_NAME,
            password=self.password,
            # Only a Private Network endpoint: no load_balancer block, so no public endpoint.
            private_network=scw.databases.InstancePrivateNetworkArgs(
                pn_id=args.private_network_id, enable_ipam=True),
            tags=[f"inferplane-{config.name}", "inferplane-ledger"],
            opts=pulumi.ResourceOptions(parent=self, protect=args.deletion_protection),
        )
        database = scw.databases.Database(f"{name}-database", region=config.region,
                                          instance_id=self.instance.id, name=DATABASE_NAME,
                                          opts=child)
        network = self.instance.private_network
        self._publish(name, network.apply(lambda n: n.ip), network.apply(lambda n: n.port),
                      "require", [database], args.wait_for_ready)


class InClusterLedgerDatabase(LedgerDatabase):
    """One PostgreSQL pod (official image, pinned, unless `args.image`) with a PVC, reachable
    only by the gateways. The DSN names the Service by its DNS name; on `cloud: local` by its
    ClusterIP, which needs no cluster DNS (the local cluster's real node runs none)."""

    cloud = "existing"

    def __init__(self, name: str, args: InClusterLedgerDatabaseArgs,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        config = _checked(args, InClusterLedgerDatabaseArgs, self.cloud)
        super().__init__(name, args, opts)
        object_name = f"{config.name}-ledger-postgres"
        pod_labels = labels(config, "ledger-db")
        selector = {k: pod_labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                                               "app.kubernetes.io/component")}

        def metadata(object_name: str) -> dict[str, Any]:
            meta: dict[str, Any] = {"name": object_name, "namespace": config.namespace,
                                    "labels": pod_labels}
            if not args.wait_for_ready:
                meta["annotations"] = {SKIP_AWAIT: "true"}
            return meta

        child = pulumi.ResourceOptions(parent=self)
        password_secret = k8s.core.v1.Secret(
            f"{name}-secret-{object_name}", metadata=metadata(object_name), type="Opaque",
            string_data={"password": self.password},
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["data", "stringData"]))
        service = k8s.core.v1.Service(
            f"{name}-service-{object_name}", metadata=metadata(object_name),
            spec={"selector": selector, "ports": [{"name": "postgres", "port": POSTGRES_PORT,
                                                   "targetPort": "postgres"}]},
            opts=child)
        # Only this deployment's inference pods (their gateways) reach the database.
        k8s.networking.v1.NetworkPolicy(
            f"{name}-networkpolicy-{object_name}", metadata=metadata(object_name),
            spec={"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"podSelector": {"matchLabels": selector_labels(config)}}],
                               "ports": [{"protocol": "TCP", "port": POSTGRES_PORT}]}]},
            opts=child)
        # One replica: a drain restarts it, and the gateways' spools hold usage meanwhile, so the
        # budget allows that rather than blocking node maintenance forever.
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-poddisruptionbudget-{object_name}", metadata=metadata(object_name),
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector}}, opts=child)
        ready = {"exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", USER_NAME,
                                      "-d", DATABASE_NAME]},
                 "periodSeconds": 10, "timeoutSeconds": 5}
        volume_claim: dict[str, Any] = {
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": f"{args.storage_gib}Gi"}}}}
        if args.storage_class:
            volume_claim["spec"]["storageClassName"] = args.storage_class
        self.stateful_set = k8s.apps.v1.StatefulSet(
            f"{name}-statefulset-{object_name}", metadata=metadata(object_name),
            spec={
                "serviceName": object_name,
                "replicas": 1,
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": pod_labels}, "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": POSTGRES_UID,
                                        "runAsGroup": POSTGRES_UID, "fsGroup": POSTGRES_UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "postgres",
                        "image": args.image,
                        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT}],
                        "env": [
                            {"name": "POSTGRES_USER", "value": USER_NAME},
                            {"name": "POSTGRES_DB", "value": DATABASE_NAME},
                            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
                                "name": object_name, "key": "password"}}},
                            # A subdirectory: the volume's root may hold lost+found.
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                        ],
                        "readinessProbe": ready,
                        "livenessProbe": dict(ready, initialDelaySeconds=30, failureThreshold=6),
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"memory": "1Gi"}},
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                            {"name": "run", "mountPath": "/var/run/postgresql"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [{"name": "run", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                }},
                "volumeClaimTemplates": [volume_claim],
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[password_secret]))
        host: pulumi.Input[str] = f"{object_name}.{config.namespace}.svc.cluster.local"
        if config.cloud == "local":
            # Fixed for the Service's life; a replaced Service re-publishes the DSN Secret.
            host = service.spec.apply(lambda spec: spec.cluster_ip)
        # Plain TCP inside the cluster: the NetworkPolicy above limits who can connect.
        self._publish(name, host, POSTGRES_PORT, "disable", [service], args.wait_for_ready)
