"""The language server, end to end: the real `edgeflow lsp` process driven by pytest-lsp, on
valid and broken files; every wait is on a notification or a response, never a sleep, and every
wait is bounded (`_within`) so that a server which stops answering fails the test instead of
hanging it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
import pytest_lsp
from lsprotocol import types as lsp
from pytest_lsp import ClientServerConfig, LanguageClient

from tests.conftest import ROOT

REFERENCE = ROOT / "examples" / "reference.ef"
URI = REFERENCE.as_uri()
TEXT = REFERENCE.read_text()
TIMEOUT = 60.0  # seconds: generous (a loaded CI machine), but never forever
T = TypeVar("T")


async def _within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m",
                                                               "edgeflow", "lsp"]))
async def client(lsp_client: LanguageClient):  # type: ignore[no-untyped-def]
    await _within(lsp_client.initialize_session(lsp.InitializeParams(
        capabilities=lsp.ClientCapabilities(), root_uri=(ROOT / "examples").as_uri())))
    yield
    await _within(lsp_client.shutdown_session())


async def _open(client: LanguageClient, text: str, uri: str = URI) -> list[lsp.Diagnostic]:
    client.text_document_did_open(lsp.DidOpenTextDocumentParams(
        text_document=lsp.TextDocumentItem(uri=uri, language_id="edgeflow", version=1,
                                           text=text)))
    await _within(client.wait_for_notification(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS))
    return list(client.diagnostics[uri])


def _position(text: str, needle: str, nth: int = 0, delta: int = 0) -> lsp.Position:
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    index += delta
    line = text.count("\n", 0, index)
    return lsp.Position(line=line, character=index - (text.rfind("\n", 0, index) + 1))


async def test_diagnostics_on_open_and_change(client: LanguageClient) -> None:
    assert await _open(client, TEXT) == []
    broken = TEXT.replace("latency = 0.5 ms", "latency = 0.5 msec").replace(
        "on      = line_gw", "on      = line_gwx")
    client.text_document_did_change(lsp.DidChangeTextDocumentParams(
        text_document=lsp.VersionedTextDocumentIdentifier(uri=URI, version=2),
        content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=broken)]))
    await _within(client.wait_for_notification(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS))
    diags = {d.code: d for d in client.diagnostics[URI]}
    assert set(diags) == {"E0301", "E0101"}
    unit = diags["E0301"]
    assert unit.range.start == _position(broken, "msec")
    assert unit.severity == lsp.DiagnosticSeverity.Error and "help: did you mean `ms`?" in \
        unit.message


async def test_related_locations(client: LanguageClient) -> None:
    text = TEXT + "\nsensor camera { on = line_gw, rate = 1 Hz, emits = uint8[1] }\n"
    diags = await _open(client, text)
    dup = next(d for d in diags if d.code == "E0102")
    assert dup.related_information and dup.related_information[0].location.range.start == \
        _position(text, "sensor camera", delta=len("sensor "))


async def test_hover_definition_references(client: LanguageClient) -> None:
    await _open(client, TEXT)
    use = _position(TEXT, "on      = line_gw", delta=len("on      = "))  # in the sensor
    hover = await _within(client.text_document_hover_async(lsp.HoverParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI), position=use)))
    assert hover is not None
    value = hover.contents.value  # type: ignore[union-attr]
    assert "device `line_gw`" in value and "0.1 TFLOPS = 1e+11 FLOP/s" in value
    assert "line_gw[3]" in value
    model = await _within(client.text_document_hover_async(lsp.HoverParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI),
        position=_position(TEXT, "-> detector", delta=3))))
    assert model is not None and "outputs: `detections` float32[1, 21, 10, 10]" in \
        model.contents.value  # type: ignore[union-attr]
    assert "GFLOP per run" in model.contents.value  # type: ignore[union-attr]
    unit = await _within(client.text_document_hover_async(lsp.HoverParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI),
        position=_position(TEXT, "1 Gbps,   latency = 18", delta=3))))
    assert unit is not None and "1 Gbps = 1e+09 bit/s" in unit.contents.value  # type: ignore
    where = await _within(client.text_document_definition_async(lsp.DefinitionParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI), position=use)))
    assert isinstance(where, lsp.Location)
    assert where.range.start == _position(TEXT, "line_gw", 0)
    refs = await _within(client.text_document_references_async(lsp.ReferenceParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI), position=use,
        context=lsp.ReferenceContext(include_declaration=True))))
    # the device, the link, the sensor's and the actuator's `on` (not the comment's mention)
    assert refs is not None and len(refs) == 4


async def test_completion(client: LanguageClient) -> None:
    text = TEXT.replace("  power   = 350 W\n", "  power   = 350 W\n  \n", 1)
    await _open(client, text)
    pos = _position(text, "  power   = 350 W\n  \n", delta=len("  power   = 350 W\n  "))
    keys = await _within(client.text_document_completion_async(lsp.CompletionParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI), position=pos)))
    labels = {i.label for i in keys.items}  # type: ignore[union-attr]
    assert {"count", "cost", "labels"} <= labels and "tier" not in labels  # tier is given
    on = _position(text, "on      = line_gw", delta=len("on      = "))
    names = await _within(client.text_document_completion_async(lsp.CompletionParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI), position=on)))
    assert {i.label for i in names.items} == {"line_gw", "plant_server", "gpu_pool"}  # type: ignore[union-attr]
    rate = _position(text, "30 Hz", delta=3)
    units = await _within(client.text_document_completion_async(lsp.CompletionParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI), position=rate)))
    assert {i.label for i in units.items} == {"Hz", "kHz"}  # type: ignore[union-attr]
    step = _position(text, "camera -> normalize", delta=len("camera -> "))
    steps = await _within(client.text_document_completion_async(lsp.CompletionParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI), position=step)))
    assert {"normalize", "detector", "reject_arm"} <= {i.label for i in steps.items}  # type: ignore[union-attr]


async def test_symbols_and_formatting(client: LanguageClient) -> None:
    await _open(client, TEXT)
    syms = await _within(client.text_document_document_symbol_async(lsp.DocumentSymbolParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI))))
    names = [s.name for s in syms]  # type: ignore[union-attr]
    assert names[:4] == ["factory_inspection", "line_gw", "plant_server", "gpu_pool"]
    assert "line_gw <-> plant_server" in names
    device = syms[1]  # type: ignore[index]
    assert [c.name for c in device.children] == ["tier", "count", "compute", "memory", "power",
                                                 "labels"]
    edits = await _within(client.text_document_formatting_async(lsp.DocumentFormattingParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI),
        options=lsp.FormattingOptions(tab_size=2, insert_spaces=True))))
    assert edits and "store archive { on = gpu_pool }" in edits[0].new_text


async def test_broken_file_still_serves(client: LanguageClient) -> None:
    uri = (ROOT / "examples" / "broken.ef").as_uri()
    text = "app a {\n  description = \n}\ndevice d { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }\n"
    diags = await _open(client, text, uri)
    assert [d.code for d in diags] == ["E0001"]
    syms = await _within(client.text_document_document_symbol_async(lsp.DocumentSymbolParams(
        text_document=lsp.TextDocumentIdentifier(uri=uri))))
    assert [s.name for s in syms] == ["d"]  # type: ignore[union-attr]
    edits = await _within(client.text_document_formatting_async(lsp.DocumentFormattingParams(
        text_document=lsp.TextDocumentIdentifier(uri=uri),
        options=lsp.FormattingOptions(tab_size=2, insert_spaces=True))))
    assert not edits  # a file that does not parse is never rewritten


async def test_navigation_and_completion_in_a_broken_file(client: LanguageClient) -> None:
    uri = (ROOT / "examples" / "broken2.ef").as_uri()
    text = ("app a { description = \"x\" }\n"
            "device gw { tier = edge, compute = 1 TFLOPS, memory = 1 GiB }\n"
            "sensor cam { on = gw, rate == 10 Hz, emits = uint8[1] }\n"  # a syntax error
            "actuator arm { on = gw }\n"
            "operator op {\n  \n}\n")
    diags = await _open(client, text, uri)
    assert [d.code for d in diags] == ["E0001"]
    use = _position(text, "arm { on = gw", delta=len("arm { on = "))
    where = await _within(client.text_document_definition_async(lsp.DefinitionParams(
        text_document=lsp.TextDocumentIdentifier(uri=uri), position=use)))
    assert isinstance(where, lsp.Location) and where.range.start == _position(text, "gw {")
    hover = await _within(client.text_document_hover_async(lsp.HoverParams(
        text_document=lsp.TextDocumentIdentifier(uri=uri), position=use)))
    assert hover is not None and "1 TFLOPS = 1e+12 FLOP/s" in hover.contents.value  # type: ignore[union-attr]
    inside = _position(text, "operator op {\n  ", delta=len("operator op {\n  "))
    keys = await _within(client.text_document_completion_async(lsp.CompletionParams(
        text_document=lsp.TextDocumentIdentifier(uri=uri), position=inside)))
    assert {i.label for i in keys.items} == {"work", "emits", "memory", "removes", "impl"}  # type: ignore[union-attr]


# ---------------------------------------------------------------- bursts of edits

async def _stats(client: LanguageClient) -> dict[str, int]:
    """The server's counters (the custom request `edgeflow/stats`)."""
    result: Any = await _within(client.protocol.send_request_async("edgeflow/stats", None))
    return {k: getattr(result, k) for k in ("checks", "skipped", "published", "discarded")}


