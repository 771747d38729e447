"""A small kustomize renderer for the subset facetrain's k8s/ uses (no kubectl here).

Supported: `resources` (files and kustomization dirs), `namespace`, `labels` (metadata
labels only, as with includeSelectors/includeTemplates false), `configMapGenerator`
(files/literals; behavior create|merge|replace) with `generatorOptions.disableNameSuffixHash`,
and `patches` holding JSON6902 operations with a `target`. Anything else is an error, so a
manifest never relies on a feature this renderer would silently skip.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "configMapGenerator",
    "generatorOptions",
    "patches",
}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
}


class KustomizeError(ValueError):
    pass


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization_file = directory / "kustomization.yaml"
    if not kustomization_file.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(kustomization_file.read_text()) or {}
    unsupported = sorted(set(spec) - SUPPORTED_FIELDS)
    if unsupported:
        raise KustomizeError(
            f"{kustomization_file}: fields {unsupported} are not supported by this renderer"
        )

    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += render(path)
        elif path.is_file():
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        else:
            raise KustomizeError(f"{kustomization_file}: resource {entry} not found")

    generators = spec.get("configMapGenerator", [])
    if generators and not spec.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise KustomizeError(
            f"{kustomization_file}: name-suffix hashes are not emulated; set disableNameSuffixHash"
        )
    for generator in generators:
        _generate_config_map(directory, generator, objects, kustomization_file)

    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, objects, kustomization_file)

    namespace = spec.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED_KINDS:
            obj["metadata"]["namespace"] = namespace
        for label_set in spec.get("labels", []):
            if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
                raise KustomizeError(
                    f"{kustomization_file}: labels into selectors/templates not supported"
                )
            obj["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    return objects


def _generate_config_map(
    directory: Path, generator: dict, objects: list[dict], where: Path
) -> None:
    data: dict[str, str] = {}
    for item in generator.get("files", []):
        key, _, file_name = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
        data[key] = (directory / file_name).read_text()
    for item in generator.get("literals", []):
        key, _, value = item.partition("=")
        data[key] = value
    name = generator["name"]
    behavior = generator.get("behavior", "create")
    existing = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    if behavior == "create":
        if existing:
            raise KustomizeError(
                f"{where}: ConfigMap {name} already exists (use behavior merge/replace)"
            )
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        )
    elif behavior in ("merge", "replace"):
        if not existing:
            raise KustomizeError(f"{where}: ConfigMap {name} to {behavior} does not exist")
        target = existing[0]
        target["data"] = {**target.get("data", {}), **data} if behavior == "merge" else data
    else:
        raise KustomizeError(f"{where}: ConfigMap {name}: unknown behavior {behavior!r}")


def _apply_patch(directory: Path, patch: dict, objects: list[dict], where: Path) -> None:
    target = patch.get("target")
    if not target:
        raise KustomizeError(
            f"{where}: patches without a target (strategic merge) are not supported"
        )
    text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError(
            f"{where}: patch for {target}: only JSON6902 operation lists are supported"
        )
    matched = [o for o in objects if _matches(o, target)]
    if not matched:
        raise KustomizeError(f"{where}: patch target {target} matches no resource")
    for obj in matched:
        try:
            patched = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(obj))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
            raise KustomizeError(f"{where}: patch for {target}: {err}") from err
        obj.clear()
        obj.update(patched)


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    checks = {
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "group": group,
        "version": version,
        "namespace": obj["metadata"].get("namespace"),
    }
    return all(checks.get(key) == value for key, value in target.items())
