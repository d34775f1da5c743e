"""What the box of a replay scenario reports, by command instead of from a live box.

    python -m helpers.replay.box --scenario NAME --what versions|npu-smi|soc|modules|markers|all [--json]
    python -m helpers.replay.box --scenario NAME --module torch_npu        # exit 0 if importable, 1 if not
    python -m helpers.replay.box --scenario NAME --marker 'FlashComm is deprecated'   # 0 present, 1 absent

`versions` prints `name==version` lines (pip's spelling); `npu-smi` the `npu-smi info` text of the
scenario's machine; `soc` torch_npu.npu.get_soc_version()'s number; `modules` one importable
module per line; `markers` `present|absent<TAB>string` for the source markers checked in that
vllm-ascend version. REPLAY_SCENARIO is used when --scenario is not given. Bad input: one line on
stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from helpers.replay.invocation import ScenarioError  # noqa: E402
from helpers.replay.scenario import Scenario, load, machines  # noqa: E402

WHATS = ("versions", "npu-smi", "soc", "modules", "markers", "all")
# Where the official image installs the two roots (editable installs):
# Dockerfile@v0.11.0rc3:50-62 (`pip install -v -e /vllm-workspace/vllm/`, `-e /vllm-workspace/vllm-ascend/`).
IMAGE_LAYOUT = {"vllm": "/vllm-workspace/vllm/vllm", "vllm_ascend": "/vllm-workspace/vllm-ascend/vllm_ascend"}
IMAGE_LAYOUT_SOURCE = "Dockerfile@v0.11.0rc3:50-62 (editable installs under /vllm-workspace)"
# a package directly under site-packages or under one of the image's roots
_TRACEBACK_PATH = re.compile(r'File "(/[^"]*?(?:site-packages|dist-packages|/vllm-workspace/vllm-ascend|'
                             r'/vllm-workspace/vllm)/)(vllm_ascend|vllm|torch_npu|torch|transformers)/')


def imported_from(scenario: Scenario) -> tuple[dict[str, str], dict[str, str]]:
    """Where the recorded box imports each package from: the traceback paths of its own log
    lines, else the official image's layout. ({module: directory}, {module: source})."""
    found: dict[str, str] = {}
    sources: dict[str, str] = {}
    items = [item for block in scenario.all_blocks() for item in block.items]
    items += [item for rule in scenario.requests for item in rule.items + rule.after_items]
    items += [item for periodic in scenario.periodic for item in periodic.lines]
    for item in items:
        for match in _TRACEBACK_PATH.finditer(item.text or ""):
            module = match.group(2)
            if module not in found:
                found[module] = match.group(1) + module
                sources[module] = f"a traceback line of {scenario.path.name}"
    for module, path in IMAGE_LAYOUT.items():
        if module not in found:
            found[module], sources[module] = path, IMAGE_LAYOUT_SOURCE
    return found, sources


def facts(scenario: Scenario) -> dict[str, Any]:
    box = scenario.box
    machine_name = str(box.get("machine") or "")
    machine = machines().get(machine_name) if machine_name else None
    if machine_name and machine is None:
        raise ScenarioError(f"{scenario.name}: box.machine {machine_name!r} is not in helpers/replay/machines.yaml")
    machine = machine or {}
    paths, path_sources = imported_from(scenario)
    return {
        "scenario": scenario.name,
        "era": scenario.era,
        "versions": {str(k): str(v) for k, v in (box.get("versions") or {}).items()},
        "npu_smi": str(machine.get("npu_smi") or ""),
        "soc_version": box.get("soc_version", machine.get("soc_version")),
        "soc_name": machine.get("soc_name", ""),
        "device_type": machine.get("device_type", ""),
        # what a container on this machine shows of NPU sharing (a soft-partition runtime preloaded)
        "device_view": dict(machine.get("device_view") or {}),
        "modules": [str(m) for m in box.get("modules") or []],
        "markers": {str(k): bool(v) for k, v in (box.get("markers") or {}).items()},
        "sources": {"box": box.get("source", ""), "machine": machine.get("source", ""),
                    "imported_from": path_sources},
        "imported_from": paths,
    }


def render(info: dict[str, Any], what: str) -> str:
    if what == "versions":
        return "\n".join(f"{name}=={version}" for name, version in info["versions"].items())
    if what == "npu-smi":
        return info["npu_smi"].rstrip("\n")
    if what == "soc":
        return str(info["soc_version"])
    if what == "modules":
        return "\n".join(info["modules"])
    if what == "markers":
        return "\n".join(f"{'present' if on else 'absent'}\t{marker}" for marker, on in info["markers"].items())
    return json.dumps(info, indent=2, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.replay.box", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=os.environ.get("REPLAY_SCENARIO", ""))
    parser.add_argument("--what", choices=WHATS, default="all")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--module", help="exit 0 when this module is importable on the box, else 1")
    parser.add_argument("--marker", help="exit 0 when this string is in the box's vllm-ascend source, else 1")
    args = parser.parse_args(argv)
    try:
        info = facts(load(args.scenario))
    except ScenarioError as exc:
        print(f"replay box: {exc}", file=sys.stderr)
        return 2
    if args.module:
        return 0 if args.module in info["modules"] else 1
    if args.marker:
        if args.marker not in info["markers"]:
            print(f"replay box: marker {args.marker!r} was not checked for {info['scenario']} "
                  f"(checked: {', '.join(info['markers'])})", file=sys.stderr)
            return 2
        return 0 if info["markers"][args.marker] else 1
    key = {"npu-smi": "npu_smi", "soc": "soc_version"}.get(args.what, args.what)
    text = (json.dumps(info if args.what == "all" else {key: info[key]}, ensure_ascii=False) if args.json
            else render(info, args.what))
    try:
        print(text)
    except BrokenPipeError:  # `| head` closed the pipe: not an error of the box
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
