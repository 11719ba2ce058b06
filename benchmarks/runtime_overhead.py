"""What the runtime costs on top of the transport, and how closely `edgeflow run` matches the plan.

    python benchmarks/runtime_overhead.py [--quick] [--parts abcd] [--messages N]

(a) Transport floor and worker overhead per hop. One mosquitto on a free loopback port, TLS with
    client certificates (a throw-away CA from edgeflow.pki; the worker's unit.json requires TLS,
    so both paths pay for it), `set_tcp_nodelay true`, no ACL. The floor is a paho-mqtt
    publisher -> mosquitto -> paho subscriber of a float32[1, 3, 320, 320] edgeflow message
    (1.23 MB), QoS 1, TCP_NODELAY on both sockets, N messages at 10 Hz, one at a time. The worker
    path sends the same message through one worker (`python -m edgeflow.runtime`, an operator
    whose impl returns its input): publisher -> broker -> worker -> broker -> subscriber, two
    broker hops. Worker overhead per hop = worker path p50 - 2 x floor p50. The floor without
    TLS (a second, plain listener of the same broker) is printed for comparison.
(b) The highest frame rate a 3-operator chain (identity impls, one device, a store) sustains,
    on the embedded and the mosquitto broker: `edgeflow run --duration 4s` at increasing sensor
    rates, float32[1, 3, 64, 64] frames. Sustained: no drops anywhere (units, sensor `late`,
    sink) and every frame the sensor sent reached the store (run.json's `lost_frames` == 0).
(c) `edgeflow run --duration 5s` of tests/fixtures/runtime/split_app.ef and examples/reference.ef
    on both brokers: per pipeline, measured p50 beside the plan's predicted latency and their
    ratio. Goal: within 15 %.
(d) Link emulation accuracy: edgeflow.runtime.links.PacingProxy in-process over a 10 Mbps /
    20 ms link, messages of 1 KB, 100 KB and 1 MB sent one at a time: measured arrival minus the
    ideal (send + latency + 8 x size / bandwidth), mean and max. Goal (tests/test_links.py):
    never early, mean under 10 ms.

Prints the figures and the goals; never asserts timing. --quick: fewer messages, rates and
seconds. Needs mosquitto (/usr/sbin/mosquitto) for (a) and the mosquitto runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgeflow import pki
from edgeflow.local_run import scrape
from edgeflow.runtime import wire
from edgeflow.runtime.links import Pacer, PacingProxy
from edgeflow.unit_config import UnitConfig

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SHAPE = (1, 3, 320, 320)
RATE_HZ = 10.0
PRED_GOAL = 0.15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A folder under /tmp readable by mosquitto, which drops root privileges."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- (a) transport floor and worker overhead ---------------------------------------------------


class Tls:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca = pki.new_ca("runtime overhead bench", days=1)
        self.ca, _ = pki.write_ca(folder, ca, key_mode=0o644)
        self.broker = pki.write_identity(folder, "broker", pki.issue(
            ca, "broker", dns=["localhost"], ips=["127.0.0.1"], server=True, client=False,
            days=1), key_mode=0o644)
        self.clients = {cn: pki.write_identity(folder, cn, pki.issue(ca, cn, days=1),
                                               key_mode=0o644)
                        for cn in ("bench.pub", "bench.sub", "bench.ident.r0")}


def start_mosquitto(folder: Path, tls: Tls, port: int, plain_port: int) -> subprocess.Popen[bytes]:
    conf = folder / "mosquitto.conf"
    cert, key = tls.broker
    conf.write_text(f"""per_listener_settings false
allow_anonymous true
set_tcp_nodelay true
persistence false
log_dest stdout
log_type error
log_type warning

listener {port} 127.0.0.1
cafile {tls.ca}
certfile {cert}
keyfile {key}
require_certificate true
use_identity_as_username true

