"""The embedded MQTT broker of `edgeflow run --broker embedded`: the bundle's brokers (one per
device) served from one process on amqtt, the pure-Python MQTT 3.1.1 broker, for local runs on a
machine without mosquitto.

Its security equals the generated mosquitto configurations (edgeflow/emit/mqtt.py):

* one TLS listener per broker (TLS 1.2 or later) that requires a client certificate signed by
  the run's CA: a connection without one fails in the handshake;
* no anonymous access: a client's certificate common name (CN) is its MQTT user name, and its
  client id must equal that CN, or the CONNECT is refused (identifier rejected), so no identity
  can take over, reset or resume another's session;
* an ACL gives each user read and write access to exact topics (`+` and `#` in an ACL entry
  match as MQTT filters): PUBLISH and a will message need write access to the topic, SUBSCRIBE
  needs a filter that read access covers, and delivery checks read access again.

The checks are amqtt plugins (`CertificateAuthPlugin`, `TopicACLPlugin`, loaded from the
broker configuration's `plugins` by dotted path). A `Broker` subclass makes the listener's TLS
context (amqtt's asks for a certificate but accepts a client without one) and checks a
connection's identity as soon as its CONNECT is read: amqtt looks up, resets or reuses the
session of the client id a CONNECT names before it runs the authentication plugins, with the
TLS details of the connection that opened that session first.

Run as `python -m edgeflow.runtime.embedded --config brokers.json` (a JSON list of
`BrokerSpec` objects): it prints `ready` once every listener accepts connections, serves until
SIGTERM or SIGINT and exits 0; a bad configuration, a port in use or an unreadable certificate
or key is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, BrokerError
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

__all__ = ["BrokerSpec", "CertificateAuthPlugin", "EmbeddedBrokerError", "TopicACLPlugin",
           "certificate_identity", "filter_covers", "load_specs", "main", "serve"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0  # seconds a connection may take to send its CONNECT
SHUTDOWN_TIMEOUT = 3.0  # seconds the brokers get to close their connections when stopping
TAKEOVER_WAIT = 1.0  # seconds a reconnecting identity waits for its old connection to close
ACCESS = ("read", "write")


class EmbeddedBrokerError(Exception):
    """A broker cannot be configured or started; the message is one line for its operator."""


@dataclass(frozen=True)
class BrokerSpec:
    """One broker: its listener, the TLS files (the CA that signs the clients' certificates,
    the broker's certificate and key) and its ACL, user -> {"read": topics, "write": topics}."""

    name: str
    host: str
    port: int
    ca: str
    cert: str
    key: str
    acl: dict[str, dict[str, list[str]]]


# ---------------------------------------------------------------- identities and topic rules


def certificate_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The common name of the verified peer certificate of a TLS connection, or None (no TLS,
    no certificate, or not exactly one non-empty CN)."""
    if ssl_object is None:
        return None
    cert: Any = ssl_object.getpeercert()
    if not cert:
        return None
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    return names[0] if len(names) == 1 and isinstance(names[0], str) and names[0] else None


def filter_covers(rule: str, topic_filter: str) -> bool:
    """Whether every topic that `topic_filter` matches is matched by the ACL entry `rule`; for a
    topic name (no wildcards) that is whether `rule` matches it as an MQTT topic filter."""
    rule_levels, levels = rule.split("/"), topic_filter.split("/")
    for i, level in enumerate(rule_levels):
        if level == "#":
            return True
        if i >= len(levels) or levels[i] == "#":
            return False
        if level != "+" and level != levels[i]:
            return False
    return len(levels) == len(rule_levels)


# ---------------------------------------------------------------- amqtt plugins


class CertificateAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Authenticates a client by its TLS certificate: a verified certificate with one common
    name that equals the client id; the CN becomes the session's user name. Never anonymous."""

    @dataclass
    class Config:
        """No options: the listener's CA decides which certificates are valid."""

    async def authenticate(self, *, session: Any) -> bool:
        identity = certificate_identity(session.ssl_object)
        if identity is None or session.client_id != identity:
            return False
        session.username = identity
        session.is_anonymous = False
        return True


class TopicACLPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Grants a session's user exactly the topics of its ACL entry: PUBLISH needs write access,
    SUBSCRIBE a filter its read access covers, and delivery (RECEIVE) read access."""

    @dataclass
    class Config:
        """acl: user -> {"read": [topics], "write": [topics]}."""

        acl: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        acl: dict[str, dict[str, list[str]]] = context.config.acl
        self.rules: dict[str, dict[str, tuple[str, ...]]] = {
            user: {access: tuple(rules.get(access, ())) for access in ACCESS}
            for user, rules in acl.items()}

    def allowed(self, user: str | None, topic: str, action: Action) -> bool:
        if not user or not topic or user not in self.rules:
            return False
        access = "write" if action == Action.PUBLISH else "read"
        return any(filter_covers(rule, topic) for rule in self.rules[user][access])

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        if session is None or topic is None or action is None:
            return False
        user = session.username if isinstance(session.username, str) else None
        return self.allowed(user, topic, action)


# ---------------------------------------------------------------- the broker


class _Handler(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker protocol handler, closing a connection silent for 1.5 keep-alive periods
    (MQTT-3.1.2-24; amqtt's only notes the read timeout)."""

    def handle_read_timeout(self) -> None:
        task = asyncio.ensure_future(self.handle_connection_closed())
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Future[Any]] = set()


