"""Write the small, real-shaped ONNX models the examples use (built with `onnx.helper` only, by
`edgeflow.models.samples`, which describes each of them).

    python examples/models/make_models.py [OUT_DIR]

Deterministic: weights come from a fixed seed, so running it again gives byte-identical files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgeflow.models.samples import MODELS, model_bytes


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        path = out_dir / f"{name}.onnx"
        path.write_bytes(model_bytes(name))
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
