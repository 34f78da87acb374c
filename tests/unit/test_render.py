"""Rendered manifests: valid against Kubernetes' schema, deterministic, and right where it matters."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import kubernetes_validate
import jsonschema
import pytest
import yaml

from inferplane.catalog import MODELS
from inferplane.config import load
from inferplane.crds import CRD_SOURCES, GKE_KINDS, validate_custom_resource
from inferplane.nemotron import CHAT_TEMPLATE_PATH, TOOL_PARSER_PATH
from inferplane.render import render, to_multi_document, write_directory

from ..conftest import EXAMPLE, KUBERNETES_SCHEMA_VERSION, REPO

GOLDEN = REPO / "tests" / "golden" / "nemotron-ultra.yaml"
RECOMMENDED_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                      "app.kubernetes.io/managed-by"}


def by_kind(manifests):
    return {m["kind"]: m for m in manifests}


def pod_selector(manifests):
    return by_kind(manifests)["Deployment"]["spec"]["selector"]["matchLabels"]


def containers(manifests):
    pod = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}, pod


VARIANTS = {
    "example": {},
    "llama-70b": {"model": {"name": "llama-3.3-70b-instruct"}},
    "gpt-oss": {"model": {"name": "gpt-oss-120b"}},
    "fp8-kv": {"model": {"name": "nemotron-ultra-253b-fp8", "kv_cache_dtype": "fp8", "max_num_seqs": 64}},
    "no-ingress-host-path": {"ingress": {"enabled": False},
                             "model_cache": {"kind": "host_path", "host_path": "/mnt/models"}},
    "download-at-start": {"model_cache": {"kind": "empty_dir"}},
    "two-replicas": {"replicas": 2, "model_cache": {"access_mode": "ReadOnlyMany", "storage_class": "filestore"}},
    "operations": {"cloud": "existing", "autoscaling": {"enabled": True, "min_replicas": 0, "max_replicas": 3},
                   "model_cache": {"access_mode": "ReadWriteMany"},
                   "observability": {"pod_monitor": True, "prometheus_rules": True},
                   "priority": {"create": False, "name": "gpu-critical"}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_validates_strictly_against_the_pinned_kubernetes_schema(make_config, variant):
    for manifest in render(make_config(**VARIANTS[variant])):
        if (manifest["apiVersion"], manifest["kind"]) in CRD_SOURCES:
            validate_custom_resource(manifest)  # against the CRD of the version we target
        elif (manifest["apiVersion"], manifest["kind"]) not in GKE_KINDS:  # test_gateway_api.py
            kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_strict_validation_really_rejects_an_unknown_field(make_config):
    deployment = by_kind(render(make_config()))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 8
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_golden_nemotron_ultra_example():
    rendered = to_multi_document(render(load(EXAMPLE)))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "set UPDATE_GOLDEN=1 to accept an intended change"


def test_vllm_runs_tp8_on_eight_gpus_bound_to_loopback():
    manifests = render(load(EXAMPLE))
    by_name, pod = containers(manifests)
    vllm = by_name["vllm"]
    args = vllm["args"]
    assert args[0] == "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1"
    assert args[args.index("--tensor-parallel-size") + 1] == "8"
    assert args[args.index("--max-model-len") + 1] == "131072"
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert "--trust-remote-code" in args
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert "ports" not in vllm
    assert pod["nodeSelector"] == {"inferplane.io/accelerator": "H100-80G"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_gpu_limit_follows_tensor_parallel_size(make_config):
    by_name, _ = containers(render(make_config(model={"name": "llama-3.3-70b-instruct"})))
    args = by_name["vllm"]["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert by_name["vllm"]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert args[-3:] == ["--enable-auto-tool-choice", "--tool-call-parser", "llama3_json"]
    by_name, _ = containers(render(make_config(model={"name": "llama-3.3-70b-instruct", "tool_calling": False})))
    assert "--tool-call-parser" not in by_name["vllm"]["args"]


def test_nemotron_tool_calling_flags_point_at_our_mounted_plugin_and_template(make_config):
    manifests = render(make_config())
    by_name, pod = containers(manifests)
    args = by_name["vllm"]["args"]
    assert args[args.index("--tool-call-parser") + 1] == "inferplane_nemotron_json"
    assert "--enable-auto-tool-choice" in args
    plugin = args[args.index("--tool-parser-plugin") + 1]
    template = args[args.index("--chat-template") + 1]
    mount = next(m for m in by_name["vllm"]["volumeMounts"] if m["name"] == "vllm-files")
    assert mount["readOnly"] is True
    assert plugin == f"{mount['mountPath']}/tool_parser.py"
    assert template == f"{mount['mountPath']}/chat_template.jinja"
    volume = next(v for v in pod["volumes"] if v["name"] == "vllm-files")
    files_map = next(m for m in manifests if m["metadata"]["name"] == volume["configMap"]["name"])
    # The mounted files are the package's own, byte for byte (one source of truth).
    assert files_map["data"]["tool_parser.py"] == TOOL_PARSER_PATH.read_text()
    assert files_map["data"]["chat_template.jinja"] == CHAT_TEMPLATE_PATH.read_text()
    # Changing the files rolls the pods.
    assert pod_annotations(manifests)["inferplane.io/vllm-files-hash"]


def test_tool_calling_off_drops_flags_and_files_but_keeps_the_reasoning_parser(make_config):
    manifests = render(make_config(model={"tool_calling": False}))
    by_name, _ = containers(manifests)
    args = by_name["vllm"]["args"]
    assert not {"--enable-auto-tool-choice", "--tool-call-parser", "--chat-template",
                "--tool-parser-plugin"} & set(args)
    files_map = next(m for m in manifests if m["metadata"]["name"].endswith("-vllm-files"))
    assert set(files_map["data"]) == {"reasoning_parser.py"}


def test_simulator_engine_mounts_no_vllm_files_and_follows_tool_calling(make_config):
    manifests = render(make_config(model={"engine": "simulator"}))
    assert not [m for m in manifests if m["metadata"]["name"].endswith("-vllm-files")]
    assert "--no-enable-auto-tool-choice" not in containers(manifests)[0]["vllm"]["args"]
    off = render(make_config(model={"engine": "simulator", "tool_calling": False}))
    assert "--no-enable-auto-tool-choice" in containers(off)[0]["vllm"]["args"]


def pod_annotations(manifests):
    return by_kind(manifests)["Deployment"]["spec"]["template"]["metadata"]["annotations"]


def test_shm_cache_and_hf_token():
    by_name, pod = containers(render(load(EXAMPLE)))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "nemotron-ultra-model-cache"
    mounts = {m["name"]: m["mountPath"] for m in by_name["vllm"]["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"
    assert {"name": "VLLM_NO_USAGE_STATS", "value": "1"} in by_name["vllm"]["env"]


def test_prefetched_cache_is_filled_by_a_job_and_mounted_read_only_offline():
    manifests = render(load(EXAMPLE))
    by_name, pod = containers(manifests)
    env = {e["name"]: e for e in by_name["vllm"]["env"]}
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and env["HF_HOME"]["value"] == "/models/hf"
    assert "HF_TOKEN" not in env  # the vLLM pod never needs the token with a pre-fetched cache
    cache_mount = next(m for m in by_name["vllm"]["volumeMounts"] if m["name"] == "model-cache")
    assert cache_mount["readOnly"] is True
    [wait] = pod["initContainers"]
    assert wait["args"][:2] == ["weights", "wait"]
    assert wait["args"][wait["args"].index("--cache-dir") + 1] == "/models/hf/hub"
    job = by_kind(manifests)["Job"]
    [fetch] = job["spec"]["template"]["spec"]["containers"]
    assert fetch["args"] == ["weights", "fetch", "--repo", "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1",
                             "--cache-dir", "/models/hf/hub", "--revision", "main"]
    token = next(e for e in fetch["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "nemotron-ultra-hf-token"
    job_volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-cache")
    assert job_volume["persistentVolumeClaim"]["claimName"] == "nemotron-ultra-model-cache"
    assert job["spec"]["activeDeadlineSeconds"] == 6 * 3600
    affinity = job["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    [term] = affinity["requiredDuringSchedulingIgnoredDuringExecution"]  # RWO: same node, always
    assert term["labelSelector"]["matchLabels"] == pod_selector(manifests)


def test_nothing_that_selects_the_inference_pods_selects_the_fetch_job_pod():
    """The Service would route clients to it, the PodDisruptionBudget count it, the NetworkPolicy
    confine it."""
    manifests = render(load(EXAMPLE))
    job_pod_labels = by_kind(manifests)["Job"]["spec"]["template"]["metadata"]["labels"]
    selectors = [m["spec"]["selector"] for m in manifests if m["kind"] == "Service"]
    selectors += [m["spec"][key]["matchLabels"] for m in manifests
                  for kind, key in (("PodDisruptionBudget", "selector"),
                                    ("NetworkPolicy", "podSelector"), ("Deployment", "selector"))
                  if m["kind"] == kind]
    assert len(selectors) >= 4
    for selector in selectors:
        assert not selector.items() <= job_pod_labels.items(), selector


def test_download_at_start_needs_the_token_and_no_job(make_config):
    manifests = render(make_config(model_cache={"kind": "empty_dir"}, model={"revision": "abc123"}))
    assert "Job" not in by_kind(manifests)
    by_name, pod = containers(manifests)
    env = {e["name"]: e for e in by_name["vllm"]["env"]}
    assert "HF_HUB_OFFLINE" not in env
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert "initContainers" not in pod
    args = by_name["vllm"]["args"]
    assert args[args.index("--revision") + 1] == "abc123"


def test_probes_give_the_weights_time_to_load():
    config = load(EXAMPLE)
    by_name, pod = containers(render(config))
    startup = by_name["vllm"]["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= config.startup_budget_seconds >= 506.8 / 1.0 + 600
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "127.0.0.1:8000/health" in by_name["vllm"][probe]["exec"]["command"][-1]
    assert by_name["gateway"]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert by_name["gateway"]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] == 600


def test_progress_deadline_follows_the_startup_budget(make_config):
    """A stuck rollout is declared stuck (ProgressDeadlineExceeded) at our budget, not at the
    Kubernetes default of 600 s, which a healthy 500 GB load would blow through."""
    def deadline(config):
        return by_kind(render(config))["Deployment"]["spec"]["progressDeadlineSeconds"]

    # Nothing pre-fetched and no node to wait for: the deadline is exactly the startup budget.
    bare = {"model_cache": {"kind": "empty_dir"}}
    assert deadline(make_config(**bare, probes={"startup_budget_seconds": 900,
                                                "node_and_pull_seconds": 0})) == 900
    assert deadline(make_config(**bare, probes={"startup_budget_seconds": 1800,
                                                "node_and_pull_seconds": 0})) == 1800
    # The derived budget, plus the node/image allowance and the weight fetch the Job does first.
    config = make_config()
    cold, warm = config.start_seconds("pvc")
    assert deadline(config) == 1800 + int((cold - warm) * 1.5) + config.startup_budget_seconds
    assert deadline(config) > 600


def test_containers_run_non_root_with_read_only_root_filesystems():
    by_name, pod = containers(render(load(EXAMPLE)))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in by_name.values():
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


def test_service_exposes_only_the_gateway_and_network_policy_admits_only_gkes_proxies():
    manifests = by_kind(render(load(EXAMPLE)))
    ports = manifests["Service"]["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in ports] == [(80, "http")]
    gateway_port = containers(render(load(EXAMPLE)))[0]["gateway"]["ports"]
    assert gateway_port == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    policy = manifests["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    # GKE's managed proxies are not pods: the proxy-only subnet and Google's health checkers.
    assert rule["from"] == [{"ipBlock": {"cidr": "10.129.0.0/23"}},
                            {"ipBlock": {"cidr": "35.191.0.0/16"}},
                            {"ipBlock": {"cidr": "130.211.0.0/22"}}]


def test_envoy_gateway_data_plane_is_the_only_namespace_admitted(make_config):
    policy = by_kind(render(make_config(cloud="existing")))["NetworkPolicy"]["spec"]
    [rule] = policy["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "envoy-gateway-system"}}}]


def test_envoy_gateway_limits_bodies_waits_for_streams_and_closes_idle_upstreams_first(make_config):
    from inferplane.gateway.server import KEEP_ALIVE_SECONDS

    manifests = by_kind(render(make_config(cloud="existing")))
    assert "GCPBackendPolicy" not in manifests
    policy = manifests["BackendTrafficPolicy"]
    validate_custom_resource(policy)  # against Envoy Gateway v1.9.1's own CRD
    spec = policy["spec"]
    assert spec["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                   "name": "nemotron-ultra"}]
    assert spec["requestBuffer"] == {"limit": "16Mi"}  # 413 at the edge, as the Ingress did
    assert spec["timeout"]["http"]["requestTimeout"] == "3600s"
    idle = int(spec["timeout"]["http"]["connectionIdleTimeout"].removesuffix("s"))
    assert idle < KEEP_ALIVE_SECONDS  # the proxy closes idle connections, never the gateway
    # GKE's load balancer keeps backend connections up to 600 s: the gateway must outlast that.
    assert KEEP_ALIVE_SECONDS > 600


def test_no_public_entry_admits_nobody_rather_than_everybody(make_config):
    policy = by_kind(render(make_config(ingress={"enabled": False})))["NetworkPolicy"]["spec"]
    assert policy["ingress"] == []  # `from: []` would admit every source


def test_gateway_api_is_the_default_entry_routing_only_v1_with_tls_from_cert_manager():
    manifests = render(load(EXAMPLE))
    kinds_rendered = [m["kind"] for m in manifests]
    assert "Ingress" not in kinds_rendered
    gateway = by_kind(manifests)["Gateway"]
    assert gateway["apiVersion"] == "gateway.networking.k8s.io/v1"
    # GKE's regional managed class: the load balancer stays in the EU region.
    assert gateway["spec"]["gatewayClassName"] == "gke-l7-regional-external-managed"
    assert gateway["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    https = next(l for l in gateway["spec"]["listeners"] if l["name"] == "https")
    assert (https["protocol"], https["port"], https["hostname"]) == ("HTTPS", 443, "llm.example.eu")
    assert https["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "nemotron-ultra-tls"}]
    routes = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "HTTPRoute"}
    [rule] = routes["nemotron-ultra"]["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert rule["backendRefs"] == [{"name": "nemotron-ultra", "port": 80}]
    assert rule["timeouts"] == {"request": "3600s"}  # a whole streamed answer
    assert routes["nemotron-ultra"]["spec"]["parentRefs"] == [{"name": "nemotron-ultra",
                                                               "sectionName": "https"}]
    [redirect] = routes["nemotron-ultra-https-redirect"]["spec"]["rules"]
    assert redirect["filters"][0]["requestRedirect"] == {"scheme": "https", "statusCode": 301}


def test_gke_backend_policy_lifts_the_30_second_timeout_and_health_checks_readyz():
    manifests = by_kind(render(load(EXAMPLE)))
    backend = manifests["GCPBackendPolicy"]["spec"]
    assert backend["default"] == {"timeoutSec": 3600}
    assert backend["targetRef"] == {"group": "", "kind": "Service", "name": "nemotron-ultra"}
    check = manifests["HealthCheckPolicy"]["spec"]["default"]["config"]
    assert check["httpHealthCheck"]["requestPath"] == "/readyz"


def test_ingress_is_opt_in_and_streams_unbuffered_over_tls(make_config):
    config = make_config(ingress={"api": "ingress", "host": "llm.example.eu"})
    manifests = render(config)
    assert "Gateway" not in [m["kind"] for m in manifests]
    ingress = by_kind(manifests)["Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "16m"
    assert notes["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["tls"] == [{"hosts": ["llm.example.eu"], "secretName": "nemotron-ultra-tls"}]
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v1", "Prefix")  # not /metrics, /healthz, /readyz
    assert path["backend"]["service"] == {"name": "nemotron-ultra", "port": {"name": "http"}}
    policy = by_kind(manifests)["NetworkPolicy"]["spec"]
    assert policy["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress-nginx"}}}]


def test_gateway_objects_fail_their_crd_schema_on_a_typo(make_config):
    rendered = render(make_config())
    manifests = by_kind(rendered)
    route = next(m for m in rendered if m["kind"] == "HTTPRoute" and "timeouts" in m["spec"]["rules"][0])
    route["spec"]["rules"][0]["timeouts"]["requestTimeout"] = "10s"
    with pytest.raises(jsonschema.ValidationError, match="requestTimeout"):
        validate_custom_resource(route)
    gateway = manifests["Gateway"]
    gateway["spec"]["listeners"][0]["tls"]["certificateRef"] = {"name": "x"}
    with pytest.raises(jsonschema.ValidationError, match="certificateRef"):
        validate_custom_resource(gateway)


def test_recommended_labels_on_every_object_and_selector_is_stable(make_config):
    manifests = render(make_config())
    for manifest in manifests:
        assert RECOMMENDED_LABELS <= set(manifest["metadata"]["labels"]), manifest["kind"]
    deployment = by_kind(manifests)["Deployment"]
    assert "app.kubernetes.io/version" not in deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_rollout_never_removes_the_only_replica(make_config):
    single = by_kind(render(make_config()))["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert single == {"maxSurge": 1, "maxUnavailable": 0}
    many = by_kind(render(make_config(replicas=3, model_cache={"access_mode": "ReadOnlyMany"})))
    assert many["Deployment"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert many["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_gateway_config_carries_catalog_prices_and_changes_roll_the_pods(make_config):
    first = by_kind(render(make_config()))
    gateway_map = next(m for m in render(make_config()) if m["metadata"]["name"].endswith("-gateway"))
    settings = yaml.safe_load(gateway_map["data"]["gateway.yaml"])
    assert settings["models"][0]["input_price_per_million"] == "0.60"
    assert settings["models"][0]["served_name"] == "nvidia/Llama-3_1-Nemotron-Ultra-253B-v1"
    second = by_kind(render(make_config(metering={"input_price_per_million": "0.50"})))
    hash_key = "inferplane.io/gateway-config-hash"
    assert (first["Deployment"]["spec"]["template"]["metadata"]["annotations"][hash_key]
            != second["Deployment"]["spec"]["template"]["metadata"]["annotations"][hash_key])


def test_optional_objects_follow_config(make_config):
    kinds = [m["kind"] for m in render(make_config(**VARIANTS["no-ingress-host-path"]))]
    assert "Ingress" not in kinds and "PersistentVolumeClaim" not in kinds
    _, pod = containers(render(make_config(**VARIANTS["no-ingress-host-path"])))
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache["hostPath"]["path"] == "/mnt/models"


def _metrics_handler(busy_scrapes: int, slow_scrape: int | None = None):
    """A fake vLLM /metrics (a fresh class: its own scrape count): one running request for the
    first `busy_scrapes` scrapes, then none; scrape number `slow_scrape` is answered later than
    the drain script's shortened timeout (a busy vLLM on CPU took 7 s to answer while streaming)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        scrapes = 0

        def do_GET(self):  # noqa: N802 - http.server's naming
            type(self).scrapes += 1
            if type(self).scrapes == slow_scrape:
                time.sleep(1.0)
            running = 1 if type(self).scrapes <= busy_scrapes else 0
            body = (f'vllm:num_requests_running{{model_name="m"}} {running}.0\n'
                    'vllm:num_requests_waiting{model_name="m"} 0.0\n').encode()
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the script gave up on this scrape

        def log_message(self, *args):
            pass

    return Handler