async def _refuse(writer: Any, code: int) -> None:
    with contextlib.suppress(Exception):
        await ConnackPacket.build(0, code).to_stream(writer)
    with contextlib.suppress(Exception):
        await writer.close()


class _Broker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker with the listener's TLS context made here (client certificate required)
    and the client's identity checked before amqtt touches any session."""

    def __init__(self, config: dict[str, Any], context: ssl.SSLContext, namespace: str) -> None:
        self._edgeflow_tls = context
        super().__init__(config, plugin_namespace=namespace)

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        return self._edgeflow_tls

    @classmethod
    def _split_bindaddr_port(cls, port_str: str, default_port: int) -> tuple[str | None, int]:
        host, port = super()._split_bindaddr_port(port_str, default_port)
        return (host.strip("[]") if isinstance(host, str) else None), int(port)

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[Any, Any]:
        where = f"{remote_address}:{remote_port}"
        try:
            handler, session = await asyncio.wait_for(
                _Handler.init_from_connect(reader, writer, self.plugins_manager),
                CONNECT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any bad first packet ends the connection
            with contextlib.suppress(Exception):
                await writer.close()
            raise AMQTTError(f"{where}: no valid CONNECT ({exc!r})") from None

        identity = certificate_identity(writer.get_ssl_info())
        if identity is None:
            await _refuse(writer, NOT_AUTHORIZED)
            raise AMQTTError(f"{where}: refused, the client certificate has no single CN")
        if session.client_id != identity:
            await _refuse(writer, IDENTIFIER_REJECTED)
            raise AMQTTError(f"{where}: refused client id {session.client_id!r}: the "
                             f"certificate's identity is {identity!r}")
        session.username = identity
        if session.will_flag and not await self._topic_filtering(
                session, topic=session.will_topic, action=Action.PUBLISH):
            await _refuse(writer, NOT_AUTHORIZED)
            raise AMQTTError(f"{where}: refused {identity!r}: its will topic "
                             f"{session.will_topic!r} is not in its write ACL")

        await self._close_previous_connection(identity)
        if session.clean_session:
            await self._delete_session(identity)
            session.parent = 0
        elif identity in self._sessions:
            existing = self._sessions[identity][0]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                         "keep_alive", "username", "password", "ssl_object", "remote_address",
                         "remote_port"):
                setattr(existing, name, getattr(session, name))
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        # MQTT-3.1.2-24: a client silent for one and a half keep-alive periods is disconnected
        session.keep_alive = math.ceil(1.5 * session.keep_alive) if session.keep_alive > 0 else 0
        return handler, session

    async def _close_previous_connection(self, client_id: str) -> None:
        """A client reconnecting under its identity replaces its old connection (as mosquitto
        does): the old one is closed, and its session marked disconnected, first."""
        previous = self._sessions.get(client_id)
        if previous is None or not previous[0].transitions.is_connected():
            return
        old_session, old_handler = previous
        with contextlib.suppress(Exception):
            await old_handler.handle_connection_closed()
        deadline = asyncio.get_running_loop().time() + TAKEOVER_WAIT
        while (old_session.transitions.is_connected()
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.01)


def tls_context(spec: BrokerSpec) -> ssl.SSLContext:
    """The listener's TLS context: TLS 1.2 or later, the broker's certificate, and a client
    certificate signed by `spec.ca` required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=spec.ca)
    except (OSError, ValueError) as exc:
        raise EmbeddedBrokerError(f"broker {spec.name}: cannot read the CA certificate "
                                  f"{spec.ca}: {_reason(exc)}") from None
    try:
        context.load_cert_chain(spec.cert, spec.key)
    except (OSError, ValueError) as exc:
        raise EmbeddedBrokerError(f"broker {spec.name}: cannot read the certificate {spec.cert} "
                                  f"or its key {spec.key}: {_reason(exc)}") from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror
    return str(exc) or type(exc).__name__


def broker_config(spec: BrokerSpec) -> dict[str, Any]:
    """amqtt's configuration of the broker of `spec`: one TLS listener and the two plugins."""
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{spec.port}", "ssl": True}},
        "plugins": {
            f"{__name__}.CertificateAuthPlugin": {},
            f"{__name__}.TopicACLPlugin": {"acl": {user: {a: list(rules.get(a, ())) for a in ACCESS}
                                                   for user, rules in spec.acl.items()}},
        },
    }


