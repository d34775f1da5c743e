"""`npu-smi info` as data: the devices in the order the runtime numbers them, and the process
table (which process holds memory on which NPU), plus which devices a serve plan needs.

Two table layouts are read: the classic five columns (NPU, Chip, Process id, Process name,
Process memory(MB)) and the newer six with "Process id in container". Nothing here looks at
/proc or decides whose a process is; helpers/context.py does.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

_BUS_ID = re.compile(r"\b[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d\b")
_NAME_ROW = re.compile(r"^\|\s*(\d+)\s+(\S+)\s*\|\s*(\S+)\s*\|")
_CHIP_ROW = re.compile(r"^\|\s*(\d+)(?:\s+(\d+))?\s*\|\s*([0-9A-Fa-f:.]+)\s*\|")
_PROCESS_ROW = re.compile(r"^\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s*\|\s*(.*?)\s*\|\s*(\d+)\s*\|(?:\s*([^|\s]+)\s*\|)?")
PARALLEL_FLAGS = {"--tensor-parallel-size": "tp", "-tp": "tp", "--pipeline-parallel-size": "pp", "-pp": "pp",
                  "--data-parallel-size": "dp", "-dp": "dp"}


@dataclass
class Device:
    index: int              # the logical device number (ASCEND_RT_VISIBLE_DEVICES counts these)
    npu: int                # npu-smi's NPU id
    chip: int
    phy_id: int | None
    name: str
    bus_id: str


@dataclass
class NpuProcess:
    npu: int
    chip: int
    pid: int
    name: str
    memory_mb: int
    container_pid: int | None = None   # the pid inside this container, when npu-smi knows it
    device: int | None = None          # logical device index

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_devices(text: str) -> list[Device]:
    """Each chip row (the one with a PCI bus id), in order; its NPU id and name come from the row above."""
    devices: list[Device] = []
    npu, name = None, ""
    for line in text.splitlines():
        if "Process id" in line:
            break
        if _BUS_ID.search(line):
            chip = _CHIP_ROW.match(line)
            if chip and npu is not None:
                phy = int(chip.group(2)) if chip.group(2) is not None else None
                devices.append(Device(len(devices), npu, int(chip.group(1)), phy, name,
                                      _BUS_ID.search(line).group(0)))
            continue
        row = _NAME_ROW.match(line)
        if row:
            npu, name = int(row.group(1)), row.group(2)
    return devices


def parse_processes(text: str, devices: list[Device] | None = None) -> list[NpuProcess]:
    """Rows of the process table ("No running processes found in NPU n" rows hold nothing)."""
    devices = devices if devices is not None else parse_devices(text)
    by_chip = {(d.npu, d.chip): d.index for d in devices}
    found: list[NpuProcess] = []
    in_table = False
    for line in text.splitlines():
        if "Process id" in line and "Process name" in line:
            in_table = True
            continue
        if not in_table:
            continue
        row = _PROCESS_ROW.match(line)
        if row:
            container = row.group(6)
            found.append(NpuProcess(int(row.group(1)), int(row.group(2)), int(row.group(3)), row.group(4),
                                    int(row.group(5)), int(container) if container and container.isdigit() else None,
                                    by_chip.get((int(row.group(1)), int(row.group(2))))))
    return found


def parallel_size(argv: list[str]) -> dict[str, int]:
    """tp, pp, dp from a serve argv (the last occurrence wins, as argparse decides)."""
    sizes = {"tp": 1, "pp": 1, "dp": 1}
    for index, arg in enumerate(argv):
        flag, _, inline = arg.partition("=")
        key = PARALLEL_FLAGS.get(flag)
        if key is None:
            continue
        value = inline or (argv[index + 1] if index + 1 < len(argv) else "")
        if value.isdigit():
            sizes[key] = int(value)
    return sizes


def needed_devices(world: int, visible: str | None, device_count: int) -> tuple[list[int], str]:
    """Logical devices a server of `world` processes uses, and a problem line ('' if none):
    the first `world` of ASCEND_RT_VISIBLE_DEVICES, else 0..world-1."""
    if visible is not None and visible.strip():
        try:
            listed = [int(part) for part in visible.replace(" ", "").split(",") if part]
        except ValueError:
            return [], f"ASCEND_RT_VISIBLE_DEVICES={visible!r} is not a comma-separated list of device numbers"
        if len(listed) < world:
            return listed, f"the plan needs {world} NPUs but ASCEND_RT_VISIBLE_DEVICES={visible} lists {len(listed)}"
        return listed[:world], ""
    if device_count and device_count < world:
        return list(range(device_count)), f"the plan needs {world} NPUs but npu-smi shows {device_count}"
    return list(range(world)), ""
