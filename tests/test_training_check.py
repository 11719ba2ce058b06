"""The `training` block and a model's `rollout`: read into the IR, and what `check` proves about
a federated training (privacy of the updates, the round's traffic and the clients' resources),
checked against figures computed here independently."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow import check_text, ir
from edgeflow.semantics.training import FLOWER_NODE_MEMORY_BYTES, sites
from tests.conftest import ROOT

VITALS = ROOT / "examples" / "models" / "vitals.onnx"
HEAD = ("fc1_w", "fc1_b", "fc2_w", "fc2_b")


def _app(tmp: Path, training: str = "", *, hubs: int = 4, servers: int = 1,
         bandwidth: str = "200 Mbps", memory: str = "2 GiB", updates: str = "",
         data_labels: str = "[phi]", extra: str = "") -> str:
    (tmp / "vitals.onnx").write_bytes(VITALS.read_bytes())
    (tmp / "fl.py").write_text("def samples(i, n): ...\ndef train(w, x, y, c): ...\n")
    block = training or """
training learn {
  model      = risk
  clients    = hub
  data       = patch
  samples    = "fl:samples"
  trainer    = "fl:train"
  examples   = 100
  aggregate  = [server]
  round_time = 60 s
}"""
    return f"""app ward {{ objective = minimize(latency) }}
device hub {{ tier = edge, count = {hubs}, compute = 0.2 TFLOPS, memory = {memory} }}
device server {{ tier = fog, count = {servers}, compute = 10 TFLOPS, memory = 64 GiB }}
device cloud {{ tier = cloud, compute = 100 TFLOPS, memory = 256 GiB }}
link hub <-> server {{ bandwidth = {bandwidth}, latency = 3 ms }}
link server <-> cloud {{ bandwidth = 500 Mbps, latency = 20 ms }}
sensor patch {{ on = hub, rate = 4 Hz, emits = float32[1, 6, 250], privacy = {data_labels} }}
actuator pager {{ on = hub }}
model risk {{ source = "vitals.onnx", inputs = {{ window = float32[1, 6, 250] }} }}
pipeline alert {{ flow = patch -> risk -> pager }}
privacy phi {{ allow = [edge, fog] {updates} }}
{extra}
{block}
"""


def _check(tmp: Path, text: str) -> tuple[ir.Program | None, list[str]]:
    path = tmp / "app.ef"
    path.write_text(text)
    result = check_text(text, str(path))
    return result.program, [d.code for d in result.diagnostics]


def _initializer_bytes(names: tuple[str, ...]) -> int:
    graph = onnx.load(str(VITALS)).graph
    return sum(4 * math.prod(i.dims) for i in graph.initializer if i.name in names)


def test_the_example_trains_its_classifier_and_rolls_out_in_waves() -> None:
    result = check_text((ROOT / "examples" / "healthcare_vitals.ef").read_text(),
                        str(ROOT / "examples" / "healthcare_vitals.ef"))
    assert [d.code for d in result.diagnostics] == []
    program = result.program
    assert program is not None
    t = program.trainings["ward_risk"]
    assert (t.model, t.clients, t.data, t.aggregate) == \
        ("risk_classifier", "bedside_hub", "vitals_patch", ("ward_server",))
    assert t.trainable == HEAD and t.epochs == 10 and t.round_time_s == 120
    assert t.dp == ir.DifferentialPrivacy(clip=10, noise=0.1, delta=1e-5)
    assert t.config == {"lr": 0.02} and t.strategy.name == "fedavg"
    rollout = program.models["risk_classifier"].rollout
    assert rollout is not None and rollout.waves == (0.25, 0.5, 1.0) and rollout.hold_s == 5
    assert rollout.health == (ir.Health(metric="latency_p95", op="<", bound=0.1),)
    assert program.privacy["phi"].update_tiers() == (ir.Tier.EDGE, ir.Tier.FOG)


def test_without_trainable_every_float_initializer_is_trained(tmp_path: Path) -> None:
    program, codes = _check(tmp_path, _app(tmp_path))
    assert codes == [] and program is not None
    graph = onnx.load(str(VITALS)).graph
    assert program.trainings["learn"].trainable == tuple(i.name for i in graph.initializer)


@pytest.mark.parametrize("strategy, params", [
    ("fedavg", {}), ("fedmedian", {}), ("fedprox", {"mu": 0.01}), ("fedprox(mu = 0.5)", {"mu": 0.5}),
    ("trimmed_mean(beta = 0.1)", {"beta": 0.1}), ("krum(byzantine = 0)", {"byzantine": 0.0}),
])
def test_strategies(tmp_path: Path, strategy: str, params: dict[str, float]) -> None:
    text = _app(tmp_path).replace("round_time = 60 s", f"round_time = 60 s\n  strategy = {strategy}")
    program, codes = _check(tmp_path, text)
    assert codes == [] and program is not None
    assert program.trainings["learn"].strategy.params == params


@pytest.mark.parametrize("value, code", [
    ("strategy = fedsgd", "E0305"), ("strategy = trimmed_mean(beta = 0.5)", "E0303"),
    ("strategy = krum(byzantine = 1.5)", "E0303"), ("strategy = fedprox(nu = 1)", "E0201"),
    ("privacy = dp(noise = 1)", "E0202"), ("privacy = dp(clip = 0, noise = 1)", "E0303"),
    ("privacy = dp(clip = 1, noise = 1, delta = 1)", "E0303"),
    ("privacy = [phi]", "E0204"), ("config = { lr = 1 ms }", "E0204"),
    ('samples = "not a callable"', "E0303"), ("trainable = []", "E0204"),
    ("every = 5", "E0302"), ("rounds = 0", "E0303"),
])
def test_bad_values(tmp_path: Path, value: str, code: str) -> None:
    key = value.split(" = ")[0]
    text = "\n".join(line for line in _app(tmp_path).splitlines()
                     if not line.strip().startswith(f"{key} "))
    text = text.replace("round_time = 60 s", f"round_time = 60 s\n  {value}")
    _, codes = _check(tmp_path, text)
    assert code in codes


@pytest.mark.parametrize("rollout, code", [
    ("{ waves = [0.5, 0.25, 1] }", "E0303"), ("{ waves = [0.5] }", "E0303"),
    ("{ waves = [1], health = [latency_p95 < 50] }", "E0302"),
    ("{ waves = [1], health = [jitter < 5 ms] }", "E0305"),
    ("{ waves = [1], health = [drops < 2] }", "E0303"), ("{ health = [drops < 0.1] }", "E0202"),
])
def test_bad_rollouts(tmp_path: Path, rollout: str, code: str) -> None:
    text = _app(tmp_path).replace('inputs = { window = float32[1, 6, 250] } }',
                                  f'inputs = {{ window = float32[1, 6, 250] }}, rollout = {rollout} }}')
    _, codes = _check(tmp_path, text)
    assert code in codes


def test_check_never_imports_the_trainer(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise SystemExit('imported')\n")
    text = _app(tmp_path).replace('"fl:train"', '"boom:train"')
    _, codes = _check(tmp_path, text)
    assert codes == []
    missing = _app(tmp_path).replace('"fl:train"', '"nowhere:train"')
    assert _check(tmp_path, missing)[1] == ["W0608"]


def test_a_store_carries_the_labels_its_flows_bring(tmp_path: Path) -> None:
    """A store as the data: its labels are the sensors' minus what operators remove."""
    extra = """store records { on = hub }
operator strip { work = 1 MFLOP, emits = float32[1, 6, 250], removes = [phi] }
pipeline keep { flow = patch -> records }"""
    text = _app(tmp_path, extra=extra).replace("data       = patch", "data       = records") \
        .replace("aggregate  = [server]", "aggregate  = [server, cloud]")
    assert "E1303" in _check(tmp_path, text)[1]
    stripped = text.replace("flow = patch -> records", "flow = patch -> strip -> records")
    assert _check(tmp_path, stripped)[1] == []


