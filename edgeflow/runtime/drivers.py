"""Sources and sinks for `edgeflow run`: one process per sensor instance and per sink,
`python -m edgeflow.runtime.drivers --config driver.json` (docs/runtime.md, "Sensors and sinks").

- A sensor publishes a tensor of its declared type at its declared rate on a fixed schedule
  (frame n at start + n / rate; a late frame is sent at once and counted `late`, never bunched
  up later): synthetic data from a seeded generator (the same seed, the same frames), or the
  `.npy` files of a replay folder in name order, looped: frame n is file n mod the number of
  files, so a frame skipped skips its file, as a camera's would.
- A sink (actuator or store) records every message it receives, one row per message with its
  header and arrival time (and the whole payload up to 64 KiB), in an SQLite database in WAL mode (the standard library's sqlite3),
  so what arrived can be counted against what was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from edgeflow.runtime import wire
from edgeflow.runtime.client import Connection, Metrics, StartError, on_stop
from edgeflow.runtime.worker import tensor_type
from edgeflow.unit_config import CONFIG_ENV, DriverConfig


def replayed(config: DriverConfig) -> list[np.ndarray[Any, Any]] | None:
    """The frames of a sensor's replay folder, in name order (None: no replay)."""
    assert config.emits is not None
    dtype, shape = tensor_type(config.emits)
    if config.replay is None:
        return None
    files = sorted(Path(config.replay).glob("*.npy"))
    if not files:
        raise StartError(f"no .npy files in {config.replay}")
    loaded = []
    for f in files:
        try:
            array = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StartError(f"cannot read {f}: {e}") from None
        if array.size != int(np.prod(shape)):
            raise StartError(f"{f} holds {array.dtype.name}{list(array.shape)}; sensor "
                             f"`{config.name}` emits {config.emits}")
        loaded.append(np.ascontiguousarray(array.reshape(shape), dtype=dtype))
    return loaded


def frames(config: DriverConfig) -> Any:
    """The frames a sensor sends, forever: its replay folder's looped, or synthetic ones."""
    assert config.emits is not None
    dtype, shape = tensor_type(config.emits)
    if (loaded := replayed(config)) is not None:
        while True:
            yield from loaded
    rng = np.random.default_rng([config.seed, config.replica or 0])
    while True:
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            yield rng.integers(max(info.min, -128), min(info.max, 255), shape, dtype=dtype,
                               endpoint=True)
        elif dtype.kind == "b":
            yield rng.integers(0, 1, shape, endpoint=True).astype(bool)
        else:
            yield rng.standard_normal(shape).astype(dtype)


def run_sensor(config: DriverConfig, metrics: Metrics, stop: threading.Event) -> int:
    """Send frames until `stop`; the number sent."""
    assert config.rate_hz is not None
    source, replay = frames(config), replayed(config)
    conn = Connection(config.broker, [], metrics, lambda *_: None)
    conn.start()
    while not conn.ready.wait(0.1):
        if stop.is_set():
            conn.close([])
            return 0
    period, start, n, sent = 1.0 / config.rate_hz, time.time(), 0, 0
    pending = []
    while not stop.is_set():
        due = start + n * period
        wait = due - time.time()
        if wait > 0:
            stop.wait(wait)
            continue
        if wait < -period:  # behind by a whole frame: skip to now, count what was not sent
            missed = int(-wait / period)
            metrics.drop("late", missed)
            n += missed
            continue
        now = time.time()
        message = wire.Message(config.app, config.name, config.replica or 0, n, now, n,
                               {config.name: replay[n % len(replay)] if replay
                                else next(source)},
                               ((config.name, now, now, now),))
        pending = [conn.publish(t, wire.encode(message)) for t in config.topics]
        metrics.frames_out.inc()
        n += 1
        sent += 1
    conn.close(pending)
    return sent


SCHEMA = """CREATE TABLE IF NOT EXISTS messages (
  topic TEXT NOT NULL, unit TEXT NOT NULL, replica INTEGER NOT NULL, frame INTEGER NOT NULL,
  captured REAL NOT NULL, received REAL NOT NULL, bytes INTEGER NOT NULL, header TEXT NOT NULL,
  checksum REAL NOT NULL, payload BLOB)"""
KEEP_PAYLOAD_BYTES = 64 * 1024
"""Messages up to this size are stored whole (`payload`), so their tensors can be compared."""


def run_sink(config: DriverConfig, metrics: Metrics, stop: threading.Event) -> None:
    assert config.database is not None
    db = sqlite3.connect(config.database, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(SCHEMA)
    rows: list[tuple[Any, ...]] = []
    lock = threading.Lock()

    def received(topic: str, payload: bytes, at: float) -> None:
        try:
            m = wire.decode(payload)
        except wire.WireError:
            metrics.drop("bad_payload")
            return
        header = {"tensors": {n: [a.dtype.name, list(a.shape)] for n, a in m.tensors.items()},
                  "trace": [list(h) for h in m.trace], "seq": m.seq,
                  **({"cut": m.cut} if m.cut is not None else {}),
                  **({"version": m.version} if m.version is not None else {})}
        # a fingerprint of the content, so tests see that frames differ without storing them
        checksum = float(sum(float(np.sum(a, dtype=np.float64)) for a in m.tensors.values()))
        with lock:
            rows.append((topic, m.unit, m.replica, m.frame, m.captured, at, len(payload),
                         json.dumps(header, separators=(",", ":")), checksum,
                         payload if len(payload) <= KEEP_PAYLOAD_BYTES else None))

    conn = Connection(config.broker, config.topics, metrics, received)
    conn.start()
    while not stop.wait(0.2):
        _flush(db, rows, lock)
    conn.close([])
    _flush(db, rows, lock)
    db.close()


def _flush(db: sqlite3.Connection, rows: list[tuple[Any, ...]], lock: threading.Lock) -> None:
    with lock:
        batch, rows[:] = list(rows), []
    if batch:
        with db:
            db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeflow.runtime.drivers")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config")
    source.add_argument("--config-from-twin", action="store_true",
                        help="read the config from the IoT Edge module twin (docs/targets.md)")
    source.add_argument("--config-from-env", metavar="NAME", nargs="?", const=CONFIG_ENV,
                        help=f"read the config from environment variable NAME (default "
                             f"{CONFIG_ENV})")
    parser.add_argument("--metrics-host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        try:
            if args.config_from_twin:
                from edgeflow.runtime.twin import read_twin
                config = DriverConfig.model_validate_json(read_twin())
            elif args.config_from_env:
                config = DriverConfig.model_validate_json(os.environ.get(args.config_from_env)
                                                          or "")
            else:
                config = DriverConfig.model_validate_json(Path(args.config).read_bytes())
        except (OSError, ValidationError) as e:
            raise StartError(f"cannot read driver config "
                             f"{args.config or args.config_from_env or 'twin'}: {e}") \
                from None
        metrics = Metrics.create(config.app, config.name, config.replica, config.device)
        metrics.serve(config.metrics_port, args.metrics_host)
        stop = threading.Event()
        on_stop(stop)
        if config.kind == "sensor":
            next(frames(config))  # a bad replay folder fails now, not mid-run
            sent = run_sensor(config, metrics, stop)
            if config.stats is not None:
                Path(config.stats).write_text(json.dumps({"frames_out": sent}) + "\n")
        else:
            run_sink(config, metrics, stop)
    except StartError as e:
        print(f"edgeflow driver: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
