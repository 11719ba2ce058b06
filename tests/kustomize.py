"""A renderer of the kustomize features edgeflow's bundles use, for the tests: `resources`
(files and folders), `namespace`, `nameSuffix`, `labels` (with `includeTemplates`),
`configMapGenerator` (files; edgeflow disables the name's content hash and annotates pods with
the config's digest instead) and `patches` of RFC 6902 operations targeted by kind, and name
references from pods to ConfigMaps.

Written from kustomize's documentation (kubectl.docs.kubernetes.io, the kustomization file
reference), not its code; `test_bundles` checks that it agrees with `kubectl kustomize` wherever
kubectl is installed. It works on the bundle's files in memory, so tests need no kubectl.
"""

from __future__ import annotations

import copy
import posixpath
from typing import Any

import yaml

Files = dict[str, bytes]
Object = dict[str, Any]


def build(files: Files, folder: str) -> list[Object]:
    """The objects `kubectl kustomize FOLDER` prints for the kustomization in `folder`."""
    objects = _build(files, folder.rstrip("/"))
    return objects


def _build(files: Files, folder: str) -> list[Object]:
    k = yaml.safe_load(files[f"{folder}/kustomization.yaml"])
    objects: list[Object] = []
    for resource in k.get("resources", []):
        path = posixpath.normpath(posixpath.join(folder, resource))
        if f"{path}/kustomization.yaml" in files:
            objects.extend(_build(files, path))
        else:
            objects.extend(d for d in yaml.safe_load_all(files[path]) if d)
    for gen in k.get("configMapGenerator", []):
        data = {name: files[posixpath.join(folder, name)].decode() for name in gen["files"]}
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": gen["name"]}, "data": data})
    for patch in k.get("patches", []):
        for obj in objects:
            if obj["kind"] == patch["target"]["kind"]:
                for op in yaml.safe_load(patch["patch"]):
                    _apply(obj, op)
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = k["namespace"]
    for obj in objects:  # what pods call it by, before this kustomization renames it
        if obj["kind"] == "ConfigMap":
            obj.setdefault("_called", obj["metadata"]["name"])
    if suffix := k.get("nameSuffix"):
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["name"] += suffix
    for entry in k.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and "template" in obj.get("spec", {}):
                obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(
                    entry["pairs"])
    if any(not g.get("options", k.get("generatorOptions", {})).get("disableNameSuffixHash")
           for g in k.get("configMapGenerator", [])):
        raise ValueError("name suffix hashes are not rendered: edgeflow disables them")
    renamed = {o.pop("_called"): o["metadata"]["name"] for o in objects if "_called" in o}
    for obj in objects:
        for volume in obj.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] in renamed:
                volume["configMap"]["name"] = renamed[volume["configMap"]["name"]]
    return objects


def _apply(obj: Object, op: dict[str, Any]) -> None:
    """One RFC 6902 `add` or `replace` (the operations edgeflow writes)."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if op["op"] == "replace" and not (key in node if isinstance(node, dict) else
                                       0 <= key < len(node)):
        raise KeyError(f"replace of {op['path']}, which does not exist")
    if op["op"] not in ("add", "replace"):
        raise ValueError(f"unsupported patch operation {op['op']}")
    node[key] = copy.deepcopy(op["value"])
