"""How quickly the language server settles after a burst of edits, and answers hovers meanwhile.

    python benchmarks/lsp_latency.py [--sites N] [--edits E] [--interval S]

Starts the real server (`python -m edgeflow lsp`) over stdio with pygls's client, opens the
~10,000-line app of check_speed.py, and types E characters (default 200) into the middle of it,
one didChange every S seconds (default 0.02: faster than anyone types), hovering every tenth
edit over a reference below the edits. After the last edit it hovers every 50 ms until the
diagnostics of the last version arrive. Prints the time from the last edit to those diagnostics
(target: under 1 s), the hover latencies during the burst and while the last check runs, and how
many checks ran (the server's `edgeflow/stats`). Waits are on notifications and responses, each
bounded by --timeout; the only sleeps are the edits' and hovers' own pacing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

from edgeflow.lsp.server import DEBOUNCE

ROOT = Path(__file__).resolve().parents[1]
# typed into the middle of the app, one character per edit; its last text has a bad unit
TYPED = ("sensor probe { on = gw_100, rate = 5 Hzz, emits = uint8[1] }  "
         "# typed one character at a time by benchmarks/lsp_latency.py, as an editor sends it")


def generate(sites: int) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    module: Any = importlib.import_module("check_speed")  # the same app as check_speed.py
    text: str = module.generate(sites)
    return text


def _position(text: str, index: int) -> lsp.Position:
    start = text.rfind("\n", 0, index) + 1
    return lsp.Position(line=text.count("\n", 0, index),
                        character=len(text[start:index].encode("utf-16-le")) // 2)


def _ms(values: list[float]) -> str:
    if not values:
        return "none sent"
    return (f"median {statistics.median(values) * 1000:.1f} ms, "
            f"max {max(values) * 1000:.1f} ms ({len(values)} hovers)")


class Hovers:
    """Hover requests sent without waiting; each one's latency is taken when it is answered."""

    def __init__(self, client: LanguageClient, uri: str) -> None:
        self.client, self.uri = client, uri
        self.latencies: list[float] = []
        self.pending: list[Future[Any]] = []
        self.answers: list[Any] = []

    def send(self, position: lsp.Position) -> None:
        sent = time.perf_counter()

        def done(future: Future[Any]) -> None:
            self.latencies.append(time.perf_counter() - sent)
            self.answers.append(future.result())

        future = self.client.protocol.send_request(lsp.TEXT_DOCUMENT_HOVER, lsp.HoverParams(
            text_document=lsp.TextDocumentIdentifier(uri=self.uri), position=position))
        future.add_done_callback(done)
        self.pending.append(future)

    async def wait(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*map(asyncio.wrap_future, self.pending)), timeout)


async def run(args: argparse.Namespace, folder: Path) -> None:
    path = folder / "big.ef"
    text = generate(args.sites)
    path.write_text(text)
    uri = path.as_uri()
    lines = text.count("\n") + 1

    client = LanguageClient("lsp-latency", "0")
    published: dict[int, tuple[float, lsp.PublishDiagnosticsParams]] = {}
    waiting: dict[int, asyncio.Future[None]] = {}

    @client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def diagnostics(ls: LanguageClient, params: lsp.PublishDiagnosticsParams) -> None:
        version = params.version if params.version is not None else -1
        published[version] = (time.perf_counter(), params)
        if version in waiting and not waiting[version].done():
            waiting[version].set_result(None)

    async def diagnostics_of(version: int) -> None:
        if version not in published:
            waiting[version] = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(waiting[version], args.timeout)

    await client.start_io(sys.executable, "-m", "edgeflow", "lsp", cwd=str(ROOT))
    assert client._server is not None and client._server.stderr is not None
    stderr = client._server.stderr
    drain = asyncio.create_task(stderr.read())  # the server's logs never fill the pipe
    try:
        await asyncio.wait_for(client.initialize_async(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(), root_uri=folder.as_uri())), args.timeout)
        client.initialized(lsp.InitializedParams())
        t0 = time.perf_counter()
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(uri=uri, language_id="edgeflow", version=1,
                                               text=text)))
        await diagnostics_of(1)
        opened = published[1][0] - t0

        async def stats() -> Any:  # the server's counters of checks run, skipped, published
            return await asyncio.wait_for(
                client.protocol.send_request_async("edgeflow/stats", None), args.timeout)

        before = await stats()

        at = text.index("\n# -- site 100 ") + 1
        target = "on      = gw_150"  # a reference below the edits: hovers map across them
        burst, after = Hovers(client, uri), Hovers(client, uri)
        version = 1
        for n in range(1, args.edits + 1):
            typed = (TYPED * (1 + args.edits // len(TYPED)))[:n]
            current = text[:at] + typed + "\n" + text[at:]
            version += 1
            client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=current)]))
            last_edit = time.perf_counter()
            if n % 10 == 0:
                burst.send(_position(current, current.index(target) + len("on      = ")))
            if n < args.edits:
                await asyncio.sleep(args.interval)  # the typing pace
        landed = asyncio.ensure_future(diagnostics_of(version))
        while not landed.done():  # hover while the last check runs (pacing, not waiting)
            after.send(_position(current, current.index(target) + len("on      = ")))
            await asyncio.wait([landed], timeout=0.05)
        await landed
        settled = published[version][0] - last_edit
        await burst.wait(args.timeout)
        await after.wait(args.timeout)
        final = await stats()
        stale = sorted(v for v in published if 1 < v < version)

        print(f"app: {lines} lines; {args.edits} edits, one every {args.interval * 1000:.0f} ms "
              f"({last_edit - t0 - opened:.1f} s of typing)")
        print(f"open: first diagnostics after {opened * 1000:.0f} ms "
              f"(the check: {before.last_check_ms} ms)")
        print(f"last edit -> its diagnostics (version {version}): {settled * 1000:.0f} ms; "
              f"codes {sorted({str(d.code) for d in published[version][1].diagnostics})}")
        print(f"checks for the burst: {final.checks - before.checks} run, "
              f"{final.skipped - before.skipped} skipped, "
              f"{final.published - before.published} published"
              + (f" (mid-burst versions {stale})" if stale else "")
              + f"; the last took {final.last_check_ms} ms on the server's worker thread "
              f"(after a {DEBOUNCE * 1000:.0f} ms debounce)")
        print(f"hover during the burst: {_ms(burst.latencies)}")
        print(f"hover while the last check runs: {_ms(after.latencies)}")
        answered = all(a is not None for a in burst.answers + after.answers)
        print(f"every hover answered with the device: {'yes' if answered else 'NO'}")
        print(f"target < 1000 ms after the last edit: {'met' if settled < 1.0 else 'MISSED'}")
        await asyncio.wait_for(client.shutdown_async(None), args.timeout)
        client.exit(None)
        await asyncio.wait_for(client.stop(), args.timeout)
    finally:
        if client._server is not None and client._server.returncode is None:
            client._server.kill()
        drain.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=215)
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between edits")
    ap.add_argument("--timeout", type=float, default=300.0, help="bound on every wait (s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "examples" / "models", Path(tmp) / "models")
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
