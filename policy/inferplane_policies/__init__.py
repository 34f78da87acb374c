"""inferplane's policies, one module per concern: residency, workload, exposure."""

from inferplane_policies.exposure import auth_on_ingress_path, pod_disruption_budget
from inferplane_policies.residency import eu_residency
from inferplane_policies.workload import (
    gpu_limit_equals_parallel_size, no_latest_images, probes_present, resource_requests,
)

POLICIES = [
    eu_residency,
    gpu_limit_equals_parallel_size,
    auth_on_ingress_path,
    probes_present,
    no_latest_images,
    resource_requests,
    pod_disruption_budget,
]
