"""A corpus of realistic mistakes, each with the first diagnostic `edgeflow check` must give it, and
properties that make every suggestion safe (issue 15).

The corpus has two parts:

- `MUTATIONS`: a mistake made in one of the examples, as a table of (example, old text, new text,
  code, message fragment, help fragment). The first occurrence of the old text is replaced; the
  help fragment is None when the diagnostic must have no help.
- `tests/fixtures/mistakes/*.ef`: hand-written programs (foreign syntax, missing pieces, dataflow
  mistakes), each starting with `# expect: CODE`, `# message: FRAGMENT` and `# help: FRAGMENT`
  (`-` for no help).

"First diagnostic" is the first error in source order (the first warning when there is no error):
warnings such as "declared but not used" may stand before it and are true of the program.

Every concrete edit a help proposes is applied, and must remove the diagnostic it was proposed
for. A help is a concrete edit when it says "did you mean `X`?" or "write `X`" (without `...`): X
replaces the text under the diagnostic's caret (for a key, "did you mean" is the edit; "write
`key = value`" only shows the value kept).

Properties (Hypothesis, derandomised, bounded):

- no unit suggestion changes a value's dimension or magnitude: for random numbers and random unit
  misspellings (case changes, dropped, doubled and extra letters, `/s` suffixes, SI prefixes), a
  rewrite `N UNIT` is always a unit of the key's dimension, and its SI value is the user's intent
  wherever the intent is unambiguous (`INTENTS` below is an independent table of what spellings
  mean; `_intent` says when a misspelling still means one thing);
- applying a concrete edit removes that diagnostic;
- lists of expected tokens are never cut short (`...`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeflow.api import CheckResult, check_text
from edgeflow.diagnostics import Diagnostic, Severity
from edgeflow.syntax.units import (
    BANDWIDTH,
    COMPUTE,
    COST_DATA,
    COST_RATE,
    POWER,
    RATE,
    SIZE,
    TIME,
    UNITS,
    WORK,
    Dimension,
    read_unit,
    suggest_unit,
    unit_advice,
)
from tests.conftest import FIXTURES, ROOT
from tests.test_fuzz import mutated_example

EXAMPLES = ROOT / "examples"
MISTAKES = FIXTURES / "mistakes"
REF, AR, AV, HC, SC = ("reference.ef", "ar_assist.ef", "autonomous_vehicle.ef",
                       "healthcare_vitals.ef", "smart_city_traffic.ef")

# (example, old text, new text, code, message fragment, help fragment or None for no help)
MUTATIONS: list[tuple[str, str, str, str, str, str | None]] = [
    # -- syntax from other languages
    (REF, "# -- Hardware inventory", "// -- Hardware inventory", "E0002",
     "`//` does not start a comment", "a comment runs from `#` to the end of the line: write `#`"),
    (AR, "# Augmented-reality", "// Augmented-reality", "E0002", "`//` does not start a comment",
     "write `#`"),
    (SC, "# -- Privacy", "/* -- Privacy */", "E0002", "`/*` does not start a comment",
     "start every line of it with `#`"),
    (REF, "camera -> normalize", "camera => normalize", "E0001", "expected `->`, found `=>`",
     "the steps of a flow are joined with `->`: write `->`"),
    (AV, "lidar -> downsample", "lidar → downsample", "E0002", "invalid character `→`",
     "joined with `->`: write `->`"),
    (HC, "flow = vitals_patch -> deidentify", "flow => vitals_patch -> deidentify", "E0001",
     "expected a value, found `=>`", "entries are written `key = value`: write `=`"),
    (HC, "tier    = fog", "tier:    fog", "E0002", "invalid character `:`",
     "entries are written `key = value`: write `=`"),
    (SC, "rate    = 15 Hz", "rate    = 15 Hz;", "E0002", "invalid character `;`",
     "entries are separated by commas or new lines: write `,`"),
    (REF, "actuator reject_arm { on = line_gw }", "actuator reject_arm { on = line_gw };",
     "E0002", "invalid character `;`", "declarations need no `;` after them: remove it"),
    (AR, "link headset <-> edge_gpu", "link headset -> edge_gpu", "E0001",
     "expected `<->`, found `->`", "a link joins two devices with `<->`: write `<->`"),
    (REF, '"Reject defective parts within 50 ms of the camera frame"', "'Reject defective parts'",
     "E0002", "strings are written in double quotes", 'write `"Reject defective parts"`'),
    (AV, "device mec_node {", "device mec-node {", "E0002", "invalid character `-`",
     "with `_` between words: write `_`"),
    # -- misspelt keywords and syntax slips
    (REF, "pipeline inspect", "pipline inspect", "E0001",
     "expected a declaration, found `pipline`", "did you mean `pipeline`?"),
    (AV, "device car {", "Device car {", "E0001", "found `Device`", "did you mean `device`?"),
    (HC, "sensor vitals_patch", "sensors vitals_patch", "E0001", "found `sensors`",
     "did you mean `sensor`?"),
    (SC, "compute = 30 TFLOPS", "compute 30 TFLOPS", "E0001", "expected `=`, found `30 TFLOPS`",
     "write entries as `key = value`"),
    (REF, "actuator reject_arm { on = line_gw }", "actuator reject_arm { on = line_gw", "E0003",
     "unexpected end of declaration", None),
    (AR, "privacy = [bystanders]", "privacy = [bystanders", "E0001",
     "expected `,` or `]`, found `}`", None),
    # -- names
    (REF, "on      = line_gw            #", "on      = line_gws           #", "E0101",
     "no device named `line_gws`", "did you mean `line_gw`?"),
    (AV, "-> downsample -> scenario_log", "-> downsample -> scenario_logs", "E0101",
     "named `scenario_logs`", "did you mean `scenario_log`?"),
    (HC, "actuator nurse_pager { on = ward_server }", "actuator nurse_pager { on = ward_sever }",
     "E0101", "no device named `ward_sever`", "did you mean `ward_server`?"),
    (SC, "store traffic_stats { on = city_cloud }", "store traffic_stats { on = traffic_cam }",
     "E0103", "`traffic_cam` is a sensor, not a device", None),
    (AR, "store session_archive", "store display", "E0102", "the name `display` is declared twice",
     "rename one of them"),
    (AV, "device car {", "device Car {", "E0105", "`Car` is not a valid name", "write `car`"),
    (REF, "camera -> blur_faces -> archive", "camera -> line_gw -> archive", "E0503",
     "`line_gw` cannot be a step in the middle of a flow", "operators or models"),
    # -- keys
    (REF, "tier    = fog", "teir    = fog", "E0201", "device `plant_server` has no key `teir`",
     "did you mean `tier`? write `tier = fog`"),
    (AR, "compute = 60 TFLOPS", "compte = 60 TFLOPS", "E0201", "has no key `compte`",
     "did you mean `compute`? write `compute = 60 TFLOPS`"),
    (AV, "memory  = 128 GiB", "mem     = 128 GiB", "E0201", "has no key `mem`",
     "write `memory = 128 GiB`"),
    (HC, "bandwidth = 200 Mbps", "bandwith = 200 Mbps", "E0201", "has no key `bandwith`",
     "write `bandwidth = 200 Mbps`"),
    (SC, "tier    = edge", "Tier    = edge", "E0201", "has no key `Tier`",
     "did you mean `tier`? write `tier = edge`"),
    (AR, "latency = 15 ms", "latancy = 15 ms", "E0201", "has no key `latancy`",
     "write `latency = 15 ms`"),
    (SC, "emits   = uint8[1, 3, 640, 640]", "output  = uint8[1, 3, 640, 640]", "E0202",
     "sensor `traffic_cam` lacks required key `emits`", "add `emits = "),
    (REF, "memory  = 64 GiB", "memory  = 64 GiB\n  memory  = 32 GiB", "E0203",
     "key `memory` is given twice", "remove one of them"),
    (REF, "  emits   = uint8[1, 3, 320, 320]\n  privacy", "  privacy", "E0202",
     "sensor `camera` lacks required key `emits`", "add `emits = "),
    (AV, "{ bandwidth = 100 Mbps, latency = 8 ms }", "{ bandwidth = 100 Mbps }", "E0202",
     "link `car <-> mec_node` lacks required key `latency`", "add `latency = "),
    (HC, "  compute = 10 TFLOPS\n", "", "E0202", "device `ward_server` lacks required key `compute`",
     "add `compute = "),
    # -- units and values
    (REF, "bandwidth = 1 Gbps", "bandwidth = 0.25 MB/s", "E0301", "unknown unit `MB/s`",
     ("`MB/s` is bytes per second and a bandwidth is in bits per second: write `2 Mbps` "
      "(0.25 MB/s × 8)")),
    (REF, "work  = 0.01 GFLOP", "work  = 50 KFLOP", "E0301", "unknown unit `KFLOP`",
     "kilo is not a unit prefix of work here: write `0.05 MFLOP`"),
    (REF, "slo  = latency < 50 ms", "slo  = latency < 10", "E0302",
     "`latency` needs a time unit", "units are required: write one of `us`, `ms` or `s`"),
    (AR, "latency = 2 ms", "latency = 2 msec", "E0301", "unknown unit `msec`",
     "did you mean `ms`?"),
    (HC, "rate    = 4 Hz", "rate    = 4 hz", "E0301", "unknown unit `hz`", "did you mean `Hz`?"),
    (SC, "memory  = 8 GiB", "memory  = 8 gib", "E0301", "unknown unit `gib`",
     "`gib` can be read more than one way"),
    (AV, "bandwidth = 100 Mbps", "bandwidth = 100 mbps", "E0301", "unknown unit `mbps`",
     "`bps`, `Kbps`, `Mbps` or `Gbps` (bits per second) (units are case-sensitive)"),
    (AR, "compute = 1.5 TFLOPS", "compute = 1.5 TFLOP", "E0302",
     "`compute` expects compute, found work", "compute is work per second: use one of"),
    (SC, "work  = 20 MFLOP", "work  = 20 MFLOPS", "E0301", "unknown unit `MFLOPS`",
     "`MFLOPS` would be a unit of compute"),
    (HC, "latency = 3 ms", "latency = 3 GiB", "E0302", "`latency` expects time, found data size",
     "use one of `us`, `ms`, `s`"),
    (REF, "memory  = 4 GiB", "memory  = 4 Gb", "E0301", "unknown unit `Gb`",
     "`GiB` (bytes)"),
    (AV, "rate  = 10 Hz", "rate  = 10 fps", "E0301", "unknown unit `fps`", "did you mean `Hz`?"),
    (AR, "cost    = 12.00 USD/h", "cost    = 12.00 USD/hour", "E0301", "unknown unit `USD/hour`",
     "did you mean `USD/h`?"),
    (SC, "cost = 0.05 USD/GB", "cost = 50 USD/TB", "E0301", "unknown unit `USD/TB`",
     "write `0.05 USD/GB`"),
    (HC, "latency < 10 s", "latency < 10 min", "E0301", "unknown unit `min`", "write `600 s`"),
    # TOPS count int8 operations (`compute_int8`), not the FLOP `compute` is
    (REF, "compute = 300 TFLOPS", "compute = 300 TOPS", "E0302",
     "`compute` expects compute, found int8 compute", "`FLOPS`, `GFLOPS`, `TFLOPS`"),
    (HC, "bandwidth = 500 Mbps", "bandwidth = 500 MB", "E0302",
     "`bandwidth` expects bandwidth, found data size", "a bandwidth is per second"),
    (REF, "power   = 10 W", "power   = 10 kW", "E0301", "unknown unit `kW`",
     "kilo is not a unit prefix of power here: write `10000 W`"),
    (AV, "compute = 5 TFLOPS", "compute = 5000 GFLOP/s", "E0301", "unknown unit `GFLOP/s`",
     "did you mean `GFLOPS`?"),
    (AR, "bandwidth = 800 Mbps", "bandwidth = 800 Mbit/s", "E0301", "unknown unit `Mbit/s`",
     "did you mean `Mbps`?"),
    (SC, "latency = 2 ms", "latency = 2 ns", "E0301", "unknown unit `ns`", "write `0.002 us`"),
    (REF, "count   = 4", "count   = 0", "E0303", "`count` must be a whole number of at least 1",
     None),
    (AV, "count   = 8 ", "count   = 2.5 ", "E0303", "`count` must be a whole number", None),
    (HC, "count        = 16 ", "count        = 16 beds ", "E0302", "`count` is a plain number, found a unit",
     "write `16`"),
    (SC, "memory  = 8 GiB", "memory  = 0 GiB", "E0303", "`memory` must be greater than zero",
     None),
    (AR, "latency = 15 ms", "latency = -15 ms", "E0303", "`latency` must be zero or more", None),
    (REF, "rate    = 30 Hz", "rate    = 30000000 Hz", "E0303", "`rate` is out of range", None),
    (AV, "tier    = fog ", "tier    = fogg ", "E0305", "`fogg` is not a valid `tier`",
     "did you mean `fog`?"),
    (HC, "tier         = edge", 'tier         = "edge"', "E0204",
     "expected one of edge, fog, cloud, found a string", "for example `tier = edge`"),
    (REF, "split  = auto ", "split  = yes  ", "E0305", "`yes` is not a valid `split`", None),
    (AR, "minimize(latency, energy, cost)", "minimize(latency, power, cost)", "E0305",
     "`power` is not a valid `objective term`", None),
    (SC, "minimize(latency, cost)", "maximize(latency, cost)", "E0305",
     "unknown objective `maximize`", "objectives are `minimize(TERM, ...)`"),
    (REF, "emits   = uint8[1, 3, 320, 320]\n  privacy", "emits   = unit8[1, 3, 320, 320]\n  privacy",
     "E0304", "unknown element type `unit8`", "did you mean `uint8`?"),
    (HC, "emits = float32[1, 6, 250]", "emits = float32[1, 6, n]", "E0304",
     "dimension `n` must be a number", "write the concrete size"),
    # -- service levels and flows
    (AR, "throughput >= 60 Hz", "throughput <= 60 Hz", "E0509",
     "`throughput` is bounded with >= or >", "write `throughput >= ...`"),
    (AR, "latency < 20 ms", "latncy < 20 ms", "E0509",
     "unknown service-level objective `latncy`", "did you mean `latency`?"),
    (AR, "throughput >= 60 Hz", "throughput >= 90 Hz", "E0507",
     "asks for 90 Hz but `world_camera` produces 60 Hz", "lower the throughput objective"),
    (REF, "flow = camera -> blur_faces -> archive", "flow = camera -> blur_faces", "E0502",
     "flow of pipeline `audit` does not end at a sink", "end the flow with an actuator or a store"),
    (REF, "flow = camera -> normalize", "flow = normalize", "E0501",
     "flow of pipeline `inspect` does not start at a sensor", "start the flow with a sensor"),
    (SC, ("flow = traffic_cam -> resize_normalize -> vehicle_detector -> count_vehicles -> "
          "traffic_stats"), "flow = traffic_cam", "E0503", "a flow needs at least a sensor and a sink",
     "e.g. `flow = traffic_cam -> sink`"),
    (REF, "emits = float32[1, 3, 320, 320]", "emits = float32[1, 3, 224, 224]", "E0505",
     "`normalize` emits float32[1, 3, 224, 224], but model `detector` takes",
     "insert an operator that converts the tensor"),
    (REF, ("link plant_server <-> gpu_pool { bandwidth = 1 Gbps,   latency = 18 ms, cost = 0.08 "
           "USD/GB }\n"), "", "E0506", "no route from `line_gw[0]` to `gpu_pool`",
     "declare a link path between `line_gw` and `gpu_pool`"),
    (HC, "link bedside_hub <-> ward_server", "link bedside_hub <-> ward_servr", "E0401",
     "no device named `ward_servr`", "did you mean `ward_server`?"),
    (SC, "link district_server <-> city_cloud", "link district_server <-> district_server",
     "E0402", "link from `district_server` to itself", None),
    # -- privacy
    (REF, "privacy = [pii]", "privacy = [pi]", "E0701", "no privacy label named `pi`",
     "did you mean `pii`?"),
    (AV, "privacy = [faces]", "privacy = [face]", "E0701", "no privacy label named `face`",
     "did you mean `faces`?"),
    (HC, "allow = [edge, fog]", "allow = [edge, fgo]", "E0305", "`fgo` is not a valid `tier`",
     "did you mean `fog`?"),
    (SC, "privacy = [pii]", "privacy = pii", "E0204",
     "expected a list of privacy labels, found a name", "for example `privacy = [name]`"),
    (AR, "allow = [edge, fog]", "allow = edge", "E0204", "expected a list of tiers, found a name",
     "for example `allow = [edge, fog]`"),
    (REF, "removes = [pii]", "removes = [pii, faces]", "E0701", "no privacy label named `faces`",
     None),
    (HC, "privacy phi {", "privacy secret {\n  allow = [edge]\n}\n\nprivacy phi {", "W0702",
     "privacy label `secret` is never used", "add it to a sensor's `privacy`"),
    # -- models
    (REF, '"models/bottleneck_detector.onnx"', '"models/detecter.onnx"', "E0601",
     "model file `models/detecter.onnx` not found", "relative to the folder of the .ef file"),
    (AR, "inputs = { frame = float32", "inputs = { frames = float32", "E0603",
     "input `frame` of model `hand_pose` is not bound", "add `frame = float32[1, 3, 192, 192]`"),
]


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    file: str  # where the text is checked (model paths resolve relative to it)
    code: str
    message: str
    help: str | None


def _mutation_cases() -> list[Case]:
    cases = []
    for i, (example, old, new, code, message, help_) in enumerate(MUTATIONS):
        text = (EXAMPLES / example).read_text()
        assert old in text, f"mutation {i}: {old!r} is not in {example}"
        cases.append(Case(f"{i:02d}-{code}-{Path(example).stem}", text.replace(old, new, 1),
                          str(EXAMPLES / "mistake.ef"), code, message, help_))
    return cases


def _fixture_cases() -> list[Case]:
    cases = []
    for path in sorted(MISTAKES.glob("*.ef")):
        text = path.read_text(encoding="utf-8")
        header = dict(re.findall(r"^# (expect|message|help): (.*)$", text, re.MULTILINE))
        assert set(header) == {"expect", "message", "help"}, path.name
        help_ = None if header["help"] == "-" else header["help"]
        # checked as if beside the examples, so a model path resolves as it does there
        cases.append(Case(path.stem, text, str(EXAMPLES / f"{path.stem}.ef"), header["expect"],
                          header["message"], help_))
    return cases


CASES = _mutation_cases() + _fixture_cases()


def first(result: CheckResult) -> Diagnostic:
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    return (errors or result.diagnostics)[0]


def concrete_edit(diag: Diagnostic) -> str | None:
    """The text a help proposes to put in place of the diagnostic's span, if it proposes one."""
    if not diag.help:
        return None
    found = re.search(r"did you mean `([^`]+)`\?", diag.help) or \
        re.search(r"\bwrite `([^`]+)`", diag.help)
    if found is None or "..." in found.group(1):
        return None
    return found.group(1)


