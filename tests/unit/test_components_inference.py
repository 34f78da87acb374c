"""InferenceService under Pulumi mocks: the rendered manifests, applied as they are, and secret Secrets."""

from __future__ import annotations

import json

import pulumi
import pytest

from inferplane.components import InferenceService, InferenceServiceArgs, Platform, PlatformArgs, testing
from inferplane.components.inference import AWAIT_MARGIN_SECONDS, SKIP_AWAIT, TIMEOUT_SECONDS
from inferplane.config import ConfigError, DeploymentConfig, from_mapping
from inferplane.render import render

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SECRET = "kubernetes:core/v1:Secret"
KEYS_FILE = json.dumps({"version": 1, "keys": []})


@pytest.fixture
def mocks():
    return testing.install()


def nemotron(**overrides) -> DeploymentConfig:
    data = {"cloud": "gke", "region": "europe-west4", "zone": "europe-west4-c",
            "model": {"name": "nemotron-ultra-253b"},
            "ingress": {"host": "llm.example.eu", "source_cidrs": ["10.129.0.0/23"]}}
    data.update(overrides)
    return from_mapping(data)


def deploy(mocks, config=None, **args) -> list:
    created = []
    args.setdefault("api_keys_json", KEYS_FILE)
    testing.run_program(lambda: created.append(InferenceService(
        "svc", InferenceServiceArgs(config=config or nemotron(), **args))))
    return created


def vllm_container(mocks) -> dict:
    spec = mocks.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "vllm")


