"""A CRD's `openAPIV3Schema` as a strict JSON Schema, to validate custom resources offline.

The API server prunes (drops) fields a structural schema does not declare; facetrain wants a
typo to fail instead, so every object schema with `properties` and no
`x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`. OpenAPI's
`nullable` and Kubernetes' `x-kubernetes-int-or-string` become JSON Schema types; the other
`x-kubernetes-*` annotations (list types, CEL validations) are not checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml


def crd_json_schema(crd_file: Path, version: str = "v1") -> dict[str, Any]:
    # The CRDs are large; the C loader parses them in a fraction of the pure-Python time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(crd_file.read_text(), Loader=loader)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema = strict_schema(entry["schema"]["openAPIV3Schema"])
            schema["required"] = sorted(
                {*schema.get("required", []), "apiVersion", "kind", "metadata"}
            )
            return schema
    raise KeyError(f"{crd_file}: no version {version}")


def strict_schema(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    preserve_unknown = node.pop("x-kubernetes-preserve-unknown-fields", False)
    int_or_string = node.pop("x-kubernetes-int-or-string", False)
    nullable = node.pop("nullable", False)
    for key in [k for k in node if k.startswith("x-kubernetes-")]:
        node.pop(key)
    if "properties" in node:
        node["properties"] = {name: strict_schema(sub) for name, sub in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = strict_schema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict_schema(node["additionalProperties"])
    for combinator in ("anyOf", "allOf", "oneOf"):
        if combinator in node:
            node[combinator] = [strict_schema(sub) for sub in node[combinator]]
    if int_or_string:
        node.pop("type", None)
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("type") == "object" and "properties" in node and not preserve_unknown:
        node.setdefault("additionalProperties", False)
    if nullable and "type" in node:
        node["type"] = [node["type"], "null"]
    return node


def validation_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every problem as `kind/name: path.to.field: message` (empty when valid)."""
    validator = jsonschema.Draft7Validator(schema)
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(part) for part in error.absolute_path) or "<root>"
        problems.append(f"{where}: {path}: {error.message}")
    return problems
