"""The Hugging Face id of a checkpoint (the e2e YAML's model_name, the tutorial's download line),
and where it came from, so a wrong id can be traced to its source.

Order: MODEL_ID (the engineer said so); config.json `_name_or_path` when it is an id and not a
local path; the Hub cache layout the directory sits in (models--<org>--<name>/snapshots/<rev>);
the model card's front matter (`model_id`/`model_name`/`name`, or a huggingface.co link of the
model's own files such as `license_link`). `base_model` is the parent model, never this one.
Nothing found: None (source `none`); the deliverables then use the directory name and say so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_CACHE = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")
CARD_KEYS = ("model_id", "model_name", "name")
HF_LINK = re.compile(r"https?://huggingface\.co/(?P<id>[A-Za-z0-9][\w.-]*/[\w.-]+)/(?:blob|resolve|raw)/")


def _is_id(text: Any) -> bool:
    return isinstance(text, str) and bool(HF_ID.fullmatch(text.strip())) and not text.startswith((".", "/"))


def _front_matter(readme: Path) -> dict[str, str]:
    """`key: value` lines of a model card's YAML front matter (flat keys only; no YAML parser
    needed for the few keys read here)."""
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")[:20000]
    except OSError:
        return {}
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return {}
    found = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "\t", "-")):
            found[key.strip()] = value.strip().strip("'\"")
    return found


def find(directory: Path, config: dict[str, Any], model_id: str = "") -> tuple[str | None, str]:
    """(id or None, where it came from): `MODEL_ID`, `config.json:_name_or_path`,
    `hub-cache:<directory>`, `README.md:<front matter key>`, or `none`."""
    if model_id.strip():
        return model_id.strip(), "MODEL_ID"
    name_or_path = config.get("_name_or_path")
    if _is_id(name_or_path) and not Path(str(name_or_path)).exists():
        return str(name_or_path).strip(), "config.json:_name_or_path"
    for part in reversed(Path(directory).resolve().parts):
        cached = HUB_CACHE.match(part)
        if cached:
            return f"{cached.group('org')}/{cached.group('name')}", f"hub-cache:{part}"
    card = _front_matter(Path(directory) / "README.md")
    for key in CARD_KEYS:
        if _is_id(card.get(key)):
            return card[key], f"README.md:{key}"
    for key, value in card.items():
        link = HF_LINK.search(value)
        if link and key != "base_model":
            return link.group("id"), f"README.md:{key}"
    return None, "none"
