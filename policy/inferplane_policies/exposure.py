"""Rules across resources: what a public route reaches, and whether serving pods have a disruption budget.

Auth on the public path is checked by following the objects the way traffic flows:
HTTPRoute (Gateway API) or Ingress backend -> Service port -> targetPort -> the container that
owns that port. That
container must be inferplane's gateway, and the gateway's settings (its ConfigMap) must have
auth on. An Ingress that reaches vLLM, or any other container, or an object this stack does not
define, is a violation: the path cannot be shown to be authenticated.
"""

from __future__ import annotations

import posixpath
from typing import Any, Mapping, Optional

import yaml
from pulumi_policy import (
    EnforcementLevel, PolicyResource, ReportViolation, StackValidationArgs, StackValidationPolicy,
)

from inferplane.gateway.settings import GatewaySettings
from inferplane_policies.common import (
    SERVING_TYPES, as_int, command_line, containers, flag_value, get_path, metadata_name,
    metadata_namespace, pod_spec,
)

INGRESS_TYPE = "kubernetes:networking.k8s.io/v1:Ingress"
HTTP_ROUTE_TYPES = ("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
                    "kubernetes:gateway.networking.k8s.io/v1beta1:HTTPRoute")
SERVICE_TYPE = "kubernetes:core/v1:Service"
CONFIG_MAP_TYPE = "kubernetes:core/v1:ConfigMap"
PDB_TYPE = "kubernetes:policy/v1:PodDisruptionBudget"
# The gateway's own default when its settings do not say.
AUTH_DEFAULT = GatewaySettings.model_fields["auth_enabled"].default


def is_gateway(container: Mapping[str, Any]) -> bool:
    """inferplane's gateway: `inferplane gateway ...`."""
    argv = command_line(container)
    return len(argv) >= 2 and posixpath.basename(argv[0]) == "inferplane" and argv[1] == "gateway"


def _find(resources: list[PolicyResource], resource_type: str, namespace: str,
          name: str) -> Optional[PolicyResource]:
    return next((r for r in resources if r.resource_type == resource_type
                 and metadata_name(r.props) == name and metadata_namespace(r.props) == namespace),
                None)


