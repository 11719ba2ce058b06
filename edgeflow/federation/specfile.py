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
     "model_name": "risk_classifier",
     "superlinks": {"ward_server": {"address": "10.0.0.5:9092",
                                    "root_certificates": "pki/ca.crt"}}}

Relative paths are relative to the spec file. `superlinks` (the Control API of each site's
SuperLink and the CA certificate its TLS certificate chains to) is needed with a `top` only: a
site aggregator's ClientApp starts its site's rounds there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
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


def to_json(spec: FederationSpec, superlinks: Mapping[str, SuperLinkAddress]) -> dict[str, Any]:
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
        "work_dir": str(spec.work_dir), "model_name": spec.model_name,
        "superlinks": {name: {"address": s.address,
                              "root_certificates": str(s.root_certificates)}
                       for name, s in superlinks.items()},
    }


def write(path: Path, spec: FederationSpec,
          superlinks: Mapping[str, SuperLinkAddress]) -> None:
    """The spec file at `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_json(spec, superlinks), indent=2) + "\n")
    os.replace(tmp, path)


def _path(base: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{key}` is not a path")
    return (base / value).resolve()


def from_json(data: Any, base: Path) -> tuple[FederationSpec, dict[str, SuperLinkAddress]]:
    """The spec and the SuperLinks in `data`, paths resolved against `base`; ValueError says
    what is wrong."""
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
            model_name=None if data.get("model_name") is None else str(data["model_name"]))
        superlinks = {str(name): SuperLinkAddress(
            str(s["address"]), _path(base, s["root_certificates"], "root_certificates"))
            for name, s in data.get("superlinks", {}).items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"the spec lacks or mistypes {e}") from None
    return spec, superlinks


def read(path: Path) -> SpecFile:
    path = path.resolve()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the federation spec {path}: {e}") from None
    spec, superlinks = from_json(data, path.parent)
    return SpecFile(spec, superlinks, path)