def test_updates_may_go_further_than_the_data_with_dp(tmp_path: Path) -> None:
    updates = ", updates = { allow = [edge, fog, cloud], require = dp }"
    text = _app(tmp_path, updates=updates).replace("aggregate  = [server]",
                                                   "aggregate  = [server, cloud]")
    assert _check(tmp_path, text)[1] == ["E1304"]
    with_dp = text.replace("round_time = 60 s", "round_time = 60 s\n  privacy = dp(clip = 1, noise = 1)")
    assert _check(tmp_path, with_dp)[1] == []


def test_one_tier_of_several_aggregators_is_refused(tmp_path: Path) -> None:
    """Two servers, nothing above them: two federations nobody combines (the runner and the
    bundles run one): E1307, pointing at a top tier."""
    _, codes = _check(tmp_path, _app(tmp_path, servers=2))
    assert codes == ["E1307"]
    text = _app(tmp_path, servers=2, data_labels="[]").replace(
        "aggregate  = [server]", "aggregate  = [server, cloud]")
    assert _check(tmp_path, text)[1] == ["W0702"]  # `phi` now unused: a warning only


@given(n=st.integers(1, 60), m=st.integers(1, 60))
def test_sites_partition_the_clients(n: int, m: int) -> None:
    clients = ir.Device.model_construct(name="c", count=n)
    first = ir.Device.model_construct(name="a", count=m)
    found = sites(clients, first)
    if m != 1 and n % m:
        assert found is None
        return
    assert found is not None
    members = [c for s in found for c in s.clients]
    assert sorted(members) == sorted(clients.instances())
    assert len({len(s.clients) for s in found}) == 1
    assert len({s.aggregator for s in found}) == len(found) == (1 if m == 1 else m)
    if m == n:  # instance i to instance i, as the links pair them
        assert all(s.clients == (f"c[{i}]",) for i, s in enumerate(found)) or n == 1