def _backends(ingress: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = []
    default = get_path(ingress, "spec", "defaultBackend", "service")
    if default:
        found.append(default)
    for rule in get_path(ingress, "spec", "rules") or []:
        for path in get_path(rule, "http", "paths") or []:
            service = get_path(path, "backend", "service")
            if service:
                found.append(service)
    return found


def _route_backends(route: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """An HTTPRoute's backendRefs in the Ingress backend's shape; other kinds keep theirs."""
    found = []
    for rule in get_path(route, "spec", "rules") or []:
        for ref in get_path(rule, "backendRefs") or []:
            if (ref.get("group") or "") == "" and (ref.get("kind") or "Service") == "Service":
                found.append({"name": ref.get("name"), "port": {"number": ref.get("port")}})
            else:
                found.append({"name": ref.get("name"), "kind": ref.get("kind"),
                              "group": ref.get("group")})
    return found


def _target_port(service: Mapping[str, Any], port: Mapping[str, Any]) -> Optional[Any]:
    """The Service port the backend names (by name or number), as its targetPort."""
    for entry in get_path(service, "spec", "ports") or []:
        if ("name" in port and entry.get("name") == port["name"]) or (
                "number" in port and as_int(entry.get("port")) == as_int(port["number"])):
            return entry.get("targetPort", entry.get("port"))
    return None


def _owns_port(container: Mapping[str, Any], target: Any) -> bool:
    number = as_int(target)
    for port in container.get("ports") or []:
        if target == port.get("name") or (number is not None and number == as_int(port.get("containerPort"))):
            return True
    return False


def _selected_workloads(resources: list[PolicyResource], namespace: str,
                        selector: Mapping[str, Any]) -> list[PolicyResource]:
    if not selector:
        return []
    selected = []
    for resource in resources:
        if resource.resource_type not in SERVING_TYPES or metadata_namespace(resource.props) != namespace:
            continue
        pod_labels = get_path(resource.props, "spec", "template", "metadata", "labels") or {}
        if all(pod_labels.get(k) == v for k, v in selector.items()):
            selected.append(resource)
    return selected


def _gateway_auth(resources: list[PolicyResource], namespace: str, spec: Mapping[str, Any],
                  gateway: Mapping[str, Any]) -> Optional[str]:
    """Why the gateway's auth cannot be shown to be on, or None when it is on."""
    config_path = flag_value(command_line(gateway), "--config")
    if not config_path:
        return f"gateway container {gateway.get('name')!r} has no --config: its settings are unknown"
    mount = next((m for m in gateway.get("volumeMounts") or []
                  if config_path.startswith(str(m.get("mountPath", "")).rstrip("/") + "/")), None)
    volume = next((v for v in spec.get("volumes") or [] if mount and v.get("name") == mount.get("name")), None)
    map_name = get_path(volume, "configMap", "name")
    if not map_name:
        return f"gateway settings {config_path} do not come from a ConfigMap this policy can read"
    config_map = _find(resources, CONFIG_MAP_TYPE, namespace, map_name)
    if config_map is None:
        return f"gateway settings ConfigMap {namespace}/{map_name} is not part of this stack"
    file_name = posixpath.relpath(config_path, mount["mountPath"])
    text = get_path(config_map.props, "data", file_name)
    if text is None:
        return f"ConfigMap {namespace}/{map_name} has no {file_name}"
    settings = yaml.safe_load(str(text)) or {}
    if not settings.get("auth_enabled", AUTH_DEFAULT):
        return f"the gateway's settings ({namespace}/{map_name}) turn auth off (auth_enabled: false)"
    return None


def ingress_auth_problems(resources: list[PolicyResource]) -> list[tuple[str, str]]:
    """(urn, problem) for every Ingress or HTTPRoute backend that does not end at an
    authenticating gateway."""
    problems = []
    for ingress in (r for r in resources if r.resource_type == INGRESS_TYPE
                    or r.resource_type in HTTP_ROUTE_TYPES):
        namespace = metadata_namespace(ingress.props)
        is_route = ingress.resource_type in HTTP_ROUTE_TYPES
        where = f"{'HTTPRoute' if is_route else 'Ingress'} {namespace}/{metadata_name(ingress.props)}"
        backends = _route_backends(ingress.props) if is_route else _backends(ingress.props)
        for backend in backends:
            if "kind" in backend:
                problems.append((ingress.urn, f"{where} routes to {backend.get('kind')} "
                                              f"{backend.get('name')!r}, not a Service of this "
                                              "stack: auth cannot be shown"))
                continue
            service_name = str(backend.get("name"))
            service = _find(resources, SERVICE_TYPE, namespace, service_name)
            if service is None:
                problems.append((ingress.urn, f"{where} routes to Service {service_name!r}, which "
                                              "this stack does not define: auth cannot be shown"))
                continue
            target = _target_port(service.props, backend.get("port") or {})
            if target is None:
                problems.append((ingress.urn, f"{where}: Service {service_name!r} has no port "
                                              f"{dict(backend.get('port') or {})}"))
                continue
            workloads = _selected_workloads(resources, namespace,
                                            get_path(service.props, "spec", "selector") or {})
            if not workloads:
                problems.append((ingress.urn, f"{where}: Service {service_name!r} selects no "
                                              "workload of this stack"))
            for workload in workloads:
                spec = pod_spec(workload.resource_type, workload.props) or {}
                owner = next((c for c in containers(spec) if _owns_port(c, target)), None)
                if owner is None:
                    problems.append((ingress.urn, f"{where}: no container of "
                                                  f"{metadata_name(workload.props)} serves port {target!r}"))
                elif not is_gateway(owner):
                    problems.append((ingress.urn, f"{where} reaches container {owner.get('name')!r} "
                                                  "directly, bypassing the authenticating gateway; "
                                                  "point the Service at the gateway's port"))
                else:
                    reason = _gateway_auth(resources, namespace, spec, owner)
                    if reason:
                        problems.append((ingress.urn, f"{where}: {reason}"))
    return problems


def pdb_problems(resources: list[PolicyResource]) -> list[tuple[str, str]]:
    """(urn, problem) for serving workloads no PodDisruptionBudget covers."""
    budgets = [r for r in resources if r.resource_type == PDB_TYPE]
    problems = []
    for workload in (r for r in resources if r.resource_type in SERVING_TYPES[:2]):
        namespace = metadata_namespace(workload.props)
        pod_labels = get_path(workload.props, "spec", "template", "metadata", "labels") or {}
        covered = any(
            metadata_namespace(pdb.props) == namespace
            and (selector := get_path(pdb.props, "spec", "selector", "matchLabels"))
            and all(pod_labels.get(k) == v for k, v in selector.items())
            for pdb in budgets)
        if not covered:
            problems.append((workload.urn, f"{workload.resource_type.rsplit(':', 1)[-1]} "
                                           f"{namespace}/{metadata_name(workload.props)} has no "
                                           "PodDisruptionBudget: a node drain may take every replica"))
    return problems


def _reporting(check):
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        for urn, problem in check(args.resources):
            report_violation(problem, urn)
    return validate


auth_on_ingress_path = StackValidationPolicy(
    name="auth-on-ingress-path",
    description="Every HTTPRoute and Ingress reaches only inferplane's gateway (never vLLM), with "
                "API-key auth on.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_reporting(ingress_auth_problems),
)

pod_disruption_budget = StackValidationPolicy(
    name="pod-disruption-budget",
    description="Deployments and StatefulSets are covered by a PodDisruptionBudget.",
    enforcement_level=EnforcementLevel.ADVISORY,
    validate=_reporting(pdb_problems),
)
