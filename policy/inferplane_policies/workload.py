"""Rules on each workload: GPUs match vLLM's parallelism, probes exist, images are pinned, requests set."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from pulumi_policy import (
    EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy,
)

from inferplane_policies.common import (
    SERVING_TYPES, command_line, containers, flag_value, gpu_quantity, pod_spec,
)

# vLLM's flags for the parallel dimensions that multiply the GPUs one replica uses.
PARALLEL_FLAGS = {
    "tensor": ("--tensor-parallel-size", "-tp"),
    "pipeline": ("--pipeline-parallel-size", "-pp"),
    "data": ("--data-parallel-size", "-dp"),
}


def is_simulator(container: Mapping[str, Any]) -> bool:
    """A container running inferplane's vLLM stand-in (`model.engine: simulator`): it needs no GPU."""
    argv = command_line(container)
    if argv[:2] == ["inferplane", "simulator"]:
        return True
    return any(argv[i:i + 2] == ["-m", "inferplane.simulator"] for i in range(len(argv) - 1))


def is_vllm(container: Mapping[str, Any]) -> bool:
    """A container that runs vLLM's server (by its command, its flags, or its image)."""
    if is_simulator(container):
        return False
    argv = command_line(container)
    if any(flag_value(argv, *flags) is not None for flags in PARALLEL_FLAGS.values()):
        return True
    if "vllm" in argv[:2] or any(a.endswith("vllm.entrypoints.openai.api_server") for a in argv):
        return True
    return "vllm" in str(container.get("image") or "").rsplit("/", 1)[-1].split(":")[0]


def expected_gpus(container: Mapping[str, Any]) -> tuple[int, str]:
    """GPUs vLLM will start workers on (tp x pp x dp), and how that number was read."""
    argv = command_line(container)
    total, parts = 1, []
    for name, flags in PARALLEL_FLAGS.items():
        raw = flag_value(argv, *flags)
        size = int(raw) if raw is not None and raw.isdigit() else 1
        total *= size
        if raw is not None or name == "tensor":
            parts.append(f"{flags[0]} {raw if raw is not None else '1 (default)'}")
    return total, " x ".join(parts)


def gpu_parallelism_problems(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    problems = []
    for container in containers(spec):
        if not is_vllm(container):
            continue
        name = container.get("name", "?")
        want, how = expected_gpus(container)
        limit = gpu_quantity(container, "limits")
        request = gpu_quantity(container, "requests")
        if limit != want:
            have = "no nvidia.com/gpu limit" if limit is None else f"nvidia.com/gpu limit {limit}"
            problems.append(f"container {name!r} has {have}, but {how} starts {want} GPU "
                            f"worker(s); set resources.limits[nvidia.com/gpu] to {want}")
        if request is not None and request != want:
            problems.append(f"container {name!r} requests {request} nvidia.com/gpu but needs "
                            f"{want} ({how})")
    return problems


def probe_problems(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type not in SERVING_TYPES:
        return []
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    problems = []
    for container in containers(spec):
        name = container.get("name", "?")
        missing = [probe for probe in ("readinessProbe", "livenessProbe") if not container.get(probe)]
        # Loading weights takes minutes: without a startup probe, liveness kills the load.
        if gpu_quantity(container, "limits") and not container.get("startupProbe"):
            missing.append("startupProbe")
        if missing:
            problems.append(f"container {name!r} has no {', '.join(missing)}")
    return problems


def image_tag(image: str) -> Optional[str]:
    """The tag of an image reference, "@digest" for a digest, or None when it has neither."""
    if "@" in image:
        return "@" + image.split("@", 1)[1]
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return None  # registry:5000/image has a port, not a tag
    return tag


def image_problems(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    problems = []
    for container in containers(spec, init=True):
        image = str(container.get("image") or "")
        tag = image_tag(image)
        if tag is None:
            problems.append(f"container {container.get('name', '?')!r}: image {image!r} has no "
                            "tag, which means latest; pin a version tag or @sha256: digest")
        elif tag == "latest":
            problems.append(f"container {container.get('name', '?')!r}: image {image!r} floats; "
                            "pin a version tag or @sha256: digest")
    return problems


def request_problems(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    problems = []
    for container in containers(spec, init=True):
        requests = (container.get("resources") or {}).get("requests") or {}
        missing = [r for r in ("cpu", "memory") if not requests.get(r)]
        if missing:
            problems.append(f"container {container.get('name', '?')!r} requests no "
                            f"{' or '.join(missing)}: the scheduler cannot place it reliably")
    return problems


def _reporting(check):
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for problem in check(args.resource_type, args.props):
            report_violation(problem)
    return validate


gpu_limit_equals_parallel_size = ResourceValidationPolicy(
    name="gpu-limit-equals-parallel-size",
    description="A vLLM container's nvidia.com/gpu limit equals its tensor-parallel size "
                "(times pipeline- and data-parallel sizes when set).",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_reporting(gpu_parallelism_problems),
)

probes_present = ResourceValidationPolicy(
    name="probes-present",
    description="Serving containers have readiness and liveness probes; GPU containers a startup probe.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_reporting(probe_problems),
)

no_latest_images = ResourceValidationPolicy(
    name="no-latest-images",
    description="Every container image is pinned by a version tag or digest (no `latest`, no bare name).",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_reporting(image_problems),
)

resource_requests = ResourceValidationPolicy(
    name="resource-requests",
    description="Every container requests CPU and memory.",
    enforcement_level=EnforcementLevel.ADVISORY,
    validate=_reporting(request_problems),
)
