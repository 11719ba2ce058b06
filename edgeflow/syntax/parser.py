"""Text -> AST. The lark LALR parser is built once; lark's exceptions become coded diagnostics.

Recovery: when the whole file does not parse, it is cut at every line that starts a declaration
(`device x`, `link a`, ...) and each piece is parsed on its own, so one run reports the first error
of every broken declaration and still yields the AST of the others.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from edgeflow.diagnostics import Diagnostic, DiagnosticSink, Label
from edgeflow.syntax import ast

DECL_KEYWORDS = ("app", "device", "link", "sensor", "actuator", "store", "model", "operator",
                 "pipeline", "privacy")
_DECL_START = re.compile(r"^[ \t]*(?:%s)[ \t]+[A-Za-z_]" % "|".join(DECL_KEYWORDS), re.MULTILINE)
_QUANTITY = re.compile(r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([ \t]*)(.*)", re.DOTALL)

_TERMINAL_TEXT = {
    "NAME": "a name", "STRING": "a string", "QUANTITY": "a number", "$END": "end of file",
    "LBRACE": "`{`", "RBRACE": "`}`", "LSQB": "`[`", "RSQB": "`]`", "LPAR": "`(`", "RPAR": "`)`",
    "EQUAL": "`=`", "COMMA": "`,`", "ARROW": "`->`", "BIARROW": "`<->`", "LT": "`<`",
    "LE": "`<=`", "GT": "`>`", "GE": "`>=`",
}


def grammar_text() -> str:
    """The grammar: packaged beside the code in a wheel, at the repository's top in a checkout."""
    packaged = resources.files("edgeflow") / "_data" / "grammar" / "edgeflow.lark"
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "grammar" / "edgeflow.lark").read_text("utf-8")


@lru_cache(maxsize=2)
def lark_parser(strict: bool = False) -> Lark:
    # strict=True (regex collision checks) needs `interegular`; the test suite builds it that way
    # once, so the grammar stays conflict-free without every CLI start paying for the check.
    return Lark(grammar_text(), parser="lalr", propagate_positions=True, strict=strict,
                maybe_placeholders=True)


def _describe_expected(expected: set[str]) -> str:
    names = sorted({_TERMINAL_TEXT.get(t, f"`{t.lower()}`") for t in expected if t != "WS"})
    if len(names) > 6:
        names = names[:6] + ["..."]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


class _Positions:
    """Turns lark positions inside one parsed piece into spans of the whole file."""

    def __init__(self, file: str, text: str, base_offset: int, base_line: int) -> None:
        self.file, self.text, self.base_offset, self.base_line = file, text, base_offset, base_line

    def of_token(self, tok: Token) -> ast.Span:
        return ast.Span(self.file, self.base_offset + tok.start_pos, self.base_offset + tok.end_pos,
                        self.base_line + tok.line - 1, tok.column,
                        self.base_line + tok.end_line - 1, tok.end_column)

    def of_meta(self, meta: object) -> ast.Span:
        m = meta  # lark's Meta: same attribute names as a Token's positions
        return ast.Span(self.file, self.base_offset + m.start_pos, self.base_offset + m.end_pos,
                        self.base_line + m.line - 1, m.column,
                        self.base_line + m.end_line - 1, m.end_column)

    def at(self, offset: int, length: int = 0) -> ast.Span:
        """A span at an offset of the piece (for errors, which carry no end position)."""
        line = self.text.count("\n", 0, offset) + 1
        col = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return ast.Span(self.file, self.base_offset + offset, self.base_offset + offset + length,
                        self.base_line + line - 1, col, self.base_line + line - 1, col + length)


