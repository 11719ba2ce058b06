"""A test-only deployment target: `inventory`, a CSV of every unit replica with its device and
resources, and each unit's unit.json beside it. Importing this module registers it."""

from __future__ import annotations

from edgeflow.emit.bundle import Bundle, Client
from edgeflow.emit.targets import Rendering, Target, register
from edgeflow.emit.units import unit_config


class Inventory(Target):
    name = "inventory"
    description = "a CSV inventory of the placed units (test-only)"

    def broker_host(self, bundle: Bundle, client: Client) -> str:
        return f"broker.{client.device}.example"

    def render(self, r: Rendering) -> dict[str, bytes]:
        rows = ["unit,replica,device,tier,compute_share,memory_bytes"]
        files: dict[str, bytes] = {}
        for c in r.bundle.units():
            unit = r.bundle.placed(c)
            rows.append(f"{unit.name},{unit.replica},{unit.device},{unit.tier.value},"
                        f"{unit.compute_share:.6f},{unit.memory_bytes:.0f}")
            files[f"inventory/{c.name}.json"] = unit_config(r, self, c).encode()
        files["inventory/units.csv"] = ("\n".join(rows) + "\n").encode()
        return files


TARGET = register(Inventory())
