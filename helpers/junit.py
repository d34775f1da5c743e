"""JUnit XML of verdicts, so CI systems show stages and features as test results."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from helpers.evidence import atomic_write_text


def write_junit(path: str | Path, suite: str, records: list[dict[str, Any]]) -> None:
    """records: dicts with step, verdict, category, reason, duration_s, run_dir."""
    failures = sum(1 for r in records if r.get("verdict") in ("FAIL", "INTERRUPTED"))
    skipped = sum(1 for r in records if r.get("verdict") in ("NOT_APPLICABLE", "CHECKPOINT_MISSING",
                                                               "FRAMEWORK_UNSUPPORTED"))
    root = ET.Element("testsuite", name=suite, tests=str(len(records)), failures=str(failures),
                      skipped=str(skipped))
    for record in records:
        case = ET.SubElement(root, "testcase", classname=suite, name=str(record.get("step")),
                             time=f"{float(record.get('duration_s') or 0):.3f}")
        verdict = record.get("verdict")
        message = f"{verdict}: {record.get('category') or ''} {record.get('reason') or ''}".strip()
        if verdict in ("FAIL", "INTERRUPTED"):
            ET.SubElement(case, "failure", message=message).text = str(record.get("root_cause") or "")
        elif verdict != "PASS":
            ET.SubElement(case, "skipped", message=message)
        ET.SubElement(case, "system-out").text = f"evidence: {record.get('run_dir', '')}"
    atomic_write_text(Path(path), ET.tostring(root, encoding="unicode") + "\n")
