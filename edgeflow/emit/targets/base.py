"""What a deployment target is (`Target`), what it renders from (`Rendering`), and the registry
of targets by name (`TARGETS`, which `edgeflow compile --target` lists)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from edgeflow.emit.artefacts import Artefact
from edgeflow.emit.bundle import Bundle, Client
from edgeflow.plan import Part
from edgeflow.registry import Registry


@dataclass(frozen=True)
class Rendering:
    """What a target renders from: the bundle and the model files by (model, part, replica)."""

    bundle: Bundle
    artefacts: dict[tuple[str, Part, int], Artefact]


class TargetError(Exception):
    """The target cannot carry this deployment (E1004): `message` says why, `subject` names the
    device instance or step it concerns (the diagnostic points at its declaration)."""

    def __init__(self, message: str, subject: str) -> None:
        super().__init__(message)
        self.subject = subject


class Target(ABC):
    name: str
    description: str

    @abstractmethod
    def broker_host(self, bundle: Bundle, client: Client) -> str:
        """Where `client`'s worker reaches its device's broker."""

    @abstractmethod
    def render(self, r: Rendering) -> dict[str, bytes]:
        """The target's own files, by path relative to the bundle (plan.json, report.md,
        models/ and mqtt/ are common to every target and written beside them)."""


TARGETS = Registry[Target]("target")
register, unregister = TARGETS.register, TARGETS.unregister
