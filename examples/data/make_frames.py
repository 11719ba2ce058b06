"""Write the frames the examples calibrate and validate their quantized model variants on
(`edgeflow.models.samples.FRAMES`, made from a fixed seed: byte-identical every time).

    python examples/data/make_frames.py
"""

from __future__ import annotations

from pathlib import Path

from edgeflow.models.samples import FRAMES, frame_files

EXAMPLES = Path(__file__).resolve().parents[1]


def main() -> None:
    for folder in FRAMES:
        out = EXAMPLES / folder
        out.mkdir(parents=True, exist_ok=True)
        files = frame_files(folder)
        for name, data in files.items():
            (out / name).write_bytes(data)
        print(f"{out}: {len(files)} frames")


if __name__ == "__main__":
    main()
