"""Bad input never crashes `check`: programs generated from the grammar, and mutations of the
examples (deleted, duplicated and swapped tokens, random bytes, empty, non-UTF-8, a 1 MB line).
Every diagnostic must carry a valid span inside the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from edgeflow.api import CheckResult, check_file, check_text
from edgeflow.diagnostics import CODES, render_json, render_text
from edgeflow.syntax.parser import grammar_text
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.ef"))
FUZZ = settings(derandomize=True, max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_TOKEN = re.compile(r'"(?:\\.|[^"\\\n])*"|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|<->|->|<=|>=|\S')


def assert_well_formed(result: CheckResult) -> None:
    text = result.text
    for diag in result.diagnostics:
        assert diag.code in CODES
        span = diag.span
        assert 0 <= span.start <= span.end <= max(len(text), 1)
        assert 1 <= span.line <= span.end_line and span.col >= 1
        if text and span.start < len(text):
            line_start = text.rfind("\n", 0, span.start) + 1
            assert span.line == text.count("\n", 0, span.start) + 1
            assert span.col == span.start - line_start + 1
        for label in diag.labels:
            assert 0 <= label.span.start <= label.span.end <= len(text)
        render_text(diag, result.sources)
    render_json(result.diagnostics)


def check_in_examples(text: str) -> CheckResult:
    """Check text as a file beside the examples, so model paths resolve as they do there."""
    return check_text(text, str(ROOT / "examples" / "fuzz.ef"))


@given(from_lark(Lark(grammar_text(), parser="lalr"), start="start"))
@FUZZ
def test_programs_from_the_grammar_never_crash(program: str) -> None:
    assert_well_formed(check_text(program, "generated.ef"))


def _tokens(text: str) -> list[re.Match[str]]:
    return list(_TOKEN.finditer(text))


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLES)).read_text()
    for _ in range(draw(st.integers(1, 4))):
        tokens = _tokens(text)
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        tok = tokens[i]
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "bytes", "truncate"]))
        if op == "delete":
            text = text[: tok.start()] + text[tok.end():]
        elif op == "duplicate":
            text = text[: tok.end()] + " " + tok.group(0) + text[tok.end():]
        elif op == "swap":
            other = tokens[draw(st.integers(0, len(tokens) - 1))]
            a, b = sorted((tok, other), key=lambda m: m.start())
            if a.end() <= b.start():
                text = (text[: a.start()] + b.group(0) + text[a.end(): b.start()] + a.group(0)
                        + text[b.end():])
        elif op == "bytes":
            junk = draw(st.text(min_size=1, max_size=8))
            text = text[: tok.start()] + junk + text[tok.start():]
        else:
            text = text[: tok.start()]
    return text


@given(mutated_example())
@FUZZ
def test_mutated_examples_never_crash(text: str) -> None:
    assert_well_formed(check_in_examples(text))


@given(data=st.binary(max_size=300))
@FUZZ
def test_random_bytes_never_crash(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("bytes") / "random.ef"
    path.write_bytes(data)
    assert_well_formed(check_file(path))


@pytest.mark.parametrize("data", [
    b"", b"\n\n", b"\xff\xfe\x00", "app x { description = \"é\" }\n".encode("latin-1"),
    b"app demo {}\n" + b"#" * 1_000_000 + b"\n",
    b"app demo { description = \"" + b"a" * 1_000_000 + b"\" }\n",
    b"device d { compute = " + b"9" * 1_000_000 + b" TFLOPS }\n",
    b"app " + b"x" * 1_000_000 + b" {}\n",
], ids=["empty", "blank", "bom-ish", "latin1", "long-comment", "long-string", "long-number",
        "long-name"])
def test_edge_case_files(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "edge.ef"
    path.write_bytes(data)
    result = check_file(path)
    assert_well_formed(result)
    for diag in result.diagnostics:
        assert len(render_text(diag, result.sources)) < 2000  # long lines are cut in snippets


def test_grammar_is_conflict_free_in_strict_mode() -> None:
    from edgeflow.syntax.parser import strict_lark_parser
    strict_lark_parser()
