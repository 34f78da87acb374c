"""EU residency: every regional cloud resource, and every cloud provider, sits in an EU/EEA region.

The regions are the catalog's (inferplane.catalog.regions), the same facts the config guard uses,
so the program and the policy cannot disagree. A zone counts as its region (europe-west4-c,
eu-north-1a, fr-par-2). A regional resource whose region cannot be read from it or from its
provider is a violation: a region left to the ambient default is a region nobody checked.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from pulumi_policy import (
    EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy,
)

from inferplane.catalog.regions import EU_REGIONS, zone_in_region
from inferplane_policies.common import is_list

# The Pulumi package of each cloud, and the key of its regions in the catalog.
PACKAGE_CLOUDS = {"gcp": "gke", "google-native": "gke", "aws": "eks", "scaleway": "scaleway"}
LOCATION_PROPS = ("region", "location", "zone", "availabilityZone", "nodeLocations",
                  "availabilityZones")
# Modules whose resources are regional: one without a readable region is a violation.
REGIONAL_MODULES = {
    "gcp": ("container", "compute", "storage", "artifactregistry", "filestore", "sql"),
    "aws": ("eks", "ec2", "ebs", "efs", "s3", "ecr", "rds", "elasticloadbalancingv2", "lb"),
    "scaleway": ("kubernetes", "network", "instance", "block", "object", "loadbalancers", "vpc"),
}


def cloud_of(resource_type: str) -> Optional[str]:
    """The catalog cloud of a resource or provider type, or None for non-cloud types."""
    if resource_type.startswith("pulumi:providers:"):
        return PACKAGE_CLOUDS.get(resource_type.removeprefix("pulumi:providers:"))
    return PACKAGE_CLOUDS.get(resource_type.split(":", 1)[0])


def eu_region_of(cloud: str, location: str) -> Optional[str]:
    """The EU region `location` (a region or a zone of one) is in, or None if it is not in the EU."""
    regions = EU_REGIONS.get(cloud, {})
    if location in regions:
        return location
    if cloud == "gke" and location.upper() == "EU":
        return "EU"  # Google's EU multi-region (buckets, registries) stays in the EU
    return next((region for region in regions if zone_in_region(cloud, region, location)), None)


def locations(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(property, value) for every location-like property that is set."""
    found = []
    for key in LOCATION_PROPS:
        value = props.get(key)
        values = value if is_list(value) else [value]
        found += [(key, str(v)) for v in values if v not in (None, "")]
    return found


def residency_problems(resource_type: str, props: Mapping[str, Any],
                       provider_props: Optional[Mapping[str, Any]]) -> list[str]:
    """Why this resource is not provably in the EU (empty when it is)."""
    cloud = cloud_of(resource_type)
    if cloud is None:
        return []
    own = locations(props)
    problems = [f"{key} {value!r} is not in an EU/EEA region of {cloud} (EU regions: "
                f"{', '.join(sorted(EU_REGIONS[cloud]))})"
                for key, value in own if eu_region_of(cloud, value) is None]
    if resource_type.startswith("pulumi:providers:"):
        if cloud == "eks" and not own:
            problems.append("the AWS provider has no region: set aws:region (or the provider's "
                            "region) to an EU region, not the ambient AWS_REGION")
        return problems
    inherited = locations(provider_props or {})
    if not own and inherited:
        problems += [f"its provider's {key} {value!r} is not in an EU/EEA region of {cloud}"
                     for key, value in inherited if eu_region_of(cloud, value) is None]
    package, _, rest = resource_type.partition(":")
    module = rest.split("/", 1)[0]
    if not own and not inherited and module in REGIONAL_MODULES.get(package, ()):
        problems.append("no region or zone is set on it or its provider; state an EU region "
                        "explicitly instead of relying on an ambient default")
    return problems


def _validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    provider_props = args.provider.props if args.provider is not None else None
    for problem in residency_problems(args.resource_type, args.props, provider_props):
        report_violation(problem)


eu_residency = ResourceValidationPolicy(
    name="eu-residency",
    description="Every regional cloud resource and cloud provider is in an EU/EEA region (GDPR data residency).",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_validate,
)
