"""docs/diagnostics.md is generated from the code registry and the golden outputs, so it can never
drift from what `edgeflow check` prints (regenerate with EDGEFLOW_UPDATE_GOLDENS=1)."""

from __future__ import annotations

import re

from edgeflow.diagnostics import CODES
from tests.conftest import FIXTURES, ROOT, assert_golden

HEADER = """# Diagnostics

`edgeflow check` reports every problem it finds as a diagnostic: a code, a severity, a message, the
exact span in the source with a caret under it, secondary labels pointing at related declarations,
and a `help:` line with the fix where one helps. `--format json` prints the same records as JSON on
stdout (fields `code`, `severity`, `message`, `span`, `label`, `labels`, `notes`, `help`; lines and
columns 1-based, offsets 0-based, end exclusive). `edgeflow explain CODE` prints a code's long form.

Exit codes of every command: `0` success (warnings allowed), `1` the input has errors, `2` usage
error (unknown option, missing file argument, file that does not exist), `3` internal error (a bug:
please report it; `--debug` shows the traceback).

The parser recovers at the next line that starts a declaration, so one run reports the first syntax
error of every broken declaration. While a file has syntax errors only those are reported: the
other checks would mostly echo what the broken declarations hide, and run once the file parses.

This file is generated from `edgeflow/diagnostics.py` and the golden tests in
`tests/fixtures/diagnostics/`; every example below is the exact output of `edgeflow check` on the
fixture named.

| code | severity | meaning |
| --- | --- | --- |
"""


def _example(code: str) -> tuple[str, str] | None:
    for out in sorted((FIXTURES / "diagnostics").glob(f"{code}_*.out")):
        blocks = out.read_text().split("\n\n")
        for block in blocks:
            if re.match(rf"(error|warning)\[{code}\]", block):
                return f"tests/fixtures/diagnostics/{out.with_suffix('.ef').name}", block
    # (plans/ holds what plan, compile, run and certs print: its test names the command)
    for folder, command in (("split", "edgeflow split, "), ("plans", "")):
        for out in sorted((FIXTURES / folder).glob(f"{code}_*.out")):
            block = out.read_text().split("\n\n")[0]
            return f"{command}tests/fixtures/{folder}/{out.name}", block.rstrip("\n")
    return None


def render_docs() -> str:
    parts = [HEADER]
    for code, entry in CODES.items():
        parts.append(f"| [{code}](#{code.lower()}) | {entry.severity.value} | {entry.title} |\n")
    for code, entry in CODES.items():
        parts.append(f"\n## {code}\n\n**{entry.title}** ({entry.severity.value})\n\n")
        parts.append(entry.explanation + "\n")
        example = _example(code)
        if example:
            name, block = example
            parts.append(f"\nExample (`{name}`):\n\n```text\n{block}\n```\n")
    return "".join(parts)


def test_diagnostics_doc_is_current() -> None:
    assert_golden(ROOT / "docs" / "diagnostics.md", render_docs())


def test_every_code_is_explained() -> None:
    for code, entry in CODES.items():
        assert re.fullmatch(r"[EW]\d{4}", code)
        assert entry.title and entry.title[0].islower() and not entry.title.endswith(".")
        assert len(entry.explanation) > 40
