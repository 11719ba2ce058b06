"""The parser: its hand-written lexer agrees with the grammar's terminals, spans are exact, and
recovery reports one error per broken declaration while keeping the others."""

from __future__ import annotations

from pathlib import Path

import pytest
from lark import Lark

from edgeflow.syntax import ast
from edgeflow.syntax.parser import DECL_KEYWORDS, grammar_text, parse
from tests.conftest import FIXTURES, ROOT

SOURCES = sorted((ROOT / "examples").glob("*.ef")) + sorted((FIXTURES / "diagnostics").glob("E05*.ef"))


def _lark_tokens(text: str) -> list[tuple[str, str, int, int, int]]:
    lexer = Lark(grammar_text(), parser="lalr", lexer="basic")
    keywords = {kw.upper() for kw in DECL_KEYWORDS}
    return [("NAME" if t.type in keywords else t.type, t.value, t.start_pos, t.line, t.column)
            for t in lexer.lex(text)]


def _our_tokens(text: str) -> list[tuple[str, str, int, int, int]]:
    from edgeflow.syntax.parser import _PIECE, _Lexer, _Piece

    class State:
        def __init__(self, text: str) -> None:
            self.text = text

    keywords = {kw.upper() for kw in DECL_KEYWORDS}
    reset = _PIECE.set(_Piece("x", 0, 1))
    try:
        return [("NAME" if t.type in keywords else t.type, t.value, t.start_pos, t.line, t.column)
                for t in _Lexer(None).lex(State(text), None)]  # type: ignore[arg-type]
    finally:
        _PIECE.reset(reset)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_lexer_matches_the_grammar_terminals(path: Path) -> None:
    text = path.read_text()
    assert _our_tokens(text) == _lark_tokens(text)


def test_spans_point_at_the_text() -> None:
    text = (ROOT / "examples" / "reference.ef").read_text()
    module, diagnostics = parse(text, "reference.ef")
    assert diagnostics == []
    for decl in module.decls:
        assert text[decl.name.span.start:decl.name.span.end] == decl.name.value
        assert text[decl.span.start:decl.span.end].startswith(decl.kind)
        assert text[decl.span.start:decl.span.end].endswith("}")
        for entry in decl.entries:
            assert text[entry.key.span.start:entry.key.span.end] == entry.key.value
            assert text[entry.span.start:entry.span.end].startswith(entry.key.value)
    link = next(d for d in module.decls if d.kind == "link")
    assert (link.name.value, link.peer.value) == ("line_gw", "plant_server")  # type: ignore[union-attr]
    sensor = next(d for d in module.decls if d.name.value == "camera")
    rate = next(e for e in sensor.entries if e.key.value == "rate").value
    assert isinstance(rate, ast.Quantity) and rate.unit == "Hz" and rate.number == 30
    assert rate.unit_span is not None and text[rate.unit_span.start:rate.unit_span.end] == "Hz"
    assert (rate.span.line, rate.span.col) == (41, 13)
    assert module.comments[0][1].startswith("# Visual defect inspection")


def test_keywords_are_names_inside_blocks_and_after_a_keyword() -> None:
    module, diagnostics = parse('store model { on = privacy }\nsensor s { privacy = [a] }', "k.ef")
    assert diagnostics == []
    assert [d.name.value for d in module.decls] == ["model", "s"]


def test_recovery_reports_each_broken_declaration_and_keeps_the_rest() -> None:
    text = ('app a { description = "x" }\n'
            "device d1 { tier edge }\n"
            "device d2 { tier = edge }\n"
            "device d3 { tier = [edge }\n"
            "device d4 { tier = cloud }\n")
    module, diagnostics = parse(text, "r.ef")
    assert [(d.code, d.span.line) for d in diagnostics] == [("E0001", 2), ("E0001", 4)]
    assert [d.name.value for d in module.decls] == ["a", "d2", "d4"]


def test_strings_unescape() -> None:
    module, _ = parse(r'app a { description = "say \"hi\" \\ bye" }', "s.ef")
    value = module.decls[0].entries[0].value
    assert isinstance(value, ast.String) and value.value == 'say "hi" \\ bye'
