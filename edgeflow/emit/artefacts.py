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
from edgeflow.models.analysis import Analysis
from edgeflow.models.cuts import CutProblem
from edgeflow.models.extract import split_model
from edgeflow.plan import Part, Plan, cut_id

MODELS_MOUNT = "/var/lib/edgeflow/models"


@dataclass(frozen=True)
class Artefact:
    model: str
    part: Part           # whole, head, tail
    cut: tuple[str, ...]
    path: str            # relative to the bundle
    data: bytes
    variant: str | None = None  # the model variant it is a file of

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def mount_path(self) -> str:
        return f"{MODELS_MOUNT}/{self.path.removeprefix('models/')}"


Variant = tuple[str, str | None]  # (model, variant): None for the model itself


def _folder(model: str, variant: str | None) -> str:
    """`models/MODEL` for the model itself, `models/MODEL/variant-NAME` for a variant's files."""
    return f"models/{model}" + (f"/variant-{variant}" if variant else "")


def read_models(program: ir.Program, plan: Plan) -> dict[Variant, ModelSource]:
    """The content of every model (and model variant) the plan runs, read once for the whole
    bundle."""
    used = {(u.step, u.variant) for u in plan.units if u.part is not Part.OPERATOR}
    out = {}
    for name, variant in sorted(used, key=lambda k: (k[0], k[1] or "")):
        out[(name, variant)] = read_model(program.models[name].as_variant(variant)[0])
    return out


def build_artefacts(program: ir.Program, plan: Plan, sources: Mapping[Variant, ModelSource],
                    ) -> dict[tuple[str, Part, int], Artefact]:
    """(model, part, replica) -> the file that replica's unit runs (the model's, or that of the
    variant the plan chose for the replica)."""
    out: dict[tuple[str, Part, int], Artefact] = {}
    cuts_of: dict[Variant, dict[tuple[str, ...], list[int]]] = {}
    for s in plan.splits:
        cuts_of.setdefault((s.model, s.variant), {}).setdefault(s.cut, []).append(s.replica)
    whole = sorted((u.step, u.variant or "", u.replica) for u in plan.units
                   if u.part is Part.WHOLE)
    for (name, variant), source in sources.items():
        folder = _folder(name, variant)
        for unit, chosen, r in whole:
            if unit == name and (chosen or None) == variant:
                out[(name, Part.WHOLE, r)] = Artefact(name, Part.WHOLE, (),
                                                      f"{folder}/model.onnx", source.data,
                                                      variant)
        if (name, variant) not in cuts_of:
            continue
        # the analysis placement made (cached on the content), not a new one
        analysed_as = program.models[name] if variant is None else \
            program.models[name].model_copy(update={"source": str(source.path)})
        analysis, problem = analysed(analysed_as, source)
        for cut, replicas in sorted(cuts_of[(name, variant)].items()):
            halves = _halves(name, variant, cut, analysis, problem)
            for part, art in zip((Part.HEAD, Part.TAIL), halves, strict=True):
                for r in replicas:
                    out[(name, part, r)] = art
    return out


def _halves(name: str, variant: str | None, cut: tuple[str, ...], analysis: Analysis,
            problem: CutProblem) -> tuple[Artefact, Artefact]:
    """The head and tail files of `cut`, at `models/MODEL[/variant-V]/cut-ID/` (content
    addressed: one pair per cut, whichever replicas run it)."""
    head, tail = split_model(analysis, problem.from_tensors(list(cut)))
    folder = f"{_folder(name, variant)}/cut-{cut_id(cut)}"
    h, t = (Artefact(name, part, cut, f"{folder}/{part.value}.onnx",
                     proto.SerializeToString(deterministic=True), variant)
            for part, proto in ((Part.HEAD, head), (Part.TAIL, tail)))
    return h, t


AdaptFiles = dict[tuple[str, int], dict[str, tuple[Artefact, Artefact]]]
"""(model, replica) -> cut id -> (head, tail): every cut an adapting split model may run."""


def adapt_artefacts(program: ir.Program, plan: Plan,
                    sources: Mapping[Variant, ModelSource]) -> AdaptFiles:
    """The halves of every cut in the plan's decision tables (`Plan.adaptations`), made once
    per distinct cut and shared by the replicas that may run it."""
    out: AdaptFiles = {}
    made: dict[tuple[str, str | None, tuple[str, ...]], tuple[Artefact, Artefact]] = {}
    for a in plan.adaptations:
        source = sources[(a.model, a.variant)]
        analysed_as = program.models[a.model] if a.variant is None else \
            program.models[a.model].model_copy(update={"source": str(source.path)})
        analysis, problem = analysed(analysed_as, source)
        for c in a.cuts:
            key = (a.model, a.variant, c.cut)
            if key not in made:
                made[key] = _halves(a.model, a.variant, c.cut, analysis, problem)
            out.setdefault((a.model, a.replica), {})[c.id] = made[key]
    return out


def external_files(plan: Plan, sources: Mapping[Variant, ModelSource]) -> dict[str, bytes]:
    """The external data files of the models run whole, beside their model.onnx (halves carry
    their weights inside)."""
    whole = {(u.step, u.variant) for u in plan.units if u.part is Part.WHOLE}
    return {f"{_folder(*key)}/{posixpath.normpath(location)}": data
            for key, source in sources.items() if key in whole
            for location, data in source.external.items()}


def manifest(sources: Mapping[Variant, ModelSource],
             artefacts: dict[tuple[str, Part, int], Artefact],
             adapt: AdaptFiles | None = None) -> bytes:
    """models/manifest.json: a row per file, with the version (the first 12 hex of the sha256
    of the model's or variant's source) and, for a variant's files, `variant`; the replicas
    listed are those that may run the file (a decision table's included)."""
    versions = {key: source.digest[:12] for key, source in sources.items()}
    rows: dict[str, dict[str, Any]] = {}
    every = [((model, r), art) for (model, _, r), art in artefacts.items()] + [
        ((model, r), art) for (model, r), cuts in (adapt or {}).items()
        for pair in cuts.values() for art in pair]
    for (model, r), art in sorted(every, key=lambda x: (x[1].path, x[0][1])):
        row = rows.setdefault(art.path, {"model": model,
                                         **({"variant": art.variant} if art.variant else {}),
                                         "version": versions[(model, art.variant)],
                                         "part": art.part.value, "cut": list(art.cut),
                                         "path": art.path, "sha256": art.sha256,
                                         "bytes": len(art.data), "replicas": []})
        if r not in row["replicas"]:
            row["replicas"].append(r)
    return (json.dumps({"models": [rows[p] for p in sorted(rows)]}, indent=2) + "\n").encode()
