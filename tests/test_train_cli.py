"""`edgeflow train` refusals that need no Flower process: every one a coded diagnostic (E1401),
nothing written outside the output folder, nothing of the user's replaced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, assert_golden


def _train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeflow", "train", *args],  # noqa: PLW1510
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_an_app_without_a_training_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _train("examples/reference.ef", "-o", str(out))
    assert proc.returncode == 1 and "error[E1401]" in proc.stderr
    assert not out.exists()
    assert_golden(ROOT / "tests" / "fixtures" / "plans" / "E1401_no_training.out",
                  proc.stderr.replace(str(out), "OUT"))


def test_a_folder_it_did_not_write_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = _train("examples/healthcare_vitals.ef", "-o", str(out), "--format", "json")
    assert proc.returncode == 1
    envelope = json.loads(proc.stdout)
    assert envelope["ok"] is False and envelope["result"] is None
    assert [d["code"] for d in envelope["diagnostics"]] == ["E1401"]
    assert "did not write" in envelope["diagnostics"][0]["message"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_unknown_training_is_named(tmp_path: Path) -> None:
    proc = _train("examples/healthcare_vitals.ef", "--training", "nope", "-o",
                  str(tmp_path / "o"))
    assert proc.returncode == 1 and "no training `nope`" in proc.stderr
    assert "ward_risk" in proc.stderr