def apply_edit(text: str, diag: Diagnostic, replacement: str) -> str:
    return text[:diag.span.start] + replacement + text[diag.span.end:]


def assert_edit_removes(text: str, file: str, diag: Diagnostic) -> None:
    replacement = concrete_edit(diag)
    if replacement is None:
        return
    after = check_text(apply_edit(text, diag, replacement), file)
    same = [d for d in after.diagnostics if d.code == diag.code and d.span.start == diag.span.start]
    assert not same, (f"applying `{replacement}` for {diag.code} ({diag.help}) leaves "
                      f"{same[0].message}")


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len(MUTATIONS) >= 40 and len(_fixture_cases()) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_mistake_gets_the_expected_first_diagnostic(case: Case) -> None:
    result = check_text(case.text, case.file)
    assert result.diagnostics, "no diagnostic"
    diag = first(result)
    shown = f"{diag.code}: {diag.message} / help: {diag.help}"
    assert diag.code == case.code, shown
    assert case.message in diag.message, shown
    if case.help is None:
        assert diag.help is None, shown
    else:
        assert diag.help is not None and case.help in diag.help, shown
    for d in result.diagnostics:  # every list of expected tokens is whole
        assert "..." not in d.message and "..." not in d.label, d.message
    # one mistake does not cascade: no missing route, and what a "did you mean" names is not
    # also reported missing or unused
    assert case.code == "E0506" or "E0506" not in {d.code for d in result.diagnostics}
    meant = re.search(r"did you mean `([^`]+)`\?", diag.help or "")
    if meant:
        echoes = [d.message for d in result.diagnostics if d.code in ("E0202", "W0510", "W0702")
                  and f"`{meant.group(1)}`" in d.message]
        assert not echoes, echoes
    assert_edit_removes(case.text, case.file, diag)


