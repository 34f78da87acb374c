"""The central ledger on the real node: `pulumi up` with `ledger.central: true` runs the
in-cluster PostgreSQL (InClusterLedgerDatabase, from the image built here out of Debian's
postgresql-17) as a pod next to the gateway, and the gateway ships its spool to it.

What the product promises and these tests check, with the official openai client through the
Service's ClusterIP and the central ledger read from the host: every request a client saw
succeed has exactly one record centrally; a pod's deletion (its spool is an emptyDir) or a rolling
update under load loses none, because the gateway ships what its spool still holds when it is
stopped (the drain, bounded by the grace period). The shipper's interval is 60 s while the tests
want records waiting in the spool, so what reaches PostgreSQL after a pod is deleted went there
through the drain.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from datetime import datetime, timezone

import pytest
from kubernetes import client as k8s

from inferplane.cluster import simulator_stack, tools
from inferplane.cluster.node import RealNode
from inferplane.gateway.keys import KeysFile, create_key

from .conftest import REPO_ROOT, require_tools
from .kube_helpers import kubectl, running_pods, service_base_url, wait_gone
from .pulumi_cli import PulumiCli, project_copy

pytestmark = pytest.mark.cluster
NAMESPACE = "inferplane-ledger"
STORAGE_CLASS = "inferplane-local"  # no provisioner: a static `local` PV of this class
LEDGER_VOLUME = "inferplane-ledger-postgres"
SLOW_SHIP_SECONDS = 60  # records stay in the spool between shipper runs
GRACE_SECONDS = 90  # terminationGracePeriodSeconds: bounds the drain (and a slow teardown)
INFERENCE = "app.kubernetes.io/component=inference"
LEDGER_DB = "app.kubernetes.io/component=ledger-db"


@pytest.fixture(scope="module")
def central_deployment(real_node_cluster, node_gateway_image, node_postgres_image,
                       kube_client_real, tmp_path_factory):
    """The `local` stack through `pulumi up` with the simulator engine, ledger.central on and
    the PostgreSQL image built here; Pulumi awaits the StatefulSet and the Deployment."""
    require_tools(tools.PULUMI_TOOLS, "pulumi up on the real node")
    config = simulator_stack.simulator_config(node_gateway_image,
                                              REPO_ROOT / simulator_stack.LOCAL_STACK_FILE)
    config = config.model_copy(update={"namespace": NAMESPACE})
    core = k8s.CoreV1Api(kube_client_real)
    core.create_persistent_volume(RealNode(real_node_cluster.state_dir, echo=lambda m: None)
                                  .persistent_volume(LEDGER_VOLUME, 10, STORAGE_CLASS))
    keys_file = KeysFile()
    plaintext, entry = create_key(keys_file, tenant="acme", name="central ledger test")
    base = tmp_path_factory.mktemp("pulumi-ledger")
    cli = PulumiCli(project_copy(base / "project"), base / "engine", real_node_cluster.kubeconfig)
    cli.init()
    try:
        for key, value in {
            "namespace": NAMESPACE, "model.engine": "simulator",
            "image.gateway": node_gateway_image, "image.pull_policy": "Never",
            "waitForReady": True, "probes.termination_grace_seconds": GRACE_SECONDS,
            "ledger.central": True, "ledger.ship_interval_seconds": SLOW_SHIP_SECONDS,
            "ledgerDb.image": node_postgres_image, "ledgerDb.storageClass": STORAGE_CLASS,
            "ledgerDb.storageGib": 10,
        }.items():
            cli.set(key, value)
        cli.set("apiKeysJson", keys_file.model_dump_json(), secret=True)
        cli.set("ledgerDbPassword", secrets.token_urlsafe(24), secret=True)
        cli.up()
        simulator_stack.wait_available(kube_client_real, config, timeout_seconds=300)
        yield {"cli": cli, "config": config, "key": plaintext, "entry": entry}
    finally:
        # Nothing is left to drain at teardown: pods go at once, then the stack and its volume.
        try:
            core.delete_collection_namespaced_pod(NAMESPACE, label_selector=INFERENCE,
                                                  grace_period_seconds=0)
        except k8s.exceptions.ApiException:
            pass
        cli.destroy()
        wait_gone(kube_client_real, NAMESPACE)
        try:
            core.delete_persistent_volume(LEDGER_VOLUME)
        except k8s.exceptions.ApiException:
            pass


def central_url(api_client, config) -> str:
    """The DSN the gateways read (the Secret InClusterLedgerDatabase publishes)."""
    secret = k8s.CoreV1Api(api_client).read_namespaced_secret(config.ledger_secret_name,
                                                              config.namespace)
    return base64.b64decode(secret.data["url"]).decode()


def central_records(api_client, config) -> dict:
    """request_id -> record, as the central PostgreSQL holds them (read from the host through
    the Service's ClusterIP, as the gateways reach it)."""
    from inferplane.ledger import open_ledger

    ledger = open_ledger(central_url(api_client, config))
    try:
        records = ledger.records()
    finally:
        ledger.close()
    ids = [r.request_id for r in records]
    assert len(ids) == len(set(ids)), "a request id is recorded twice centrally"
    return {r.request_id: r for r in records}


def chat(client, model: str, stream: bool = False) -> tuple[str, object]:
    """One chat completion, streamed or not; its request id (the ledger's key, from
    X-Request-Id) and usage (a stream's comes in its last chunk)."""
    messages = [{"role": "user", "content": "Count the usage, please."}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=16)
        assert reply.usage is not None and reply._request_id
        return reply._request_id, reply.usage
    chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=64,
                                            stream=True, stream_options={"include_usage": True})
    with chunks:
        usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
        request_id = chunks.response.headers["x-request-id"]
    assert len(usage) == 1 and request_id, usage
    return request_id, usage[0]


