"""Golden tests: every diagnostic code has a fixture under fixtures/diagnostics whose exact
rendered output (text, as `edgeflow check` prints it) is stored beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeflow import check_file
from edgeflow.diagnostics import CODES, render_json, render_summary, render_text
from tests.conftest import FIXTURES, ROOT, assert_golden

DIAG = FIXTURES / "diagnostics"
CASES = sorted(p for p in DIAG.glob("*.ef"))


def _render(path: Path) -> tuple[str, list]:
    result = check_file(path.name)
    text = "".join(render_text(d, result.sources) + "\n" for d in result.diagnostics)
    return text + f"{result.file}: {render_summary(result.diagnostics)}\n", result.diagnostics


@pytest.fixture(autouse=True)
def _example_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixtures borrow the examples' models, outside their folder (E0607 otherwise)."""
    monkeypatch.setenv("EDGEFLOW_MODEL_ROOTS", str(ROOT / "examples" / "models"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_rendering(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DIAG)
    text, diagnostics = _render(path)
    code = path.name.split("_")[0]
    assert code in {d.code for d in diagnostics}, f"{path.name} does not raise {code}"
    for d in diagnostics:
        assert d.span.file == path.name
        assert 1 <= d.span.line <= d.span.end_line
        assert d.help is None or not d.help.endswith(".")
    assert_golden(path.with_suffix(".out"), text)


def test_every_code_has_a_golden() -> None:
    cli_goldens = [*(DIAG.parent / "split").glob("*.out"), *(DIAG.parent / "plans").glob("*.out"),
                   *(DIAG.parent / "quantize").glob("*.out")]
    covered = {p.name.split("_")[0] for p in [*CASES, *cli_goldens]}
    assert set(CODES) <= covered, f"codes without a golden test: {sorted(set(CODES) - covered)}"


def test_json_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DIAG)
    result = check_file("E0301_unknown_unit.ef")
    data = json.loads(render_json(result.diagnostics))
    assert_golden(DIAG / "E0301_unknown_unit.json", json.dumps(data, indent=2) + "\n")
    (diag,) = data
    assert diag["code"] == "E0301" and diag["severity"] == "error"
    assert diag["span"]["start"] == {"line": 5, "col": 62, "offset": diag["span"]["start"]["offset"]}
    assert diag["help"] == "did you mean `ms`?"