listener {plain_port} 127.0.0.1
""")
    conf.chmod(0o644)
    with open(folder / "mosquitto.log", "ab") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: proc.poll() is None and listening(port) and listening(plain_port), 10,
                 "mosquitto")
    except RuntimeError:
        stop(proc)
        raise RuntimeError("mosquitto did not start: " +
                           (folder / "mosquitto.log").read_text(errors="replace")[-400:]) from None
    return proc


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(cid: str, port: int, tls: Tls | None) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cid,
                    protocol=mqtt.MQTTv311, clean_session=True)
    if tls is not None:
        cert, key = tls.clients[cid]
        c.tls_set(ca_certs=str(tls.ca), certfile=str(cert), keyfile=str(key))
    c.on_socket_open = _no_delay
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, reason, p: connected.set() if not reason.is_failure else None
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not connected.wait(10):
        c.loop_stop()
        raise RuntimeError(f"{cid} could not connect to 127.0.0.1:{port}")
    return c


class Receiver:
    """A subscriber that notes when each frame arrives (perf_counter) and its trace."""

    def __init__(self, cid: str, port: int, tls: Tls | None, topic: str) -> None:
        self.arrived: dict[int, float] = {}
        self.traces: dict[int, tuple[wire.Hop, ...]] = {}
        self.got = threading.Condition()
        self.client = connect(cid, port, tls)
        self.client.on_message = self._message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError(f"no SUBACK for {topic}")

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        m = wire.decode(msg.payload)
        with self.got:
            self.arrived[m.frame] = at
            self.traces[m.frame] = m.trace
            self.got.notify_all()

    def wait(self, frame: int, timeout_s: float) -> bool:
        with self.got:
            return self.got.wait_for(lambda: frame in self.arrived, timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def message(frame: int, array: np.ndarray[Any, Any]) -> bytes:
    now = time.time()
    return wire.encode(wire.Message("bench", "cam", 0, frame, now, frame, {"cam": array},
                                    (("cam", now, now, now),)))


def send_series(pub: mqtt.Client, topic: str, rx: Receiver, array: np.ndarray[Any, Any],
                first: int, count: int) -> tuple[list[float], int]:
    """`count` messages at RATE_HZ on a fixed schedule; latencies (s) of those that arrived."""
    sent: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(count):
        due = start + i / RATE_HZ
        payload = message(first + i, array)  # encoded before the clock starts
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        sent[first + i] = time.perf_counter()
        pub.publish(topic, payload, qos=1)
    rx.wait(first + count - 1, 5.0)
    time.sleep(0.2)
    with rx.got:
        lat = [rx.arrived[f] - t for f, t in sent.items() if f in rx.arrived]
    return lat, count - len(lat)


def unit_json(folder: Path, tls: Tls, port: int) -> Path:
    (folder / "ident.py").write_text("def ident(x):\n    return x\n")
    cert, key = tls.clients["bench.ident.r0"]
    config = UnitConfig.model_validate({
        "app": "bench", "unit": "ident", "replica": 0, "kind": "operator",
        "device": "bench_box[0]",
        "broker": {"host": "127.0.0.1", "port": port, "client_id": "bench.ident.r0",
                   "tls": {"ca": str(tls.ca), "cert": str(cert), "key": str(key)}},
        "subscribe": ["bench/in"], "publish": ["bench/out"],
        "device_compute_flops": 1e12, "threads": 1, "queue": 16, "join_timeout_s": 1.0,
        "metrics_port": free_port(),
        "operator": {"work_flop": 0.0, "emits": "float32[1, 3, 320, 320]",
                     "impl": "ident:ident"},
    })
    path = folder / "unit.json"
    path.write_text(config.to_json())
    return path


def part_a(n: int) -> dict[str, Any]:
    array = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    size = len(message(0, array))
    out: dict[str, Any] = {"bytes": size, "n": n}
    with scratch("edgeflow-overhead-") as folder:
        tls = Tls(folder / "tls")
        port, plain = free_port(), free_port()
        broker = start_mosquitto(folder, tls, port, plain)
        worker: subprocess.Popen[bytes] | None = None
        clients: list[Any] = []
        try:
            # the floor, TLS and plain: publisher -> broker -> subscriber
            for name, p, t in (("floor_tls", port, tls), ("floor_plain", plain, None)):
                rx = Receiver("bench.sub", p, t, "bench/floor")
                pub = connect("bench.pub", p, t)
                clients += [rx, pub]
                send_series(pub, "bench/floor", rx, array, 10_000_000, 5)  # warm-up
                out[name], out[f"{name}_lost"] = send_series(pub, "bench/floor", rx, array, 0, n)
                rx.close()
                pub.disconnect()
                pub.loop_stop()
                clients.clear()
            # the worker path: publisher -> broker -> worker -> broker -> subscriber
            config = unit_json(folder, tls, port)
            metrics_port = json.loads(config.read_text())["metrics_port"]
            env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
                [str(folder), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
            with open(folder / "worker.log", "ab") as log:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "edgeflow.runtime", "--config", str(config),
                     "--metrics-host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=env)

            def connected() -> bool:
                if worker is None or worker.poll() is not None:
                    raise RuntimeError("the worker exited: " + (folder / "worker.log")
                                       .read_text(errors="replace").strip()[-400:])
                try:
                    return scrape(metrics_port).get("edgeflow_connected", 0) == 1
                except OSError:
                    return False
            wait_for(connected, 30, "the worker")
            rx = Receiver("bench.sub", port, tls, "bench/out")
            pub = connect("bench.pub", port, tls)
            clients += [rx, pub]
            for i in range(100):  # until the worker's subscription is in place
                pub.publish("bench/in", message(20_000_000 + i, array), qos=1)
                if rx.wait(20_000_000 + i, 0.2):
                    break
            else:
                raise RuntimeError("nothing came back through the worker")
            send_series(pub, "bench/in", rx, array, 10_000_000, 5)  # warm-up
            out["worker"], out["worker_lost"] = send_series(pub, "bench/in", rx, array, 0, n)
            with rx.got:
                inside = [t[-1][3] - t[-1][1] for f, t in rx.traces.items()
                          if f < n and t and t[-1][0] == "ident"]
            out["in_worker"] = inside
            m = scrape(metrics_port)
            out["worker_drops"] = {k: v for k, v in m.items()
                                   if k.startswith("edgeflow_drops_total") and v}
        finally:
            for c in clients:
                if isinstance(c, Receiver):
                    c.close()
                else:
                    c.disconnect()
                    c.loop_stop()
            stop(worker)
            stop(broker)
    return out


def print_a(r: dict[str, Any]) -> None:
    def row(label: str, lat: list[float], lost: int) -> None:
        print(f"  {label:<44} {pct(lat, 50) * 1e3:8.2f} {pct(lat, 95) * 1e3:8.2f} "
              f"{len(lat):5d} {lost:5d}")
    print(f"\n(a) transport floor vs worker, float32{list(SHAPE)} message of {r['bytes']:,} B, "
          f"QoS 1, {RATE_HZ:g} Hz, {r['n']} messages, mosquitto {mosquitto_version()}")
    print(f"  {'path':<44} {'p50 ms':>8} {'p95 ms':>8} {'recvd':>5} {'lost':>5}")
    row("floor, plain TCP: pub -> broker -> sub", r["floor_plain"], r["floor_plain_lost"])
    row("floor, TLS: pub -> broker -> sub", r["floor_tls"], r["floor_tls_lost"])
    row("TLS: pub -> broker -> worker -> broker -> sub", r["worker"], r["worker_lost"])
    floor, path = pct(r["floor_tls"], 50), pct(r["worker"], 50)
    inside = r["in_worker"]
    print(f"  in the worker, received -> published (trace), p50 {pct(inside, 50) * 1e3:.2f} ms, "
          f"p95 {pct(inside, 95) * 1e3:.2f} ms (decode, queue, run; not encode + send)")
    overhead = path - 2 * floor
    print(f"  worker overhead per hop = {path * 1e3:.2f} - 2 x {floor * 1e3:.2f} = "
          f"{overhead * 1e3:.2f} ms (p50); worker drops: {r['worker_drops'] or 'none'}  "
          f"(goal: <= 1 ms over the floor: {'met' if overhead <= 1e-3 else 'MISSED'})")


def mosquitto_version() -> str:
    try:
        done = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5,
                              check=False)
        return done.stdout.split("\n")[0].split("version")[-1].strip()
    except OSError:
        return "?"


# ---- edgeflow run ------------------------------------------------------------------------------


def edgeflow_run(app: Path, seconds: float, broker: str, out: Path) -> dict[str, Any] | str:
    """run.json of `edgeflow run`, or why there is none."""
    done = subprocess.run([sys.executable, "-m", "edgeflow", "run", str(app.name),
                           "--duration", f"{seconds:g}s", "--broker", broker, "-o", str(out),
                           "--json"], cwd=app.parent, capture_output=True, text=True,
                          timeout=300, check=False)
    path = out / "run.json"
    if path.exists():
        return json.loads(path.read_text())
    try:
        diagnostics = json.loads(done.stdout)["diagnostics"]
        why = " | ".join(f"{d.get('code')} {d.get('message')}" for d in diagnostics
                         if d.get("severity") == "error") or done.stdout.strip()[-300:]
    except (ValueError, KeyError, TypeError):
        lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
        why = " | ".join(lines[-3:])
    return f"exit {done.returncode}: {why}"


CHAIN = """app chain_rate {{
  description = "three identity operators on one device"
  objective   = minimize(latency)
}}