def wait_shipped(api_client, config, ids: set[str], timeout_seconds: float) -> dict:
    deadline = time.monotonic() + timeout_seconds
    while True:
        found = central_records(api_client, config)
        missing = ids - set(found)
        if not missing:
            return found
        assert time.monotonic() < deadline, (
            f"{len(missing)} of {len(ids)} records never reached the central ledger: "
            f"{sorted(missing)[:5]}")
        time.sleep(2)


def test_records_ship_from_the_spool_to_postgres_running_on_the_real_node(
        central_deployment, kube_client_real, real_node_cluster):
    import openai

    config, key, entry = (central_deployment[k] for k in ("config", "key", "entry"))
    (database,) = running_pods(kube_client_real, NAMESPACE, LEDGER_DB)
    assert database.spec.node_name == "inferplane-node-0"
    pod = database.metadata.name
    # Non-root (the official image's uid) on a read-only root filesystem.
    who = kubectl(real_node_cluster, "-n", NAMESPACE, "exec", pod, "--", "id", "-u")
    assert who.stdout.strip() == "999"
    write = kubectl(real_node_cluster, "-n", NAMESPACE, "exec", pod, "--", "touch", "/probe",
                    check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    # No cluster DNS here: the DSN names the database Service by its ClusterIP.
    service = k8s.CoreV1Api(kube_client_real).read_namespaced_service(
        f"{config.name}-ledger-postgres", NAMESPACE)
    assert f"@{service.spec.cluster_ip}:5432/" in central_url(kube_client_real, config)

    client = openai.OpenAI(base_url=service_base_url(kube_client_real, config), api_key=key,
                           max_retries=0, timeout=30)
    served = dict(chat(client, config.served_model_name, stream) for stream in (False, True, False))
    found = wait_shipped(kube_client_real, config, set(served), SLOW_SHIP_SECONDS * 2 + 30)
    for request_id, usage in served.items():
        record = found[request_id]
        assert record.key_id == entry.id and record.tenant == "acme"
        assert (record.prompt_tokens, record.completion_tokens) == (
            usage.prompt_tokens, usage.completion_tokens)


def test_deleting_the_gateway_pod_ships_its_spool_and_loses_no_record(
        central_deployment, kube_client_real):
    """Records still in the spool (an emptyDir) when the pod is deleted reach PostgreSQL: the
    gateway ships them on SIGTERM, inside the grace period."""
    import openai

    config, key = central_deployment["config"], central_deployment["key"]
    client = openai.OpenAI(base_url=service_base_url(kube_client_real, config), api_key=key,
                           max_retries=0, timeout=30)
    served: set[str] = set()
    waiting: set[str] = set()
    # The shipper runs every 60 s: records just served wait in the spool (if a run happens to
    # take them first, serve more).
    for _ in range(4):
        served |= {chat(client, config.served_model_name)[0] for _ in range(5)}
        waiting = served - set(central_records(kube_client_real, config))
        if waiting:
            break
    assert waiting, "every record was shipped before the pod's deletion: nothing to drain"
    (pod,) = running_pods(kube_client_real, NAMESPACE, INFERENCE)
    core = k8s.CoreV1Api(kube_client_real)
    core.delete_namespaced_pod(pod.metadata.name, NAMESPACE)  # the rendered grace period
    deadline = time.monotonic() + GRACE_SECONDS + 60
    while True:
        try:
            core.read_namespaced_pod(pod.metadata.name, NAMESPACE)
        except k8s.exceptions.ApiException as error:
            assert error.status == 404
            break
        assert time.monotonic() < deadline, "the deleted pod never went away"
        time.sleep(1)
    # The spool went with the pod: what is not central now is lost.
    found = central_records(kube_client_real, config)
    assert served <= set(found), f"lost with the pod: {sorted(served - set(found))[:5]}"
    simulator_stack.wait_available(kube_client_real, config, timeout_seconds=300)


class SteadyClient:
    """Threads sending chat completions back to back with the openai client (no retries), one
    of them streamed; each success's request id and each failure kept."""

    def __init__(self, url: str, key: str, model: str, threads: int = 3):
        import openai

        self.clients = [openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
                        for _ in range(threads)]
        self.model = model
        self.ids: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(c, n == 0), daemon=True)
                        for n, c in enumerate(self.clients)]

    def _run(self, client, stream: bool) -> None:
        while not self.stop.is_set():
            try:
                request_id, _ = chat(client, self.model, stream)
            except Exception as error:  # noqa: BLE001 - every failure is the test's finding
                cause = error.__cause__ or error.__context__
                with self.lock:
                    self.failures.append(f"{type(error).__name__}: {error} "
                                         f"({type(cause).__name__}: {cause})")
                continue
            with self.lock:
                self.ids.append(request_id)

    def start(self) -> "SteadyClient":
        for thread in self.threads:
            thread.start()
        return self

    def served(self) -> int:
        with self.lock:
            return len(self.ids)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)


