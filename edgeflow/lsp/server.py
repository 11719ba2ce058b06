"""`edgeflow lsp`: a language server (pygls) over the compiler's public API.

Diagnostics on open and change (codes, help, related locations), hover (a declaration's values
as written and in SI units; a model's inputs, outputs, work and weights), go to definition, find
references, completion (keys of the current block, declared names where a reference is expected,
units after a number), document symbols, and formatting. Positions are 1-based code points in the
compiler and 0-based UTF-16 units in LSP; they are converted here and only here.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from edgeflow import __version__, api
from edgeflow.diagnostics import Diagnostic, Severity
from edgeflow.lsp import navigation as nav
from edgeflow.objectives import TERMS
from edgeflow.semantics.lower import block_keys
from edgeflow.semantics.values import TIERS
from edgeflow.span import Span
from edgeflow.syntax import ast
from edgeflow.syntax.units import UNITS, units_of

server = LanguageServer("edgeflow", __version__)
_results: dict[str, api.CheckResult] = {}

_KIND_SYMBOL = {
    "app": lsp.SymbolKind.Module, "device": lsp.SymbolKind.Class, "link": lsp.SymbolKind.Interface,
    "sensor": lsp.SymbolKind.Event, "actuator": lsp.SymbolKind.Method,
    "store": lsp.SymbolKind.Struct, "model": lsp.SymbolKind.Object,
    "operator": lsp.SymbolKind.Function, "pipeline": lsp.SymbolKind.Namespace,
    "privacy": lsp.SymbolKind.Key,
}
_REFERENCE_KINDS = {
    "on": ("device",), "flow": ("sensor", "operator", "model", "actuator", "store"),
    "privacy": ("privacy",), "removes": ("privacy",),
}
_CHOICES = {"tier": TIERS, "split": ("auto", "none"), "allow": TIERS}


def _choices(key: str) -> tuple[str, ...]:
    """The words a key takes; objective terms come from the registry (it may grow)."""
    if key == "objective":
        return tuple(f"minimize({t})" for t in TERMS)
    return _CHOICES.get(key, ())


# ---------------------------------------------------------------- positions

def _path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _utf16(line: str, col0: int) -> int:
    return len(line[:col0].encode("utf-16-le")) // 2


def _range(text: str, span: Span) -> lsp.Range:
    lines = text.split("\n")

    def pos(line: int, col: int) -> lsp.Position:
        source = lines[line - 1] if 0 < line <= len(lines) else ""
        return lsp.Position(line=max(line - 1, 0), character=_utf16(source, max(col - 1, 0)))

    return lsp.Range(start=pos(span.line, span.col), end=pos(span.end_line, span.end_col))


def _offset(text: str, position: lsp.Position) -> int:
    lines = text.split("\n")
    line = lines[position.line] if position.line < len(lines) else ""
    units, col = 0, 0
    while col < len(line) and units < position.character:
        units += len(line[col].encode("utf-16-le")) // 2
        col += 1
    return sum(len(x) + 1 for x in lines[: position.line]) + col


# ---------------------------------------------------------------- analysis

def _analyse(uri: str) -> api.CheckResult:
    doc = server.workspace.get_text_document(uri)
    result = api.check_text(doc.source, _path(uri))
    _results[uri] = result
    return result


def _result(uri: str) -> api.CheckResult:
    return _results.get(uri) or _analyse(uri)


def _to_lsp(uri: str, text: str, d: Diagnostic) -> lsp.Diagnostic:
    message = d.message + (f" ({d.label})" if d.label and d.label != d.message else "")
    if d.help:
        message += f"\nhelp: {d.help}"
    return lsp.Diagnostic(
        range=_range(text, d.span), message=message, code=d.code, source="edgeflow",
        severity=lsp.DiagnosticSeverity.Error if d.severity is Severity.ERROR
        else lsp.DiagnosticSeverity.Warning,
        related_information=[lsp.DiagnosticRelatedInformation(
            location=lsp.Location(uri=uri, range=_range(text, lb.span)), message=lb.message)
            for lb in d.labels if lb.span.file == d.span.file] or None)


def _publish(uri: str) -> None:
    result = _analyse(uri)
    server.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
        uri=uri, diagnostics=[_to_lsp(uri, result.text, d) for d in result.diagnostics]))


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: LanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    _publish(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: LanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    _publish(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: LanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
    _publish(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: LanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
    _results.pop(params.text_document.uri, None)


# ---------------------------------------------------------------- navigation

@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def definition(ls: LanguageServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    result = _result(params.text_document.uri)
    if result.module is None:
        return None
    occ = nav.occurrence_at(result.module, _offset(result.text, params.position))
    if occ is None:
        return None
    decl = nav.declarations(result.module)[occ.name]
    return lsp.Location(uri=params.text_document.uri, range=_range(result.text, decl.name.span))


@server.feature(lsp.TEXT_DOCUMENT_REFERENCES)
def references(ls: LanguageServer, params: lsp.ReferenceParams) -> list[lsp.Location]:
    result = _result(params.text_document.uri)
    if result.module is None:
        return []
    occ = nav.occurrence_at(result.module, _offset(result.text, params.position))
    if occ is None:
        return []
    include = params.context.include_declaration
    return [lsp.Location(uri=params.text_document.uri, range=_range(result.text, o.span))
            for o in nav.occurrences(result.module)
            if o.name == occ.name and (include or not o.is_declaration)]


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def symbols(ls: LanguageServer, params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
    result = _result(params.text_document.uri)
    if result.module is None:
        return []
    out = []
    for d in result.module.decls:
        name = f"{d.name.value} <-> {d.peer.value}" if d.peer else d.name.value
        children = [lsp.DocumentSymbol(
            name=e.key.value, kind=lsp.SymbolKind.Field, range=_range(result.text, e.span),
            selection_range=_range(result.text, e.key.span),
            detail=result.text[e.value.span.start:e.value.span.end][:60]) for e in d.entries]
        out.append(lsp.DocumentSymbol(
            name=name, detail=d.kind, kind=_KIND_SYMBOL[d.kind],
            range=_range(result.text, d.span),
            selection_range=_range(result.text, d.name.span), children=children))
    return out


# ---------------------------------------------------------------- hover

def _si(q: ast.Quantity) -> str:
    if q.unit in UNITS:
        dim, factor = UNITS[q.unit]
        return f"{q.number_text} {q.unit} = {q.number * factor:g} {dim.si} ({dim.name})"
    return f"{q.number_text}" + (f" {q.unit}" if q.unit else "")


def _decl_hover(result: api.CheckResult, decl: ast.Decl) -> str:
    lines = [f"**{decl.kind} `{decl.name.value}`**", ""]
    for e in decl.entries:
        written = result.text[e.value.span.start:e.value.span.end]
        q = e.value if isinstance(e.value, ast.Quantity) else None
        lines.append(f"- `{e.key.value}` = {_si(q) if q else f'`{written}`'}")
    program = result.program
    if program is not None and decl.kind == "device":
        dev = program.devices[decl.name.value]
        lines.append(f"- instances: {', '.join(dev.instances()[:8])}"
                     + (" ..." if dev.count > 8 else ""))
    if program is not None and decl.kind == "model":
        from edgeflow.cost import model_cost

        model = program.models[decl.name.value]
        cost = model_cost(model)
        lines += ["", "inputs: " + ", ".join(f"`{n}` {t}" for n, t in model.inputs.items()),
                  "outputs: " + ", ".join(f"`{n}` {t}" for n, t in model.outputs.items()),
                  (f"work: {cost.work / 1e9:.3f} GFLOP per run, weights: "
                   f"{cost.weights / 2**20:.2f} MiB")]
        if cost.cuts:
            lines.append(f"split candidates: {len(cost.cuts)} Pareto-optimal cuts")
    return "\n".join(lines)


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: LanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
    result = _result(params.text_document.uri)
    if result.module is None:
        return None
    offset = _offset(result.text, params.position)
    occ = nav.occurrence_at(result.module, offset)
    if occ is not None:
        decl = nav.declarations(result.module)[occ.name]
        return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown,
                                                    value=_decl_hover(result, decl)),
                         range=_range(result.text, occ.span))
    found = nav.entry_at(result.module, offset)
    if found is not None:
        q = nav.quantity_at(found[1].value, offset)
        if q is not None:
            return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown,
                                                        value=_si(q)),
                             range=_range(result.text, q.span))
    return None


# ---------------------------------------------------------------- completion

_KEYS = block_keys()
_KIND_LINE = re.compile(r"^\s*(app|device|link|sensor|actuator|store|model|operator|pipeline|"
                        r"privacy)\b[^{]*\{", re.MULTILINE)


def _block_kind(result: api.CheckResult, offset: int) -> str | None:
    if result.module is not None:
        decl = nav.decl_at(result.module, offset)
        if decl is not None:
            return decl.kind
    before = result.text[:offset]
    if before.count("{") <= before.count("}"):
        return None
    kinds = list(_KIND_LINE.finditer(before))
    return kinds[-1].group(1) if kinds else None


def _names_of(result: api.CheckResult, kinds: tuple[str, ...]) -> list[str]:
    if result.module is None:
        return []
    return [n for n, d in nav.declarations(result.module).items() if d.kind in kinds]


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION,
                lsp.CompletionOptions(trigger_characters=[" ", "=", ">", "[", ","]))
def completion(ls: LanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    result = _result(params.text_document.uri)  # kept current by didOpen/didChange
    offset = _offset(result.text, params.position)
    line = result.text[: offset].rsplit("\n", 1)[-1]
    kind = _block_kind(result, offset)
    items: list[lsp.CompletionItem] = []
    number = re.search(r"(?<![\w.])-?\d+(\.\d*)?\s*([A-Za-z]*)$", line)
    value = re.search(r"(\w+)\s*=\s*(.*)$", line)
    if number and value is not None:
        example = _KEYS.get(kind or "", {}).get(value.group(1), (False, ""))[1]
        unit = example.rsplit(" ", 1)[-1]
        pool = units_of(UNITS[unit][0]) if unit in UNITS else list(UNITS)
        items = [lsp.CompletionItem(label=u, kind=lsp.CompletionItemKind.Unit) for u in pool]
    elif value is not None or (kind == "pipeline" and "->" in line):
        key = value.group(1) if value is not None else "flow"
        if key in _REFERENCE_KINDS:
            items = [lsp.CompletionItem(label=n, kind=lsp.CompletionItemKind.Reference)
                     for n in _names_of(result, _REFERENCE_KINDS[key])]
        elif _choices(key):
            items = [lsp.CompletionItem(label=c, kind=lsp.CompletionItemKind.EnumMember)
                     for c in _choices(key)]
    elif kind is not None and re.fullmatch(r"\s*\w*", line):
        present = set()
        if result.module is not None:
            decl = nav.decl_at(result.module, offset)
            present = {e.key.value for e in decl.entries} if decl else set()
        for key, (required, example) in _KEYS.get(kind, {}).items():
            if key not in present:
                items.append(lsp.CompletionItem(
                    label=key, kind=lsp.CompletionItemKind.Property, detail=example,
                    insert_text=f"{key} = ",
                    documentation="required" if required else "optional"))
    return lsp.CompletionList(is_incomplete=False, items=items)


# ---------------------------------------------------------------- formatting

@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def formatting(ls: LanguageServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit]:
    text = server.workspace.get_text_document(params.text_document.uri).source
    formatted, _ = api.format_text(text, _path(params.text_document.uri))
    if formatted is None or formatted == text:
        return []  # unchanged, or does not parse: never rewritten
    lines = text.split("\n")
    end = lsp.Position(line=len(lines) - 1, character=_utf16(lines[-1], len(lines[-1])))
    return [lsp.TextEdit(range=lsp.Range(start=lsp.Position(line=0, character=0), end=end),
                         new_text=formatted)]


def main() -> None:
    server.start_io()