device box {{
  tier    = edge
  compute = 100 TFLOPS
  memory  = 64 GiB
}}

sensor cam {{ on = box, rate = {rate} Hz, emits = float32[1, 3, 64, 64] }}
store sink {{ on = box }}
{operators}
pipeline chain {{
  flow = cam -> op_a -> op_b -> op_c -> sink
}}
"""
OPERATOR = """
operator {name} {{
  work  = 1000 FLOP
  emits = float32[1, 3, 64, 64]
  impl  = "chain_ops:ident"
}}
"""


def part_b(rates: list[int], seconds: float) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    with scratch("edgeflow-chain-") as folder:
        (folder / "chain_ops.py").write_text("def ident(x):\n    return x\n")
        operators = "".join(OPERATOR.format(name=n) for n in ("op_a", "op_b", "op_c"))
        for broker in ("embedded", "mosquitto"):
            rows = results.setdefault(broker, [])
            for rate in rates:
                app = folder / "chain.ef"
                app.write_text(CHAIN.format(rate=rate, operators=operators))
                report = edgeflow_run(app, seconds, broker, folder / f"out-{broker}-{rate}")
                if isinstance(report, str):
                    rows.append({"rate": rate, "error": report})
                    continue
                p = report["pipelines"][0]
                drops: dict[str, int] = {}
                for group in ("units", "drivers"):
                    for name, u in report[group].items():
                        for reason, v in u["drops"].items():
                            drops[f"{name}:{reason}"] = drops.get(f"{name}:{reason}", 0) + v
                sent = int(p["sent_frames"])
                rows.append({"rate": rate, "sent": sent, "frames": p["frames"],
                             "lost_frames": p["lost_frames"], "p50_ms": p["p50_ms"],
                             "p95_ms": p["p95_ms"], "hz": p["throughput_hz_per_replica"],
                             "drops": drops,
                             "ok": not drops and sent > 0 and p["lost_frames"] == 0})
    return results


def print_b(results: dict[str, list[dict[str, Any]]], seconds: float) -> None:
    print(f"\n(b) 3-operator chain on one device, float32[1, 3, 64, 64], edgeflow run "
          f"{seconds:g}s: the highest rate without drops")
    print(f"  {'broker':<10} {'rate':>5} {'sent':>6} {'stored':>6} {'lost':>6} {'Hz':>8} "
          f"{'p50 ms':>8} {'p95 ms':>8}  drops")
    for broker, rows in results.items():
        for r in rows:
            if "error" in r:
                print(f"  {broker:<10} {r['rate']:>5} FAILED: {r['error']}")
                continue
            drops = ", ".join(f"{k} {v}" for k, v in r["drops"].items()) or "none"

            def ms(x: float | None) -> str:
                return "-" if x is None else f"{x:.2f}"
            print(f"  {broker:<10} {r['rate']:>5} {r['sent']:>6} {r['frames']:>6} "
                  f"{r['lost_frames']:>6} {r['hz']:>8.1f} {ms(r['p50_ms']):>8} "
                  f"{ms(r['p95_ms']):>8}  {drops}")
    for broker, rows in results.items():
        ok = [r["rate"] for r in rows if r.get("ok")]
        failed = [r["rate"] for r in rows if not r.get("ok")]
        print(f"  {broker}: highest sustained rate {max(ok) if ok else 'none'} Hz of those "
              f"tried (every frame sent was stored, no drops)"
              + (f"; failed at {failed} Hz" if failed else "; none failed"))


def part_c(seconds: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with scratch("edgeflow-apps-") as folder:
        split = folder / "split"
        (split / "models").mkdir(parents=True)
        for f in (ROOT / "tests/fixtures/runtime").glob("*.ef"):
            shutil.copy(f, split)
        shutil.copy(ROOT / "tests/fixtures/runtime/ops.py", split)
        shutil.copy(ROOT / "examples/models/vitals.onnx", split / "models")
        apps = [("split_app.ef", split / "split_app.ef"),
                ("reference.ef", ROOT / "examples/reference.ef")]
        for label, app in apps:
            for broker in ("embedded", "mosquitto"):
                report = edgeflow_run(app, seconds, broker, folder / f"out-{label}-{broker}")
                if isinstance(report, str):
                    rows.append({"app": label, "broker": broker, "error": report})
                    continue
                drops: dict[str, int] = {}
                for group in ("units", "drivers"):
                    for u in report[group].values():
                        for reason, v in u["drops"].items():
                            drops[reason] = drops.get(reason, 0) + v
                for p in report["pipelines"]:
                    rows.append({"app": label, "broker": broker, "pipeline": p["name"],
                                 "frames": p["frames"], "sent": int(p["sent_frames"]),
                                 "drops": drops, "p50_ms": p["p50_ms"],
                                 "p95_ms": p["p95_ms"], "predicted_ms": p["predicted_ms"],
                                 "hops": p["hops"],
                                 "slower": report["emulation"]["slower_than_declared_device"]})
    return rows


def print_c(rows: list[dict[str, Any]], seconds: float) -> None:
    print(f"\n(c) edgeflow run {seconds:g}s: measured p50 vs the plan's predicted latency "
          f"(goal: within {PRED_GOAL:.0%})")
    print(f"  {'app':<14} {'broker':<10} {'pipeline':<10} {'sent':>5} {'frames':>6} "
          f"{'p50 ms':>9} {'p95 ms':>9} {'predicted':>9} {'ratio':>8}  goal")
    for r in rows:
        if "error" in r:
            print(f"  {r['app']:<14} {r['broker']:<10} FAILED: {r['error']}")
            continue
        p50, pred = r["p50_ms"], r["predicted_ms"]
        if p50 is None or not pred:
            print(f"  {r['app']:<14} {r['broker']:<10} {r['pipeline']:<10} {r['sent']:>5} "
                  f"{r['frames']:>6} {'-':>9} {'-':>9} {pred or '-':>9} {'-':>8}  -")
            continue
        ratio = p50 / pred
        goal = "met" if abs(ratio - 1) <= PRED_GOAL else "MISSED"
        print(f"  {r['app']:<14} {r['broker']:<10} {r['pipeline']:<10} {r['sent']:>5} "
              f"{r['frames']:>6} {p50:>9.2f} {r['p95_ms']:>9.2f} {pred:>9.2f} {ratio:>8.2f}  "
              f"{goal}")
    runs = {(r["app"], r["broker"]): r["drops"] for r in rows if "error" not in r}
    print("  drops: " + "; ".join(f"{a} {b}: " + (", ".join(f"{k} {v}" for k, v in d.items())
                                                  or "none") for (a, b), d in runs.items()))
    for r in rows:
        if "error" in r:
            continue
        parts = []
        for h in r["hops"]:
            vals = [f"{k[0]}{h[k]:.1f}" for k in ("transfer_ms", "queue_ms", "compute_ms")
                    if h.get(k) is not None]
            parts.append(f"{h['step']}({' '.join(vals)})")
        print(f"  hops {r['app']} {r['pipeline']} {r['broker']} (median ms, t=transfer q=queue "
              f"c=compute): {' '.join(parts)}")
    slower = {(r["app"], r["broker"]): r["slower"] for r in rows
              if "error" not in r and r["slower"]}
    for (app, broker), units in slower.items():
        print(f"  {app} {broker}: units slower on this machine than their declared device: "
              f"{', '.join(units)}")


# ---- (d) link emulation ------------------------------------------------------------------------

LATENCY_S = 0.020
BANDWIDTH_BPS = 10e6
FRAME = struct.Struct("!Id")  # frame length, the sender's time.monotonic()


async def _paced(sizes: list[int], repeats: int) -> dict[int, list[float]]:
    got = asyncio.Event()
    arrivals: list[tuple[float, float, int]] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readexactly(FRAME.size)
            except asyncio.IncompleteReadError:
                break
            length, sent = FRAME.unpack(head)
            await reader.readexactly(length - FRAME.size)
            arrivals.append((time.monotonic(), sent, length))
            got.set()
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    proxy = PacingProxy(("127.0.0.1", 0), target, [Pacer(LATENCY_S, BANDWIDTH_BPS)],
                        [Pacer(LATENCY_S, BANDWIDTH_BPS)])
    await proxy.start()
    _, writer = await asyncio.open_connection(*proxy.address)
    try:
        for size in sizes:
            body = bytes(size - FRAME.size)
            for _ in range(repeats):  # one at a time: each finds the link idle
                got.clear()
                writer.write(FRAME.pack(size, time.monotonic()) + body)
                await writer.drain()
                await asyncio.wait_for(got.wait(), 30)
                await asyncio.sleep(0.01)
    finally:
        writer.close()
        await proxy.close()
        server.close()
    excess: dict[int, list[float]] = {}
    for arrival, sent, size in arrivals:
        ideal = sent + LATENCY_S + 8 * size / BANDWIDTH_BPS
        excess.setdefault(size, []).append(arrival - ideal)
    return excess


def part_d(repeats: int) -> dict[int, list[float]]:
    return asyncio.run(_paced([1_000, 100_000, 1_000_000], repeats))


def print_d(excess: dict[int, list[float]]) -> None:
    print(f"\n(d) link emulation, PacingProxy over {BANDWIDTH_BPS / 1e6:g} Mbps / "
          f"{LATENCY_S * 1e3:g} ms, one message at a time: measured - ideal arrival "
          "(goal: never early, mean < 10 ms)")
    print(f"  {'size':>10} {'n':>4} {'ideal ms':>9} {'mean ms':>8} {'max ms':>8} {'min ms':>8}  "
          "goal")
    for size, ex in excess.items():
        ideal = (LATENCY_S + 8 * size / BANDWIDTH_BPS) * 1e3
        goal = "met" if min(ex) >= 0 and statistics.mean(ex) < 0.010 else "MISSED"
        print(f"  {size:>10,} {len(ex):>4} {ideal:>9.2f} {statistics.mean(ex) * 1e3:>8.2f} "
              f"{max(ex) * 1e3:>8.2f} {min(ex) * 1e3:>8.2f}  {goal}")


# ---- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer messages, rates and seconds (about 2 minutes)")
    ap.add_argument("--parts", default="abcd", help="which parts to run, e.g. `ad` (default abcd)")
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per path in (a) (default 200, quick 50)")
    args = ap.parse_args()
    n = args.messages or (50 if args.quick else 200)
    rates = [50, 200] if args.quick else [25, 50, 100, 200, 400]
    chain_s = 4.0
    apps_s = 3.0 if args.quick else 5.0
    repeats = 3 if args.quick else 10
    started = time.perf_counter()
    failed: list[str] = []

    def attempt(part: str, run: Callable[[], Any], show: Callable[[Any], None]) -> None:
        if part not in args.parts:
            return
        t = time.perf_counter()
        try:
            result = run()
        except Exception as e:  # noqa: BLE001 - keep the other parts' figures
            failed.append(part)
            print(f"\n({part}) FAILED: {type(e).__name__}: {e}")
            return
        show(result)
        print(f"  [{time.perf_counter() - t:.0f} s]")
        sys.stdout.flush()

    if shutil.which(MOSQUITTO) is None:
        print(f"mosquitto not found ({MOSQUITTO}): (a) and the mosquitto runs will fail")
    attempt("a", lambda: part_a(n), print_a)
    attempt("b", lambda: part_b(rates, chain_s), lambda r: print_b(r, chain_s))
    attempt("c", lambda: part_c(apps_s), lambda r: print_c(r, apps_s))
    attempt("d", lambda: part_d(repeats), print_d)
    print(f"\ntotal {time.perf_counter() - started:.0f} s"
          + (f"; failed parts: {', '.join(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
