"""inferplane's policy pack: `pulumi preview --policy-pack policy` (or `pulumi up --policy-pack policy`).

Mandatory: EU residency of every regional resource, GPU limit = vLLM's parallel size, the ingress
path goes through the authenticating gateway, probes present, no floating image tags.
Advisory: resource requests, a PodDisruptionBudget for serving workloads. Override a level per
policy with a policy config file (`--policy-pack-config`), e.g. for a deliberate non-EU test stack.
"""

from pulumi_policy import PolicyPack

from inferplane_policies import POLICIES

PolicyPack(name="inferplane", policies=POLICIES)