# ---------------------------------------------------------------- the worst messages of issue 15

REFERENCE = (EXAMPLES / "reference.ef").read_text()


def _check_reference(old: str, new: str) -> CheckResult:
    assert old in REFERENCE
    return check_text(REFERENCE.replace(old, new, 1), str(EXAMPLES / "mistake.ef"))


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("# -- Hardware inventory", "// BLE", (
        "E0002", "`//` does not start a comment", "comments start with `#`",
        "a comment runs from `#` to the end of the line: write `#`")),
    ("camera -> normalize", "camera => normalize", (
        "E0001", "expected `->`, found `=>`", "not an arrow of edgeflow",
        "the steps of a flow are joined with `->`: write `->`")),
    ("bandwidth = 1 Gbps", "bandwidth = 0.25 MB/s", (
        "E0301", "unknown unit `MB/s`", "`MB/s` is not a unit",
        ("`MB/s` is bytes per second and a bandwidth is in bits per second: write `2 Mbps` "
         "(0.25 MB/s × 8)"))),
    ("tier    = fog", "teir    = fog", (
        "E0201", "device `plant_server` has no key `teir`", "unknown key",
        "did you mean `tier`? write `tier = fog`")),
    ("work  = 0.01 GFLOP", "work  = 50 KFLOP", (
        "E0301", "unknown unit `KFLOP`", "`KFLOP` is not a unit",
        "kilo is not a unit prefix of work here: write `0.05 MFLOP` (the same as 50 KFLOP)")),
    ("latency < 50 ms", "latency < 10", (
        "E0302", "`latency` needs a time unit", "a bare number, expected time",
        "units are required: write one of `us`, `ms` or `s` after the number")),
], ids=["slash-comment", "fat-arrow", "bytes-per-second", "misspelt-key", "kilo-flop",
        "bare-latency"])