def test_nemotron_ultra_runs_with_tensor_parallelism_8_on_8_gpus(mocks):
    deploy(mocks)
    vllm = vllm_container(mocks)
    args = vllm["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "8"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == "8"


def test_applies_exactly_what_inferplane_render_writes(mocks):
    config = nemotron()
    deploy(mocks, config)
    for manifest in render(config):
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        matches = [r for r in mocks.resources if r.type.endswith(f":{kind}")
                   and r.inputs.get("metadata", {}).get("name") == name]
        assert len(matches) == 1, (kind, name)
        applied = json.loads(json.dumps(matches[0].inputs))
        annotations = applied["metadata"].get("annotations", {})
        for key in [k for k in annotations if k.startswith("pulumi.com/")]:
            del annotations[key]
        if not annotations:
            applied["metadata"].pop("annotations", None)
        assert applied == json.loads(json.dumps(manifest)), (kind, name)


def test_api_keys_and_hf_token_are_secret_all_the_way(mocks):
    def program():
        service = InferenceService("svc", InferenceServiceArgs(
            config=nemotron(model_cache={"kind": "empty_dir"}),
            api_keys_json=KEYS_FILE,  # plain strings in: the component makes them secret
            hf_token="hf_plaintext_token"))

        async def check():
            for secret in service.secrets:
                assert await secret.string_data.is_secret()
            return True

        return pulumi.Output.from_input(check())

    testing.run_program(program)
    secrets = {r.inputs["metadata"]["name"]: r for r in mocks.of_type(SECRET)}
    keys = secrets["nemotron-ultra-api-keys"].inputs["stringData"]
    token = secrets["nemotron-ultra-hf-token"].inputs["stringData"]
    assert testing.is_secret_value(keys) and testing.is_secret_value(token)
    # Under the key names the pod mounts / reads.
    assert testing.unwrap_secret(keys) == {"keys.json": KEYS_FILE}
    assert testing.unwrap_secret(token) == {"token": "hf_plaintext_token"}


def test_pods_wait_for_their_secrets_and_the_platform(mocks):
    def program():
        platform = Platform("platform", PlatformArgs(config=nemotron()))
        InferenceService("svc", InferenceServiceArgs(
            config=nemotron(), api_keys_json=KEYS_FILE, hf_token="hf_x", platform=platform))

    testing.run_program(program)
    deployment = mocks.one(DEPLOYMENT)
    job = mocks.one("kubernetes:batch/v1:Job")
    for secret in mocks.of_type(SECRET):
        assert mocks.depends_on(deployment, secret)
        assert mocks.depends_on(job, secret)
    for release in mocks.of_type("kubernetes:helm.sh/v3:Release"):
        assert mocks.depends_on(deployment, release), release.name
    # The Job fills the volume beside a running inference pod: it must not wait for the
    # Deployment (nor the other way round), or the first deploy deadlocks.
    assert not mocks.depends_on(deployment, job) and not mocks.depends_on(job, deployment)


def test_outputs_are_the_endpoint_namespace_and_keys_secret(mocks):
    def program():
        service = InferenceService("svc", InferenceServiceArgs(config=nemotron(),
                                                               api_keys_json=KEYS_FILE))

        def check(values):
            url, namespace, secret_name = values
            assert url == "https://llm.example.eu/v1"
            assert namespace == "inferplane"
            assert secret_name == "nemotron-ultra-api-keys"

        return pulumi.Output.all(service.endpoint_url, service.namespace,
                                 service.keys_secret_name).apply(check)

    testing.run_program(program)
    outputs = mocks.one("inferplane:inference:Service").outputs
    assert outputs["keys_secret_name"] == "nemotron-ultra-api-keys"


def test_without_ingress_the_endpoint_is_the_in_cluster_service(mocks):
    (service,) = deploy(mocks, nemotron(ingress={"enabled": False}))
    testing.run_program(lambda: service.endpoint_url.apply(
        lambda url: _equal(url, "http://nemotron-ultra.inferplane.svc.cluster.local/v1")))
    assert mocks.of_type("kubernetes:networking.k8s.io/v1:Ingress") == []


def _equal(actual, expected):
    assert actual == expected


def test_waiting_covers_fetch_and_load_but_follows_the_estimate_not_the_jobs_deadline(mocks):
    config = nemotron()
    deploy(mocks, config)
    annotations = mocks.one(DEPLOYMENT).inputs["metadata"]["annotations"]
    cold, warm = config.start_seconds("pvc")
    timeout = int(annotations[TIMEOUT_SECONDS])
    # Longer than the estimated fetch plus the startup budget: never Pulumi's 10 minutes ...
    assert timeout > (cold - warm) + config.startup_budget_seconds
    # ... but a stuck pod fails `pulumi up` within ~2 h, not after the 6 h fetch deadline (defect 7).
    assert timeout < config.model_cache.prefetch_timeout_seconds
    assert timeout <= 2 * 3600
    assert SKIP_AWAIT not in annotations


def test_pulumi_waits_for_the_rendered_progress_deadline_per_replaced_pod(mocks):
    # One replica: the deadline (plus the margin that lets the awaiter see the controller's
    # verdict); three: an update replaces them one by one, each with the full deadline.
    single = nemotron(probes={"startup_budget_seconds": 900})
    deadline = next(m for m in render(single) if m["kind"] == "Deployment")["spec"][
        "progressDeadlineSeconds"]
    deploy(mocks, single)
    annotations = mocks.one(DEPLOYMENT).inputs["metadata"]["annotations"]
    assert int(annotations[TIMEOUT_SECONDS]) == deadline + AWAIT_MARGIN_SECONDS
    assert mocks.one(DEPLOYMENT).inputs["spec"]["progressDeadlineSeconds"] == deadline


def test_an_update_of_three_replicas_may_take_three_deadlines(mocks):
    config = nemotron(replicas=3, model_cache={"kind": "host_path", "host_path": "/mnt/models"})
    deadline = next(m for m in render(config) if m["kind"] == "Deployment")["spec"][
        "progressDeadlineSeconds"]
    deploy(mocks, config)
    annotations = mocks.one(DEPLOYMENT).inputs["metadata"]["annotations"]
    assert int(annotations[TIMEOUT_SECONDS]) == 3 * deadline + AWAIT_MARGIN_SECONDS


def test_a_local_cluster_without_a_gateway_controller_does_not_await_the_gateway(mocks):
    gateway = "kubernetes:gateway.networking.k8s.io/v1:Gateway"
    deploy(mocks, nemotron(cloud="local", region="local", zone=None))
    assert mocks.one(gateway).inputs["metadata"]["annotations"][SKIP_AWAIT] == "true"
    assert SKIP_AWAIT not in mocks.one(DEPLOYMENT).inputs["metadata"]["annotations"]


def test_clouds_await_their_gateway(mocks):
    deploy(mocks)
    annotations = mocks.one("kubernetes:gateway.networking.k8s.io/v1:Gateway").inputs["metadata"].get("annotations", {})
    assert SKIP_AWAIT not in annotations


def test_no_wait_marks_every_object_skip_await(mocks):
    deploy(mocks, wait_for_ready=False)
    objects = [r for r in mocks.resources if r.type.startswith("kubernetes:")]
    assert objects
    for resource in objects:
        assert resource.inputs["metadata"]["annotations"][SKIP_AWAIT] == "true", resource.type


def test_a_keys_file_that_is_not_json_fails_without_showing_it(mocks):
    with pytest.raises(ValueError) as error:
        deploy(mocks, api_keys_json="ip-sekrit-not-json")
    assert "inferplane:apiKeysJson" in str(error.value)
    assert "sekrit" not in str(error.value)
    assert mocks.resources == []  # a plain string is checked before anything is registered


def test_a_json_file_that_is_not_a_keys_file_is_refused(mocks):
    with pytest.raises(ValueError, match="not a keys file"):
        deploy(mocks, api_keys_json=json.dumps({"keys": [{"id": "nope"}]}))
    assert mocks.resources == []


def test_no_token_secret_when_no_pod_reads_the_token(mocks):
    deploy(mocks, nemotron(model_cache={"kind": "host_path", "host_path": "/mnt/models"}),
           hf_token="hf_x")
    names = [r.inputs["metadata"]["name"] for r in mocks.of_type(SECRET)]
    assert names == ["nemotron-ultra-api-keys"]


def test_invalid_config_fails_before_any_resource_is_registered(mocks):
    config = DeploymentConfig.model_validate({"cloud": "gke", "region": "us-central1"})
    with pytest.raises(ConfigError, match="us-central1"):
        deploy(mocks, config)
    assert mocks.resources == []
