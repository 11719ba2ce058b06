"""Text -> AST. The lark LALR parser is built once; lark's exceptions become coded diagnostics.

Recovery: when the whole file does not parse, it is cut at every line that starts a declaration
(`device x`, `link a`, ...) and each piece is parsed on its own, so one run reports the first error
of every broken declaration and still yields the AST of the others.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer, LexerState

from edgeflow.diagnostics import Diagnostic, DiagnosticSink, Label
from edgeflow.resources import data_path
from edgeflow.span import Span
from edgeflow.syntax import ast

DECL_KEYWORDS = ("app", "device", "link", "sensor", "actuator", "store", "model", "operator",
                 "pipeline", "privacy", "training")
_DECL_START = re.compile(rf"^[ \t]*(?:{'|'.join(DECL_KEYWORDS)})[ \t]+[A-Za-z_]", re.MULTILINE)
_QUANTITY = re.compile(r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([ \t]*)(.*)", re.DOTALL)

_TERMINAL_TEXT = {
    "NAME": "a name", "STRING": "a string", "QUANTITY": "a number", "$END": "end of file",
    "LBRACE": "`{`", "RBRACE": "`}`", "LSQB": "`[`", "RSQB": "`]`", "LPAR": "`(`", "RPAR": "`)`",
    "EQUAL": "`=`", "COMMA": "`,`", "ARROW": "`->`", "BIARROW": "`<->`", "LT": "`<`",
    "LE": "`<=`", "GT": "`>`", "GE": "`>=`",
}


def grammar_text() -> str:
    """The grammar, `grammar/edgeflow.lark`."""
    return (data_path("grammar") / "edgeflow.lark").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def lark_parser() -> Lark:
    """The parser every check uses: LALR with our lexer, building the AST as it reduces."""
    return Lark(grammar_text(), parser="lalr", lexer=_Lexer, transformer=_Builder(),
                keep_all_tokens=True, maybe_placeholders=True)


def strict_lark_parser() -> Lark:
    """The grammar with lark's own contextual lexer in strict mode (needs `interegular`): fails
    on any shift/reduce conflict or terminal collision. The test suite builds it."""
    return Lark(grammar_text(), parser="lalr", propagate_positions=True, strict=True,
                maybe_placeholders=True)


_DECL_TYPES = frozenset(kw.upper() for kw in DECL_KEYWORDS)
_COMPARISONS = ("LT", "LE", "GT", "GE")


def _describe_expected(expected: set[str]) -> str:
    """What the parser would have accepted, in full: groups of tokens are named as a category
    with all their members (a declaration keyword, a comparison), never cut short."""
    expected = expected - {"WS", "COMMENT"}
    groups: list[str] = []
    if len(expected & _DECL_TYPES) >= 3:
        groups.append("a declaration keyword (" + ", ".join(
            f"`{kw}`" for kw in DECL_KEYWORDS if kw.upper() in expected) + ")")
        expected = expected - _DECL_TYPES
    if all(t in expected for t in _COMPARISONS):
        groups.append("a comparison (`<`, `<=`, `>`, `>=`)")
        expected = expected - set(_COMPARISONS)
    names = sorted({_TERMINAL_TEXT.get(t, f"`{t.lower()}`") for t in expected})
    names = [n for n in names if n != "end of file"] + groups + \
        (["end of file"] if "$END" in expected else [])
    if not names:
        return "nothing more"
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


# The token regex of the grammar's terminals, as one alternation: lark's own lexer spends most of
# its time on ignored whitespace tokens; this lexes a 10,000-line file in a fraction of the time.
# `tests/test_parser.py` checks it against lark's lexer on every example.
_LEX = re.compile(r"""
    (?P<NL>\n)
  | (?P<WS>[ \t\r\f]+)
  | (?P<COMMENT>\#[^\n]*)
  | (?P<QUANTITY>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:[ \t]*[A-Za-z]+(?:/[A-Za-z]+)?)?)
  | (?P<NAME>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<STRING>"(?:\\.|[^"\\\n])*")
  | (?P<BIARROW><->) | (?P<ARROW>->) | (?P<LE><=) | (?P<GE>>=) | (?P<LT><) | (?P<GT>>)
  | (?P<LBRACE>\{) | (?P<RBRACE>\}) | (?P<LSQB>\[) | (?P<RSQB>\]) | (?P<LPAR>\() | (?P<RPAR>\))
  | (?P<EQUAL>=) | (?P<COMMA>,)
