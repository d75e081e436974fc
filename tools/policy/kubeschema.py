"""Strict offline schema validation of Kubernetes objects: built-in kinds and custom resources.

Built-in kinds are checked against the strict OpenAPI schemas that kubernetes-validate ships for
KUBERNETES_VERSION (unknown fields fail). Custom resources are checked against the
CustomResourceDefinitions in a directory (ours: tools/policy/crds, vendored upstream files; a user's:
`kubectl get crd NAME -o yaml` output), converted to JSON Schema that is closed
(`additionalProperties: false`) wherever the CRD does not say `x-kubernetes-preserve-unknown-fields`.
Anything that is neither fails: an unknown kind or apiVersion is an error, never a skip.

What this does not enforce (the API server would): CEL rules (`x-kubernetes-validations`),
list-map uniqueness, `format`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource

# The GKE control-plane minor the manifests target. kubernetes-validate ships schemas per minor.
KUBERNETES_VERSION = "1.33"

_SCHEMA_DIR = f"v{KUBERNETES_VERSION}.0-local-strict"
_OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CrdError(ValueError):
    """A CRD directory that cannot be read."""


@dataclass(frozen=True)
class CrdVersion:
    group: str
    kind: str
    version: str
    namespaced: bool
    validator: jsonschema.protocols.Validator


@dataclass(frozen=True)
class CrdSet:
    """The served versions of every custom kind found in one directory."""

    directory: Path
    kinds: dict[tuple[str, str], dict[str, CrdVersion]]

    @property
    def groups(self) -> set[str]:
        return {group for group, _ in self.kinds}


def to_jsonschema(node: object) -> object:
    """One CRD openAPIV3Schema node as strict JSON Schema (draft 4 semantics, like OpenAPI 3.0)."""
    if isinstance(node, list):
        return [to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_jsonschema(value) for key, value in node.items() if key not in ("properties", "nullable")}
    properties = node.get("properties")
    if properties is not None:
        out["properties"] = {key: to_jsonschema(value) for key, value in properties.items()}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource") and "properties" in out:
        for field in ("apiVersion", "kind"):
            out["properties"].setdefault(field, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if "required" in node and properties is not None:
        # The API server applies defaults before it validates: a defaulted field may be omitted.
        required = [name for name in node["required"] if "default" not in properties.get(name, {})]
        if required:
            out["required"] = required
        else:
            out.pop("required")
    if (
        properties is not None
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _root_schema(crd_schema: dict) -> dict:
    schema = to_jsonschema(crd_schema)
    # The API server accepts apiVersion, kind and metadata on every object, declared or not;
    # metadata itself is checked against the strict ObjectMeta separately.
    properties = schema.setdefault("properties", {})
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    properties["metadata"] = {"type": "object"}
    schema["additionalProperties"] = False
    return schema


def _crd_documents(path: Path) -> list[dict]:
    try:
        documents = list(yaml.load_all(path.read_text(), Loader=_LOADER))
    except yaml.YAMLError as error:
        raise CrdError(f"{path}: not YAML: {error}") from error
    found = []
    for document in documents:
        if not isinstance(document, dict):
            continue
        # `kubectl get crd A B -o yaml` writes a List.
        items = document.get("items") if document.get("kind", "").endswith("List") else [document]
        found.extend(item for item in items or [] if item.get("kind") == "CustomResourceDefinition")
    return found


@cache
def load_crds(directory: Path) -> CrdSet:
    """Every CustomResourceDefinition under directory (*.yaml, *.yml, *.json, recursively)."""
    if not directory.is_dir():
        raise CrdError(f"CRD directory {directory} does not exist")
    kinds: dict[tuple[str, str], dict[str, CrdVersion]] = {}
    files = sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    for path in files:
        for crd in _crd_documents(path):
            spec = crd["spec"]
            group, kind = spec["group"], spec["names"]["kind"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                schema = _root_schema(version.get("schema", {}).get("openAPIV3Schema", {"type": "object"}))
                kinds.setdefault((group, kind), {})[version["name"]] = CrdVersion(
                    group=group,
                    kind=kind,
                    version=version["name"],
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    validator=jsonschema.Draft4Validator(schema),
                )
    if not kinds:
        raise CrdError(f"no CustomResourceDefinition found in {directory}")
    return CrdSet(directory=directory, kinds=kinds)


def _builtin_schemas():
    return resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", _SCHEMA_DIR)


@cache
def _registry() -> Registry:
    definitions = json.loads(_builtin_schemas().joinpath("_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


@cache
def _builtin_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    # kubernetes-validate's file naming: apps/v1 -> apps-v1, networking.k8s.io/v1 -> networking-v1, v1 -> v1.
    name = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_file = _builtin_schemas().joinpath(f"{kind.lower()}-{name}.json")
    if not schema_file.is_file():
        return None
    schema = json.loads(schema_file.read_text())
    gvks = schema.get("x-kubernetes-group-version-kind", [])
    group, _, version = api_version.rpartition("/")
    if not any(g.get("group", "") == group and g.get("version") == version and g.get("kind") == kind for g in gvks):
        return None
    return jsonschema.Draft202012Validator(schema, registry=_registry())


@cache
def _object_meta_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator({"$ref": _OBJECT_META}, registry=_registry())


def _format(error: jsonschema.ValidationError, prefix: str = "") -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    where = ".".join(part for part in (prefix, path) if part)
    return f"{where}: {error.message}" if where else error.message


def _errors(validator: jsonschema.protocols.Validator, instance: object, prefix: str = "") -> list[str]:
    found = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    return [_format(error, prefix) for error in found]


def validate_object(obj: dict, crds: CrdSet | None) -> list[str]:
    """Schema problems of one object, each `<field path>: <problem>`; empty when valid."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind are required"]
    group, _, version = api_version.rpartition("/")
    if crds is not None and (group, kind) in crds.kinds:
        served = crds.kinds[(group, kind)]
        if version not in served:
            return [
                f"{api_version} is not a served version of {kind} "
                f"(served: {', '.join(sorted(served))}; CRDs from {crds.directory})"
            ]
        crd = served[version]
        problems = _errors(crd.validator, obj)
        problems += _errors(_object_meta_validator(), obj.get("metadata", {}), "metadata")
        if not crd.namespaced and obj.get("metadata", {}).get("namespace"):
            problems.append(f"metadata.namespace: {kind} is cluster-scoped and takes no namespace")
        return problems
    validator = _builtin_validator(api_version, kind)
    if validator is not None:
        return _errors(validator, obj)
    if crds is None:
        return [
            f"unknown kind {kind} in {api_version}: not a built-in kind of Kubernetes {KUBERNETES_VERSION}, "
            "and no CRD directory was given to check custom resources (--crds DIR or GKE_TRITON_CRDS)"
        ]
    if group in crds.groups:
        known = sorted(k for g, k in crds.kinds if g == group)
        return [f"unknown kind {kind} in {api_version} (kinds of {group}: {', '.join(known)})"]
    return [
        f"unknown kind {kind} in {api_version}: not a built-in kind of Kubernetes {KUBERNETES_VERSION} "
        f"and no CRD for it in {crds.directory}"
    ]
