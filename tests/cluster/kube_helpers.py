"""Comparing what we rendered with what the API server stored."""

from __future__ import annotations

import re

from kubernetes.utils.quantity import parse_quantity

# The API server stores quantities in canonical form (1024Mi -> 1Gi): same value, other spelling.
_QUANTITY = re.compile(r"^[0-9.]+(m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")


def _same_quantity(expected: object, actual: object) -> bool:
    if not (isinstance(expected, str) and isinstance(actual, str)):
        return False
    if not (_QUANTITY.match(expected) and _QUANTITY.match(actual)):
        return False
    return parse_quantity(expected) == parse_quantity(actual)


def spec_differences(expected, actual, path="") -> list[str]:
    """Where `actual` (the live object, with server defaults) differs from what we rendered."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected a mapping, got {actual!r}"]
        problems = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}.{key}: missing on the server")
            else:
                problems += spec_differences(value, actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} items, got {actual!r}"]
        return [p for i, (e, a) in enumerate(zip(expected, actual))
                for p in spec_differences(e, a, f"{path}[{i}]")]
    if expected == actual or _same_quantity(expected, actual):
        return []
    return [f"{path}: rendered {expected!r}, server has {actual!r}"]
