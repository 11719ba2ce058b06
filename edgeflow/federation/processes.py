"""The federation's processes: each started in its own process group with its log file, watched
for an early exit, and all stopped at the end (SIGTERM, then SIGKILL after a timeout) with every
process they started: Flower's SuperExec, ServerApp and ClientApp processes run in sessions of
their own, so they are found by their parents and by a token in their environment."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from edgeflow.federation import FederationError

TOKEN_VARIABLE = "EDGEFLOW_FEDERATION_TOKEN"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log, without colour codes."""
    try:
        data = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    text = _ANSI.sub("", data).rstrip().splitlines()[-lines:]
    return "\n".join("  | " + line for line in text) or "  | (empty log)"


def traceback_tail(path: Path, lines: int = 12) -> str | None:
    """The end of the last Python traceback in a log, up to its exception line, or None."""
    try:
        text = _ANSI.sub("", path.read_text(errors="replace")).splitlines()
    except OSError:
        return None
    starts = [i for i, line in enumerate(text) if "Traceback (most recent call last)" in line]
    if not starts:
        return None
    end = starts[-1] + 1
    while end < len(text) and (text[end].startswith(" ") or not text[end].strip()):
        end += 1
    shown = text[max(starts[-1], end + 1 - lines):end + 1]
    return "\n".join("  | " + line for line in shown)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class Processes:
    """Processes started with `env` (plus a token naming this federation)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.token = uuid.uuid4().hex
        self.env = {**env, TOKEN_VARIABLE: self.token}
        self.started: list[Process] = []

    def start(self, name: str, argv: list[str], log: Path, *,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Process:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**self.env, **(env or {})},
                                     cwd=cwd, start_new_session=True)
        proc = Process(name, popen, log)
        self.started.append(proc)
        return proc

    def check(self) -> None:
        """FederationError if a process has exited, with the end of its log."""
        for proc in self.started:
            code = proc.popen.poll()
            if code is not None:
                raise FederationError(f"{proc.name} exited (code {code}); the end of its log "
                                      f"({proc.log}):\n{tail(proc.log)}")

    def _family(self) -> list[psutil.Process]:
        """Every live process started here, their descendants, and any process carrying the
        token (one whose parent already exited)."""
        found: dict[int, psutil.Process] = {}
        for proc in self.started:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(proc.popen.pid)
                found[p.pid] = p
                for child in p.children(recursive=True):
                    found[child.pid] = child
        for p in psutil.process_iter():
            if p.pid in found or p.pid == os.getpid():
                continue
            with contextlib.suppress(psutil.Error):
                if p.environ().get(TOKEN_VARIABLE) == self.token:
                    found[p.pid] = p
                    for child in p.children(recursive=True):
                        found[child.pid] = child
        return [p for p in found.values() if _alive(p)]

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM to every process (its group when it leads one), SIGKILL to whatever is left
        after `timeout` seconds, and to anything started meanwhile."""
        family = self._family()
        _signal(family, signal.SIGTERM)
        psutil.wait_procs(family, timeout=timeout)
        for _ in range(3):
            family = self._family()
            if not family:
                break
            _signal(family, signal.SIGKILL)
            psutil.wait_procs(family, timeout=5)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1)


def _signal(family: list[psutil.Process], sig: signal.Signals) -> None:
    for p in family:
        with contextlib.suppress(OSError):
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, sig)
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def wait_until(condition: str, check: Callable[[], bool], timeout: float,
               processes: Processes | None, interval: float = 0.2) -> None:
    """Poll `check()` until true (an exception counts as not yet); FederationError saying
    `condition` did not happen after `timeout` seconds (with the last exception `check`
    raised), or when one of `processes` exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if processes is not None:
            processes.check()
        try:
            if bool(check()):
                return
        except Exception as e:  # noqa: BLE001  (not up yet: connection refused, TLS, ...)
            last = e
        if time.monotonic() > deadline:
            raise FederationError(f"{condition} within {timeout:.0f} s"
                                  + (f" (last error: {last})" if last else ""))
        time.sleep(interval)
