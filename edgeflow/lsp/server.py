"""`edgeflow lsp`: a language server (pygls) over the compiler's public API.

Diagnostics on open and change (codes, help, related locations), hover (a declaration's values
as written and in SI units; a model's inputs, outputs, work and weights), go to definition, find
references, completion (keys of the current block, declared names where a reference is expected,
units after a number), document symbols, and formatting. Positions are 1-based code points in the
compiler and 0-based UTF-16 units in LSP; they are converted here and only here.

Checking never blocks the event loop, and a burst of edits is checked once. didOpen and didSave
check at once; didChange only records the text and (re)starts a DEBOUNCE-second timer per
document, so a newer edit cancels the pending check. Checks run one at a time on a worker
thread; one queued for an edit that a newer edit has since superseded is skipped, and one that
finishes after a newer edit keeps its analysis (for requests) but does not publish: the newest
one will, with the document's version. Hover, definition, references and completion answer at
once from the last finished analysis, mapping positions across the edits made since (text
outside the edited region is unchanged, so its offsets shift by a constant); document symbols
wait for the analysis of the current text. The custom request `edgeflow/stats` returns how many
checks ran, were skipped, published and discarded (tests and benchmarks observe it).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from edgeflow import __version__, api
from edgeflow.diagnostics import Diagnostic, Severity
from edgeflow.lsp import navigation as nav
from edgeflow.objectives import TERMS
from edgeflow.semantics.lower import block_keys
from edgeflow.semantics.training import STRATEGIES
from edgeflow.semantics.values import TIERS
from edgeflow.span import Span
from edgeflow.syntax import ast
from edgeflow.syntax.units import UNITS, units_of

DEBOUNCE = 0.15
"""Seconds without an edit before a changed document is checked: a burst is checked once."""
SWITCH_INTERVAL = 0.001
"""Seconds between GIL hand-overs in the server process (see `main`)."""
STATS = "edgeflow/stats"
"""A custom request (no params): the counters in `_stats`, a JSON object of integers."""

server = LanguageServer("edgeflow", __version__)
_log = logging.getLogger(__name__)
# one worker: checks never run concurrently with each other (the parser is shared)
_checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeflow-check")
_stats = {"checks": 0, "skipped": 0, "published": 0, "discarded": 0, "last_check_ms": 0}

_KIND_SYMBOL = {
    "app": lsp.SymbolKind.Module, "device": lsp.SymbolKind.Class, "link": lsp.SymbolKind.Interface,
    "sensor": lsp.SymbolKind.Event, "actuator": lsp.SymbolKind.Method,
    "store": lsp.SymbolKind.Struct, "model": lsp.SymbolKind.Object,
    "operator": lsp.SymbolKind.Function, "pipeline": lsp.SymbolKind.Namespace,
    "privacy": lsp.SymbolKind.Key, "training": lsp.SymbolKind.Event,
}
_REFERENCE_KINDS = {
    "on": ("device",), "flow": ("sensor", "operator", "model", "actuator", "store"),
    "privacy": ("privacy",), "removes": ("privacy",),
    # a training's
    "model": ("model",), "clients": ("device",), "data": ("sensor", "store"),
    "aggregate": ("device",),
}
_CHOICES = {"tier": TIERS, "split": ("auto", "none"), "allow": TIERS,
            "strategy": tuple(STRATEGIES)}


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


@lru_cache(maxsize=8)
def _lines(text: str) -> list[str]:
    """The lines of a text, split once per text (a 10,000-line file has many diagnostics and
    requests); callers never mutate the list."""
    return text.split("\n")


def _range(text: str, span: Span) -> lsp.Range:
    lines = _lines(text)

    def pos(line: int, col: int) -> lsp.Position:
        source = lines[line - 1] if 0 < line <= len(lines) else ""
        return lsp.Position(line=max(line - 1, 0), character=_utf16(source, max(col - 1, 0)))

    return lsp.Range(start=pos(span.line, span.col), end=pos(span.end_line, span.end_col))


def _offset(text: str, position: lsp.Position) -> int:
    lines = _lines(text)
    line = lines[position.line] if position.line < len(lines) else ""
    units, col = 0, 0
    while col < len(line) and units < position.character:
        units += len(line[col].encode("utf-16-le")) // 2
        col += 1
    return sum(len(x) + 1 for x in lines[: position.line]) + col


def _position(text: str, offset: int) -> lsp.Position:
    start = text.rfind("\n", 0, offset) + 1
    return lsp.Position(line=text.count("\n", 0, offset),
                        character=_utf16(text[start:offset], offset - start))


def _common_prefix(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))  # a[:lo] == b[:lo]; the answer is at most hi
    while lo < hi:  # only the untested half is compared: O(n) characters copied in all
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid:len(a) - lo] == b[len(b) - mid:len(b) - lo]:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------- analysis

@dataclass
class _Document:
    """What the server knows of an open document. `edit` counts the texts to check (on open,
    each change and save; the client's `version` is only echoed back); `checked` is the newest
    edit whose check ended (a skipped one does not count)."""

    edit: int = 0
    version: int | None = None
    timer: asyncio.Task[None] | None = None  # waiting out the debounce; cancelled by an edit
    result: api.CheckResult | None = None  # the last finished analysis, of edit `result_edit`
    result_edit: int = 0
    checked: int = 0
    landed: asyncio.Event = field(default_factory=asyncio.Event)  # pulsed when a check ends


_docs: dict[str, _Document] = {}
_tasks: set[asyncio.Task[None]] = set()  # strong references to the running check tasks


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


_Outcome = tuple[api.CheckResult, list[lsp.Diagnostic], float]


def _check_job(uri: str, text: str, edit: int, state: _Document | None,
               skippable: bool) -> _Outcome | None:
    """On the worker thread: check a text (never importing or running user code, as
    `edgeflow check`), or skip it if a newer edit superseded it while it was queued."""
    if skippable and state is not None and state.edit != edit:
        return None
    start = time.perf_counter()
    result = api.check_text(text, _path(uri))
    diagnostics = [_to_lsp(uri, text, d) for d in result.diagnostics]
    return result, diagnostics, time.perf_counter() - start


async def _check(uri: str, text: str, state: _Document | None,
                 skippable: bool = False) -> api.CheckResult | None:
    """Check `text` (the document's current text) off the event loop. Its analysis is kept if
    no newer one has landed; its diagnostics are published only if no edit came meanwhile."""
    edit, version = (state.edit, state.version) if state is not None else (0, None)
    loop = asyncio.get_running_loop()
    skipped = False
    try:
        outcome = await loop.run_in_executor(_checker, _check_job, uri, text, edit, state,
                                             skippable)
        skipped = outcome is None
    finally:
        if state is not None and not skipped:  # it ran (or failed: the waiters must not hang)
            state.checked = max(state.checked, edit)
            state.landed.set()  # wakes the requests waiting for an analysis
            state.landed.clear()
    if outcome is None:  # skipped: the newer edit's check follows, and wakes the waiters
        _stats["skipped"] += 1
        return None
    result, diagnostics, seconds = outcome
    _stats["checks"] += 1
    _stats["last_check_ms"] = round(seconds * 1000)
    if state is None:
        return result
    if edit >= state.result_edit:
        state.result, state.result_edit = result, edit
    if _docs.get(uri) is state and edit == state.edit:
        server.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
            uri=uri, diagnostics=diagnostics, version=version))
        _stats["published"] += 1
    else:
        _stats["discarded"] += 1  # a newer edit came (or the document closed): it will publish
    return result


async def _check_after(uri: str, state: _Document, delay: float) -> None:
    await asyncio.sleep(delay)  # an edit meanwhile cancels this task here
    state.timer = None  # from here on the check runs to its end (a newer edit supersedes it)
    text = server.workspace.get_text_document(uri).source
    await _check(uri, text, state, skippable=state.result is not None)


def _schedule(uri: str, delay: float) -> None:
    """Record the document's current text as a new edit and check it after `delay` seconds,
    cancelling the check still waiting for the previous edit."""
    state = _docs.setdefault(uri, _Document())
    state.edit += 1
    state.version = server.workspace.get_text_document(uri).version
    if state.timer is not None:
        state.timer.cancel()
    task = asyncio.get_running_loop().create_task(_check_after(uri, state, delay))
    _tasks.add(task)
    task.add_done_callback(_done)
    state.timer = task


def _done(task: asyncio.Task[None]) -> None:
    _tasks.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        _log.error("checking failed", exc_info=error)  # a compiler bug: the last analysis stays


def _forget(uri: str) -> None:
    state = _docs.pop(uri, None)
    if state is not None:
        if state.timer is not None:
            state.timer.cancel()
        state.landed.set()  # the requests waiting on it give up


class _View:
    """The last finished analysis of a document seen from its current text. The edits made
    since lie between the two texts' common prefix and common suffix: an offset outside that
    region maps by a constant shift, one inside it has no counterpart."""

    def __init__(self, result: api.CheckResult, text: str) -> None:
        self.result, self.text = result, text
        old = result.text
        self.fresh = old == text
        self.prefix = len(text) if self.fresh else _common_prefix(old, text)
        suffix = 0 if self.fresh else _common_suffix(
            old, text, min(len(old), len(text)) - self.prefix)
        self.old_end, self.new_end = len(old) - suffix, len(text) - suffix
        self.shift = len(text) - len(old)

    def offset(self, position: lsp.Position) -> int | None:
        """The offset in the analysed text of a position in the current text."""
        offset = _offset(self.text, position)
        if offset <= self.prefix:
            return offset
        return offset - self.shift if offset >= self.new_end else None

    def range(self, span: Span) -> lsp.Range | None:
        """A span of the analysed text as a range of the current text (None if edited)."""
        if self.fresh:
            return _range(self.text, span)
        if span.end <= self.prefix:
            start, end = span.start, span.end
        elif span.start >= self.old_end:
            start, end = span.start + self.shift, span.end + self.shift
        elif span.start <= self.prefix and span.end >= self.old_end:  # encloses the edits
            start, end = span.start, span.end + self.shift
        else:
            return None
        return lsp.Range(start=_position(self.text, start), end=_position(self.text, end))


async def _view(uri: str, fresh: bool = False) -> _View | None:
    """The last finished analysis of `uri` at once, or (`fresh`) that of its current text; a
    request for a document not open is checked now, from the file."""
    text = server.workspace.get_text_document(uri).source
    state = _docs.get(uri)
    if state is None:
        result = await _check(uri, text, None)
        return _View(result, text) if result is not None else None
    want = state.edit if fresh else 1  # 1: the check on open (never skipped)
    while state.checked < want and _docs.get(uri) is state:
        await state.landed.wait()
    text = server.workspace.get_text_document(uri).source  # edits may have come meanwhile
    return _View(state.result, text) if state.result is not None else None


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: LanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    _forget(params.text_document.uri)  # reopened: versions start again
    _schedule(params.text_document.uri, 0)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: LanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    _schedule(params.text_document.uri, DEBOUNCE)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: LanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
    _schedule(params.text_document.uri, 0)  # model files it names may have changed on disk


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: LanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
    _forget(params.text_document.uri)


@server.feature(lsp.SHUTDOWN)
def shutdown(ls: LanguageServer, params: None) -> None:
    for uri in list(_docs):
        _forget(uri)


@server.feature(STATS)
def stats(ls: LanguageServer, params: Any) -> dict[str, int]:
    """Counters since the server started: `checks` run to their end, `skipped` (superseded
    while queued), `published` and `discarded` (finished after a newer edit); and how long the
    last check took on the worker thread, `last_check_ms`."""
    return dict(_stats)


# ---------------------------------------------------------------- navigation

def _occurrence(view: _View, position: lsp.Position) -> nav.Occurrence | None:
    offset = view.offset(position)
    if view.result.module is None or offset is None:
        return None
    return nav.occurrence_at(view.result.module, offset)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
async def definition(ls: LanguageServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    view = await _view(params.text_document.uri)
    occ = _occurrence(view, params.position) if view is not None else None
    if view is None or view.result.module is None or occ is None:
        return None
    decl = nav.declarations(view.result.module)[occ.name]
    where = view.range(decl.name.span)
    return lsp.Location(uri=params.text_document.uri, range=where) if where else None


@server.feature(lsp.TEXT_DOCUMENT_REFERENCES)
async def references(ls: LanguageServer, params: lsp.ReferenceParams) -> list[lsp.Location]:
    view = await _view(params.text_document.uri)
    occ = _occurrence(view, params.position) if view is not None else None
    if view is None or view.result.module is None or occ is None:
        return []
    include = params.context.include_declaration
    ranges = [view.range(o.span) for o in nav.occurrences(view.result.module)
              if o.name == occ.name and (include or not o.is_declaration)]
    return [lsp.Location(uri=params.text_document.uri, range=r) for r in ranges if r]


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
async def symbols(ls: LanguageServer,
                  params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
    # an outline is not re-requested when a check lands: it waits for the current text's
    view = await _view(params.text_document.uri, fresh=True)
    if view is None or view.result.module is None:
        return []
    result, module, out = view.result, view.result.module, []
    for d in module.decls:
        name = f"{d.name.value} <-> {d.peer.value}" if d.peer else d.name.value
        children = []
        for e in d.entries:
            where, key = view.range(e.span), view.range(e.key.span)
            if where and key:
                children.append(lsp.DocumentSymbol(
                    name=e.key.value, kind=lsp.SymbolKind.Field, range=where,
                    selection_range=key,
                    detail=result.text[e.value.span.start:e.value.span.end][:60]))
        where, key = view.range(d.span), view.range(d.name.span)
        if where and key:
            out.append(lsp.DocumentSymbol(name=name, detail=d.kind, kind=_KIND_SYMBOL[d.kind],
                                          range=where, selection_range=key,
                                          children=children))
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
        from edgeflow.models.analysis import ModelError
        from edgeflow.models.measure import never_run

        model = program.models[decl.name.value]
        lines += ["", "inputs: " + ", ".join(f"`{n}` {t}" for n, t in model.inputs.items()),
                  "outputs: " + ", ".join(f"`{n}` {t}" for n, t in model.outputs.items())]
        try:
            with never_run():  # a model whose shapes need measuring is not run from an editor
                cost = model_cost(model)
        except ModelError as exc:
            lines.append(f"work: not analysed here ({exc})")
            return "\n".join(lines)
        lines.append(f"work: {cost.work / 1e9:.3f} GFLOP per run, weights: "
                     f"{cost.weights / 2**20:.2f} MiB")
        if cost.cuts:
            lines.append(f"split candidates: {len(cost.cuts)} Pareto-optimal cuts")
    return "\n".join(lines)


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
async def hover(ls: LanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
    view = await _view(params.text_document.uri)  # never waits for a pending check
    offset = view.offset(params.position) if view is not None else None
    if view is None or view.result.module is None or offset is None:
        return None
    result, module = view.result, view.result.module
    occ = nav.occurrence_at(module, offset)
    if occ is not None:
        decl = nav.declarations(module)[occ.name]
        return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown,
                                                    value=_decl_hover(result, decl)),
                         range=view.range(occ.span))
    found = nav.entry_at(module, offset)
    if found is not None:
        q = nav.quantity_at(found[1].value, offset)
        if q is not None:
            return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown,
                                                        value=_si(q)),
                             range=view.range(q.span))
    return None


# ---------------------------------------------------------------- completion

_KEYS = block_keys()
_KIND_LINE = re.compile(r"^\s*(app|device|link|sensor|actuator|store|model|operator|pipeline|"
                        r"privacy|training)\b[^{]*\{", re.MULTILINE)


def _block_kind(decl: ast.Decl | None, text: str, offset: int) -> str | None:
    if decl is not None:
        return decl.kind
    before = text[:offset]
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
async def completion(ls: LanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    view = await _view(params.text_document.uri)  # never waits for a pending check
    if view is None:
        return lsp.CompletionList(is_incomplete=False, items=[])
    # the line typed so far comes from the current text; names and blocks from the analysis
    result, offset, old = view.result, _offset(view.text, params.position), \
        view.offset(params.position)
    line = view.text[: offset].rsplit("\n", 1)[-1]
    decl = nav.decl_at(result.module, old) if result.module and old is not None else None
    kind = _block_kind(decl, view.text, offset)
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
        if key in _REFERENCE_KINDS and not (kind == "training" and key == "privacy"):
            items = [lsp.CompletionItem(label=n, kind=lsp.CompletionItemKind.Reference)
                     for n in _names_of(result, _REFERENCE_KINDS[key])]
        elif _choices(key):
            items = [lsp.CompletionItem(label=c, kind=lsp.CompletionItemKind.EnumMember)
                     for c in _choices(key)]
    elif kind is not None and re.fullmatch(r"\s*\w*", line):
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
async def formatting(ls: LanguageServer,
                     params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit]:
    text = server.workspace.get_text_document(params.text_document.uri).source
    formatted, _ = await asyncio.get_running_loop().run_in_executor(  # beside no check
        _checker, api.format_text, text, _path(params.text_document.uri))
    if formatted is None or formatted == text:
        return []  # unchanged, or does not parse: never rewritten
    lines = text.split("\n")
    end = lsp.Position(line=len(lines) - 1, character=_utf16(lines[-1], len(lines[-1])))
    return [lsp.TextEdit(range=lsp.Range(start=lsp.Position(line=0, character=0), end=end),
                         new_text=formatted)]


def main() -> None:
    # A check holds the GIL for seconds on a large file; the event loop (and pygls' stdin reader
    # thread) then get it back only after each switch interval. 1 ms instead of 5 keeps requests
    # answered in milliseconds while a check runs, at a negligible cost to the check.
    sys.setswitchinterval(SWITCH_INTERVAL)
    server.start_io()

