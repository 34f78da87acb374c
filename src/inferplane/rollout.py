"""Why a workload's pods are not ready, read from the API as `kubectl describe pod` shows it.

Pulumi's Deployment awaiter reports a stuck rollout as "Minimum number of live Pods was not
attained" and drops the scheduler's verdict (it logs an unscheduled pod only as an info status),
so a rollout that can never start says nothing about why. InferenceService calls this when the
Deployment's await fails and prints the answer under the Deployment in `pulumi up`'s output.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import yaml

# Container states that are part of a normal start, not a reason.
_STARTING = {"ContainerCreating", "PodInitializing"}
EVENTS_PER_POD = 5
REQUEST_TIMEOUT_SECONDS = 10


def api_client(kubeconfig: Optional[str] = None, context: Optional[str] = None) -> Any:
    """The official client for a kubeconfig given as a path or as its contents (as the Pulumi
    Kubernetes provider takes it); None: the ambient one (KUBECONFIG or ~/.kube/config)."""
    from kubernetes import config as kube_config

    if kubeconfig and not os.path.exists(os.path.expanduser(kubeconfig)):
        return kube_config.new_client_from_config_dict(yaml.safe_load(kubeconfig), context=context)
    path = os.path.expanduser(kubeconfig) if kubeconfig else None
    return kube_config.new_client_from_config(config_file=path, context=context)


def pod_reasons(client: Any, namespace: str, selector: dict[str, str]) -> list[str]:
    """One line per reason a selected pod is not ready: its scheduling verdict, its containers'
    waiting or last-terminated reasons, and its newest Warning events (FailedScheduling,
    Failed image pulls, BackOff ...)."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(client)
    label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
    pods = core.list_namespaced_pod(namespace, label_selector=label_selector,
                                    _request_timeout=REQUEST_TIMEOUT_SECONDS).items
    lines: list[str] = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        name = f"pod {pod.metadata.name}"
        status = pod.status
        conditions = {c.type: c for c in status.conditions or []}
        if conditions.get("Ready") is not None and conditions["Ready"].status == "True":
            continue
        said: set[str] = set()  # messages already listed: their repeating events add nothing
        scheduled = conditions.get("PodScheduled")
        if scheduled is not None and scheduled.status != "True":
            lines.append(f"{name}: {scheduled.reason}: {scheduled.message}")
            said.add(scheduled.message)
        for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
            waiting = container.state.waiting if container.state else None
            if waiting is not None and waiting.reason not in _STARTING:
                lines.append(f"{name}: container {container.name}: {waiting.reason}: "
                             f"{waiting.message or ''}".rstrip(": "))
                said.add(waiting.message)
            last = container.last_state.terminated if container.last_state else None
            if last is not None:
                lines.append(f"{name}: container {container.name} last exited {last.exit_code} "
                             f"({last.reason}){': ' + last.message if last.message else ''}")
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod.metadata.name}",
            _request_timeout=REQUEST_TIMEOUT_SECONDS).items
        warnings = [e for e in events if e.type == "Warning"]
        warnings.sort(key=_event_time, reverse=True)
        for event in [e for e in warnings if e.message not in said][:EVENTS_PER_POD]:
            count = f" (x{event.count})" if event.count and event.count > 1 else ""
            lines.append(f"{name}: event {event.reason}{count}: {event.message}")
    return lines


def _event_time(event: Any) -> str:
    when = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
    return when.isoformat() if when is not None else ""
