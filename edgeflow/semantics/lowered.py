"""`Lowered`: what lowering has built so far, shared by `lower` (which fills it) and `flows`
(which checks the dataflow over it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeflow import ir
from edgeflow.semantics.values import Symbols


@dataclass
class Lowered:
    """What lowering produced: the valid entities (for the later checks), diagnostics, and the
    whole Program when there were no errors."""

    symbols: Symbols
    app: ir.App | None = None
    devices: dict[str, ir.Device] = field(default_factory=dict)
    links: list[ir.Link] = field(default_factory=list)
    sensors: dict[str, ir.Sensor] = field(default_factory=dict)
    sinks: dict[str, ir.Sink] = field(default_factory=dict)
    models: dict[str, ir.Model] = field(default_factory=dict)
    operators: dict[str, ir.Operator] = field(default_factory=dict)
    pipelines: dict[str, ir.Pipeline] = field(default_factory=dict)
    privacy: dict[str, ir.PrivacyRule] = field(default_factory=dict)
    trainings: dict[str, ir.Training] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # declared, but with errors inside
