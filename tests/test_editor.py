"""The VS Code extension folder is consistent: manifest, grammar and snapshot inputs. (The
grammar's scope and snapshot tests run with npm in .ci/run.)"""

from __future__ import annotations

import json

from tests.conftest import ROOT

VSCODE = ROOT / "editors" / "vscode"


def test_manifest_points_at_real_files() -> None:
    manifest = json.loads((VSCODE / "package.json").read_text())
    (language,) = manifest["contributes"]["languages"]
    assert language["id"] == "edgeflow" and language["extensions"] == [".ef"]
    assert (VSCODE / language["configuration"]).is_file()
    (grammar,) = manifest["contributes"]["grammars"]
    tm = json.loads((VSCODE / grammar["path"]).read_text())
    assert tm["scopeName"] == grammar["scopeName"] == "source.edgeflow"
    assert (VSCODE / manifest["main"]).is_file()
    assert "edgeflow.executable" in manifest["contributes"]["configuration"]["properties"]
    json.loads((VSCODE / "language-configuration.json").read_text())


def test_grammar_knows_every_keyword_unit_and_dtype() -> None:
    from edgeflow.ir import DTYPE_BYTES
    from edgeflow.syntax.parser import DECL_KEYWORDS

    text = (VSCODE / "syntaxes" / "edgeflow.tmLanguage.json").read_text()
    for word in [*DECL_KEYWORDS, *DTYPE_BYTES, "edge", "fog", "cloud", "minimize", "<->", "->"]:
        assert word in text, word


def test_snapshot_inputs_are_the_examples() -> None:
    for example in sorted((ROOT / "examples").glob("*.ef")):
        copy = VSCODE / "tests" / "snap" / example.name
        assert copy.read_text() == example.read_text(), (
            f"{copy} is stale: cp examples/*.ef editors/vscode/tests/snap/ and update the "
            "snapshots")
