"""Where each cloud's regions are: the facts behind the EU residency guard.

EU/EEA only: London (UK) and Zurich (Switzerland) are in Europe but outside the EU/EEA, so they
are deliberately absent. A region not listed here is treated as outside the EU/EEA.
"""

from __future__ import annotations

EU_REGIONS: dict[str, dict[str, str]] = {
    "gke": {
        "europe-central2": "Warsaw, PL",
        "europe-north1": "Hamina, FI",
        "europe-north2": "Stockholm, SE",
        "europe-southwest1": "Madrid, ES",
        "europe-west1": "St. Ghislain, BE",
        "europe-west3": "Frankfurt, DE",
        "europe-west4": "Eemshaven, NL",
        "europe-west8": "Milan, IT",
        "europe-west9": "Paris, FR",
        "europe-west10": "Berlin, DE",
        "europe-west12": "Turin, IT",
    },
    "eks": {
        "eu-central-1": "Frankfurt, DE",
        "eu-north-1": "Stockholm, SE",
        "eu-south-1": "Milan, IT",
        "eu-south-2": "Aragon, ES",
        "eu-west-1": "Dublin, IE",
        "eu-west-3": "Paris, FR",
    },
    "scaleway": {
        "fr-par": "Paris, FR",
        "nl-ams": "Amsterdam, NL",
        "pl-waw": "Warsaw, PL",
    },
}
# A laptop or CI machine: data never leaves it.
LOCAL_REGION = "local"


def is_eu_region(cloud: str, region: str) -> bool:
    """True when `region` of `cloud` is in the EU/EEA. `existing` clusters may name any cloud's region."""
    if cloud == "local":
        return region == LOCAL_REGION
    if cloud == "existing":
        return any(region in regions for regions in EU_REGIONS.values()) or region == LOCAL_REGION
    return region in EU_REGIONS.get(cloud, {})


def zone_in_region(cloud: str, region: str, zone: str) -> bool:
    """True when `zone` belongs to `region` (GKE europe-west4-a, AWS eu-west-1a, Scaleway fr-par-2)."""
    if cloud == "eks":
        return zone.startswith(region) and len(zone) == len(region) + 1
    return zone.startswith(region + "-")


def eu_regions_for(cloud: str) -> list[str]:
    """The EU/EEA regions known for a cloud, sorted, for error messages."""
    if cloud in ("local",):
        return [LOCAL_REGION]
    if cloud == "existing":
        return sorted({r for regions in EU_REGIONS.values() for r in regions} | {LOCAL_REGION})
    return sorted(EU_REGIONS.get(cloud, {}))