def _burst(client: LanguageClient, texts: list[str], uri: str = URI) -> int:
    """Send `texts` as versions 2, 3, ... back to back; returns the last version."""
    for version, text in enumerate(texts, start=2):
        client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))
    return len(texts) + 1


async def _diagnostics_of(client: LanguageClient, version: int) -> lsp.PublishDiagnosticsParams:
    """Wait (bounded) for the diagnostics of `version`. A check may publish mid-burst if the
    client paused longer than the debounce, but never a version older than one it published."""
    async def wait() -> lsp.PublishDiagnosticsParams:
        seen = 0
        while True:
            params: lsp.PublishDiagnosticsParams = await client.wait_for_notification(
                lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
            assert params.version is not None and seen < params.version <= version
            if params.version == version:
                return params
            seen = params.version

    return await _within(wait())


def _typing(text: str, at: int, typed: str) -> list[str]:
    """The texts an editor sends while `typed` is typed at offset `at`, one character a time."""
    return [text[:at] + typed[:n] + text[at:] for n in range(1, len(typed) + 1)]


async def test_a_burst_of_edits_is_checked_once_and_publishes_the_last_version(
        client: LanguageClient) -> None:
    await _open(client, TEXT)
    before = await _stats(client)
    line = "sensor probe { on = line_gw, rate = 5 Hzz, emits = uint8[1] }\n"  # 62 edits
    texts = _typing(TEXT, len(TEXT), line)
    last = _burst(client, texts)
    params = await _diagnostics_of(client, last)  # not one of the broken texts typed before it
    after = await _stats(client)
    assert after["checks"] - before["checks"] <= 2  # was one per edit
    assert after["published"] - before["published"] <= 2
    final = texts[-1]
    assert {d.code for d in params.diagnostics} == {"E0301", "W0510"}  # of the last text only
    unit = next(d for d in params.diagnostics if d.code == "E0301")
    assert unit.range.start == _position(final, "Hzz")


async def _before_the_check(client: LanguageClient, method: str, params: object,
                            version: int) -> Any:
    """Send a request right after a burst; assert it is answered before the diagnostics of the
    burst's last `version` (so without waiting for its check), then wait for those too."""
    order: list[str] = []
    diagnostics = client.protocol.wait_for_notification(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    diagnostics.add_done_callback(lambda _: order.append("diagnostics"))
    request = client.protocol.send_request(method, params)
    request.add_done_callback(lambda _: order.append("answer"))
    answer = await _within(asyncio.wrap_future(request))
    published: lsp.PublishDiagnosticsParams = await _within(asyncio.wrap_future(diagnostics))
    assert order == ["answer", "diagnostics"] and published.version == version
    return answer


async def test_hover_during_a_burst_answers_from_the_last_analysis(
        client: LanguageClient) -> None:
    await _open(client, TEXT)
    # typing in line_gw's compute value; the hover is on a reference below the edits
    at = TEXT.index("0.1 TFLOPS") + len("0.1")
    texts = _typing(TEXT, at, "5555")
    last = _burst(client, texts)
    use = _position(texts[-1], "on      = line_gw", delta=len("on      = "))
    params = lsp.HoverParams(text_document=lsp.TextDocumentIdentifier(uri=URI), position=use)
    hover = await _before_the_check(client, lsp.TEXT_DOCUMENT_HOVER, params, last)
    # from the analysis before the burst, its range mapped into the current text
    assert hover is not None and "0.1 TFLOPS = 1e+11 FLOP/s" in hover.contents.value
    assert hover.range == lsp.Range(start=use, end=lsp.Position(
        line=use.line, character=use.character + len("line_gw")))
    fresh = await _within(client.text_document_hover_async(params))
    assert fresh is not None and "0.15555 TFLOPS" in fresh.contents.value  # type: ignore[union-attr]


async def test_completion_while_typing_uses_the_current_line(client: LanguageClient) -> None:
    text = TEXT.replace("  power   = 350 W\n", "  power   = 350 W\n  \n", 1)
    await _open(client, text)
    at = text.index("  power   = 350 W\n  \n") + len("  power   = 350 W\n  ")
    texts = _typing(text, at, "co")
    last = _burst(client, texts)
    params = lsp.CompletionParams(text_document=lsp.TextDocumentIdentifier(uri=URI),
                                  position=_position(texts[-1], "  co\n", delta=4))
    keys = await _before_the_check(client, lsp.TEXT_DOCUMENT_COMPLETION, params, last)
    labels = {i.label for i in keys.items}
    assert {"count", "cost", "labels"} <= labels and "tier" not in labels


async def test_the_outline_waits_for_the_current_text(client: LanguageClient) -> None:
    await _open(client, TEXT)
    texts = _typing(TEXT, len(TEXT), "device extra { tier = edge, compute = 1 TFLOPS, "
                                     "memory = 1 GiB }\n")
    _burst(client, texts)
    syms = await _within(client.text_document_document_symbol_async(lsp.DocumentSymbolParams(
        text_document=lsp.TextDocumentIdentifier(uri=URI))))
    extra = next(s for s in syms if s.name == "extra")  # type: ignore[union-attr]
    assert extra.selection_range.start == _position(texts[-1], "extra")  # type: ignore[union-attr]


@pytest.mark.parametrize(("old", "new"), [
    ("abcdef", "abXYef"), ("aaa", "aaaa"), ("", "x"), ("same", "same"), ("ab", "b"),
    ("x = 1\ny = 2\n", "x = 1\n\ny = 2\n"), ("é🙂z", "é🙂yz"),
])
def test_the_edited_region_between_two_texts(old: str, new: str) -> None:
    from edgeflow.lsp.server import _common_prefix, _common_suffix

    p = _common_prefix(old, new)
    s = _common_suffix(old, new, min(len(old), len(new)) - p)
    assert old[:p] == new[:p] and (p == min(len(old), len(new)) or old[p] != new[p])
    assert old[len(old) - s:] == new[len(new) - s:] and p + s <= min(len(old), len(new))
    assert s == min(len(old), len(new)) - p or old[len(old) - s - 1] != new[len(new) - s - 1]
