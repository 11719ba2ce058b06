"""`edgeflow init`: a new application folder that checks and plans as it is, with `app.ef` (a
starter app or a copy of an example), the ONNX models it uses in `models/` (built by
`edgeflow.models.samples`) and a README saying what to run.
"""

from __future__ import annotations

from pathlib import Path

from edgeflow.models.samples import FRAMES, frame_files, model_bytes
from edgeflow.resources import data_path
from edgeflow.syntax import ast
from edgeflow.syntax.parser import parse

STARTER = """\
# A starter edgeflow application: a patch on an edge gateway streams vital-sign windows to a
# classifier whose verdicts raise an alarm; the raw readings never leave the edge.

app my_app {
  description = "Raise an alarm within 100 ms of an abnormal vital-sign window"
  objective   = minimize(latency, cost)
}

device gateway {
  tier    = edge
  compute = 0.5 TFLOPS
  memory  = 2 GiB
}

device cloud {
  tier    = cloud
  compute = 100 TFLOPS
  memory  = 64 GiB
  cost    = 2.50 USD/h
}

link gateway <-> cloud { bandwidth = 100 Mbps, latency = 20 ms }

sensor patch {
  on      = gateway
  rate    = 4 Hz
  emits   = float32[1, 6, 250]
  privacy = [raw_vitals]
}

actuator alarm { on = gateway }

model classifier {
  source = "models/vitals.onnx"
  inputs = { window = float32[1, 6, 250] }
}

pipeline alert {
  flow = patch -> classifier -> alarm
  slo  = [latency < 100 ms, throughput >= 4 Hz]
}

privacy raw_vitals { allow = [edge] }
"""


def examples_dir() -> Path:
    """The example apps."""
    return data_path("examples")


def example_names() -> list[str]:
    return sorted(p.stem for p in examples_dir().glob("*.ef"))


def with_local_models(text: str) -> tuple[str, list[str]]:
    """`text` with every model's `source` pointing at `models/NAME.onnx`, and those NAMEs."""
    module, _ = parse(text, "app.ef")
    sources = [e.value for d in module.decls if d.kind == "model" for e in d.entries
               if e.key.value == "source" and isinstance(e.value, ast.String)]
    names = [Path(s.value).stem for s in sources]
    for source, name in sorted(zip(sources, names, strict=True),
                               key=lambda s: -s[0].span.start):
        text = f'{text[:source.span.start]}"models/{name}.onnx"{text[source.span.end:]}'
    return text, list(dict.fromkeys(names))


def app_files(folder: Path, example: str | None = None) -> dict[Path, bytes]:
    """Every file of the new app in `folder`, by path: the starter app, or the example named
    (one of `example_names()`) reading its models from `folder/models/`."""
    original = STARTER if example is None else \
        (examples_dir() / f"{example}.ef").read_text(encoding="utf-8")
    text, models = with_local_models(original)
    frames = {folder / frames_dir / name: data for frames_dir in FRAMES
              if f'"{frames_dir}"' in text for name, data in frame_files(frames_dir).items()}
    readme = (f"# {example or 'my_app'}\n\nCheck, place and build this app (from this folder): "
              "`edgeflow check app.ef && edgeflow plan app.ef && edgeflow compile app.ef "
              "--target k8s`\n")
    return {folder / "app.ef": text.encode(),
            **{folder / "models" / f"{m}.onnx": model_bytes(m) for m in models},
            **frames,  # the frames its quantized variants are made and measured on
            **_code_files(folder, text),
            folder / "README.md": readme.encode()}


def _code_files(folder: Path, text: str) -> dict[Path, bytes]:
    """The example's own Python modules its operators and trainings name (`impl`, `samples`,
    `trainer`), copied beside the new app as they sit beside the example."""
    module, _ = parse(text, "app.ef")
    names = {e.value.value.partition(":")[0] for d in module.decls for e in d.entries
             if e.key.value in ("impl", "samples", "trainer") and isinstance(e.value, ast.String)}
    return {folder / f"{name}.py": (examples_dir() / f"{name}.py").read_bytes()
            for name in sorted(names) if (examples_dir() / f"{name}.py").is_file()}
