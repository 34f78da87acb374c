"""inferplane's Pulumi program: stack config -> GPU node pool -> platform add-ons -> inference service.

Everything is validated before the first resource exists, so a non-EU region or a model that does
not fit stops `pulumi preview` with the key to fix. The logic lives in inferplane.components;
this file only wires it (see the README, "Deploy with Pulumi", for every config key).
"""

import pulumi
import pulumi_kubernetes as k8s

from inferplane.components import (
    GpuNodePool,
    InferenceService,
    InferenceServiceArgs,
    Platform,
    read_stack_settings,
)

settings = read_stack_settings()
config = settings.deployment

# The GPU nodes: a node pool (and, if asked, its cluster) on the cloud, or nothing for `existing`.
node_pool = GpuNodePool.for_cloud("gpu", settings.node_pool_args())

# Kubernetes: the kubeconfig from config (or KUBECONFIG for existing/local clusters), else the one
# the node pool derives from its cluster.
kubernetes = k8s.Provider(
    "kubernetes",
    kubeconfig=settings.kubeconfig or node_pool.kubeconfig,
    context=settings.options.kube_context,
)

platform = Platform(
    "platform",
    settings.platform_args(),
    opts=pulumi.ResourceOptions(providers=[kubernetes], depends_on=[node_pool]),
)

# With ledger.central the service also creates the central ledger's PostgreSQL and the DSN Secret
# its pods read, before the Deployment.
service = InferenceService(
    config.name,
    InferenceServiceArgs(
        config=config,
        api_keys_json=settings.api_keys_json,
        hf_token=settings.hf_token,
        platform=platform,
        wait_for_ready=settings.options.wait_for_ready,
        ledger_db=settings.ledger_db_args(node_pool),
        # The provider's cluster, read only to say why a stuck rollout's pods are not ready.
        kubeconfig=settings.kubeconfig or node_pool.kubeconfig,
        kube_context=settings.options.kube_context,
    ),
    opts=pulumi.ResourceOptions(providers=[kubernetes]),
)
if service.ledger is not None:
    pulumi.export("ledger_db_host", service.ledger.host)

pulumi.export("endpoint_url", service.endpoint_url)
pulumi.export("namespace", service.namespace)
pulumi.export("keys_secret_name", service.keys_secret_name)
pulumi.export("served_model_name", service.served_model_name)
pulumi.export("node_pool", {
    "cloud": config.cloud,
    "region": node_pool.region,
    "zone": node_pool.zone,
    "machine_type": node_pool.machine_type,
    "gpus_per_node": node_pool.gpus_per_node,
    "min_nodes": node_pool.min_nodes,
    "max_nodes": node_pool.max_nodes,
})
pulumi.export("platform", platform.enabled)
if node_pool.kubeconfig is not None:
    # A secret: `pulumi stack output kubeconfig --show-secrets > kubeconfig.json`.
    pulumi.export("kubeconfig", node_pool.kubeconfig)
