"""The formatter: idempotent, keeps every comment, never changes what a program means (its AST
up to layout, and its checked IR), and `edgeflow fmt` writes in place only what parses."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from edgeflow import check_text
from edgeflow.syntax import ast
from edgeflow.syntax.fmt import format_module, value_text
from edgeflow.syntax.parser import grammar_text, parse
from tests.conftest import ROOT
from tests.test_cli import run
from tests.test_fuzz import IN_EXAMPLES, mutated_example
from tests.test_placement import random_app

PROPS = settings(derandomize=True, max_examples=100, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
EXAMPLES = sorted((ROOT / "examples").glob("*.ef"))


def shape(module: ast.Module) -> list[object]:
    """A module without layout: declarations, keys and canonical values."""
    return [(d.kind, d.name.value, d.peer.value if d.peer else None,
             [(e.key.value, value_text(e.value)) for e in d.entries]) for d in module.decls]


def check_formatting(text: str) -> None:
    module, errors = parse(text, "f.ef")
    if errors:
        return
    once = format_module(text, module)
    again_module, again_errors = parse(once, "f.ef")
    assert not again_errors, (text, once)
    assert format_module(once, again_module) == once  # idempotent
    assert shape(again_module) == shape(module)  # same program, only layout changed
    assert Counter(c for _, c in again_module.comments) == Counter(
        c.rstrip() for _, c in module.comments)  # every comment kept


@given(from_lark(Lark(grammar_text(), parser="lalr"), start="start"))
@PROPS
def test_generated_programs(program: str) -> None:
    check_formatting(program)


@given(mutated_example())
@PROPS
def test_mutated_examples(text: str) -> None:
    check_formatting(text)


@given(random_app(), st.sampled_from(["", "# note\n", "\n\n# a\n# b\n"]))
@PROPS
def test_formatting_keeps_the_checked_ir(text: str, prefix: str) -> None:
    text = prefix + text.replace(" }\n", " }  # trailing\n", 1)
    before = check_text(text, str(ROOT / "examples" / "f.ef"))
    assert before.program is not None
    module, _ = parse(text, "f.ef")
    after = check_text(format_module(text, module), str(ROOT / "examples" / "f.ef"))
    assert after.program is not None
    assert after.program.model_dump_json() == before.program.model_dump_json()


def test_examples_are_formatted_and_keep_their_ir() -> None:
    for path in EXAMPLES:
        text = path.read_text()
        module, _ = parse(text, str(path))
        formatted = format_module(text, module)
        if path.name != "reference.ef":  # the contract's own copy keeps its layout
            assert formatted == text, f"{path.name} is not formatted (edgeflow fmt)"
        check_formatting(text)
        before, after = check_text(text, str(path)).program, check_text(formatted, str(path)).program
        assert before is not None and after is not None
        assert after.model_dump_json() == before.model_dump_json()


def test_layout_rules() -> None:
    text = ('app a{description="x"}\n\n\n\ndevice d {tier=edge,compute=1 TFLOPS,\n'
            'memory=[ 1 ,2 ] # why\n}\nlink d <->   e   {bandwidth=1 Gbps , latency=1 ms}\n')
    module, errors = parse(text, "l.ef")
    assert not errors
    assert format_module(text, module) == (
        'app a { description = "x" }\n'
        "\n"
        "device d {\n"
        "  tier    = edge\n"
        "  compute = 1 TFLOPS\n"
        "  memory  = [1, 2]    # why\n"  # trailing comments align past the longest entry
        "}\n"
        "link d <-> e { bandwidth = 1 Gbps, latency = 1 ms }\n")


def test_fmt_cli(tmp_path: Path) -> None:
    path = tmp_path / "app.ef"
    path.write_text("app a {description=\"x\"}\n")
    path.chmod(0o640)
    assert run("fmt", "--check", str(path)).returncode == 1
    assert path.read_text() == "app a {description=\"x\"}\n"  # --check changes nothing
    assert run("fmt", str(path)).returncode == 0
    assert path.read_text() == 'app a { description = "x" }\n'
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    assert run("fmt", "--check", str(path)).returncode == 0
    broken = tmp_path / "broken.ef"
    broken.write_text("app a { description = }\n")
    proc = run("fmt", str(broken))
    assert proc.returncode == 1 and "error[E0001]" in proc.stderr
    assert broken.read_text() == "app a { description = }\n"


def test_a_comment_inside_a_declarations_head_moves_above_it() -> None:
    # found by test_generated_programs: the comment between `app` and its name was dropped
    for text in ("app#A{}app\nA{}", "link a # x\n <-> b { bandwidth = 1 Mbps }\n"):
        check_formatting(text)
    module, _ = parse("app#A{}app\nA{}", "f.ef")
    assert format_module("app#A{}app\nA{}", module) == "#A{}app\napp A {}\n"


# ---- comments inside values (issue 14, item 12: `x = [ # c` NEWLINE `]` gained two spaces of
# indentation on every run, so `fmt --check` never passed)


def formats_to(text: str, expected: str) -> None:
    module, errors = parse(text, "f.ef")
    assert not errors
    assert format_module(text, module) == expected
    check_formatting(text)
    check_formatting(expected)


def test_a_comment_inside_a_list_keeps_its_place(tmp_path: Path) -> None:
    text = "app a { x = [ # c\n] }"
    once = "app a {\n  x = [\n    # c\n  ]\n}\n"
    formats_to(text, once)
    module, _ = parse(once, "f.ef")
    assert format_module(once, module) == once
    path = tmp_path / "a.ef"
    path.write_text(text)
    assert run("fmt", str(path)).returncode == 0
    assert path.read_text() == once
    assert run("fmt", "--check", str(path)).returncode == 0  # failed forever before


def test_comments_inside_values_keep_their_place() -> None:
    formats_to(
        "device d {\n"
        "  labels = { zone = \"a\" # where\n rack = \"r1\" }\n"
        "  memory = [1, # one\n 2,\n # before three\n 3] # after\n"
        "  shape = float32[1, # batch\n 3]\n"
        "  objective = minimize(latency, # first\n cost)\n"
        "  flow = cam # the camera\n -> op -> # before the model\n net\n"
        "  nested = [{ a = [1 # deep\n] }]\n"
        "}\n",
        "device d {\n"
        "  labels    = {\n"
        "    zone = \"a\"   # where\n"
        "    rack = \"r1\"\n"
        "  }\n"
        "  memory    = [\n"
        "    1,  # one\n"
        "    2,\n"
        "    # before three\n"
        "    3,\n"
        "  ]  # after\n"
        "  shape     = float32[\n"
        "    1,  # batch\n"
        "    3,\n"
        "  ]\n"
        "  objective = minimize(\n"
        "    latency,  # first\n"
        "    cost,\n"
        "  )\n"
        "  flow      = cam  # the camera\n"
        "    -> op  # before the model\n"
        "    -> net\n"
        "  nested    = [\n"
        "    {\n"
        "      a = [\n"
        "        1,  # deep\n"
        "      ]\n"
        "    },\n"
        "  ]\n"
        "}\n")


def test_comments_where_no_line_can_break_move_above_their_entry() -> None:
    formats_to(
        "app a { objective # o\n = # p\n minimize # q\n (latency)\n"
        "  slo = [latency # r\n < 5 ms] shape = [float32 # s\n [1]] }\n",
        "app a {\n"
        "  # o\n"
        "  # p\n"
        "  # q\n"
        "  objective = minimize(latency)\n"
        "  slo       = [\n"
        "    # r\n"
        "    latency < 5 ms,\n"
        "  ]\n"
        "  shape     = [\n"
        "    # s\n"
        "    float32[1],\n"
        "  ]\n"
        "}\n")


def test_a_comment_inside_a_value_keeps_the_checked_ir() -> None:
    text = (ROOT / "examples" / "smart_city_traffic.ef").read_text()
    text = text.replace("[latency < 200 ms, ", "[ # both\n latency # the slower\n < 200 ms,\n")
    text = text.replace("-> vehicle_detector ->", "-> # on the fog?\n vehicle_detector ->", 1)
    before = check_text(text, IN_EXAMPLES).program
    module, _ = parse(text, "f.ef")
    after = check_text(format_module(text, module), IN_EXAMPLES).program
    assert before is not None and after is not None
    assert after.model_dump_json() == before.model_dump_json()
    check_formatting(text)


_TOKEN_END = re.compile(  # a quantity with its unit is one token, as in the grammar
    r'"(?:\\.|[^"\\\n])*"|[A-Za-z_][A-Za-z0-9_]*'
    r"|-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?([ \t]*[A-Za-z]+(/[A-Za-z]+)?)?|<->|->|<=|>=|\S")
_COMMENTS = ["  # t\n", "\n# own\n", " # c\n  ", "# x\n"]


@st.composite
def with_comments(draw: st.DrawFn, programs: st.SearchStrategy[str]) -> str:
    """A program with comments put after some of its tokens (never inside a comment)."""
    text = draw(programs)
    module, _ = parse(text, "f.ef")
    inside = [(s.start, s.end) for s, _ in module.comments]
    ends = [m.end() for m in _TOKEN_END.finditer(text)
            if not any(a <= m.start() < b for a, b in inside)]
    if not ends:
        return text
    chosen = draw(st.lists(st.sampled_from(ends), min_size=1, max_size=6, unique=True))
    for at in sorted(chosen, reverse=True):
        text = text[:at] + draw(st.sampled_from(_COMMENTS)) + text[at:]
    return text


@given(with_comments(st.sampled_from(EXAMPLES).map(Path.read_text) | random_app()))
@PROPS
def test_comments_anywhere_in_a_program(text: str) -> None:
    check_formatting(text)
    module, errors = parse(text, "f.ef")
    assert not errors
    formatted = format_module(text, module)
    again, _ = parse(formatted, "f.ef")
    assert [c for _, c in again.comments] == [c.rstrip() for _, c in module.comments]  # in order
    before = check_text(text, IN_EXAMPLES).program
    if before is not None:
        after = check_text(formatted, IN_EXAMPLES).program
        assert after is not None and after.model_dump_json() == before.model_dump_json()


@given(with_comments(from_lark(Lark(grammar_text(), parser="lalr"), start="start")))
@PROPS
def test_comments_anywhere_in_generated_programs(text: str) -> None:
    check_formatting(text)
