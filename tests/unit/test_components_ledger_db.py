"""The central ledger's PostgreSQL on each cloud, and in-cluster, under Pulumi mocks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest

from inferplane.components import (
    EksLedgerDatabaseArgs, GkeLedgerDatabaseArgs, InClusterLedgerDatabaseArgs, LedgerDatabase,
    ScalewayGpuNodePool, ScalewayGpuNodePoolArgs, ScalewayLedgerDatabaseArgs, testing,
)
from inferplane.components.ledger_db import POSTGRES_IMAGE
from inferplane.config import ConfigError, DeploymentConfig, from_mapping
from inferplane.render import CENTRAL_LEDGER_URL_ENV

from ..conftest import with_gke_proxy_subnet

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "policy"))
from inferplane_policies.residency import residency_problems  # noqa: E402
from inferplane_policies.workload import (  # noqa: E402
    image_problems, probe_problems, request_problems,
)

PASSWORD = "s3cret+With=Sym%bols#and-length"  # URL-unsafe characters on purpose
SECRET = "kubernetes:core/v1:Secret"
CLOUD_SQL = "gcp:sql/databaseInstance:DatabaseInstance"
RDS = "aws:rds/instance:Instance"
SCW_DB = "scaleway:databases/instance:Instance"
SERVICE = "kubernetes:core/v1:Service"
CLUSTER_IP = "10.96.0.42"  # what the API server would allocate
# What the clouds would report as the database's private address.
PRIVATE_HOSTS = {CLOUD_SQL: ("privateIpAddress", "10.20.0.3"),
                 RDS: ("address", "nemotron-ultra-ledger.abc.eu-central-1.rds.amazonaws.com")}


class DatabaseMocks(testing.RecordingMocks):
    """RecordingMocks that also answer with each database's private address and record `protect`."""

    def __init__(self) -> None:
        super().__init__()
        self.protected: set[str] = set()

    def new_resource(self, args):
        resource_id, outputs = super().new_resource(args)
        if args.typ in PRIVATE_HOSTS:
            key, value = PRIVATE_HOSTS[args.typ]
            outputs[key] = value
        if args.typ == SCW_DB:
            outputs["privateNetwork"] = dict(outputs["privateNetwork"], ip="172.16.4.2", port=5432)
        if args.typ == SERVICE:
            outputs["spec"] = dict(outputs["spec"], clusterIP=CLUSTER_IP)
        return resource_id, outputs


class _ProtectMonitor(testing._RecordingMonitor):
    def RegisterResource(self, request):  # noqa: N802 - the gRPC method name
        if request.protect:
            self.mocks.protected.add(request.name)
        return super().RegisterResource(request)


@pytest.fixture
def mocks():
    mocks = DatabaseMocks()
    testing.ensure_event_loop()
    pulumi.runtime.set_mocks(mocks, project="inferplane", stack="test", preview=False,
                             monitor=_ProtectMonitor(mocks))
    return mocks


def deployment(cloud: str, region: str, **overrides: Any) -> DeploymentConfig:
    data = {"cloud": cloud, "region": region, "name": "nemotron-ultra",
            "ledger": {"central": True}}
    if cloud == "eks":
        data["model_cache"] = {"storage_class": "gp3"}
    if cloud == "scaleway":
        data["zone"] = f"{region}-1"
    data.update(overrides)
    return from_mapping(with_gke_proxy_subnet(data))


def dsn_secret(mocks) -> testing.RecordedResource:
    (secret,) = [r for r in mocks.of_type(SECRET)
                 if r.inputs["metadata"]["name"] == "nemotron-ultra-ledger-db"]
    return secret


def assert_dsn_secret(mocks, host: str, sslmode: str) -> None:
    """The DSN Secret is the one the pod reads, its data a secret, the password URL-encoded."""
    secret = dsn_secret(mocks)
    assert secret.inputs["metadata"]["namespace"] == "inferplane"
    assert testing.is_secret_value(secret.inputs["stringData"])
    url = secret.plain("stringData")["url"]
    assert url == (f"postgresql://inferplane:s3cret%2BWith%3DSym%25bols%23and-length@{host}:5432/"
                   f"inferplane?sslmode={sslmode}")
    assert PASSWORD not in json.dumps(secret.inputs["metadata"])
    component = mocks.one("inferplane:ledger:Database")
    assert secret.parent == component.urn
    assert testing.is_secret_value(component.outputs["url"])