def test_the_worst_messages_of_issue_15(old: str, new: str,
                                        expected: tuple[str, str, str, str]) -> None:
    result = _check_reference(old, new)
    assert [(d.code, d.message, d.label, d.help) for d in result.diagnostics] == [expected]


def test_a_broken_link_value_is_not_also_a_missing_route() -> None:
    result = _check_reference("bandwidth = 1 Gbps", "bandwidth = 0.25 MB/s")
    assert "E0506" not in {d.code for d in result.diagnostics}
    result = _check_reference("bandwidth = 1 Gbps", "bandwidth = -1 Gbps")
    assert [d.code for d in result.diagnostics] == ["E0303"]


def test_routes_are_checked_over_the_links_as_declared() -> None:
    # the link is broken, but the route it makes is there; the missing one is still reported
    text = REFERENCE.replace("bandwidth = 1 Gbps,   latency = 0.5 ms",
                             "bandwidth = 1 gbit,   latency = 0.5 ms").replace(
        "link plant_server <-> gpu_pool { bandwidth = 1 Gbps,   latency = 18 ms, cost = 0.08 "
        "USD/GB }\n", "")
    codes = [d.code for d in check_text(text, str(EXAMPLES / "mistake.ef")).diagnostics]
    assert codes == ["E0301", "E0506"]


