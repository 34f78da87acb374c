"""Operations objects: autoscaling thresholds from sizing, CRD-backed objects, priority, rollouts."""

from __future__ import annotations

import jsonschema
import pytest
import promql_parser

from inferplane.config import ConfigError
from inferplane.crds import validate_custom_resource
from inferplane.planning import waiting_requests_per_replica
from inferplane.render import render

SHARED_CACHE = {"access_mode": "ReadOnlyMany"}


def kinds(manifests):
    return {m["kind"]: m for m in manifests}


def test_autoscaling_is_off_by_default(make_config):
    manifests = kinds(render(make_config()))
    assert "ScaledObject" not in manifests and "PodMonitor" not in manifests
    assert manifests["Deployment"]["spec"]["replicas"] == 1


def test_queue_threshold_and_scale_up_pace_come_from_sizing(make_config):
    config = make_config(autoscaling={"enabled": True, "max_replicas": 4}, model_cache=SHARED_CACHE)
    # KV holds 284,538 tokens = 69 sequences of 4,096 tokens -> 64 decoded at once -> 10% -> 7
    assert config.sizing().kv_token_capacity // 4096 == 69
    assert waiting_requests_per_replica(config) == 7
    manifests = kinds(render(config))
    spec = manifests["ScaledObject"]["spec"]
    queue, kv = spec["triggers"]
    assert queue["metadata"]["threshold"] == "7"
    assert queue["metadata"]["query"] == 'sum(vllm:num_requests_waiting{namespace="inferplane",pod=~"nemotron-ultra-.*"})'
    assert kv["metadata"]["threshold"] == "0.9" and kv["metricType"] == "Value"
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    # one new replica per startup budget (1,670 s for 506.8 GB from a PVC), never two loading at once
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 1670}]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 1800
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
    # KEDA owns the replica count: the Deployment must not fight it
    assert "replicas" not in manifests["Deployment"]["spec"]
    validate_custom_resource(manifests["ScaledObject"])


def test_smaller_models_get_a_threshold_from_their_own_capacity(make_config):
    config = make_config(model={"name": "nemotron-ultra-253b", "max_num_seqs": 20},
                         autoscaling={"enabled": True}, model_cache=SHARED_CACHE)
    assert waiting_requests_per_replica(config) == 2
    explicit = make_config(autoscaling={"enabled": True, "waiting_requests_per_replica": 5},
                           model_cache=SHARED_CACHE)
    assert waiting_requests_per_replica(explicit) == 5


def test_scale_from_zero_wakes_on_envoy_gateway_requests_not_the_retired_nginx_metric(make_config):
    config = make_config(cloud="existing", autoscaling={"enabled": True, "min_replicas": 0},
                         model_cache=SHARED_CACHE)
    spec = kinds(render(config))["ScaledObject"]["spec"]
    wake = spec["triggers"][-1]
    assert wake["name"] == "gateway-requests" and wake["metadata"]["activationThreshold"] == "0"
    query = wake["metadata"]["query"]
    assert "nginx" not in query
    # Envoy Gateway's upstream cluster of our HTTPRoute, counted even while no pod exists.
    assert 'envoy_cluster_name=~"httproute/inferplane/nemotron-ultra/rule/.*"' in query
    assert "envoy_cluster_upstream_cx_none_healthy" in query
    promql_parser.parse(query)


def test_scale_from_zero_is_refused_where_no_request_metric_exists(make_config):
    with pytest.raises(ConfigError, match="autoscaling.min_replicas"):
        make_config(autoscaling={"enabled": True, "min_replicas": 0}, model_cache=SHARED_CACHE)


def test_a_typo_in_a_custom_resource_fails_its_crd_schema(make_config):
    config = make_config(autoscaling={"enabled": True}, model_cache=SHARED_CACHE,
                         observability={"pod_monitor": True})
    manifests = kinds(render(config))
    manifests["ScaledObject"]["spec"]["maxReplicas"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        validate_custom_resource(manifests["ScaledObject"])
    manifests["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate_custom_resource(manifests["PodMonitor"])


def test_pod_monitor_scrapes_the_gateway_and_the_monitoring_namespace_may_reach_it(make_config):
    manifests = kinds(render(make_config(observability={"pod_monitor": True})))
    endpoint = manifests["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    sources = manifests["NetworkPolicy"]["spec"]["ingress"][0]["from"]
    namespaces = [s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for s in sources if "namespaceSelector" in s]
    assert namespaces == ["monitoring"]  # GKE's proxies come by address (ipBlock), not namespace


def test_priority_class_is_created_and_used(make_config):
    manifests = kinds(render(make_config()))
    assert manifests["PriorityClass"]["value"] == 1_000_000
    assert manifests["PriorityClass"]["globalDefault"] is False
    assert "namespace" not in manifests["PriorityClass"]["metadata"]  # cluster-scoped
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "inferplane-inference"
    existing = kinds(render(make_config(priority={"create": False, "name": "gpu-critical"})))
    assert "PriorityClass" not in existing
    assert existing["Deployment"]["spec"]["template"]["spec"]["priorityClassName"] == "gpu-critical"


def test_autoscaling_config_errors_name_the_field():
    from inferplane.config import from_mapping

    with pytest.raises(ConfigError) as caught:
        from_mapping({"autoscaling": {"enabled": True, "min_replicas": 5, "max_replicas": 2}})
    found = dict(caught.value.problems)
    assert "above max_replicas 2" in found["autoscaling.min_replicas"]
    assert "share" in found["model_cache.access_mode"]