@v_args(meta=True)
class _Builder(Transformer):  # type: ignore[type-arg]
    def __init__(self, pos: _Positions) -> None:
        super().__init__()
        self.pos = pos

    def _name(self, tok: Token) -> ast.Name:
        if tok.type == "STRING":
            return ast.Name(_unescape(tok.value[1:-1]), self.pos.of_token(tok))
        return ast.Name(str(tok.value), self.pos.of_token(tok))

    def _quantity(self, tok: Token) -> ast.Quantity:
        match = _QUANTITY.fullmatch(tok.value)
        assert match, tok.value  # the terminal's own regex
        number, gap, unit = match.groups()
        span = self.pos.of_token(tok)
        unit_span = None
        if unit:
            start = tok.start_pos + len(number) + len(gap)
            unit_span = ast.Span(span.file, self.pos.base_offset + start, span.end, span.line,
                                 tok.column + len(number) + len(gap), span.end_line, span.end_col)
        is_int = re.fullmatch(r"-?\d+", number) is not None
        return ast.Quantity(float(number), is_int, unit or None, number, span, unit_span)

    # -- declarations
    def start(self, meta: object, children: list[ast.Decl]) -> list[ast.Decl]:
        return children

    def decl(self, meta: object, children: list) -> ast.Decl:  # type: ignore[type-arg]
        kind, name, (entries, body) = children
        return ast.Decl(kind.value, self.pos.of_token(kind), self._name(name), entries,
                        self.pos.of_meta(meta), body_span=body)

    def link(self, meta: object, children: list) -> ast.Decl:  # type: ignore[type-arg]
        kw, a, _arrow, b, (entries, body) = children
        return ast.Decl("link", self.pos.of_token(kw), self._name(a), entries,
                        self.pos.of_meta(meta), peer=self._name(b), body_span=body)

    def kind(self, meta: object, children: list[Token]) -> Token:
        return children[0]

    def block(self, meta: object, children: list) -> tuple:  # type: ignore[type-arg]
        return children[0], self.pos.of_meta(meta)

    def entries(self, meta: object, children: list[ast.Entry]) -> tuple[ast.Entry, ...]:
        return tuple(children)

    def entry(self, meta: object, children: list) -> ast.Entry:  # type: ignore[type-arg]
        key, value = children
        return ast.Entry(self._name(key), value, self.pos.of_meta(meta))

    # -- values
    def quantity(self, meta: object, children: list[Token]) -> ast.Quantity:
        return self._quantity(children[0])

    def string(self, meta: object, children: list[Token]) -> ast.String:
        tok = children[0]
        return ast.String(_unescape(tok.value[1:-1]), self.pos.of_token(tok))

    def word(self, meta: object, children: list[Token]) -> ast.Word:
        return ast.Word(str(children[0].value), self.pos.of_token(children[0]))

    def tensor(self, meta: object, children: list) -> ast.Tensor:  # type: ignore[type-arg]
        dtype, dims = children
        return ast.Tensor(self._name(dtype), tuple(dims or ()), self.pos.of_meta(meta))

    def dims(self, meta: object, children: list) -> list:  # type: ignore[type-arg]
        return children

    def dim_number(self, meta: object, children: list[Token]) -> ast.Quantity:
        return self._quantity(children[0])

    def dim_name(self, meta: object, children: list[Token]) -> ast.Word:
        return ast.Word(str(children[0].value), self.pos.of_token(children[0]))

    def call(self, meta: object, children: list) -> ast.Call:  # type: ignore[type-arg]
        func, args = children
        return ast.Call(self._name(func), tuple(args or ()), self.pos.of_meta(meta))

    def items(self, meta: object, children: list[ast.Value]) -> list[ast.Value]:
        return children

    args = items

    def flow(self, meta: object, children: list[Token]) -> ast.Flow:
        steps = tuple(self._name(t) for t in children if t.type == "NAME")
        return ast.Flow(steps, self.pos.of_meta(meta))

    def constraint(self, meta: object, children: list) -> ast.Constraint:  # type: ignore[type-arg]
        subject, op, bound = children
        return ast.Constraint(self._name(subject), op.value, self.pos.of_token(op),
                              self._quantity(bound), self.pos.of_meta(meta))

    def cmp(self, meta: object, children: list[Token]) -> Token:
        return children[0]

    def list(self, meta: object, children: list) -> ast.ListValue:  # type: ignore[type-arg]
        return ast.ListValue(tuple(children[0] or ()), self.pos.of_meta(meta))

    def map(self, meta: object, children: list) -> ast.MapValue:  # type: ignore[type-arg]
        return ast.MapValue(children[0], self.pos.of_meta(meta))


def _unescape(s: str) -> str:
    return re.sub(r"\\([\"\\])", r"\1", s)


