"""Render the Chinese failure-signature quick reference (runbooks/signatures.zh.md) from the
signature catalog (helpers/signatures.yaml), so the runbook and the scanner never disagree.

The prose lives in templates/signatures.zh.md.j2; this module only passes the catalog to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import ascend_facts
from helpers.catalog import fill_rung, load_catalog
from helpers.settings import REPO_ROOT
from helpers.templating import render as render_template

TEMPLATE_NAME = "signatures.zh.md.j2"
DEFAULT_OUT = REPO_ROOT / "runbooks" / "signatures.zh.md"
# Example values the ladder commands are shown with (the runbooks use the same ones).
EXAMPLE = {"model": "Qwen3-8B", "port": "8000", "max_model_len": "16384", "step": "stage-b"}
SEVERITY_ORDER = {"failure": 0, "evidence": 1, "info": 2}


@dataclass
class Entry:
    id: str
    category: str
    severity: str
    stage: str
    regex: str
    hint_zh: str
    rung: str
    rung_command: str
    rung_why: str
    example: str
    generic: bool
    specificity: int = 2
    example_source: str = ""
    fact: str = ""
    fact_holds: str = ""      # "vllm-ascend >=0.20.2rc1,<0.27" / "main" for the version-bound ones


def _fill(entry: dict[str, Any], key: str) -> str:
    return fill_rung(entry, EXAMPLE)[key]


def _holds(fact: ascend_facts.Fact | None) -> str:
    if fact is None:
        return ""
    if fact.main_only:
        return "vllm-ascend main（未发版）"
    return f"{fact.package} {fact.range}" if fact.range != "*" else f"{fact.package} 所有版本"


def entries(catalog_path: str | Path | None = None) -> list[Entry]:
    catalog = load_catalog(catalog_path)
    facts = ascend_facts.load()
    found: list[Entry] = []
    for sig in catalog.signatures:
        fact = facts.get(sig.fact) if sig.fact else None
        rung = sig.rung or "none"
        step = catalog.rungs.get(rung, {})
        found.append(Entry(
            id=sig.id, category=sig.category, severity=sig.severity, stage=sig.stage, regex=sig.regex,
            hint_zh=sig.hint_zh, rung=rung, rung_command=_fill(step, "command"),
            rung_why=_fill(step, "why_zh"), example=sig.example, generic=sig.generic,
            specificity=sig.specificity, example_source=sig.example_source, fact=sig.fact or "",
            fact_holds=_holds(fact),
        ))
    return found


def context(catalog_path: str | Path | None = None) -> dict[str, Any]:
    listed = entries(catalog_path)
    groups: dict[str, list[Entry]] = {}
    for entry in sorted(listed, key=lambda e: SEVERITY_ORDER.get(e.severity, 9)):
        groups.setdefault(entry.category, []).append(entry)
    catalog = load_catalog(catalog_path)
    return {
        "source": "helpers/signatures.yaml" if catalog_path is None else str(catalog_path),
        "groups": groups,
        "count": len(listed),
        "rungs": {name: {"command": _fill(v, "command"), "why": _fill(v, "why_zh")}
                  for name, v in catalog.rungs.items() if name != "none"},
        "example": EXAMPLE,
    }


def render(catalog_path: str | Path | None = None) -> str:
    return render_template(TEMPLATE_NAME, **context(catalog_path))