class _DropStartupTraceback(logging.Filter):
    """serve() reports a broker that cannot start in one line; amqtt's own traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Broker startup failed"


_STARTUP_FILTER = _DropStartupTraceback()


async def serve(specs: Sequence[BrokerSpec], stop: asyncio.Event, *,
                on_ready: Callable[[], None] | None = None) -> None:
    """Run the brokers of `specs` in this event loop until `stop` is set, then shut them down.
    `on_ready` is called once every listener accepts connections. Raises EmbeddedBrokerError
    (with every broker already started stopped again) if one cannot start."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise EmbeddedBrokerError(f"broker names repeat: {sorted(names)}")
    contexts = [tls_context(spec) for spec in specs]
    logging.getLogger("amqtt.broker").addFilter(_STARTUP_FILTER)
    started: list[_Broker] = []
    try:
        for spec, context in zip(specs, contexts, strict=True):
            try:
                broker = _Broker(broker_config(spec), context, f"amqtt.broker.edgeflow.{spec.name}")
            except Exception as exc:  # noqa: BLE001 - amqtt's configuration errors vary
                raise EmbeddedBrokerError(f"broker {spec.name}: bad configuration: {exc}") from None
            try:
                await broker.start()
            except BrokerError as exc:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                raise EmbeddedBrokerError(f"broker {spec.name}: cannot listen on "
                                          f"{spec.host}:{spec.port}: {_reason(cause)}") from None
            started.append(broker)
            log.info("broker %s listening on %s:%d", spec.name, spec.host, spec.port)
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        await _shutdown(started)


async def _shutdown(brokers: Sequence[_Broker]) -> None:
    if not brokers:
        return
    results = asyncio.gather(*(b.shutdown() for b in brokers), return_exceptions=True)
    try:
        for result in await asyncio.wait_for(results, SHUTDOWN_TIMEOUT):
            if isinstance(result, BaseException):
                log.debug("broker shutdown: %r", result)
    except TimeoutError:
        log.warning("the brokers did not close all connections within %.0f s", SHUTDOWN_TIMEOUT)


# ---------------------------------------------------------------- the process


def _spec(item: object, where: str) -> BrokerSpec:
    if not isinstance(item, dict):
        raise EmbeddedBrokerError(f"{where}: a broker is a JSON object, not {type(item).__name__}")
    expected = {f.name for f in fields(BrokerSpec)}
    if missing := sorted(expected - item.keys()):
        raise EmbeddedBrokerError(f"{where}: missing {', '.join(missing)}")
    if unknown := sorted(set(item) - expected):
        raise EmbeddedBrokerError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    for key in ("name", "host", "ca", "cert", "key"):
        if not isinstance(item[key], str) or not item[key]:
            raise EmbeddedBrokerError(f"{where}: {key} must be a non-empty string")
    port = item["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise EmbeddedBrokerError(f"{where}: port must be an integer from 1 to 65535, not {port!r}")
    acl = item["acl"]
    if not isinstance(acl, dict):
        raise EmbeddedBrokerError(f"{where}: acl must map users to {{read, write}} topic lists")
    for user, rules in acl.items():
        if not isinstance(rules, dict) or not set(rules) <= set(ACCESS) or not all(
                isinstance(t, list) and all(isinstance(x, str) and x for x in t)
                for t in rules.values()):
            raise EmbeddedBrokerError(f"{where}: acl[{user!r}] must be {{\"read\": [topics], "
                                      f"\"write\": [topics]}} with non-empty topic strings")
    return BrokerSpec(name=item["name"], host=item["host"], port=port, ca=item["ca"],
                      cert=item["cert"], key=item["key"],
                      acl={u: {a: list(r.get(a, [])) for a in ACCESS} for u, r in acl.items()})


def load_specs(path: Path) -> list[BrokerSpec]:
    """The brokers of a JSON configuration file: a list of BrokerSpec objects."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EmbeddedBrokerError(f"{path}: cannot read: {_reason(exc)}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmbeddedBrokerError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise EmbeddedBrokerError(f"{path}: expected a non-empty JSON list of brokers")
    return [_spec(item, f"{path}: broker {i}") for i, item in enumerate(data)]


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("embedded broker: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # amqtt logs refused or dropped clients with tracebacks
        handler.addFilter(_NoTraceback())


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


async def _run(specs: list[BrokerSpec]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def ready() -> None:
        print("ready", flush=True)

    await serve(specs, stop, on_ready=ready)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgeflow.runtime.embedded",
        description="Serve a bundle's MQTT brokers (TLS client certificates, ACLs) until "
                    "SIGTERM or SIGINT; prints 'ready' once every listener accepts connections.")
    parser.add_argument("--config", required=True, type=Path,
                        help="a JSON list of brokers: name, host, port, ca, cert, key, acl")
    parser.add_argument("--verbose", action="store_true", help="log the brokers' activity")
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        specs = load_specs(args.config)
        asyncio.run(_run(specs))
    except EmbeddedBrokerError as exc:
        print(f"edgeflow embedded broker: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