def assert_in_eu(mocks, provider_props: dict[str, Any]) -> None:
    """The residency policy passes every resource the component registers."""
    for resource in mocks.resources:
        plain = json.loads(json.dumps(resource.inputs, default=str))
        assert residency_problems(resource.type, plain, provider_props) == [], resource.type


def test_gke_cloud_sql_is_private_backed_up_protected_in_the_region(mocks):
    args = GkeLedgerDatabaseArgs(config=deployment("gke", "europe-west4"), password=PASSWORD,
                                 network="projects/p/global/networks/vpc", project="p")
    testing.run_program(lambda: LedgerDatabase.for_cloud("ledger", args))
    instance = mocks.one(CLOUD_SQL).inputs
    assert instance["region"] == "europe-west4"
    assert instance["databaseVersion"].startswith("POSTGRES_")
    assert instance["deletionProtection"] is True
    settings = instance["settings"]
    assert settings["deletionProtectionEnabled"] is True
    assert settings["ipConfiguration"]["ipv4Enabled"] is False
    assert settings["ipConfiguration"]["privateNetwork"] == "projects/p/global/networks/vpc"
    assert settings["ipConfiguration"]["sslMode"] == "ENCRYPTED_ONLY"
    backups = settings["backupConfiguration"]
    assert backups["enabled"] is True and backups["pointInTimeRecoveryEnabled"] is True
    assert backups["location"] == "europe-west4"
    user = mocks.one("gcp:sql/user:User")
    assert testing.is_secret_value(user.inputs["password"]) and user.plain("password") == PASSWORD
    assert mocks.one("gcp:sql/database:Database").inputs["name"] == "inferplane"
    assert_dsn_secret(mocks, "10.20.0.3", "require")
    assert mocks.depends_on(dsn_secret(mocks), user)
    assert_in_eu(mocks, {"project": "p", "region": "europe-west4"})


def test_eks_rds_is_private_encrypted_backed_up_protected_in_the_region(mocks):
    args = EksLedgerDatabaseArgs(config=deployment("eks", "eu-central-1"), password=PASSWORD,
                                 subnet_ids=["subnet-a", "subnet-b"], security_group_ids=["sg-1"])
    testing.run_program(lambda: LedgerDatabase.for_cloud("ledger", args))
    rds = mocks.one(RDS)
    instance = rds.inputs
    assert instance["region"] == "eu-central-1" and instance["engine"] == "postgres"
    assert instance["publiclyAccessible"] is False
    assert instance["storageEncrypted"] is True
    assert instance["backupRetentionPeriod"] >= 7
    assert instance["deletionProtection"] is True
    assert instance["skipFinalSnapshot"] is False and instance["finalSnapshotIdentifier"]
    assert instance["vpcSecurityGroupIds"] == ["sg-1"]
    assert testing.is_secret_value(instance["password"]) and rds.plain("password") == PASSWORD
    subnets = mocks.one("aws:rds/subnetGroup:SubnetGroup").inputs
    assert subnets["region"] == "eu-central-1" and subnets["subnetIds"] == ["subnet-a", "subnet-b"]
    assert instance["dbSubnetGroupName"] == "ledger-subnets"
    assert_dsn_secret(mocks, PRIVATE_HOSTS[RDS][1], "require")
    assert_in_eu(mocks, {})  # no provider region: every resource states its own


def test_scaleway_database_joins_the_clusters_private_network_only(mocks):
    def program():
        pool = ScalewayGpuNodePool("gpu", ScalewayGpuNodePoolArgs(
            config=deployment("scaleway", "fr-par", zone="fr-par-2"), kubernetes_version="1.35"))
        args = ScalewayLedgerDatabaseArgs(config=deployment("scaleway", "fr-par", zone="fr-par-2"),
                                          password=PASSWORD,
                                          private_network_id=pool.private_network_id)
        LedgerDatabase.for_cloud("ledger", args)

    testing.run_program(program)
    database = mocks.one(SCW_DB)
    instance = database.inputs
    assert instance["region"] == "fr-par"
    assert instance["privateNetwork"]["pnId"] == "gpu-network-id"  # the cluster's own network
    assert "loadBalancers" not in instance and "loadBalancer" not in instance  # no public endpoint
    assert instance["disableBackup"] is False and instance["backupSameRegion"] is True
    assert instance["backupScheduleRetention"] >= 7
    assert instance["encryptionAtRest"] is True
    # No deletion-protection flag exists in Scaleway's API: Pulumi's protect guards it instead.
    assert database.name in mocks.protected
    assert testing.is_secret_value(instance["password"]) and database.plain("password") == PASSWORD
    assert mocks.one("scaleway:databases/database:Database").inputs["region"] == "fr-par"
    assert_dsn_secret(mocks, "172.16.4.2", "require")
    assert_in_eu(mocks, {})


