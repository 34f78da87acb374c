"""Reading resource properties the way the engine hands them to a policy: camelCase, any shape.

Properties may be partial or unknown during a preview (reading an unknown raises inside the
policy framework, which then skips the check); everything here tolerates missing fields.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

GPU_RESOURCE = "nvidia.com/gpu"
# Kubernetes resource types with a pod template, and the path to its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "kubernetes:core/v1:Pod": ("spec",),
}
# Workloads that serve traffic for as long as they run (so need probes and disruption budgets).
SERVING_TYPES = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet",
                 "kubernetes:apps/v1:DaemonSet")


def get_path(value: Any, *path: Any) -> Any:
    """value[path[0]][path[1]]..., or None as soon as a step is missing."""
    for step in path:
        if isinstance(step, int):
            if not is_list(value) or step >= len(value):
                return None
        elif not isinstance(value, Mapping) or step not in value:
            return None
        value = value[step]
    return value


def is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    """The pod spec of a workload resource, or None for anything else."""
    path = POD_SPEC_PATHS.get(resource_type)
    spec = get_path(props, *path) if path else None
    return spec if isinstance(spec, Mapping) else None


def containers(spec: Mapping[str, Any], init: bool = False) -> Iterator[Mapping[str, Any]]:
    """The pod's containers (and init containers when `init`)."""
    keys = ("initContainers", "containers") if init else ("containers",)
    for key in keys:
        for container in spec.get(key) or []:
            if isinstance(container, Mapping):
                yield container


def command_line(container: Mapping[str, Any]) -> list[str]:
    """command + args as one list of strings."""
    return [str(part) for part in list(container.get("command") or []) + list(container.get("args") or [])]


def flag_value(argv: Sequence[str], *names: str) -> Optional[str]:
    """The value of the last `--flag value` or `--flag=value` for any of `names`."""
    found = None
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                found = argv[index + 1]
            elif arg.startswith(name + "="):
                found = arg.split("=", 1)[1]
    return found


def gpu_quantity(container: Mapping[str, Any], kind: str) -> Optional[int]:
    """The container's nvidia.com/gpu in resources.<kind> (limits or requests) as an int."""
    value = get_path(container, "resources", kind, GPU_RESOURCE)
    return as_int(value)


def as_int(value: Any) -> Optional[int]:
    if value is None:
        return None
    try:
        number = float(str(value))
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def metadata_name(props: Mapping[str, Any]) -> str:
    return str(get_path(props, "metadata", "name") or "?")


def metadata_namespace(props: Mapping[str, Any]) -> str:
    return str(get_path(props, "metadata", "namespace") or "default")