def fast_drain(command: list[str], port: int) -> str:
    """The rendered drain script on `port`, its pauses and timeout shortened for a test."""
    return (command[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            .replace("time.sleep(5)", "time.sleep(0)").replace("time.sleep(2)", "time.sleep(0.05)")
            .replace("timeout=5", "timeout=0.3"))


def run_drain_against(handler) -> subprocess.CompletedProcess:
    """The rendered vLLM preStop drain script, shortened, run against a fake /metrics."""
    by_name, _ = containers(render(load(EXAMPLE)))
    command = by_name["vllm"]["lifecycle"]["preStop"]["exec"]["command"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return subprocess.run([sys.executable, "-c", fast_drain(command, server.server_port)],
                              capture_output=True, timeout=60)
    finally:
        server.shutdown()


def test_pre_stop_drain_waits_for_running_requests_to_finish():
    handler = _metrics_handler(busy_scrapes=2)
    result = run_drain_against(handler)
    assert result.returncode == 0, result.stderr
    assert handler.scrapes == 3  # it polled until the running count reached zero


def test_pre_stop_drain_keeps_waiting_when_vllm_is_slow_to_answer():
    handler = _metrics_handler(busy_scrapes=3, slow_scrape=2)
    result = run_drain_against(handler)
    assert result.returncode == 0, result.stderr
    assert handler.scrapes == 4  # past the slow answer, until the idle one


def test_pre_stop_drain_ends_at_once_when_vllm_is_gone():
    by_name, _ = containers(render(load(EXAMPLE)))
    command = by_name["vllm"]["lifecycle"]["preStop"]["exec"]["command"]
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    script = fast_drain(command, port)
    # With nothing listening the first scrape is refused: the script must end without waiting out
    # its deadline (the test's own timeout is far below the rendered budget).
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_render_is_deterministic_and_writes_a_kustomization(tmp_path):
    config = load(EXAMPLE)
    first, second = tmp_path / "a", tmp_path / "b"
    write_directory(render(config), first)
    write_directory(render(load(EXAMPLE)), second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    kustomization = yaml.safe_load((first / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == "00-namespace-inferplane.yaml"
    assert sorted(kustomization["resources"]) == sorted(n for n in names if n != "kustomization.yaml")
    assert len(names) == 17  # 16 objects (Gateway, two HTTPRoutes, two GKE policies, the vLLM files ConfigMap) + kustomization


def test_rewriting_a_directory_removes_objects_that_are_gone(make_config, tmp_path):
    write_directory(render(make_config()), tmp_path)
    write_directory(render(make_config(ingress={"enabled": False})), tmp_path)
    assert not list(tmp_path.glob("*-ingress-*.yaml"))
    assert "06-ingress" not in (tmp_path / "kustomization.yaml").read_text()


def test_every_catalog_model_renders(make_config):
    for key in MODELS:
        config = make_config(model={"name": key})
        deployment = by_kind(render(config))["Deployment"]
        vllm = deployment["spec"]["template"]["spec"]["containers"][0]
        assert vllm["args"][0] == MODELS[key].hf_repo
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == str(config.tensor_parallel_size)
