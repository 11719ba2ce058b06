"""The model files of a bundle: each model run whole, and each distinct cut's head and tail (as
`edgeflow split --emit` writes them), with their sha256 and the model's version (the sha256 of
its source file) in `models/manifest.json`."""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeflow import ir
from edgeflow.cost import ModelSource, analysed, read_model
from edgeflow.models.extract import split_model
from edgeflow.plan import Part, Plan

MODELS_MOUNT = "/var/lib/edgeflow/models"


@dataclass(frozen=True)
class Artefact:
    model: str
    part: Part           # whole, head, tail
    cut: tuple[str, ...]
    path: str            # relative to the bundle
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def mount_path(self) -> str:
        return f"{MODELS_MOUNT}/{self.path.removeprefix('models/')}"


def read_models(program: ir.Program, plan: Plan) -> dict[str, ModelSource]:
    """The content of every model the plan runs, read once for the whole bundle."""
    used = {u.step for u in plan.units if u.part is not Part.OPERATOR}
    return {name: read_model(m) for name, m in program.models.items() if name in used}


def build_artefacts(program: ir.Program, plan: Plan, sources: Mapping[str, ModelSource],
                    ) -> dict[tuple[str, Part, int], Artefact]:
    """(model, part, replica) -> the file that replica's unit runs."""
    out: dict[tuple[str, Part, int], Artefact] = {}
    cuts_of: dict[str, dict[tuple[str, ...], list[int]]] = {}
    for s in plan.splits:
        cuts_of.setdefault(s.model, {}).setdefault(s.cut, []).append(s.replica)
    whole = sorted((u.step, u.replica) for u in plan.units if u.part is Part.WHOLE)
    for name, source in sources.items():
        for unit, r in whole:
            if unit == name:
                out[(name, Part.WHOLE, r)] = Artefact(name, Part.WHOLE, (),
                                                      f"models/{name}/model.onnx", source.data)
        if name not in cuts_of:
            continue
        # the analysis placement made (cached on the content), not a new one
        analysis, problem = analysed(program.models[name], source)
        for cut, replicas in sorted(cuts_of[name].items()):
            head, tail = split_model(analysis, problem.from_tensors(list(cut)))
            tag = hashlib.sha256("\n".join(cut).encode()).hexdigest()[:10]
            for part, proto in ((Part.HEAD, head), (Part.TAIL, tail)):
                art = Artefact(name, part, cut, f"models/{name}/cut-{tag}/{part.value}.onnx",
                               proto.SerializeToString(deterministic=True))
                for r in replicas:
                    out[(name, part, r)] = art
    return out


def external_files(plan: Plan, sources: Mapping[str, ModelSource]) -> dict[str, bytes]:
    """The external data files of the models run whole, beside their model.onnx (halves carry
    their weights inside)."""
    whole = {u.step for u in plan.units if u.part is Part.WHOLE}
    return {f"models/{name}/{posixpath.normpath(location)}": data
            for name, source in sources.items() if name in whole
            for location, data in source.external.items()}


def manifest(sources: Mapping[str, ModelSource],
             artefacts: dict[tuple[str, Part, int], Artefact]) -> bytes:
    versions = {name: source.digest[:12] for name, source in sources.items()}
    rows: dict[str, dict[str, Any]] = {}
    for (model, _, r), art in sorted(artefacts.items()):
        row = rows.setdefault(art.path, {"model": model, "version": versions[model],
                                         "part": art.part.value, "cut": list(art.cut),
                                         "path": art.path, "sha256": art.sha256,
                                         "bytes": len(art.data), "replicas": []})
        row["replicas"].append(r)
    return (json.dumps({"models": [rows[p] for p in sorted(rows)]}, indent=2) + "\n").encode()
