"""The federation engine (edgeflow.federation) on real Flower processes, all on 127.0.0.1: a
tiny softmax-regression model (float32[1, 8] -> Gemm -> Softmax) trained by clients with
deterministic, separable, non-IID data. Each federation costs tens of seconds: the cases are few
and small."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeflow.federation import (
    ClientSpec,
    DPSpec,
    FederationError,
    FederationResult,
    FederationSpec,
    SiteSpec,
    run_federation,
)

FEATURES, CLASSES = 8, 3

MODULE = textwrap.dedent('''
    """Deterministic, separable, non-IID records and numpy softmax regression."""
    import numpy as np

    FEATURES, CLASSES = 8, 3
    MEANS = np.random.default_rng(7).normal(0.0, 2.0, (CLASSES, FEATURES))


    def samples(instance, count):
        rng = np.random.default_rng(100 + instance)
        mix = np.full(CLASSES, 0.1)
        mix[instance % CLASSES] = 0.8          # each client sees mostly one class
        y = rng.choice(CLASSES, size=60, p=mix / mix.sum())
        x = (MEANS[y] + rng.normal(0.0, 0.5, (len(y), FEATURES))).astype(np.float32)
        return {"x_train": x[:40], "y_train": y[:40].astype(np.int64),
                "x_test": x[40:], "y_test": y[40:].astype(np.int64)}


    def train(weights, x, y, config):
        w = weights["W"].astype(np.float64)
        b = weights["b"].astype(np.float64)
        lr = float(config.get("lr", 0.1))
        loss = 0.0
        for _ in range(int(config.get("epochs", 5))):
            z = x @ w + b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
            g = p
            g[np.arange(len(y)), y] -= 1
            g /= len(y)
            w -= lr * (x.T @ g)
            b -= lr * g.sum(axis=0)
        return {"W": w.astype(np.float32), "b": b.astype(np.float32)}, loss


    def train_faulty(weights, x, y, config):
        """The client whose records are mostly class 0 (instance 0) raises, the others return
        a W of the wrong shape."""
        if np.bincount(y, minlength=CLASSES).argmax() == 0:
            raise ValueError("the ward's data store is offline")
        trained, loss = train(weights, x, y, config)
        return {"W": trained["W"][:, :2].copy(), "b": trained["b"]}, loss
''')


def _model(path: Path) -> Path:
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.normal(0, 0.01, (FEATURES, CLASSES))).astype(np.float32),
                                "W")
    b = numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, CLASSES])],
        initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _spec(tmp: Path, *, sites: list[list[int]], top: str | None = None, rounds: int = 1,
          trainer: str = "train", dp: DPSpec | None = None,
          min_clients: int | None = None) -> FederationSpec:
    (tmp / "code").mkdir(exist_ok=True)
    (tmp / "code" / "tiny_fl.py").write_text(MODULE)
    model = _model(tmp / "tiny.onnx")
    site_specs = tuple(
        SiteSpec(f"ward_server[{k}]" if top else "ward_server",
                 tuple(ClientSpec(f"bedside_hub[{i}]", i) for i in clients))
        for k, clients in enumerate(sites))
    return FederationSpec(
        model=model, trainable=("W", "b"), samples="tiny_fl:samples",
        trainer=f"tiny_fl:{trainer}", code_root=tmp / "code",
        config={"lr": 0.5, "epochs": 5}, sites=site_specs, top=top, rounds=rounds,
        min_clients=min_clients or min(len(s) for s in sites), strategy="fedavg",
        strategy_params={}, dp=dp, output_is_probabilities=True, work_dir=tmp / "out")


def _ours(spec: FederationSpec) -> list[psutil.Process]:
    """Live processes of this federation: this test's descendants, and any process started
    with an FLWR_HOME in its folder (every Flower process and what it starts inherits it, even
    those in sessions of their own) or naming the folder."""
    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                left.append(child)
        except psutil.Error:
            continue
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(p.info["cmdline"] or [])
            home = p.environ().get("FLWR_HOME", "")
        except psutil.Error:
            continue
        if str(spec.work_dir) in cmdline or home.startswith(str(spec.work_dir)):
            left.append(p)
    return left


def test_a_flat_federation_trains_measures_its_links_and_versions_its_model(
        tmp_path: Path) -> None:
    spec = _spec(tmp_path, sites=[[0, 1, 2]], rounds=2)
    events: list[str] = []
    seen: list[int] = []
    result = run_federation(spec, on_event=events.append,
                            on_round=lambda r: seen.append(r.round))
    assert isinstance(result, FederationResult)
    assert seen == [1, 2] and [r.round for r in result.rounds] == [1, 2]
    assert result.rounds[-1].test_accuracy > result.initial_accuracy
    assert result.rounds[-1].test_loss < result.initial_loss
    assert all(r.epsilon is None for r in result.rounds)
    weights = (FEATURES * CLASSES + CLASSES) * 4
    links = json.loads((spec.work_dir / "federation" / "links.json").read_text())["rounds"]
    for r, row in zip(result.rounds, links, strict=True):
        assert set(r.link_bytes) == {f"bedside_hub[{i}]<->ward_server" for i in range(3)}
        for name, nbytes in r.link_bytes.items():
            both = row["links"][name]
            assert nbytes == both["up"] + both["down"] > 0
            assert both["up"] >= weights and both["down"] >= 2 * weights  # train + evaluate
    manifest = json.loads(result.manifest.read_text())
    assert [e["round"] for e in manifest] == [1, 2]
    for entry, r in zip(manifest, result.rounds, strict=True):
        data = (result.manifest.parent / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["version"] == entry["sha256"][:12] == r.version
        assert entry["model"] == "tiny" and r.model_file.name == entry["file"]
        assert entry["test_accuracy"] == r.test_accuracy
    trained = onnx.load(str(result.rounds[-1].model_file))
    assert numpy_helper.to_array(trained.graph.initializer[0]).shape == (FEATURES, CLASSES)
    pki = spec.work_dir / "federation" / "pki"
    assert (pki / "ca.crt").is_file() and len(list((pki / "supernodes").glob("*.pub"))) == 3
    assert any("TLS" in e for e in events)
    nodes = json.loads((spec.work_dir / "federation" / "spec.json").read_text())["nodes"]
    assert sorted(nodes["ward_server"].values()) == [f"bedside_hub[{i}]" for i in range(3)]
    assert not _ours(spec)


def test_a_hierarchy_runs_each_site_as_its_own_federation(tmp_path: Path) -> None:
    spec = _spec(tmp_path, sites=[[0, 1], [2, 3]], top="cloud", rounds=1)
    result = run_federation(spec)
    (r,) = result.rounds
    assert set(r.link_bytes) == {"bedside_hub[0]<->ward_server[0]",
                                 "bedside_hub[1]<->ward_server[0]",
                                 "bedside_hub[2]<->ward_server[1]",
                                 "bedside_hub[3]<->ward_server[1]",
                                 "ward_server[0]<->cloud", "ward_server[1]<->cloud"}
    assert all(n > 0 for n in r.link_bytes.values())
    assert r.test_accuracy > result.initial_accuracy
    relays = spec.work_dir / "federation" / "relays"
    assert (relays / "ward_server-0" / "round1-train-out.npz").is_file()
    assert not _ours(spec)


def test_the_privacy_budget_is_the_prv_accountants_and_grows(tmp_path: Path) -> None:
    from prv_accountant import PRVAccountant
    from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism

    dp = DPSpec(clip=1.0, noise=1.0, delta=1e-5)
    spec = _spec(tmp_path, sites=[[0, 1, 2]], rounds=2, dp=dp, min_clients=2)
    result = run_federation(spec)
    accountant = PRVAccountant(
        prvs=PoissonSubsampledGaussianMechanism(noise_multiplier=1.0, sampling_probability=2 / 3),
        max_self_compositions=2, eps_error=0.01, delta_error=1e-5 / 1000)
    expected = [accountant.compute_epsilon(delta=1e-5, num_self_compositions=[r])[2]
                for r in (1, 2)]
    got = [r.epsilon for r in result.rounds]
    assert got == pytest.approx(expected, rel=1e-9)
    assert got[0] is not None and got[1] is not None and got[1] > got[0] > 0
    manifest = json.loads(result.manifest.read_text())
    assert [e["epsilon"] for e in manifest] == got


def test_a_trainer_that_raises_or_returns_a_wrong_shape_is_named_and_all_stops(
        tmp_path: Path) -> None:
    spec = _spec(tmp_path, sites=[[0, 1]], trainer="train_faulty")
    with pytest.raises(FederationError) as info:
        run_federation(spec)
    first = str(info.value).splitlines()[0]
    assert first.startswith("training round 1: ")
    assert ("bedside_hub[0]: the trainer `tiny_fl:train_faulty` raised ValueError: the ward's "
            "data store is offline") in first
    assert ("bedside_hub[1]: the trainer `tiny_fl:train_faulty` returned `W` of shape [8, 2], "
            "the model's is [8, 3]") in first
    assert not _ours(spec)
    assert not (spec.work_dir / "versions" / "manifest.json").exists()


def test_the_clients_sampled_do_not_depend_on_the_ids_the_superlink_drew() -> None:
    import random

    from edgeflow.federation.app import ordered, sampling_seed

    class Grid:
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids

        def get_node_ids(self) -> list[int]:
            return list(self.ids)

    def sampled(ids: dict[int, int], dp: DPSpec | None) -> list[int]:
        """The instances sampled, 2 of 5, in rounds 1 to 4 (`ids`: node id -> instance)."""
        spec = _fake_spec(dp)
        grid = ordered(Grid(sorted(ids)), ids)  # type: ignore[arg-type]
        out = []
        for rnd in range(1, 5):
            sampling_seed(spec, "ward_server", rnd)
            out += [ids[n] for n in random.sample(list(grid.get_node_ids()), 2)]
        return out

    first = {9000 + 7 * i: i for i in range(5)}
    second = {10**18 - 13 * i: i for i in range(5)}  # other ids, in the opposite order
    assert sampled(first, None) == sampled(second, None) == sampled(first, None)
    assert len(set(sampled(first, None))) > 2  # not the same two clients every round
    dp = DPSpec(clip=1.0, noise=1.0, delta=1e-5)
    draws = {tuple(sampled(first, dp)) for _ in range(5)}
    assert len(draws) > 1  # with differential privacy nobody can predict the draw


def _fake_spec(dp: DPSpec | None) -> FederationSpec:
    return FederationSpec(
        model=Path("m.onnx"), trainable=("W",), samples="m:s", trainer="m:t",
        code_root=Path("."), config={}, sites=(SiteSpec("ward_server", ()),), top=None,
        rounds=1, min_clients=2, strategy="fedavg", strategy_params={}, dp=dp,
        output_is_probabilities=True, work_dir=Path("out"))


def test_an_accountant_that_fails_or_dawdles_reports_infinity_and_never_hangs() -> None:
    import math
    import time

    from edgeflow.federation.privacy import Accountant

    failing = Accountant([(0.02, 1.0)], rounds=3, delta=1e-5)  # the PRV discretisation fails
    assert failing.epsilon(1, wait_s=120) == math.inf
    assert failing.note is not None and "failed" in failing.note
    failing.close()
    slow = Accountant([(0.1, 1.0)], rounds=50, delta=1e-5)  # about 20 s for its first round
    pids = [c.proc.pid for c in slow.children]
    assert pids
    started = time.monotonic()
    assert slow.epsilon(1, wait_s=1.0) == math.inf
    assert time.monotonic() - started < 10 and slow.note is not None and "took over" in slow.note
    assert slow.epsilon(2, wait_s=1.0) == math.inf
    slow.close()
    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_a_supernode_whose_key_is_not_registered_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeflow.federation import control

    register = control.register_node

    def only_the_first(c: Any, public_key: Path, name: str) -> int:
        return 1 if name == "bedside_hub[1]" else register(c, public_key, name)

    monkeypatch.setattr(control, "register_node", only_the_first)
    spec = _spec(tmp_path, sites=[[0, 1]])
    with pytest.raises(FederationError) as info:
        run_federation(spec)
    message = str(info.value)
    assert message.startswith("the SuperNode of bedside_hub[1] (instance=1) exited")
    assert "Failed to activate SuperNode" in message
    assert not _ours(spec)
