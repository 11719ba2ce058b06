"""`unit.json` as the typed `UnitConfig`: every unit.json of the golden bundles round-trips byte for
byte, invalid configs are refused (by the model and by its JSON schema alike), any valid config
round-trips, and the schema in docs/bundles.md is generated (EDGEFLOW_UPDATE_GOLDENS=1 rewrites
the block between the markers)."""

from __future__ import annotations

import ast
import copy
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeflow import unit_config
from edgeflow.unit_config import PART_OF_KIND, ModelSpec, OperatorSpec, UnitConfig, schema_json
from tests.conftest import FIXTURES, ROOT, assert_golden

BEGIN = "<!-- unit-config-schema:begin -->"
END = "<!-- unit-config-schema:end -->"
DOC = ROOT / "docs" / "bundles.md"
SCHEMA = jsonschema.Draft202012Validator(json.loads(schema_json()))


def _bundle_files(target: str) -> dict[str, str]:
    """The files of a golden bundle, split at the `==> PATH` headers test_bundles writes."""
    text = (FIXTURES / "bundles" / f"smart_city_traffic.{target}.txt").read_text(encoding="utf-8")
    chunks = re.split(r"^==> ", text, flags=re.MULTILINE)
    assert chunks[0] == "" and "".join("==> " + c for c in chunks[1:]) == text
    return dict(c.partition("\n")[::2] for c in chunks[1:])


def _golden_unit_configs() -> dict[str, str]:
    """Every unit.json of both golden bundles: compose/DEVICE/UNIT.json files, a shared
    device's k8s/instances/DEVICE-i/UNIT.json files, and the `UNIT.json` entries of each single
    device's ConfigMap in k8s/DEVICE.yaml."""
    out: dict[str, str] = {}
    for path, text in _bundle_files("compose").items():
        if path.startswith("compose/") and path.endswith(".json"):
            out[path] = text
    for path, text in _bundle_files("k8s").items():
        if path.startswith("k8s/instances/") and path.endswith(".json") and \
                json.loads(text)["kind"] in ("operator", "model", "head", "tail"):
            out[path] = text
        elif path.startswith("k8s/") and path.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc and doc["kind"] == "ConfigMap":
                    for key, config in doc["data"].items():
                        if key.endswith(".json") and json.loads(config)["kind"] in \
                                ("operator", "model", "head", "tail"):
                            out[f"{path}#{key}"] = config
    return out


GOLDEN = _golden_unit_configs()


def test_the_goldens_hold_unit_configs_of_both_targets_and_kinds() -> None:
    compose = [p for p in GOLDEN if p.startswith("compose/")]
    k8s = [p for p in GOLDEN if p.startswith("k8s/")]
    assert len(compose) == len(k8s) == 36  # 12 replicas x (resize, detector, count)
    kinds = {json.loads(text)["kind"] for text in GOLDEN.values()}
    assert kinds == {"operator", "model"}


@pytest.mark.parametrize("path", sorted(GOLDEN))
def test_golden_unit_json_round_trips_byte_for_byte(path: str) -> None:
    text = GOLDEN[path]
    config = UnitConfig.model_validate_json(text)
    assert config.to_json() == text
    assert UnitConfig.from_json(text.encode()) == config
    assert UnitConfig.model_validate(json.loads(text)).to_json() == text  # the emitter's path
    SCHEMA.validate(json.loads(text))


def test_load_reads_a_file(tmp_path: Path) -> None:
    text = next(iter(GOLDEN.values()))
    (tmp_path / "unit.json").write_text(text, encoding="utf-8")
    assert UnitConfig.load(tmp_path / "unit.json").to_json() == text
    assert UnitConfig.load(str(tmp_path / "unit.json")) == UnitConfig.from_json(text)