def test_in_cluster_postgres_is_pinned_non_root_persistent_and_reachable_only_by_gateways(mocks):
    args = InClusterLedgerDatabaseArgs(config=deployment("local", "local"), password=PASSWORD,
                                       storage_class="standard", wait_for_ready=False)
    testing.run_program(lambda: LedgerDatabase.for_cloud("ledger", args))
    stateful_set = mocks.one("kubernetes:apps/v1:StatefulSet").inputs
    pod = stateful_set["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == POSTGRES_IMAGE and ":17." in POSTGRES_IMAGE
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 999
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    claim = stateful_set["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == "standard"
    assert {"name": "data", "mountPath": "/var/lib/postgresql/data"} in container["volumeMounts"]
    password_env = next(e for e in container["env"] if e["name"] == "POSTGRES_PASSWORD")
    password_secret = next(r for r in mocks.of_type(SECRET) if r.inputs["metadata"]["name"]
                           == password_env["valueFrom"]["secretKeyRef"]["name"])
    assert testing.is_secret_value(password_secret.inputs["stringData"])
    assert PASSWORD not in json.dumps(stateful_set)
    policy = mocks.one("kubernetes:networking.k8s.io/v1:NetworkPolicy").inputs["spec"]
    assert policy["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "inferplane", "app.kubernetes.io/instance": "nemotron-ultra",
        "app.kubernetes.io/component": "inference"}}}]
    # A local cluster may run no DNS (the real node does not): the DSN names the ClusterIP.
    assert_dsn_secret(mocks, CLUSTER_IP, "disable")
    for resource in mocks.resources:
        if resource.type.startswith("kubernetes:"):
            assert resource.inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
            for check in (image_problems, probe_problems, request_problems):
                assert check(resource.type, resource.inputs) == [], (check.__name__, resource.type)
    assert not [t for t in mocks.types() if t.split(":")[0] in ("gcp", "aws", "scaleway")]


@pytest.mark.parametrize("cloud,region,args_class,extra", [
    ("gke", "us-central1", GkeLedgerDatabaseArgs, {"network": "vpc"}),
    ("eks", "us-east-1", EksLedgerDatabaseArgs, {"subnet_ids": ["a", "b"], "security_group_ids": ["s"]}),
    ("scaleway", "us-east", ScalewayLedgerDatabaseArgs, {"private_network_id": "pn"}),
    ("local", "us-east-1", InClusterLedgerDatabaseArgs, {}),
])
def test_non_eu_region_fails_before_any_resource_is_registered(mocks, cloud, region, args_class,
                                                                extra):
    # Built without validation, as a caller of the component could: the component checks again.
    config = DeploymentConfig.model_validate({"cloud": cloud, "region": region,
                                              "ledger": {"central": True}})
    if cloud == "local":  # `local` has no region to check; `existing` in a named region does
        config = DeploymentConfig.model_validate({"cloud": "existing", "region": region,
                                                  "ledger": {"central": True}})
    args = args_class(config=config, password=PASSWORD, **extra)
    with pytest.raises(ConfigError) as error:
        testing.run_program(lambda: LedgerDatabase.for_cloud("ledger", args))
    assert region in str(error.value) and "region" in str(error.value)
    assert mocks.resources == []