""", re.VERBOSE)
_KEYWORD_TYPES = {kw: kw.upper() for kw in DECL_KEYWORDS}


@dataclass(frozen=True)
class _Piece:
    """Where the text being parsed sits in its file."""

    file: str
    base_offset: int
    base_line: int


_PIECE: ContextVar[_Piece] = ContextVar("edgeflow_piece")


class _Lexer(Lexer):
    """Yields tokens with positions in the whole file. A word is a declaration keyword only at
    the top level where a declaration may start (after `}` or at the start), as in the grammar's
    contextual lexer, so keys and names like `privacy` or `model` stay names elsewhere."""

    __future_interface__ = 1

    def __init__(self, lexer_conf: object) -> None:
        pass

    def lex(self, lexer_state: LexerState, parser_state: object) -> Iterator[Token]:
        piece = _PIECE.get()
        source = lexer_state.text
        text: str = source if isinstance(source, str) else source.text  # a TextSlice
        base, line = piece.base_offset, piece.base_line
        line_start = 0  # offset in `text` of the current line's first character
        depth, keyword_ok = 0, True
        pos, n = 0, len(text)
        match = _LEX.match
        while pos < n:
            m = match(text, pos)
            if m is None:
                raise UnexpectedCharacters(text, pos, line, pos - line_start + 1)  # type: ignore[no-untyped-call]
            kind = _set_name(m.lastgroup)
            end = m.end()
            if kind == "NL":
                line += 1
                line_start = end
            elif kind != "WS" and kind != "COMMENT":
                value = m.group()
                if kind == "NAME" and depth == 0 and keyword_ok and value in _KEYWORD_TYPES:
                    kind = _KEYWORD_TYPES[value]
                elif kind == "LBRACE":
                    depth += 1
                elif kind == "RBRACE":
                    depth = max(depth - 1, 0)
                col = pos - line_start + 1
                yield Token(kind, value, base + pos, line, col, line, col + end - pos, base + end)
                keyword_ok = depth == 0 and kind == "RBRACE"
            pos = end


def _set_name(name: str | None) -> str:
    assert name is not None  # every alternative of _LEX is a named group
    return name


def _set(value: int | None) -> int:
    assert value is not None  # our lexer sets every position
    return value


def _token_span(tok: Token) -> Span:
    return Span(_PIECE.get().file, _set(tok.start_pos), _set(tok.end_pos), _set(tok.line),
                    _set(tok.column), _set(tok.end_line), _set(tok.end_column))


def _as_span(x: object) -> Span:
    if isinstance(x, Token):
        return _token_span(x)
    return x if isinstance(x, Span) else x.span  # type: ignore[attr-defined]


def _span(first: object, last: object) -> Span:
    """The span from the start of `first` to the end of `last` (tokens, spans or AST nodes)."""
    a, b = _as_span(first), _as_span(last)
    return Span(a.file, a.start, b.end, a.line, a.col, b.end_line, b.end_col)


def _values(children: list[object]) -> tuple[ast.Value, ...]:
    return tuple(c for c in children if not isinstance(c, Token))  # type: ignore[misc]


class _Builder(Transformer):  # type: ignore[type-arg]
    """Builds AST nodes while the LALR parser reduces (no intermediate parse tree). The parser
    keeps every token, so a node's span runs from its first to its last token."""

    def _name(self, tok: Token) -> ast.Name:
        if tok.type == "STRING":
            return ast.Name(_unescape(tok.value[1:-1]), _token_span(tok))
        return ast.Name(str(tok.value), _token_span(tok))

    def _quantity(self, tok: Token) -> ast.Quantity:
        match = _QUANTITY.fullmatch(tok.value)
        assert match, tok.value  # the terminal's own regex
        number, gap, unit = match.groups()
        span = _token_span(tok)
        unit_span = None
        if unit:
            skip = len(number) + len(gap)
            unit_span = Span(span.file, span.start + skip, span.end, span.line,
                                 span.col + skip, span.end_line, span.end_col)
        is_int = re.fullmatch(r"-?\d+", number) is not None
        return ast.Quantity(float(number), is_int, unit or None, number, span, unit_span)

    # -- declarations
    def start(self, children: list[ast.Decl]) -> list[ast.Decl]:
        return children

    def decl(self, children: list) -> ast.Decl:  # type: ignore[type-arg]
        kind, name, (entries, body) = children
        return ast.Decl(kind.value, _token_span(kind), self._name(name), entries,
                        _span(kind, body), body_span=body)

    def link(self, children: list) -> ast.Decl:  # type: ignore[type-arg]
        kw, a, _arrow, b, (entries, body) = children
        return ast.Decl("link", _token_span(kw), self._name(a), entries, _span(kw, body),
                        peer=self._name(b), body_span=body)

    def kind(self, children: list[Token]) -> Token:
        return children[0]

    def block(self, children: list) -> tuple:  # type: ignore[type-arg]
        return children[1], _span(children[0], children[-1])

    def entries(self, children: list[object]) -> tuple[ast.Entry, ...]:
        return tuple(c for c in children if isinstance(c, ast.Entry))

    def entry(self, children: list) -> ast.Entry:  # type: ignore[type-arg]
        key, _eq, value = children
        return ast.Entry(self._name(key), value, _span(key, value))

    # -- values
    def quantity(self, children: list[Token]) -> ast.Quantity:
        return self._quantity(children[0])

    dim_number = quantity

    def string(self, children: list[Token]) -> ast.String:
        tok = children[0]
        return ast.String(_unescape(tok.value[1:-1]), _token_span(tok))

    def word(self, children: list[Token]) -> ast.Word:
        return ast.Word(str(children[0].value), _token_span(children[0]))

    dim_name = word

    def tensor(self, children: list) -> ast.Tensor:  # type: ignore[type-arg]
        dtype, _open, dims, close = children
        return ast.Tensor(self._name(dtype), tuple(dims or ()), _span(dtype, close))

    def dims(self, children: list[object]) -> tuple[ast.Value, ...]:
        return _values(children)

    items = dims

    def args(self, children: list[object]) -> tuple[ast.Value | ast.Entry, ...]:
        return tuple(c for c in children if not isinstance(c, Token))  # type: ignore[misc]

    def call(self, children: list) -> ast.Call:  # type: ignore[type-arg]
        func, _open, args, close = children
        return ast.Call(self._name(func), tuple(args or ()), _span(func, close))

    def flow(self, children: list[Token]) -> ast.Flow:
        steps = tuple(self._name(t) for t in children if t.type == "NAME")
        return ast.Flow(steps, _span(children[0], children[-1]))

    def constraint(self, children: list) -> ast.Constraint:  # type: ignore[type-arg]
        subject, op, bound = children
        return ast.Constraint(self._name(subject), op.value, _token_span(op),
                              self._quantity(bound), _span(subject, bound))

    def cmp(self, children: list[Token]) -> Token:
        return children[0]

    def list(self, children: Sequence[Any]) -> ast.ListValue:
        open_, items, close = children
        return ast.ListValue(tuple(items or ()), _span(open_, close))

    def map(self, children: Sequence[Any]) -> ast.MapValue:
        open_, entries, close = children
        return ast.MapValue(entries, _span(open_, close))


