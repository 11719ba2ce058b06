"""The one machine-readable output of every command that reports something (`plan`, `compile`,
`split`, `profile`, `graph`, `explain`, `fmt`, `init`, `models inspect`): with `--format json`
(alias `--json`) they print one JSON object on stdout,

    {"command": "plan", "ok": true, "result": {...} | null, "diagnostics": [...]}

`ok` is false exactly when a diagnostic is an error (the exit code is then 1); `result` is the
command's data (the plan, the split report, ...), null when there is none; `diagnostics` are the
records `edgeflow check --format json` prints. docs/cli.md documents each command's `result`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edgeflow.diagnostics import Diagnostic, has_errors


def envelope(command: str, result: Any, diagnostics: Sequence[Diagnostic] = ()) -> str:
    """The envelope as text (indented JSON and a final newline)."""
    return json.dumps({"command": command, "ok": not has_errors(list(diagnostics)),
                       "result": result,
                       "diagnostics": [d.to_json() for d in diagnostics]}, indent=2) + "\n"