@pytest.mark.parametrize("args,field", [
    (GkeLedgerDatabaseArgs(config=deployment("gke", "europe-west4"), password=PASSWORD),
     "ledgerDb.network"),
    (EksLedgerDatabaseArgs(config=deployment("eks", "eu-west-3"), password=PASSWORD,
                           subnet_ids=["only-one"], security_group_ids=["sg"]), "ledgerDb.subnetIds"),
    (ScalewayLedgerDatabaseArgs(config=deployment("scaleway", "nl-ams"), password=PASSWORD),
     "ledgerDb.privateNetworkId"),
    (InClusterLedgerDatabaseArgs(config=deployment("local", "local"), password="short"),
     "ledgerDbPassword"),
    # Defect 5: `openssl rand -base64 24`, the password the docs recommended, may hold / and +;
    # RDS refuses / " @ and space.
    (EksLedgerDatabaseArgs(config=deployment("eks", "eu-west-3"), password="ab/cdEFGH12345678+x",
                           subnet_ids=["a", "b"], security_group_ids=["sg"]), "ledgerDbPassword"),
    (EksLedgerDatabaseArgs(config=deployment("eks", "eu-west-3"), password="abc@defGH12345678",
                           subnet_ids=["a", "b"], security_group_ids=["sg"]), "ledgerDbPassword"),
    # Scaleway needs upper, lower, digit and special.
    (ScalewayLedgerDatabaseArgs(config=deployment("scaleway", "nl-ams"), private_network_id="pn",
                                password="abcdefgh12345678XY"), "ledgerDbPassword"),
])
def test_missing_or_weak_inputs_are_named_before_any_resource(mocks, args, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        testing.run_program(lambda: LedgerDatabase.for_cloud("ledger", args))
    assert mocks.resources == []


# -- through the stack program --

STACK_LEDGER = {
    "gke": {},  # the shipped GKE stack names its VPC
    "eks": {},  # the shipped EKS stack names its subnets and security groups
    "scaleway": {},  # the created cluster's Private Network
    "local": {},
}


def stack_config(stack: str) -> dict:
    config = testing.shipped_stack_config(stack)
    return config | {"inferplane:ledger": {"central": True}} | STACK_LEDGER[stack]


def run_stack(config: dict, secrets: dict) -> dict[str, testing.Export]:
    values = dict(config) | secrets
    testing.set_stack_config(values, tuple(secrets))
    return testing.run_stack_program(REPO / "stacks" / "__main__.py")


SECRETS = {"inferplane:apiKeysJson": json.dumps({"version": 1, "keys": []}),
           "inferplane:ledgerDbPassword": PASSWORD}


@pytest.mark.parametrize("stack,database", [
    ("gke", CLOUD_SQL), ("eks", RDS), ("scaleway", SCW_DB),
    ("local", "kubernetes:apps/v1:StatefulSet"),
])
def test_the_stack_creates_the_database_and_the_secret_the_pods_read(mocks, stack, database):
    config = stack_config(stack)
    outputs = run_stack(config, SECRETS)
    assert mocks.one(database)
    pods = mocks.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]
    gateway = next(c for c in pods["containers"] if c["name"] == "gateway")
    ref = next(e for e in gateway["env"] if e["name"] == CENTRAL_LEDGER_URL_ENV)
    assert ref["valueFrom"]["secretKeyRef"] == {"name": "nemotron-ultra-ledger-db", "key": "url"}
    secret = dsn_secret(mocks)
    assert testing.is_secret_value(secret.inputs["stringData"])
    assert "url" in secret.plain("stringData")
    # Created after the Namespace, through the program's Kubernetes provider.
    (namespace,) = [r for r in mocks.of_type("kubernetes:core/v1:Namespace")
                    if r.inputs["metadata"]["name"] == "inferplane"]
    assert mocks.depends_on(mocks.one("inferplane:ledger:Database"), namespace)
    # Defect 7: the Secret the gateway reads its DSN from exists before the Deployment.
    assert secret.urn in mocks.one("kubernetes:apps/v1:Deployment").dependencies
    assert secret.provider.startswith(mocks.one("pulumi:providers:kubernetes").urn)
    assert PASSWORD not in json.dumps({name: e.value for name, e in outputs.items()})
    provider_props = {k.split(":")[1]: v for k, v in config.items() if not k.startswith("inferplane:")}
    assert_in_eu(mocks, provider_props)


@pytest.mark.parametrize("stack", ["gke", "eks", "scaleway", "local"])
def test_without_a_given_password_one_is_generated_to_every_clouds_rules(mocks, stack):
    # Defect 5: no password to paste; generated as a Pulumi secret, valid on RDS and Scaleway.
    secrets = {"inferplane:apiKeysJson": SECRETS["inferplane:apiKeysJson"]}
    run_stack(stack_config(stack), secrets)
    generated = mocks.one("random:index/randomPassword:RandomPassword").inputs
    assert generated["length"] >= 16
    assert (generated["minUpper"], generated["minLower"], generated["minNumeric"],
            generated["minSpecial"]) >= (1, 1, 1, 1)
    assert not set(generated["overrideSpecial"]) & set('/"@ ')
    secret = dsn_secret(mocks)
    assert testing.is_secret_value(secret.inputs["stringData"])
    assert testing.MOCK_GENERATED_PASSWORD in secret.plain("stringData")["url"]