def _unescape(s: str) -> str:
    return re.sub(r"\\([\"\\])", r"\1", s)


def _expected(err: UnexpectedInput) -> set[str]:
    """The terminals the parser would really accept where it stopped. LALR's own lookahead sets
    are merged across contexts (a `)` expected inside a block), so ask the interactive parser."""
    interactive = getattr(err, "interactive_parser", None)
    if interactive is not None:
        try:
            return set(interactive.accepts()) - {"WS", "COMMENT"}
        except Exception:  # noqa: BLE001, S110 - accepts() replays the parser; use lark's set
            pass
    return set(getattr(err, "expected", None) or getattr(err, "allowed", None) or ())


def _unexpected_word(found: str, span: Span, expected: set[str]) -> Diagnostic:
    keywords = sorted(t.lower() for t in expected if t.lower() in DECL_KEYWORDS)
    close = difflib.get_close_matches(found, keywords, n=1, cutoff=0.6) or \
        difflib.get_close_matches(found.lower(), keywords, n=1, cutoff=0.6)
    what = "a declaration" if len(keywords) >= 3 else _describe_expected(expected)
    help_ = (f"did you mean `{close[0]}`?" if close else
             "a declaration starts with one of: " + ", ".join(keywords) if keywords else
             "write entries as `key = value`" if expected == {"EQUAL"} else
             "a link joins two devices with `<->`: write `<->`"
             if expected == {"BIARROW"} and found in ("->", "=") else None)
    return Diagnostic("E0001", f"expected {what}, found `{found}`", span, "unexpected here",
                      help=help_)


# Arrows from other notations (and what edgeflow writes instead).
_FOREIGN_ARROWS = {"→": "->", "⟶": "->", "➔": "->", "➜": "->", "⇒": "->", "↦": "->",
                   "↔": "<->", "⟷": "<->", "⇔": "<->"}


