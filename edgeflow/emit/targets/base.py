"""What a deployment target is (`Target`), what it renders from (`Rendering`), and the registry
of targets by name (`TARGETS`, which `edgeflow compile --target` lists)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from edgeflow.emit.artefacts import AdaptFiles, Artefact
from edgeflow.emit.bundle import Bundle, Client
from edgeflow.emit.training import Federation
from edgeflow.plan import Part
from edgeflow.registry import Registry


@dataclass(frozen=True)
class Rendering:
    """What a target renders from: the bundle, the model files by (model, part, replica), and
    the target's options (`--target-option KEY=VALUE`, each key one of `Target.options`)."""

    bundle: Bundle
    artefacts: dict[tuple[str, Part, int], Artefact]
    options: Mapping[str, str] = field(default_factory=dict)
    adapt: AdaptFiles = field(default_factory=dict)  # the decision tables' halves
    federations: tuple[Federation, ...] = ()  # the trainings it deploys (`deploys_training`)

    def option(self, target: Target, key: str) -> str:
        """The value of option `key` of `target`: as given, else its default for this app."""
        return self.options.get(key) or target.options[key][0].format(app=self.bundle.app)


class TargetError(Exception):
    """The target cannot carry this deployment (E1004): `message` says why, `subject` names the
    device instance or step it concerns (the diagnostic points at its declaration)."""

    def __init__(self, message: str, subject: str, help: str) -> None:
        super().__init__(message)
        self.subject = subject
        self.help = help


class Target(ABC):
    name: str
    description: str
    # what `--target-option KEY=VALUE` may set: key -> (default, with `{app}` for the app's
    # name; its help)
    options: ClassVar[Mapping[str, tuple[str, str]]] = {}
    # whether its bundles deploy the program's trainings (their Flower processes,
    # docs/training.md); a target that does not leaves them to `edgeflow train`
    deploys_training: ClassVar[bool] = False

    def warnings(self, options: Mapping[str, str]) -> list[str]:
        """What `compile` should warn about a bundle rendered with `options`."""
        return []

    @abstractmethod
    def broker_host(self, bundle: Bundle, client: Client) -> str:
        """Where `client`'s worker reaches its device's broker."""

    @abstractmethod
    def render(self, r: Rendering) -> dict[str, bytes]:
        """The target's own files, by path relative to the bundle (plan.json, report.md,
        models/ and mqtt/ are common to every target and written beside them)."""


TARGETS = Registry[Target]("target")
register, unregister = TARGETS.register, TARGETS.unregister
