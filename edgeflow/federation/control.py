"""A SuperLink's Control API, as `flwr supernode register`, `flwr supernode ls`, `flwr run`,
`flwr ls` and `flwr stop` call it (flwr 1.42 speaks protobuf over HTTPS on the SuperLink's one
port). The `flwr` command itself does not start next to amqtt's pinned typer (0.15 cannot read
its `Literal` options), so edgeflow makes the same requests with Flower's own client.

The Flower app edgeflow runs is a FAB holding only its `pyproject.toml`: the components are
`edgeflow.federation.app:server_app` and `:client_app`, imported from the installed edgeflow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.supercore.control import ControlHttpClient

APP_NAME = "edgeflow-federation"
PUBLISHER = "edgeflow"
APP_VERSION = "1.0.0"

# the run config keys (docs in edgeflow.federation.app); every one must be declared here
RUN_CONFIG: dict[str, str | int] = {
    "spec": "", "site": -1, "task": "", "round": 0, "weights": "", "result": ""}


def pyproject() -> str:
    """The app's pyproject.toml."""
    config = "\n".join(f"{k} = {v!r}" if isinstance(v, int) else f'{k} = "{v}"'
                       for k, v in RUN_CONFIG.items())
    return f"""\
# edgeflow's Flower app (edgeflow.federation.app); written by edgeflow train
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "{APP_VERSION}"
description = "edgeflow's federated training: the ServerApp and ClientApp of edgeflow train"
dependencies = ["edgeflow[train]"]

[tool.flwr.app]
publisher = "{PUBLISHER}"

[tool.flwr.app.components]
serverapp = "edgeflow.federation.app:server_app"
clientapp = "edgeflow.federation.app:client_app"

[tool.flwr.app.config]
{config}
"""


def fab() -> tuple[bytes, str]:
    """The Flower App Bundle and its sha256."""
    import warnings

    from flwr.cli.build import build_fab_from_files

    with warnings.catch_warnings():  # pathspec's deprecation of the patterns Flower uses
        warnings.simplefilter("ignore", DeprecationWarning)
        data, _ = build_fab_from_files({"pyproject.toml": pyproject().encode()})
    return data, hashlib.sha256(data).hexdigest()


def client(address: str, root_certificates: Path) -> ControlHttpClient:
    """A Control API client of the SuperLink at `address`, its TLS certificate checked
    against `root_certificates`."""
    from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

    return ControlHttpClient.from_server_address(
        server_address=address, insecure=False, root_certificates=root_certificates.read_bytes(),
        interceptors=[CliClientHttpInterceptor(),
                      RuntimeVersionHttpInterceptor(component_name="flwr CLI")])


def register_node(c: ControlHttpClient, public_key_file: Path, name: str) -> int:
    """`flwr supernode register KEY.pub`: the SuperLink admits the key's SuperNode."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.proto.control_pb2 import RegisterNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    key = serialization.load_ssh_public_key(public_key_file.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    res = c.RegisterNode(RegisterNodeRequest(public_key=public_key_to_bytes(key),
                                             name=node_name(name)))
    if not res.node_id:
        raise RuntimeError(f"the SuperLink did not register {name}'s key")
    return int(res.node_id)


def node_name(name: str) -> str:
    """A SuperNode's name as the SuperLink stores it: `bedside_hub[3]` -> `bedside_hub-3`."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-")[:60]


def online_nodes(c: ControlHttpClient) -> set[int]:
    """`flwr supernode ls`: the ids of the SuperNodes connected now."""
    from flwr.proto.control_pb2 import ListNodesRequest

    res = c.ListNodes(ListNodesRequest())
    return {int(n.node_id) for n in res.nodes_info if n.status == "online"}


def start_run(c: ControlHttpClient, run_config: dict[str, Any]) -> int:
    """`flwr run APP --run-config ...`: the run's id."""
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    data, sha = fab()
    res = c.StartRun(StartRunRequest(fab=fab_to_proto(Fab(sha, data, {})),
                                     override_config=user_config_to_proto(run_config),
                                     federation="", app_spec=""))
    if not res.HasField("run_id"):
        raise RuntimeError("the SuperLink did not start the run")
    return int(res.run_id)


def run_status(c: ControlHttpClient, run_id: int) -> tuple[str, str, str]:
    """`flwr ls --run-id`: (status, sub-status, details), e.g. ("finished", "failed", ...)."""
    from flwr.proto.control_pb2 import ListRunsRequest

    res = c.ListRuns(ListRunsRequest(run_id=run_id))
    run = res.run_dict.get(run_id)
    if run is None:
        return ("unknown", "", "")
    return (run.status.status, run.status.sub_status, run.status.details)


def stop_run(c: ControlHttpClient, run_id: int) -> None:
    """`flwr stop RUN_ID`."""
    from flwr.proto.control_pb2 import StopRunRequest

    c.StopRun(StopRunRequest(run_id=run_id))


def unfinished_runs(c: ControlHttpClient) -> list[int]:
    """`flwr ls`: the ids of the runs not finished yet, oldest first."""
    from flwr.proto.control_pb2 import ListRunsRequest

    res = c.ListRuns(ListRunsRequest())
    return sorted(run_id for run_id, run in res.run_dict.items()
                  if run.status.status != "finished")


def wait_for_run(c: ControlHttpClient, run_id: int, timeout_s: float,
                 interval_s: float) -> tuple[str, str, str] | None:
    """Poll until run `run_id` has finished: its (status, sub-status, details). A status
    request that fails (the SuperLink restarting, a network blip) is asked again; after
    `timeout_s` the run is stopped and None returned."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = run_status(c, run_id)
        except Exception:  # noqa: BLE001  (transport and server errors alike: ask again)
            status = ("", "", "")
        if status[0] == "finished":
            return status
        time.sleep(interval_s)
    stop_run(c, run_id)
    return None