def _foreign_syntax(piece: str, offset: int, expected: set[str]) -> Diagnostic | None:
    """A diagnostic naming the edgeflow equivalent of syntax from other languages where the
    parser stopped: `//` and `/* */` comments, `=>` and `→` in a flow, `:` for `=`, `;` as a
    separator, single-quoted strings."""
    two, char = piece[offset:offset + 2], piece[offset]
    if two == "//":
        return Diagnostic("E0002", "`//` does not start a comment", _at(piece, offset, 2),
                          "comments start with `#`",
                          help="a comment runs from `#` to the end of the line: write `#`")
    if two == "/*":
        return Diagnostic("E0002", "`/*` does not start a comment", _at(piece, offset, 2),
                          "comments start with `#`",
                          help="a comment runs from `#` to the end of the line: start every "
                               "line of it with `#` and drop the `*/`")
    in_flow = "ARROW" in expected
    if two == "=>" or (char == ">" and offset > 0 and piece[offset - 1] == "="):
        start = offset if two == "=>" else offset - 1
        if in_flow:
            return Diagnostic("E0001", "expected `->`, found `=>`", _at(piece, start, 2),
                              "not an arrow of edgeflow",
                              help="the steps of a flow are joined with `->`: write `->`")
        if two != "=>":  # `key => value`: the `=` was taken as the entry's
            return Diagnostic("E0001", "expected a value, found `=>`", _at(piece, start, 2),
                              "not an operator of edgeflow",
                              help="entries are written `key = value`: write `=`")
    if two == "==" and all(t in expected for t in _COMPARISONS):
        return Diagnostic("E0001", "expected a comparison, found `==`", _at(piece, offset, 2),
                          "not a comparison of edgeflow",
                          help="a service level is bounded with `<`, `<=`, `>` or `>=`, e.g. "
                               "`latency < 50 ms`")
    if char in _FOREIGN_ARROWS:
        arrow = _FOREIGN_ARROWS[char]
        what = ("the steps of a flow are joined with `->`" if arrow == "->" else
                "a link joins two devices with `<->`")
        return Diagnostic("E0002", f"invalid character `{char}`", _at(piece, offset, 1),
                          f"not an arrow of edgeflow, which writes `{arrow}`",
                          help=f"{what}: write `{arrow}`")
    if char == ":":
        if "EQUAL" in expected:
            return Diagnostic("E0002", "invalid character `:`", _at(piece, offset, 1),
                              "expected `=`", help="entries are written `key = value`: write `=`")
        return Diagnostic("E0002", "invalid character `:`", _at(piece, offset, 1),
                          f"expected {_describe_expected(expected)}",
                          help="a declaration is a keyword, a name and a block of `key = value` "
                               "entries: `device gw { tier = edge }`")
    if char == ";":
        if "COMMA" in expected or "RBRACE" in expected:
            return Diagnostic("E0002", "invalid character `;`", _at(piece, offset, 1),
                              "not a separator of edgeflow",
                              help="entries are separated by commas or new lines: write `,`")
        if expected & _DECL_TYPES:
            return Diagnostic("E0002", "invalid character `;`", _at(piece, offset, 1),
                              "nothing ends a declaration but its `}`",
                              help="declarations need no `;` after them: remove it")
    if char == "-" and 0 < offset < len(piece) - 1 and (piece[offset - 1].isalnum() or
                                                        piece[offset - 1] == "_") \
            and (piece[offset + 1].isalpha() or piece[offset + 1] == "_"):
        return Diagnostic("E0002", "invalid character `-`", _at(piece, offset, 1),
                          "not part of a name",
                          help="names are `[a-z_][a-z0-9_]*`, with `_` between words: write `_`")
    if char == "'":
        close = piece.find("'", offset + 1)
        newline = piece.find("\n", offset)
        if close != -1 and (newline == -1 or close < newline) and '"' not in \
                piece[offset:close]:
            inner = piece[offset + 1:close].replace("\\", "\\\\")
            return Diagnostic("E0002", "strings are written in double quotes",
                              _at(piece, offset, close + 1 - offset), "single quotes",
                              help=f'write `"{inner}"`')
    return None