@settings(max_examples=25, deadline=None)
@given(hubs=st.integers(1, 24), mbps=st.floats(0.001, 5.0), slack=st.floats(0.5, 1.5))
def test_the_round_time_bound_is_exact(tmp_path_factory: pytest.TempPathFactory, hubs: int,
                                       mbps: float, slack: float) -> None:
    """E1305 fires exactly when the round computed here, independently, exceeds round_time:
    every hub has its own link to the one server (one pair per hub), the head's bytes go
    down and up, the training is 3 forward passes per example."""
    tmp = tmp_path_factory.mktemp("round")
    update = _initializer_bytes(HEAD)
    forward = 2 * (32 * 6 * 7 * 125 + 64 * 32 * 5 * 63 + 64 * 32 + 32 * 4)  # MACs x 2, + small
    from edgeflow.cost import model_cost

    program, _ = _check(tmp, _app(tmp))
    assert program is not None
    work = model_cost(program.models["risk"]).work
    assert work == pytest.approx(forward, rel=0.05)
    train_s = 3 * work * 100 / 0.2e12
    one_way = update * 8 / (mbps * 1e6) + 0.003
    need = 2 * one_way + train_s
    round_time = need * slack
    text = _app(tmp, hubs=hubs, bandwidth=f"{mbps!r} Mbps").replace(
        "round_time = 60 s", f"round_time = {round_time!r} s\n  trainable = [{', '.join(HEAD)}]")
    codes = _check(tmp, text)[1]
    if abs(slack - 1) > 1e-6:
        assert ("E1305" in codes) == (slack < 1), (need, round_time, codes)


def test_a_shared_link_carries_every_clients_update(tmp_path: Path) -> None:
    """Hubs behind one gateway: the gateway's link to the server carries all their bytes."""
    text = _app(tmp_path, hubs=8).replace(
        "link hub <-> server { bandwidth = 200 Mbps, latency = 3 ms }",
        "device gw { tier = edge, compute = 1 TFLOPS, memory = 4 GiB }\n"
        "link hub <-> gw { bandwidth = 1 Gbps, latency = 0 ms }\n"
        "link gw <-> server { bandwidth = 1 Mbps, latency = 0 ms }")
    update = _initializer_bytes(tuple(i.name for i in onnx.load(str(VITALS)).graph.initializer))
    shared = 8 * update * 8 / 1e6  # seconds one way on the gateway's link
    ok = text.replace("round_time = 60 s", f"round_time = {2 * shared * 1.05 + 0.01!r} s")
    short = text.replace("round_time = 60 s", f"round_time = {2 * shared * 0.9!r} s")
    assert "E1305" not in _check(tmp_path, ok)[1]
    assert "E1305" in _check(tmp_path, short)[1]


def test_memory_counts_flower_and_the_batch(tmp_path: Path) -> None:
    just = FLOWER_NODE_MEMORY_BYTES + 10 * 2**20
    codes = _check(tmp_path, _app(tmp_path, memory=f"{just} B"))[1]
    assert codes == []
    big_batch = _app(tmp_path, memory=f"{just} B").replace(
        "round_time = 60 s", "round_time = 60 s\n  batch = 10000")
    assert _check(tmp_path, big_batch)[1] == ["E1306"]


def test_dp_needs_a_mean_and_krum_enough_clients(tmp_path: Path) -> None:
    dp = "round_time = 60 s\n  privacy = dp(clip = 1, noise = 1)\n  strategy = "
    for strategy, code in (("fedmedian", "E0305"), ("krum(byzantine = 0)", "E0305"),
                           ("fedprox(mu = 0.1)", None)):
        codes = _check(tmp_path, _app(tmp_path).replace("round_time = 60 s", dp + strategy))[1]
        assert codes == ([code] if code else [])
    # krum with f byzantine clients needs 2f + 3 per round: 4 hubs allow f = 0, not f = 1
    krum = "round_time = 60 s\n  strategy = krum(byzantine = {})"
    assert _check(tmp_path, _app(tmp_path).replace("round_time = 60 s", krum.format(0)))[1] == []
    assert _check(tmp_path, _app(tmp_path).replace("round_time = 60 s",
                                                   krum.format(1)))[1] == ["E0303"]


@pytest.mark.parametrize("aggregate", ["[]", "[hub]",
                                       "[server, cloud, hub]"])
def test_a_malformed_hierarchy_is_reported_not_a_crash(tmp_path: Path, aggregate: str) -> None:
    text = _app(tmp_path).replace("aggregate  = [server]", f"aggregate  = {aggregate}")
    assert "E1307" in _check(tmp_path, text)[1]
