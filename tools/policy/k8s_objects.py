"""Reading rendered Kubernetes objects (dicts, as kustomize printed them): the lookups every policy
module shares, so that each says only what it checks (every module of tools/policy/).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def ref(obj: dict) -> str:
    """`Kind/name`, how every problem names the object it is about."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj.get("kind") == kind]


def find(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((obj for obj in by_kind(objects, kind) if obj.get("metadata", {}).get("name") == name), None)


def pod_spec(obj: dict) -> dict | None:
    """The pod spec a Pod, a workload or a CronJob runs; None for kinds that run no pods."""
    if obj.get("kind") == "Pod":
        return obj.get("spec", {})
    if obj.get("kind") == "CronJob":
        return obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    if obj.get("kind") in _POD_OWNERS:
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    return None


def containers(pod: dict) -> Iterator[dict]:
    """Init containers, then containers: every rule on a container holds for both."""
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def env_value(container: dict, name: str) -> str | None:
    return next((e.get("value") for e in container.get("env", []) if e.get("name") == name), None)


def flag_value(args: list[str], flag: str) -> str | None:
    """What `--flag=value` in a container's args says; None where it is absent."""
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")), None)


def quantity(value: object) -> float:
    """A Kubernetes resource quantity ("24", "500m", "200Gi") as a number."""
    match = _QUANTITY.match(str(value))
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]