# ---------------------------------------------------------------- properties of unit suggestions

@dataclass(frozen=True)
class Intent:
    dim: Dimension
    factor: float


# What spellings mean, written independently of edgeflow's unit reader. `[...]` marks the letters
# that carry the magnitude (a prefix): a misspelling that touches them means something else.
INTENTS: list[tuple[str, Dimension, float]] = [
    ("[m]s", TIME, 1e-3), ("[u]s", TIME, 1e-6), ("s", TIME, 1.0), ("[n]s", TIME, 1e-9),
    ("[m]sec", TIME, 1e-3), ("sec", TIME, 1.0), ("seconds", TIME, 1.0), ("min", TIME, 60.0),
    ("minutes", TIME, 60.0), ("hours", TIME, 3600.0), ("hr", TIME, 3600.0),
    ("Hz", RATE, 1.0), ("[k]Hz", RATE, 1e3), ("[M]Hz", RATE, 1e6), ("fps", RATE, 1.0),
    ("bps", BANDWIDTH, 1.0), ("[K]bps", BANDWIDTH, 1e3), ("[k]bps", BANDWIDTH, 1e3),
    ("[M]bps", BANDWIDTH, 1e6), ("[G]bps", BANDWIDTH, 1e9), ("[M]bit/s", BANDWIDTH, 1e6),
    ("[G]bit/s", BANDWIDTH, 1e9), ("[M]b/s", BANDWIDTH, 1e6), ("[M]B/s", BANDWIDTH, 8e6),
    ("[G]B/s", BANDWIDTH, 8e9), ("[k]B/s", BANDWIDTH, 8e3), ("[M]Bps", BANDWIDTH, 8e6),
    ("B", SIZE, 1.0), ("[K]B", SIZE, 1e3), ("[k]B", SIZE, 1e3), ("[M]B", SIZE, 1e6),
    ("[G]B", SIZE, 1e9), ("[T]B", SIZE, 1e12), ("[Ki]B", SIZE, 1024.0),
    ("[Mi]B", SIZE, 1024.0**2), ("[Gi]B", SIZE, 1024.0**3), ("[Ti]B", SIZE, 1024.0**4),
    ("bytes", SIZE, 1.0), ("[M]bytes", SIZE, 1e6), ("[G]bit", SIZE, 1.25e8),
    ("FLOPS", COMPUTE, 1.0), ("[M]FLOPS", COMPUTE, 1e6), ("[G]FLOPS", COMPUTE, 1e9),
    ("[T]FLOPS", COMPUTE, 1e12), ("[P]FLOPS", COMPUTE, 1e15), ("[T]FLOP/s", COMPUTE, 1e12),
    ("[G]FLOP/s", COMPUTE, 1e9),
    ("FLOP", WORK, 1.0), ("[K]FLOP", WORK, 1e3), ("[k]FLOP", WORK, 1e3), ("[M]FLOP", WORK, 1e6),
    ("[G]FLOP", WORK, 1e9), ("[T]FLOP", WORK, 1e12),
    ("[m]W", POWER, 1e-3), ("W", POWER, 1.0), ("[k]W", POWER, 1e3), ("watts", POWER, 1.0),
    ("USD/h", COST_RATE, 1 / 3600), ("USD/hour", COST_RATE, 1 / 3600),
    ("USD/day", COST_RATE, 1 / 86400), ("USD/s", COST_RATE, 1.0),
    ("USD/[G]B", COST_DATA, 1e-9), ("USD/[T]B", COST_DATA, 1e-12), ("USD/[M]B", COST_DATA, 1e-6),
]
# Spellings that mean more than one thing: `FLOPs` is a count of FLOP, or FLOPS written carelessly.
AMBIGUOUS = ["FLOPs", "GFLOPs", "TFLOPs", "MFLOPs", "b", "Mb", "Gb"]
_SPELLINGS: dict[str, Intent | None] = {s.replace("[", "").replace("]", ""): Intent(d, f)
                                        for s, d, f in INTENTS}