def _syntax_diagnostic(err: UnexpectedInput, piece: str, last: bool) -> Diagnostic:
    expected = _expected(err)
    if isinstance(err, UnexpectedCharacters):
        offset = _set(err.pos_in_stream)
        foreign = _foreign_syntax(piece, offset, expected)
        if foreign is not None:
            return foreign
        word = re.match(r"[A-Za-z_][A-Za-z0-9_]*", piece[offset:])
        if word:
            return _unexpected_word(word.group(0), _at(piece, offset, len(word.group(0))), expected)
        char = piece[offset]
        shown = repr(char)[1:-1] if not char.isprintable() else char
        return Diagnostic("E0002", f"invalid character `{shown}`", _at(piece, offset, 1),
                          f"expected {_describe_expected(expected)}",
                          help="names are [a-z_][a-z0-9_]*; other text belongs in a double-quoted"
                               " string" if char.isalpha() or char == '"' else None)
    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        tok = err.token
        offset = _set(tok.start_pos) - _PIECE.get().base_offset
        foreign = _foreign_syntax(piece, offset, expected)
        if foreign is not None:
            return foreign
        return _unexpected_word(str(tok.value), _token_span(tok), expected)
    # the piece ended too early
    end = len(piece.rstrip())
    labels: tuple[Label, ...] = ()
    opener = _unclosed_opener(piece)
    if opener is not None:
        labels = (Label(_at(piece, opener, 1), f"this `{piece[opener]}` is not closed"),)
    return Diagnostic("E0003", "unexpected end of " + ("file" if last else "declaration"),
                      _at(piece, max(end - 1, 0), 1 if end else 0),
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


def _at(piece: str, offset: int, length: int = 0) -> Span:
    """A span at an offset of the piece being parsed (errors carry no end position)."""
    ctx = _PIECE.get()
    line = piece.count("\n", 0, offset)
    col = offset - (piece.rfind("\n", 0, offset) + 1) + 1
    return Span(ctx.file, ctx.base_offset + offset, ctx.base_offset + offset + length,
                    ctx.base_line + line, col, ctx.base_line + line, col + length)


def _parse_piece(parser: Lark, piece: str, last: bool, sink: DiagnosticSink) -> list[ast.Decl]:
    try:
        return parser.parse(piece)  # type: ignore[return-value]
    except (UnexpectedInput, UnexpectedEOF) as err:
        sink.items.append(_syntax_diagnostic(err, piece, last))
        if isinstance(err, UnexpectedCharacters):
            stop = _set(err.pos_in_stream)
        else:
            token = getattr(err, "token", None)
            stop = _set(token.start_pos) - _PIECE.get().base_offset if token is not None else 0
    # Keep the declarations that end before the error's line, when they parse on their own.
    prefix = piece[: piece.rfind("\n", 0, max(stop, 0)) + 1]
    try:
        return parser.parse(prefix) if prefix.strip() else []  # type: ignore[return-value]
    except (UnexpectedInput, UnexpectedEOF):
        return []


def _comments(text: str, file: str) -> tuple[tuple[Span, str], ...]:
    out = []
    line, line_start = 1, 0
    for m in _COMMENT_OR_SKIP.finditer(text):
        if m.lastgroup == "NL":
            line, line_start = line + 1, m.end()
        elif m.lastgroup == "COMMENT":
            col = m.start() - line_start + 1
            out.append((Span(file, m.start(), m.end(), line, col, line,
                                 col + m.end() - m.start()), m.group()))
    return tuple(out)


_COMMENT_OR_SKIP = re.compile(r'(?P<STRING>"(?:\\.|[^"\\\n])*")|(?P<COMMENT>#[^\n]*)|(?P<NL>\n)')


def parse(text: str, file: str) -> tuple[ast.Module, list[Diagnostic]]:
    """Parse a whole file. Never raises on bad input: errors come back as diagnostics."""
    parser = lark_parser()
    sink = DiagnosticSink()
    comments = _comments(text, file)
    token = _PIECE.set(_Piece(file, 0, 1))
    try:
        try:
            decls = parser.parse(text)
            return ast.Module(file, tuple(decls), comments), []  # type: ignore[arg-type]
        except (UnexpectedInput, UnexpectedEOF):
            pass
        starts = [m.start() for m in _DECL_START.finditer(text)]
        if not starts or starts[0] != 0:
            starts.insert(0, 0)
        recovered: list[ast.Decl] = []
        line = 1
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(text)
            piece = text[start:end]
            _PIECE.set(_Piece(file, start, line))
            recovered.extend(_parse_piece(parser, piece, end == len(text), sink))
            line += piece.count("\n")
        return ast.Module(file, tuple(recovered), comments), sink.items
    finally:
        _PIECE.reset(token)
