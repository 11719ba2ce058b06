"""The spec file: a FederationSpec as JSON, which is all edgeflow's Flower app reads (its path is
the run config's `spec`), so a deployment provides the same file.

    {"format": 1,
     "model": "risk_classifier.onnx", "trainable": ["fc1_w", ...],
     "samples": "ward_training:samples", "trainer": "ward_training:train", "code_root": ".",
     "config": {"lr": 0.02, "epochs": 10}, "rounds": 3, "min_clients": 16,
     "sites": [{"aggregator": "ward_server",
                "clients": [{"name": "bedside_hub[0]", "instance": 0}, ...]}],
     "top": null, "strategy": "fedavg", "strategy_params": {},
     "dp": {"clip": 10.0, "noise": 0.1, "delta": 1e-05},
     "output_is_probabilities": true, "work_dir": "/var/lib/edgeflow/train",
     "model_name": "risk_classifier", "resume": false,
     "superlinks": {"ward_server": {"address": "10.0.0.5:9092",
                                    "root_certificates": "pki/ca.crt"}},
     "nodes": {"ward_server": {"7310520498721734912": "bedside_hub[0]", ...}}}

Relative paths are relative to the spec file. `superlinks` (the Control API of each site's
SuperLink and the CA certificate its TLS certificate chains to) is needed with a `top` only: a
site aggregator's ClientApp starts its site's rounds there. `nodes` (optional) names the
SuperNode ids each SuperLink registered: a ServerApp orders its nodes by them (clients by
instance, sites in order), so the clients sampled for a round do not depend on the ids the
SuperLink happened to draw.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeflow.federation import ClientSpec, DPSpec, FederationSpec, SiteSpec

FORMAT = 1


def safe_name(name: str) -> str:
    """A file name for an instance name: `bedside_hub[3]` -> `bedside_hub-3`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "_"


@dataclass(frozen=True)
class SuperLinkAddress:
    address: str             # host:port of its Control API (and Fleet API: one HTTP port)
    root_certificates: Path  # the CA certificate its TLS certificate is checked against


@dataclass(frozen=True)
class SpecFile:
    spec: FederationSpec
    superlinks: Mapping[str, SuperLinkAddress]
    path: Path
    # per aggregator, its SuperNodes' ids and who they are (a client, or a site's aggregator)
    nodes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)

    def order(self, aggregator: str) -> dict[int, int]:
        """The position of each of `aggregator`'s SuperNode ids: its clients by instance (or
        the sites in order, for the top aggregator)."""
        spec = self.spec
        rank = {s.aggregator: k for k, s in enumerate(spec.sites)} \
            if spec.top is not None and aggregator == spec.top else \
            {c.name: c.instance for c in spec.clients()}
        known = self.nodes.get(aggregator, {})
        return {node: rank[name] for node, name in known.items() if name in rank}


def to_json(spec: FederationSpec, superlinks: Mapping[str, SuperLinkAddress],
            nodes: Mapping[str, Mapping[int, str]] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT, "model": str(spec.model), "trainable": list(spec.trainable),
        "samples": spec.samples, "trainer": spec.trainer, "code_root": str(spec.code_root),
        "config": dict(spec.config), "rounds": spec.rounds, "min_clients": spec.min_clients,
        "sites": [{"aggregator": s.aggregator,
                   "clients": [{"name": c.name, "instance": c.instance} for c in s.clients]}
                  for s in spec.sites],
        "top": spec.top, "strategy": spec.strategy,
        "strategy_params": dict(spec.strategy_params),
        "dp": None if spec.dp is None else {"clip": spec.dp.clip, "noise": spec.dp.noise,
                                            "delta": spec.dp.delta},
        "output_is_probabilities": spec.output_is_probabilities,
        "work_dir": str(spec.work_dir), "model_name": spec.model_name, "resume": spec.resume,
        "superlinks": {name: {"address": s.address,
                              "root_certificates": str(s.root_certificates)}
                       for name, s in superlinks.items()},
        "nodes": {agg: {str(node): name for node, name in sorted(known.items())}
                  for agg, known in (nodes or {}).items()},
    }


def write(path: Path, spec: FederationSpec, superlinks: Mapping[str, SuperLinkAddress],
          nodes: Mapping[str, Mapping[int, str]] | None = None) -> None:
    """The spec file at `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_json(spec, superlinks, nodes), indent=2) + "\n")
    os.replace(tmp, path)


def _path(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{key}` is not a path")
    return (base / value).resolve()


def from_json(data: Any, base: Path) -> tuple[FederationSpec, dict[str, SuperLinkAddress],
                                             dict[str, dict[int, str]]]:
    """The spec, the SuperLinks and the SuperNode ids in `data`, paths resolved against
    `base`; ValueError says what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not an edgeflow federation spec (format {FORMAT})")
    try:
        dp = data["dp"]
        spec = FederationSpec(
            model=_path(base, data["model"], "model"),
            trainable=tuple(str(t) for t in data["trainable"]),
            samples=str(data["samples"]), trainer=str(data["trainer"]),
            code_root=_path(base, data["code_root"], "code_root"),
            config=dict(data["config"]),
            sites=tuple(SiteSpec(str(s["aggregator"]),
                                 tuple(ClientSpec(str(c["name"]), int(c["instance"]))
                                       for c in s["clients"]))
                        for s in data["sites"]),
            top=None if data["top"] is None else str(data["top"]),
            rounds=int(data["rounds"]), min_clients=int(data["min_clients"]),
            strategy=str(data["strategy"]),
            strategy_params={str(k): float(v) for k, v in data["strategy_params"].items()},
            dp=None if dp is None else DPSpec(float(dp["clip"]), float(dp["noise"]),
                                              float(dp["delta"])),
            output_is_probabilities=bool(data["output_is_probabilities"]),
            work_dir=_path(base, data["work_dir"], "work_dir"),
            model_name=None if data.get("model_name") is None else str(data["model_name"]),
            resume=bool(data.get("resume", False)))
        superlinks = {str(name): SuperLinkAddress(
            str(s["address"]), _path(base, s["root_certificates"], "root_certificates"))
            for name, s in data.get("superlinks", {}).items()}
        nodes = {str(agg): {int(node): str(name) for node, name in known.items()}
                 for agg, known in data.get("nodes", {}).items()}
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"the spec lacks or mistypes {e}") from None
    return spec, superlinks, nodes


def read(path: Path) -> SpecFile:
    path = path.resolve()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the federation spec {path}: {e}") from None
    spec, superlinks, nodes = from_json(data, path.parent)
    return SpecFile(spec, superlinks, path, nodes)
