"""Layer-reduced runs: detected, recorded, never signed off.

The workflow allows smoke runs with fewer decoder layers, either by `--hf-overrides` setting
num_hidden_layers (top level or inside a nested text section, also when it came in through
EXTRA_ARGS: it is in the argv either way) or by a trimmed checkpoint whose safetensors hold fewer
layers than config.json declares. Such a run proves the code path, not the model: sign-off needs
one full-layer Stage B PASS. Every stage run records `layers` in its evidence.json:
{"reduced": bool, "how": "hf-overrides" | "trimmed-checkpoint" | None, "config": N, "used": M}.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from helpers import checkpoint as ckpt

OVERRIDE_FLAG = "--hf-overrides"
KEY = "num_hidden_layers"
_SECTION_HEADS = {s.split(".", 1)[0] for s in ckpt.NESTED_SECTIONS}


@dataclass
class LayerUse:
    reduced: bool
    how: str | None        # hf-overrides | trimmed-checkpoint | None
    config: int | None     # num_hidden_layers in config.json
    used: int | None       # the layers the run actually built / loaded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """`hf-overrides num_hidden_layers=2 of 36` (for one-line messages)."""
        if not self.reduced:
            return f"full layers ({self.config})" if self.config else "full layers"
        what = f"{KEY}={self.used}" if self.how == "hf-overrides" else f"{self.used} layers in the weights"
        return f"{self.how} {what} of {self.config if self.config is not None else '?'}"


def _override_values(argv: list[str]) -> Iterable[str]:
    for index, arg in enumerate(argv):
        if arg == OVERRIDE_FLAG and index + 1 < len(argv):
            yield argv[index + 1]
        elif arg.startswith(OVERRIDE_FLAG + "="):
            yield arg.split("=", 1)[1]


def _layers_in(overrides: Any) -> int | None:
    """num_hidden_layers of an --hf-overrides dict: top level, a dotted key, or a nested section
    (text_config, language_config, ... as vLLM merges them into the config)."""
    if not isinstance(overrides, dict):
        return None
    for key, value in overrides.items():
        if key == KEY or (key.endswith("." + KEY) and key.split(".", 1)[0] in _SECTION_HEADS):
            return int(value) if isinstance(value, (int, str)) and str(value).isdigit() else None
    for section in ckpt.NESTED_SECTIONS:
        node: Any = overrides
        for part in section.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and str(node.get(KEY, "")).isdigit():
            return int(node[KEY])
    return None


def from_argv(argv: list[str]) -> int | None:
    """The layer count an --hf-overrides in the serve argv asks for (None: no override)."""
    found = None
    for text in _override_values(argv):
        try:
            found = _layers_in(json.loads(text))
        except ValueError:
            continue
    return found


def weight_layer_count(directory: Path, config_layers: int | None) -> int | None:
    """Distinct decoder layers below config's num_hidden_layers that the weights hold (layers at
    or above it are MTP layers). The index's weight_map when there is one, else the safetensors
    headers; None when the names do not follow the `layers.N.` layout or cannot be read."""
    if not config_layers:
        return None
    try:
        inventory, index = ckpt.take_inventory(directory, {})
        if inventory.weight_format != "safetensors":
            return None
        names = list((index or {}).get("weight_map") or {}) or list(
            ckpt.scan_headers(directory, inventory.weight_files, None).tensors)
    except (ckpt.CheckpointError, OSError):
        return None
    return count_layers(names, config_layers)


def count_layers(names: Iterable[str], config_layers: int) -> int | None:
    found = set()
    for name in names:
        match = ckpt.LAYER_INDEX.match(name)
        if match and int(match.group(1)) < config_layers:
            found.add(int(match.group(1)))
    return len(found) or None


def assess(argv: list[str], stage: str, config_layers: int | None, weight_layers: int | None) -> LayerUse:
    """What a run used. Dummy weights (Stage A) build every layer of the config, so only an
    override reduces them there; with real weights a trimmed checkpoint counts too."""
    override = from_argv(argv)
    if override is not None and (config_layers is None or override < config_layers):
        return LayerUse(True, "hf-overrides", config_layers, override)
    if stage == "b" and config_layers and weight_layers is not None and weight_layers < config_layers:
        return LayerUse(True, "trimmed-checkpoint", config_layers, weight_layers)
    return LayerUse(False, None, config_layers, config_layers)


def of_record(data: dict[str, Any]) -> LayerUse:
    """The layers block of an evidence.json; evidence written before it existed is judged from
    its argv alone."""
    block = data.get("layers")
    if isinstance(block, dict):
        return LayerUse(bool(block.get("reduced")), block.get("how"), block.get("config"), block.get("used"))
    argv = list((data.get("command") or {}).get("argv") or [])
    return assess(argv, "a", None, None)  # no config count recorded: only an override can tell
