"""Shared test helpers. Set EDGEFLOW_UPDATE_GOLDENS=1 to rewrite golden files deliberately."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
UPDATE = os.environ.get("EDGEFLOW_UPDATE_GOLDENS") == "1"
# edgeflow's cache folder (edgeflow.cache): the tests' own, never the user's
os.environ["EDGEFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgeflow-test-cache-")


def assert_golden(path: Path, actual: str) -> None:
    """Compare `actual` with the golden file at `path` (or write it when updating)."""
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path}; run with EDGEFLOW_UPDATE_GOLDENS=1")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"output differs from golden {path.name}"


@pytest.fixture
def folder() -> Iterator[Path]:
    """A scratch folder every user can read: mosquitto started as root drops its privileges,
    and pytest's private tmp folders are then out of its reach."""
    path = Path(tempfile.mkdtemp(prefix="edgeflow-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def unit_topics(spec: Any) -> dict[str, set[str]]:
    """The topics a unit's broker identity may read and write, from its unit.json alone: its
    inputs and outputs, and for an adapting split model's head the tail's feedback (read) and
    the tail's output (write, when it may run the whole model), for its tail the feedback."""
    read, write = set(spec.subscribe), set(spec.publish)
    if spec.adapt is not None:
        if spec.kind == "head":
            read.add(spec.adapt.feedback)
            write.update(spec.adapt.bypass)
        else:
            write.add(spec.adapt.feedback)
    return {"read": read, "write": write}
