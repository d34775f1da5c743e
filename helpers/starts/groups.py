"""Disjoint NPU groups for runs at once: each run of a parallel set gets its own group of the
plan's TP (ASCEND_RT_VISIBLE_DEVICES via NPU_GROUP), its own PORT and its own HCCL host port range
(HCCL_IF_BASE_PORT via HCCL_BASE_PORT). Only NPUs that no process holds (npu-smi's process table,
ours or anyone's) are used; one group means one run at a time, as before."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from helpers import load_yaml
from helpers import context, profiles
from helpers.serve import port_is_free
from helpers.settings import Settings

PLAN_PATH = Path(__file__).with_name("plan.yaml")


def load_plan() -> dict[str, Any]:
    return load_yaml(PLAN_PATH.read_text(encoding="utf-8"))


@dataclass
class Slot:
    """Where one run of a set runs."""

    index: int
    port: int
    npus: list[int] | None = None
    hccl_base_port: int | None = None

    def env(self) -> dict[str, str]:
        """The settings a run of this slot gets (env.example variables)."""
        env = {"PORT": str(self.port)}
        if self.npus is not None:
            env["NPU_GROUP"] = ",".join(map(str, self.npus))
        if self.hccl_base_port is not None:
            env["HCCL_BASE_PORT"] = str(self.hccl_base_port)
        return env

    def describe(self) -> str:
        parts = [f"port {self.port}"]
        if self.npus is not None:
            parts.insert(0, f"NPUs {','.join(map(str, self.npus))}")
        if self.hccl_base_port is not None:
            parts.append(f"HCCL ports {self.hccl_base_port}+")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "port": self.port, "npus": self.npus, "hccl_base_port": self.hccl_base_port}


@dataclass
class SlotPlan:
    slots: list[Slot]
    why: str

    @property
    def parallel(self) -> bool:
        return len(self.slots) > 1


def free_devices(settings: Settings, profile: profiles.Profile) -> tuple[list[int], str]:
    """Logical NPUs nobody holds, within NPU_GROUP / ASCEND_RT_VISIBLE_DEVICES when set."""
    facts_box = profile.facts_box()
    text, source = facts_box.npu_smi()
    if text is None:
        return [], f"no NPU table ({source})"
    devices, rows = context.npu_processes(text, settings.runs_dir, facts_box.kind == "recorded")
    held = {row["device"] for row in rows if row.get("device") is not None}
    indices = [d.index for d in devices]
    # the box's own restriction, as the runtime applies it
    allowed = settings.npu_group or os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").replace(" ", "")
    if allowed:
        indices = [i for i in indices if str(i) in allowed.split(",")]
    free = [i for i in indices if i not in held]
    busy = sorted(set(indices) - set(free))
    return free, f"{len(free)} of {len(indices)} NPUs free" + (f" (held: {busy})" if busy else "")


def _ports_from(start: int, count: int, host: str, taken: frozenset[int]) -> list[int]:
    ports, candidate = [], start
    while len(ports) < count and candidate < 65536:
        if candidate not in taken and (candidate == start or port_is_free(host, candidate)):
            ports.append(candidate)
        candidate += 1
    return ports


def _hccl_ranges(count: int, plan: dict[str, Any]) -> list[int]:
    """`count` HCCL host port ranges, none the default one and none with a port already bound."""
    base, span = int(plan["hccl_base_port"]), int(plan["hccl_port_span"])
    found, start = [], base + span
    while len(found) < count and start + span < 65536:
        if all(port_is_free("0.0.0.0", p) for p in range(start, start + span)):
            found.append(start)
        start += span
    return found


def plan_slots(settings: Settings, profile: profiles.Profile, world: int, wanted: int,
               taken: frozenset[int] = frozenset()) -> SlotPlan:
    """Up to `wanted` slots: PARALLEL caps them; on an NPU box, disjoint groups of `world` free NPUs.
    taken: ports not to use (PORT itself when a live server of ours holds it)."""
    limit = settings.parallel
    single = SlotPlan([Slot(0, settings.port)], "")
    if wanted <= 1 or limit == 1:
        single.why = "one run at a time (PARALLEL=1)" if limit == 1 else "one run"
        return single
    if profile.family == "ascend":
        free, seen = free_devices(settings, profile)
        groups = [free[i:i + world] for i in range(0, len(free) - world + 1, world)]
        count = min(len(groups), wanted, limit or len(groups))
        if count <= 1:
            single.why = f"one group of TP {world}: {seen}; one run at a time"
            return single
        ports = _ports_from(settings.port, count, settings.host, taken)
        hccl = _hccl_ranges(count, load_plan())
        count = min(count, len(ports), len(hccl))
        slots = [Slot(i, ports[i], groups[i], hccl[i]) for i in range(count)]
        return SlotPlan(slots, f"{count} disjoint groups of TP {world} ({seen})")
    count = min(wanted, limit or 1)
    if count <= 1:
        single.why = f"backend {profile.name}: one run at a time (PARALLEL sets more)"
        return single
    ports = _ports_from(settings.port, count, settings.host, taken)
    return SlotPlan([Slot(i, port) for i, port in enumerate(ports)], f"PARALLEL={limit}: {count} servers at once")