for _u, (_d, _f) in UNITS.items():
    _SPELLINGS.setdefault(_u, Intent(_d, _f))
_SPELLINGS.update(dict.fromkeys(AMBIGUOUS))
# SI prefixes and the bases the `prefix` misspelling puts them on (the literal SI value)
PREFIXES = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "m": 1e-3, "u": 1e-6, "n": 1e-9,
            "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3}
BASES = {"s": (TIME, 1.0), "Hz": (RATE, 1.0), "bps": (BANDWIDTH, 1.0), "B/s": (BANDWIDTH, 8.0),
         "B": (SIZE, 1.0), "FLOPS": (COMPUTE, 1.0), "FLOP": (WORK, 1.0), "W": (POWER, 1.0)}


def _osa(a: str, b: str) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _typo_intent(text: str, meant: Intent) -> Intent | None:
    """A misspelling means what it was made from only if every spelling one edit away from it
    means that too (`iB` is one edit from `KiB`, `MiB` and `GiB`: it means nothing sure)."""
    if text in _SPELLINGS:
        return _SPELLINGS[text] if _SPELLINGS[text] == meant else None
    near = {i for s, i in _SPELLINGS.items() if _osa(text, s) <= 1}
    return meant if near == {meant} else None


@st.composite
def misspelt_unit(draw: st.DrawFn) -> tuple[str, Intent | None]:
    """A unit as a user might write it, and what it means when that is unambiguous."""
    op = draw(st.sampled_from(["as is", "case", "drop", "double", "extra", "per second",
                               "prefix"]))
    if op == "prefix":
        prefix, base = draw(st.sampled_from(sorted(PREFIXES))), draw(st.sampled_from(sorted(BASES)))
        dim, factor = BASES[base]
        return prefix + base, Intent(dim, PREFIXES[prefix] * factor)
    marked, dim, factor = draw(st.sampled_from(INTENTS))
    meant = Intent(dim, factor)
    plain = marked.replace("[", "").replace("]", "")
    start, end = (marked.index("["), marked.index("]") - 1) if "[" in marked else (0, 0)
    # letters whose change would change the meaning: the prefix, bit/byte, milli/mega, the first
    # letter of the base, and the `S` of FLOPS (FLOPs is a count of FLOP)
    protected = set(range(start, end)) | {i for i, c in enumerate(plain) if c in "bBmM/"} | \
        {end} | ({len(plain) - 1} if "FLOP" in plain else set())
    if op == "as is":
        return plain, meant
    if op == "per second":
        if dim is SIZE and "b" not in plain.lower().replace("byte", ""):
            return plain + "/s", Intent(BANDWIDTH, factor * 8)
        if dim is WORK and plain.endswith("FLOP"):
            return plain + "/s", Intent(COMPUTE, factor)
        return plain, meant
    letters = [i for i, c in enumerate(plain) if c.isalpha()]
    i = draw(st.sampled_from(letters))
    if op == "case":
        flips = draw(st.sets(st.sampled_from(letters), min_size=1))
        text = "".join(c.swapcase() if j in flips else c for j, c in enumerate(plain))
        if text == plain or text.isupper() and any(c in "bBmM" for c in plain):
            return text, None  # in capitals, `MBPS` could be megabits or megabytes
        return text, meant if not flips & protected else None
    if op == "drop":
        text = plain[:i] + plain[i + 1:]
    elif op == "double":
        text = plain[:i + 1] + plain[i] + plain[i + 1:]
    else:
        text = plain[:i + 1] + draw(st.sampled_from("abdehilnoprstxyz")) + plain[i + 1:]
    return text, _typo_intent(text, meant) if i not in protected else None