def test_rds_final_snapshot_names_are_unique_per_stack_lifetime(mocks):
    # Defect 8: a fixed "<id>-final" collides on the second destroy of a re-created stack.
    args = EksLedgerDatabaseArgs(config=deployment("eks", "eu-central-1"), password=PASSWORD,
                                 subnet_ids=["a", "b"], security_group_ids=["sg"])
    testing.run_program(lambda: LedgerDatabase.for_cloud("ledger", args))
    suffix = mocks.one("random:index/randomId:RandomId")
    instance = mocks.one(RDS).inputs
    assert instance["finalSnapshotIdentifier"] == "nemotron-ultra-ledger-final-0a1b2c3d"
    assert instance["skipFinalSnapshot"] is False
    assert suffix.inputs["byteLength"] >= 4


@pytest.mark.parametrize("protect", [True, False])
def test_cloud_sql_deletion_protection_is_configurable(mocks, protect):
    # Defect 8: it was hard-coded on, so a test stack could never be destroyed.
    args = GkeLedgerDatabaseArgs(config=deployment("gke", "europe-west4"), password=PASSWORD,
                                 network="projects/p/global/networks/n",
                                 deletion_protection=protect)
    testing.run_program(lambda: LedgerDatabase.for_cloud("ledger", args))
    instance = mocks.one(CLOUD_SQL).inputs
    assert instance["deletionProtection"] is protect
    assert instance["settings"]["deletionProtectionEnabled"] is protect


def test_the_stack_names_a_missing_gke_network(mocks):
    config = {k: v for k, v in stack_config("gke").items() if k != "inferplane:ledgerDb"}
    with pytest.raises(ConfigError, match=r"inferplane:ledgerDb\.network"):
        run_stack(config, SECRETS)
    assert mocks.resources == []


def test_without_the_central_ledger_no_database_is_created(mocks):
    config = stack_config("gke") | {"inferplane:ledger": {"central": False, "pod_local": True}}
    run_stack(config, {"inferplane:apiKeysJson": SECRETS["inferplane:apiKeysJson"]})
    assert mocks.of_type("inferplane:ledger:Database") == []
    assert mocks.of_type(CLOUD_SQL) == []


@pytest.mark.parametrize("stack", ["local", "gke", "eks", "scaleway"])
def test_every_policy_passes_a_stack_with_the_central_ledger(mocks, stack):
    from pulumi_policy import StackValidationPolicy

    from inferplane_policies import POLICIES
    from tests.unit.test_policy import _plain, check, check_stack

    config = stack_config(stack)
    run_stack(config, SECRETS)
    provider_props = {k.split(":")[1]: v for k, v in config.items() if not k.startswith("inferplane:")}
    resources = [(r.type, _plain(r.inputs)) for r in mocks.resources]
    assert any(t.startswith("kubernetes:core/v1:Secret") for t, _ in resources)
    for policy in POLICIES:
        if isinstance(policy, StackValidationPolicy):
            assert check_stack(policy, resources) == [], policy.name
        else:
            for resource_type, props in resources:
                assert check(policy, resource_type, props, provider_props) == [], (
                    policy.name, resource_type)


def test_in_cluster_postgres_on_an_existing_cluster_is_found_by_dns_and_its_image_is_configurable(
        mocks):
    args = InClusterLedgerDatabaseArgs(config=deployment("existing", "europe-west4"),
                                       password=PASSWORD, wait_for_ready=False,
                                       image="registry.example.eu/postgres:17.6-bookworm")
    testing.run_program(lambda: LedgerDatabase.for_cloud("ledger", args))
    (container,) = mocks.one("kubernetes:apps/v1:StatefulSet").inputs["spec"]["template"]["spec"][
        "containers"]
    assert container["image"] == "registry.example.eu/postgres:17.6-bookworm"
    service = mocks.one(SERVICE).inputs
    assert_dsn_secret(mocks, f"{service['metadata']['name']}.inferplane.svc.cluster.local",
                      "disable")