def process_prefix(request_id: str) -> str:
    """The gateway process's part of its request ids ("req_" + 14 hex per process + counter)."""
    return request_id[4:18]


class TerminationWatch:
    """Polls for the old pod's deletion; at that moment, the records its gateway served (by their
    ids' process part) that the central ledger does not hold yet: what only the drain can ship."""

    def __init__(self, api_client, config, old_pods: set[str], load: SteadyClient):
        self.api_client, self.config, self.old_pods, self.load = api_client, config, old_pods, load
        with load.lock:
            self.old_process = {process_prefix(i) for i in load.ids}
        self.waiting: set[str] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TerminationWatch":
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not self.load.stop.is_set():
            pods = k8s.CoreV1Api(self.api_client).list_namespaced_pod(
                NAMESPACE, label_selector=INFERENCE).items
            if any(p.metadata.deletion_timestamp for p in pods if p.metadata.name in self.old_pods):
                with self.load.lock:
                    served = {i for i in self.load.ids if process_prefix(i) in self.old_process}
                self.waiting = served - set(central_records(self.api_client, self.config))
                return
            time.sleep(0.5)


def test_rolling_update_under_steady_load_fails_no_request_and_loses_no_record(
        central_deployment, kube_client_real):
    """A config change through `pulumi up` rolls the pod while a client keeps sending: the old
    pod stops taking requests before it stops (preStop), finishes what it has, and ships its spool
    (the drain) before the grace period ends; the new pod serves."""
    cli, config, key = (central_deployment[k] for k in ("cli", "config", "key"))
    before = {p.metadata.name for p in running_pods(kube_client_real, NAMESPACE, INFERENCE)}
    started = datetime.now(timezone.utc)
    load = SteadyClient(service_base_url(kube_client_real, config), key,
                        config.served_model_name).start()
    try:
        deadline = time.monotonic() + 60
        while load.served() < 10:
            assert time.monotonic() < deadline and not load.failures, load.failures[:3]
            time.sleep(0.5)
        # Any pod-template change rolls the Deployment: here the gateway's config (its hash is a
        # pod annotation). Pulumi awaits the rollout; meanwhile, note what the old pod's spool
        # still held when its termination began.
        termination = TerminationWatch(kube_client_real, config, before, load).start()
        cli.set("ledger.ship_interval_seconds", 1)
        cli.up()
        deadline = time.monotonic() + GRACE_SECONDS + 120
        while True:
            pods = k8s.CoreV1Api(kube_client_real).list_namespaced_pod(
                NAMESPACE, label_selector=INFERENCE).items
            if not {p.metadata.name for p in pods} & before:
                break
            assert time.monotonic() < deadline, "the old pod never finished terminating"
            time.sleep(1)
        after = {p.metadata.name for p in running_pods(kube_client_real, NAMESPACE, INFERENCE)}
        assert after and not after & before, "the update did not replace the pod"
        # The new pod serves the same stream.
        served_at_switch = load.served()
        deadline = time.monotonic() + 60
        while load.served() < served_at_switch + 10:
            assert time.monotonic() < deadline, "no request succeeded after the rollout"
            time.sleep(0.5)
    finally:
        load.finish()
    assert not load.failures, f"{len(load.failures)} failed requests, e.g. {load.failures[:3]}"
    termination.thread.join(30)
    assert termination.waiting, ("the old pod's spool was empty when its termination began: "
                                 "the drain was not exercised")
    ids = set(load.ids)
    assert len(ids) == len(load.ids), "the gateway gave two requests the same id"
    found = wait_shipped(kube_client_real, config, ids, 120)
    # Exactly the requests the client saw succeed are billed: none lost, none extra.
    entry = central_deployment["entry"]
    billed = {i for i, r in found.items() if r.key_id == entry.id and r.created_at >= started}
    assert billed == ids