NUMBERS = st.one_of(st.sampled_from(["1", "0.25", "50", "2.5", "1000", "0.001", "7", "-3"]),
                    st.integers(1, 99_999).map(str),
                    st.decimals(min_value="0.001", max_value="9999", places=3).map(str))

# A valid program with one slot per quantity key; each property fills one slot.
TEMPLATE = """app demo {{ description = "units" }}
device gw {{ tier = edge, compute = {compute}, memory = {memory}, power = {power}, cost = {cost} }}
device server {{ tier = cloud, compute = 10 TFLOPS, memory = 8 GiB }}
link gw <-> server {{ bandwidth = {bandwidth}, latency = {latency}, cost = {link_cost} }}
sensor cam {{ on = gw, rate = {rate}, emits = uint8[1, 8] }}
operator step {{ work = {work}, emits = uint8[1, 8], memory = {op_memory} }}
store archive {{ on = server }}
pipeline p {{ flow = cam -> step -> archive, slo = [latency < {slo}, throughput >= {throughput}] }}
"""
SLOTS: dict[str, tuple[str, Dimension, str]] = {  # slot -> (key, dimension, valid value)
    "compute": ("compute", COMPUTE, "1 TFLOPS"), "memory": ("memory", SIZE, "2 GiB"),
    "power": ("power", POWER, "10 W"), "cost": ("cost", COST_RATE, "1 USD/h"),
    "bandwidth": ("bandwidth", BANDWIDTH, "100 Mbps"), "latency": ("latency", TIME, "5 ms"),
    "link_cost": ("cost", COST_DATA, "0.05 USD/GB"), "rate": ("rate", RATE, "10 Hz"),
    "work": ("work", WORK, "1 MFLOP"), "op_memory": ("memory", SIZE, "10 MiB"),
    "slo": ("latency", TIME, "500 ms"), "throughput": ("throughput", RATE, "5 Hz"),
}
DEFAULTS = {slot: value for slot, (_, _, value) in SLOTS.items()}
PROPERTY = settings(derandomize=True, max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def test_the_template_is_valid() -> None:
    assert check_text(TEMPLATE.format(**DEFAULTS), "t.ef").diagnostics == []


@st.composite
def quantity_in_a_slot(draw: st.DrawFn) -> tuple[str, str, str, Intent | None]:
    unit, intent = draw(misspelt_unit())
    fitting = [s for s, (_, dim, _) in SLOTS.items() if intent is not None and dim is intent.dim]
    mostly_fitting = draw(st.integers(0, 3)) > 0  # a slot of another dimension now and then
    slot = draw(st.sampled_from(fitting if fitting and mostly_fitting else sorted(SLOTS)))
    return slot, draw(NUMBERS), unit, intent


def _slot_program(slot: str, value: str) -> tuple[str, int, int]:
    marked = TEMPLATE.format(**{**DEFAULTS, slot: "\0"})
    start = marked.index("\0")
    return marked.replace("\0", value), start, start + len(value)


@given(quantity_in_a_slot())
@PROPERTY
def test_unit_suggestions_keep_dimension_and_magnitude(
        case: tuple[str, str, str, Intent | None]) -> None:
    slot, number, unit, intent = case
    key, dim, _ = SLOTS[slot]
    text, start, end = _slot_program(slot, f"{number} {unit}")
    result = check_text(text, "units.ef")
    for diag in result.diagnostics:
        if not (start <= diag.span.start < end) or diag.code not in ("E0301", "E0302"):
            continue
        replacement = concrete_edit(diag)
        if replacement is None or diag.code == "E0302":
            continue
        rewritten = apply_edit(text, diag, replacement)[start:]
        found = re.match(r"(-?[\d.]+) ([A-Za-z/]+)", rewritten)
        assert found, rewritten
        new_number, new_unit = float(found.group(1)), found.group(2)
        assert new_unit in UNITS, diag.help
        assert UNITS[new_unit][0] is dim, f"{number} {unit} for `{key}`: {diag.help}"
        if intent is not None:
            assert intent.dim is dim, f"{number} {unit} ({intent}) for `{key}`: {diag.help}"
            assert math.isclose(new_number * UNITS[new_unit][1], float(number) * intent.factor,
                                rel_tol=1e-9), f"{number} {unit} for `{key}`: {diag.help}"
        assert_edit_removes(text, "units.ef", diag)


@given(quantity_in_a_slot())
@PROPERTY
def test_applying_a_concrete_edit_removes_the_diagnostic(
        case: tuple[str, str, str, Intent | None]) -> None:
    slot, number, unit, _ = case
    text, _, _ = _slot_program(slot, f"{number} {unit}")
    for diag in check_text(text, "units.ef").diagnostics:
        assert_edit_removes(text, "units.ef", diag)


@given(mutated_example())
@settings(derandomize=True, max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_expected_token_lists_are_never_cut(text: str) -> None:
    for diag in check_text(text, str(EXAMPLES / "fuzz.ef")).diagnostics:
        if diag.code in ("E0001", "E0002", "E0003"):
            assert "..." not in diag.message and "..." not in diag.label, diag.label


def test_every_unit_of_the_table_reads_as_itself() -> None:
    for unit, (dim, factor) in UNITS.items():
        readings = [r for r in read_unit(unit) if r.dim is dim]
        assert [r.factor for r in readings] == [factor], unit
        assert suggest_unit(unit, dim) == unit


@pytest.mark.parametrize(("unit", "dim"), [
    ("mbps", BANDWIDTH), ("MBPS", BANDWIDTH), ("gb", SIZE), ("Gb", SIZE), ("MW", POWER),
    ("mHz", RATE), ("MS", TIME), ("iB", SIZE), ("Mps", BANDWIDTH),
])
def test_units_that_cannot_be_read_one_way_get_the_list(unit: str, dim: Dimension) -> None:
    advice = unit_advice("5", unit, dim, "key")
    assert advice.unit is None and advice.rewrite is None
    assert all(f"`{u}`" in advice.help for u, (d, _) in UNITS.items() if d is dim)
    assert suggest_unit(unit, dim) is None
