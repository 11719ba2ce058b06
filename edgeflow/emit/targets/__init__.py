"""The deployment targets. A target is a small object: its name (the `--target` choice), a
one-line description, where a unit's worker finds its broker, and how it renders a `Bundle` into
files (`base.Target`). Adding a target is one module in this folder (plus its templates and a
golden bundle) and one entry in the tuple below; `edgeflow compile --target` lists the registry.
"""

from __future__ import annotations

from edgeflow.emit.targets.azure_iot_edge import AzureIotEdge
from edgeflow.emit.targets.base import (
    TARGETS,
    Rendering,
    Target,
    TargetError,
    register,
    unregister,
)
from edgeflow.emit.targets.compose import Compose
from edgeflow.emit.targets.greengrass import Greengrass
from edgeflow.emit.targets.k8s import Kubernetes

for _target in (Kubernetes(), Compose(), AzureIotEdge(), Greengrass()):
    register(_target)

__all__ = ["TARGETS", "Rendering", "Target", "TargetError", "register", "unregister"]