def _golden(kind: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(next(t for t in GOLDEN.values()
                                              if json.loads(t)["kind"] == kind))
    return config


def _legacy_json(config: dict[str, Any]) -> str:
    """What edgeflow.emit's dict-building `_unit_config` wrote for this dict."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("work", [2e9, 1e6, 20000000.0, 1e16, 1.5e-7, 0.1, 123456789.123, 0.0,
                                  5e-324, 1.7976931348623157e308])
def test_floats_are_written_as_json_dumps_writes_them(work: float) -> None:
    config = _golden("operator")
    config["operator"]["work_flop"] = work
    text = _legacy_json(config)
    assert UnitConfig.model_validate(config).to_json() == text
    assert UnitConfig.from_json(text).to_json() == text


def _split(kind: str) -> dict[str, Any]:
    config = _golden("model")
    config.update(kind=kind, unit=f"vehicle_detector.{kind}")
    config["model"].update(part=PART_OF_KIND[kind], cut=["/backbone/Relu_3_output_0"])
    return config


@pytest.mark.parametrize("kind", ["head", "tail"])
def test_split_halves_round_trip(kind: str) -> None:
    text = _legacy_json(_split(kind))
    assert UnitConfig.from_json(text).to_json() == text
    SCHEMA.validate(json.loads(text))


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.pop(key)


def _swap(config: dict[str, Any], section: str) -> None:
    config.pop("model" if section == "operator" else "operator")
    config[section] = _golden(section)[section]


def _adapt_section() -> dict[str, Any]:
    cut = {"id": "85fa5261e1", "cut": ["t"], "file": "/m/h.onnx", "sha256": "0" * 64,
           "transfer_bytes": 100, "head_s": 0.001, "tail_s": 0.0, "whole": False}
    return {"cuts": [cut], "bands": [{"from_bps": 1e6, "to_bps": 1e9, "cut": cut["id"]}],
            "start": cut["id"], "latency_s": 0.001, "margin": 0.1, "hold_s": 1.0,
            "feedback": "edgeflow/a/r0/m.tail/feedback", "feedback_interval_s": 0.2,
            "outage_after_s": 1.0, "buffer_frames": 0, "bypass": []}


def test_a_split_half_may_adapt() -> None:
    for kind in ("head", "tail"):
        config = _split(kind)
        config["adapt"] = _adapt_section()
        SCHEMA.validate(config)
        assert UnitConfig.from_json(json.dumps(config)).adapt is not None
    with pytest.raises(ValidationError, match="not among"):  # (beyond the schema's reach)
        UnitConfig.from_json(json.dumps(_split("head") | {"adapt": _adapt_section() | {
            "start": "0123456789"}}))


INVALID: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "operator kind that adapts": ("operator", lambda c: c.update(adapt=_adapt_section())),
    "whole model that adapts": ("model", lambda c: c.update(adapt=_adapt_section())),
    "null adapt": ("head", lambda c: c.update(adapt=None)),
    "operator kind with a model section": ("operator", lambda c: c.update(model=_golden("model")
                                                                          ["model"])),
    "operator kind with only a model section": ("operator", lambda c: _swap(c, "model")),
    "model kind with an operator section": ("model", lambda c: c.update(
        operator=_golden("operator")["operator"])),
    "model kind without a section": ("model", _without("model")),
    "null instead of absent": ("operator", lambda c: c.update(model=None)),
    "unknown key": ("operator", lambda c: c.update(priority=1)),
    "unknown nested key": ("model", lambda c: c["broker"]["tls"].update(password="x")),
    "missing broker": ("operator", _without("broker")),
    "missing subscribe": ("model", _without("subscribe")),
    "part mismatch": ("model", lambda c: c["model"].update(part="head", cut=["t"])),
    "head running the whole model": ("head", lambda c: c["model"].update(part="whole", cut=[])),
    "tail running the head": ("tail", lambda c: c["model"].update(part="head")),
    "whole model with a cut": ("model", lambda c: c["model"].update(cut=["t"])),
    "split half without a cut": ("head", lambda c: c["model"].update(cut=[])),
    "unknown kind": ("operator", lambda c: c.update(kind="sensor")),
    "port as a string": ("model", lambda c: c["broker"].update(port="8883")),
    "port out of range": ("model", lambda c: c["broker"].update(port=70000)),
    "replica as a bool": ("model", lambda c: c.update(replica=False)),
    "negative replica": ("model", lambda c: c.update(replica=-1)),
    "negative work": ("operator", lambda c: c["operator"].update(work_flop=-1.0)),
    "work as a string": ("operator", lambda c: c["operator"].update(work_flop="1e6")),
    "short sha256": ("model", lambda c: c["model"].update(sha256="5d3e")),
    "uppercase sha256": ("model", lambda c: c["model"].update(sha256=c["model"]["sha256"].upper())),
    "topic that is not a string": ("model", lambda c: c["publish"].append(7)),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_configs_are_refused_by_the_model_and_the_schema(name: str) -> None:
    kind, mutate = INVALID[name]
    config = _split(kind) if kind in ("head", "tail") else copy.deepcopy(_golden(kind))
    SCHEMA.validate(config)
    mutate(config)
    with pytest.raises(ValidationError):
        UnitConfig.from_json(json.dumps(config))
    with pytest.raises(jsonschema.ValidationError):
        SCHEMA.validate(config)


def test_non_finite_work_is_refused() -> None:
    config = _golden("operator")
    for work in (float("inf"), float("nan")):
        config["operator"]["work_flop"] = work
        with pytest.raises(ValidationError):
            UnitConfig.model_validate(config)
        with pytest.raises(ValidationError):
            UnitConfig.from_json(json.dumps(config))  # `Infinity`, `NaN`: not JSON anyway


def test_an_integral_float_is_no_replica() -> None:
    config = _golden("model")
    config["replica"] = 0.0  # the schema's `integer` admits 0.0, the model does not
    with pytest.raises(ValidationError):
        UnitConfig.from_json(json.dumps(config))


def test_none_is_absent_when_built_in_python() -> None:
    config = _golden("operator")
    built = UnitConfig.model_validate({**config, "model": None})
    assert built.model is None and built.to_json() == _legacy_json(config)


def test_configs_are_frozen() -> None:
    config = UnitConfig.from_json(next(iter(GOLDEN.values())))
    with pytest.raises(ValidationError):
        config.replica = 3


def test_the_module_imports_only_pydantic_and_the_standard_library() -> None:
    tree = ast.parse(Path(unit_config.__file__).read_text(encoding="utf-8"))
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    assert roots - set(sys.stdlib_module_names) == {"pydantic"}


# Any valid config, drawn as the dict the emitter builds: UnitConfig writes it exactly as
# json.dumps did, and reading that back gives an equal object that writes the same bytes.

_text = st.text(max_size=12)


@st.composite
def unit_dicts(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["operator", "model", "head", "tail"]))
    config: dict[str, Any] = {
        "app": draw(_text), "unit": draw(_text), "replica": draw(st.integers(0, 2**63)),
        "kind": kind, "device": draw(_text),
        "broker": {"host": draw(_text), "port": draw(st.integers(1, 65535)),
                   "client_id": draw(_text),
                   "tls": {"ca": draw(_text), "cert": draw(_text), "key": draw(_text)}},
        "subscribe": draw(st.lists(_text, max_size=3)),
        "publish": draw(st.lists(_text, max_size=3)),
        "device_compute_flops": draw(st.floats(min_value=1, max_value=1e18)),
        "threads": draw(st.integers(1, 64)), "queue": draw(st.integers(1, 10**6)),
        "join_timeout_s": draw(st.floats(min_value=1e-3, max_value=1e3)),
        "metrics_port": draw(st.integers(1, 65535)),
    }
    if draw(st.booleans()):
        config["emulate_compute_s"] = draw(st.floats(min_value=0, max_value=1e3))
    if kind == "operator":
        config["operator"] = {
            "work_flop": draw(st.floats(min_value=0, allow_nan=False, allow_infinity=False)),
            "emits": draw(_text)}
        if draw(st.booleans()):
            config["operator"]["impl"] = draw(st.from_regex(
                r"[A-Za-z_][A-Za-z0-9_.]{0,10}:[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True))
    else:
        part = PART_OF_KIND[kind]
        config["model"] = {
            "file": draw(_text), "part": part,
            "sha256": draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
            "cut": [] if part == "whole" else draw(st.lists(_text, min_size=1, max_size=3))}
    return config


@given(unit_dicts())
def test_any_valid_config_round_trips(config: dict[str, Any]) -> None:
    built = UnitConfig.model_validate(config)
    text = built.to_json()
    assert text == _legacy_json(config)
    again = UnitConfig.from_json(text)
    assert again == built and again.to_json() == text
    SCHEMA.validate(json.loads(text))


def test_sections_can_be_built_as_objects() -> None:
    op = _golden("operator")
    built = UnitConfig(**{**op, "operator": OperatorSpec(**op["operator"])})
    assert built.to_json() == _legacy_json(op)
    model = _split("tail")
    built = UnitConfig(**{**model, "model": ModelSpec(**model["model"])})
    assert built.to_json() == _legacy_json(model)


# docs/bundles.md carries the schema between the markers, generated: it cannot drift.

def render_doc(doc: str) -> str:
    if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
        pytest.fail(f"{DOC.name} needs one `{BEGIN}` line before one `{END}` line")
    head, rest = doc.split(BEGIN + "\n")
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n```json\n{schema_json()}```\n{END}{tail}"


def test_schema_in_the_docs_is_current() -> None:
    assert_golden(DOC, render_doc(DOC.read_text(encoding="utf-8")))