def _syntax_diagnostic(err: UnexpectedInput, pos: _Positions, piece: str, last: bool,
                       ) -> Diagnostic:
    if isinstance(err, UnexpectedCharacters):
        offset = err.pos_in_stream
        word = re.match(r"[A-Za-z_][A-Za-z0-9_]*", piece[offset:])
        expected = set(err.allowed or ())
        if word:
            found = word.group(0)
            keywords = [t.lower() for t in expected if t.lower() in DECL_KEYWORDS]
            help_ = None
            close = difflib.get_close_matches(found, keywords, n=1, cutoff=0.6)
            if close:
                help_ = f"did you mean `{close[0]}`?"
            elif keywords:
                help_ = "a declaration starts with one of: " + ", ".join(sorted(keywords))
            return Diagnostic("E0001", f"expected {_describe_expected(expected)}, found `{found}`",
                              pos.at(offset, len(found)), "unexpected word", help=help_)
        char = piece[offset]
        shown = repr(char)[1:-1] if not char.isprintable() else char
        return Diagnostic("E0002", f"invalid character `{shown}`", pos.at(offset, 1),
                          f"expected {_describe_expected(expected)}",
                          help="names are [a-z_][a-z0-9_]*; other text belongs in a double-quoted"
                               " string" if char.isalpha() or char == '"' else None)
    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        tok = err.token
        span = pos.of_token(tok)
        expected = set(err.expected or ())
        help_ = None
        if "EQUAL" in expected and len(expected) == 1:
            help_ = "write entries as `key = value`"
        elif expected & {"RBRACE", "COMMA"} and tok.type in {"QUANTITY", "STRING", "NAME"}:
            help_ = "separate entries with a comma or a new line"
        return Diagnostic("E0001", f"expected {_describe_expected(expected)}, found `{tok.value}`",
                          span, "unexpected here", help=help_)
    # the piece ended too early
    expected = set(getattr(err, "expected", None) or ())
    end = len(piece.rstrip())
    labels: tuple[Label, ...] = ()
    opener = _unclosed_opener(piece)
    if opener is not None:
        labels = (Label(pos.at(opener, 1), f"this `{piece[opener]}` is not closed"),)
    return Diagnostic("E0003", "unexpected end of " + ("file" if last else "declaration"),
                      pos.at(max(end - 1, 0), 1 if end else 0),
                      f"expected {_describe_expected(expected)} after this" if expected else "",
                      labels=labels)


def _unclosed_opener(piece: str) -> int | None:
    """The offset of the innermost bracket left open in a piece (strings and comments skipped)."""
    stack: list[int] = []
    pairs = {"}": "{", "]": "[", ")": "("}
    for m in re.finditer(r'"(?:\\.|[^"\\\n])*"|#[^\n]*|[{}\[\]()]', piece):
        tok = m.group(0)
        if tok in "{[(":
            stack.append(m.start())
        elif tok in pairs and stack and piece[stack[-1]] == pairs[tok]:
            stack.pop()
    return stack[-1] if stack else None


def _parse_piece(parser: Lark, pos: _Positions, piece: str, last: bool, sink: DiagnosticSink,
                 ) -> list[ast.Decl]:
    try:
        tree = parser.parse(piece)
    except (UnexpectedInput, UnexpectedEOF) as err:
        sink.items.append(_syntax_diagnostic(err, pos, piece, last))
        return []
    return _build(tree, pos)


def _build(tree: Tree, pos: _Positions) -> list[ast.Decl]:  # type: ignore[type-arg]
    return _Builder(pos).transform(tree)  # type: ignore[no-any-return]


def parse(text: str, file: str) -> tuple[ast.Module, list[Diagnostic]]:
    """Parse a whole file. Never raises on bad input: errors come back as diagnostics."""
    parser = lark_parser()
    sink = DiagnosticSink()
    comments = tuple(
        (_Positions(file, text, 0, 1).at(m.start(), len(m.group(0))), m.group(0))
        for m in re.finditer(r'"(?:\\.|[^"\\\n])*"|#[^\n]*', text) if m.group(0).startswith("#"))
    try:
        decls = _build(parser.parse(text), _Positions(file, text, 0, 1))
        return ast.Module(file, tuple(decls), comments), []
    except (UnexpectedInput, UnexpectedEOF):
        pass
    starts = [m.start() for m in _DECL_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    decls = []
    line = 1
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        piece = text[start:end]
        decls.extend(_parse_piece(parser, _Positions(file, piece, start, line), piece,
                                   end == len(text), sink))
        line += piece.count("\n")
    return ast.Module(file, tuple(decls), comments), sink.items
